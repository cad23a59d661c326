"""Checkpoint and state files under attack: bombs, forged headers, edited metadata, kill -9."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from normax import nn, optim, tune
from normax.optim import _state


def _mlp(seed=0):
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Linear(5, 8, bias=False, rng=rng), nn.BatchNorm(8), nn.ReLU(), nn.Linear(8, 3, rng=rng)
    )


def _saved(tmp_path):
    model = _mlp()
    opt = optim.Adam(model.parameters(), lr=0.01)
    path = tmp_path / "ck.npz"
    nn.save_checkpoint(path, model, opt)
    return path


def _resave(path, edit):
    """Rewrite a checkpoint with ``edit(arrays)`` applied and a valid digest (anyone can)."""
    arrays = _state.load_npz(path)
    edit(arrays)
    _state.atomic_savez(path, arrays)


def _npy(shape, dtype="<f8", data=b"") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": dtype, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue() + data


def _rezip(path, member, payload, compress=zipfile.ZIP_STORED):
    """Replace one member of the archive at ``path`` by raw ``payload`` bytes."""
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    members[member] = payload
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data, compress_type=compress if name == member else None)


def _load_refused(path, match):
    fresh = _mlp(seed=3)
    before = {k: v.copy() for k, v in {**fresh.parameters(), **fresh.buffers()}.items()}
    opt = optim.Adam(fresh.parameters(), lr=0.5)
    with pytest.raises(ValueError, match=match):
        nn.load_checkpoint(path, fresh, opt)
    for k, v in {**fresh.parameters(), **fresh.buffers()}.items():
        np.testing.assert_array_equal(v, before[k])
    assert opt.param_groups[0]["lr"] == 0.5


def test_compressed_bomb_is_refused_before_decompressing(tmp_path):
    path = _saved(tmp_path)
    n = 64 * 2**20 // 8  # 64 MiB of zeros; a few hundred KB compressed
    _rezip(path, "param.0.weight.npy", _npy((n,), data=bytes(8 * n)), zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    try:
        _load_refused(path, "compressed")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20  # nothing near the 64 MiB the member would expand to


def test_corrupted_compression_field_is_a_value_error(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    for sig, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # local and central headers
        at = data.find(sig)
        while at >= 0:
            data[at + offset : at + offset + 2] = struct.pack("<H", 77)
            at = data.find(sig, at + 4)
    path.write_bytes(bytes(data))
    _load_refused(path, "compressed")


@pytest.mark.parametrize("shape", [(2**40,), (2**31, 2**31), (-1,), (3, -4)])
def test_header_declaring_more_than_the_member_holds(tmp_path, shape):
    path = _saved(tmp_path)
    _rezip(path, "param.0.weight.npy", _npy(shape, data=bytes(320)))
    _load_refused(path, "declares")


def test_object_arrays_are_refused(tmp_path):
    path = _saved(tmp_path)
    _rezip(path, "param.0.weight.npy", _npy((1,), "|O", data=b"\x80\x04N."))
    _load_refused(path, "Python objects")


def _meta_edit(key, fn):
    def edit(arrays):
        meta = json.loads(str(arrays[key][()]))
        fn(meta)
        arrays[key] = np.array(json.dumps(meta))

    return edit


EDITS = {
    "nested metadata": lambda a: a.update({"checkpoint.meta": np.array("[" * 200_000)}),
    "nested optimizer metadata": lambda a: a.update({"optim.meta": np.array('{"a":' * 200_000)}),
    "string lr": _meta_edit("optim.meta", lambda m: m["param_groups"][0].update(lr="0.1")),
    "list betas": _meta_edit("optim.meta", lambda m: m["param_groups"][0].update(betas="ab")),
    "huge step": _meta_edit("optim.meta", lambda m: m["param_groups"][0].update(step=10**400)),
    "negative step": _meta_edit("optim.meta", lambda m: m["param_groups"][0].update(step=-1)),
    "NaN running_var": lambda a: a["buffer.1.running_var"].__setitem__(2, np.nan),
    "Inf running_var": lambda a: a["buffer.1.running_var"].__setitem__(0, np.inf),
    "negative running_var": lambda a: a["buffer.1.running_var"].__setitem__(7, -0.5),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_forged_content_with_a_valid_digest_is_a_value_error(tmp_path, edit):
    path = _saved(tmp_path)
    _resave(path, EDITS[edit])
    _load_refused(path, r"checkpoint|optimizer state|step|variance|betas")


def test_loaded_step_count_keeps_stepping(tmp_path):
    model = _mlp()
    opt = optim.Adam(model.parameters(), lr=0.01)
    path = tmp_path / "ck.npz"
    nn.save_checkpoint(path, model, opt)
    _resave(path, _meta_edit("optim.meta", lambda m: m["param_groups"][0].update(step=2**53)))
    nn.load_checkpoint(path, model, opt)
    opt.step({k: np.ones_like(v) for k, v in model.parameters().items()})
    assert all(np.isfinite(v).all() for v in model.parameters().values())


def test_optimizer_state_file_with_a_string_lr_is_a_value_error(tmp_path):
    model = _mlp()
    opt = optim.Adam(model.parameters(), lr=0.01)
    path = tmp_path / "opt.npz"
    optim.save_state(opt, path)
    _resave(path, _meta_edit("optim.meta", lambda m: m["param_groups"][0].update(lr="0.1")))
    with pytest.raises(ValueError, match="lr"):
        optim.load_state(opt, path)
    assert opt.param_groups[0]["lr"] == 0.01


_WRITER = """
import numpy as np, sys
from normax.optim import _state
arrays = {"w": np.random.default_rng(0).standard_normal(2_000_000)}
while True:
    _state.atomic_savez(sys.argv[1], arrays)
"""


def _tmp_files(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith(".tmp-"))


@pytest.mark.slow  # five writer processes, each killed mid-save
def test_kill_9_during_save_leaves_nothing_behind_for_long(tmp_path):
    target = tmp_path / "ck.npz"
    for _ in range(5):
        with subprocess.Popen([sys.executable, "-c", _WRITER, str(target)]) as proc:
            deadline = time.monotonic() + 60
            try:  # kill it while its temporary file is being written
                while not [n for n in _tmp_files(tmp_path) if n.startswith(f".tmp-{proc.pid}-")]:
                    assert proc.poll() is None and time.monotonic() < deadline
                    time.sleep(0.002)
                proc.send_signal(signal.SIGKILL)
            finally:
                proc.kill()
        assert _tmp_files(tmp_path)  # what this killed writer left (earlier ones are gone)
    _state.atomic_savez(target, {"w": np.zeros(3)})
    assert _tmp_files(tmp_path) == []
    np.testing.assert_array_equal(_state.load_npz(target)["w"], np.zeros(3))


def test_a_live_writers_temporary_file_is_kept(tmp_path):
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as proc:
        try:
            live = tmp_path / f".tmp-{proc.pid}-abc.npz"
            live.write_bytes(b"partial")
            _state.atomic_savez(tmp_path / "ck.npz", {"w": np.zeros(3)})
            assert live.exists()
        finally:
            proc.kill()


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "npy", "old format"])
def test_npz_checkpoint_load_checks_the_file(tmp_path, damage):
    state = {"w": np.arange(1000.0), "b": np.ones(3, np.float32)}
    save, load = tune.npz_checkpoint(lambda: state, state.update)
    path = tmp_path / "ck.npz"
    save(path)
    data = path.read_bytes()
    if damage == "flip":
        pos = data.find(np.arange(1000.0).tobytes()) + 100
        path.write_bytes(data[:pos] + bytes([data[pos] ^ 1]) + data[pos + 1 :])
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    elif damage == "npy":
        with path.open("wb") as f:
            np.save(f, np.ones(3))
    else:
        np.savez(path, w=np.zeros(1000), b=np.zeros(3, np.float32))  # no digest
    calls = []
    _, load = tune.npz_checkpoint(lambda: state, calls.append)
    with pytest.raises(ValueError, match=r"checkpoint|integrity"):
        load(path)
    assert calls == []


def test_npz_checkpoint_round_trip(tmp_path):
    state = {"w": np.arange(6.0).reshape(2, 3), "f": np.asfortranarray(np.ones((2, 3)))}
    got = {}
    save, load = tune.npz_checkpoint(lambda: state, got.update)
    save(tmp_path / "ck.npz")
    load(tmp_path / "ck.npz")
    assert sorted(got) == ["f", "w"] and all(np.array_equal(got[k], state[k]) for k in state)
    assert not math.isnan(got["w"].sum()) and _tmp_files(tmp_path) == []
