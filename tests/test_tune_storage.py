"""Study files under misuse: outside readers, racing drivers, damaged or foreign files."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from normax import tune

SPACE = {"x": tune.uniform(0.0, 1.0), "lr": tune.log_uniform(1e-4, 1.0)}

_DRIVER = """
import sys, time
from normax import tune
space = {"x": tune.uniform(0.0, 1.0), "lr": tune.log_uniform(1e-4, 1.0)}
path = sys.argv[1]
study = tune.Study(space, lambda p: p["x"], storage=path, sampler=tune.RandomSampler(0))
try:
    tune.Study(space, lambda p: p["x"], storage=path)
except tune.StorageError:
    print("refused", flush=True)
study.optimize(5)
print("first", flush=True)
sys.stdin.readline()  # the outside reader opens and closes the file now
study.optimize(20)
print("finished", len(study.trials), flush=True)
time.sleep(120)  # killed here, before any clean close
"""


def _count(path) -> int:
    con = sqlite3.connect(path)  # read-write, like the sqlite3 shell or a dashboard
    try:
        return con.execute("SELECT count(*) FROM trials WHERE state='complete'").fetchone()[0]
    finally:
        con.close()


def test_refused_second_open_keeps_sqlite_locks_for_outside_readers(tmp_path):
    # Closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's
    # included; an outside reader then thinks it is the last connection and deletes the WAL
    # the driver is still writing. Every finished trial must survive kill -9 all the same.
    path = tmp_path / "s.db"
    argv = [sys.executable, "-c", textwrap.dedent(_DRIVER), str(path)]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        timer = threading.Timer(120, proc.kill)  # bounded even if the driver hangs
        timer.start()
        try:
            assert proc.stdout.readline().strip() == "refused"
            assert proc.stdout.readline().strip() == "first"
            assert _count(path) == 5  # the outside reader: opens, reads, closes
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline().split() == ["finished", "25"]
            proc.send_signal(signal.SIGKILL)
        finally:
            timer.cancel()
            proc.kill()
    assert _count(path) == 25


def _study(path, **kw):
    return tune.Study(SPACE, lambda p: p["x"], storage=path, sampler=tune.RandomSampler(0), **kw)


def _made(path, n=4):
    with _study(path) as s:
        s.optimize(n)


EDITS = {
    "params not JSON": "UPDATE trials SET params = '{' WHERE number = 1",
    "params a list": "UPDATE trials SET params = '[1, 2]' WHERE number = 1",
    "params renamed": """UPDATE trials SET params = '{"y": 1, "lr": 0.1}' WHERE number = 1""",
    "intermediate not JSON": "UPDATE trials SET intermediate = 'x' WHERE number = 0",
    "value text": "UPDATE trials SET value = 'good' WHERE number = 2",
    "unknown state": "UPDATE trials SET state = 'done' WHERE number = 0",
    "renumbered": "UPDATE trials SET number = number + 10 WHERE number = 1",
    "round unknown": "UPDATE trials SET round = 7 WHERE number = 3",
    "box not a pair": """UPDATE rounds SET box = '{"x": [0], "lr": [0, 1]}'""",
    "box not JSON": "UPDATE rounds SET box = 'nope'",
    "space gone": "DELETE FROM meta WHERE key = 'space'",
    "space not JSON": "UPDATE meta SET value = '{' WHERE key = 'space'",
    "space unknown kind": """UPDATE meta SET value = '{"x": {"kind": "z"}}' WHERE key = 'space'""",
    "space nested": "UPDATE meta SET value = '" + "[" * 100000 + "' WHERE key = 'space'",
    "direction gone": "DELETE FROM meta WHERE key = 'direction'",
    "sampler not JSON": "UPDATE meta SET value = 'x' WHERE key = 'sampler'",
    "meta value a blob": "UPDATE meta SET value = x'00ff' WHERE key = 'direction'",
    "table dropped": "DROP TABLE rounds",
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_edited_study_is_refused_with_path_and_reason(tmp_path, edit):
    path = tmp_path / "s.db"
    _made(path)
    con = sqlite3.connect(path)
    con.execute(EDITS[edit])
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(tune.StorageError, match=r"s\.db.*(damaged|not a normax)"):
        _study(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["s.db"]


def test_bit_flips_give_a_storage_error_or_a_usable_study(tmp_path):
    _made(tmp_path / "orig.db", 40)
    data = (tmp_path / "orig.db").read_bytes()
    rng = __import__("random").Random(0)
    refused = 0
    for k in range(60):
        flipped = bytearray(data)
        for _ in range(1 + k % 4):
            i = rng.randrange(len(flipped))
            flipped[i] ^= 1 << rng.randrange(8)
        path = tmp_path / f"f{k}.db"
        path.write_bytes(bytes(flipped))
        try:
            with _study(path) as s:
                s.optimize(1)
        except tune.StorageError as exc:
            assert str(path) in str(exc)
            refused += 1
    assert refused > 0


def test_empty_file_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "empty.db"
    path.touch()
    with pytest.raises(tune.StorageError, match=r"empty\.db.*empty file"):
        _study(path)
    assert path.stat().st_size == 0
    assert sorted(os.listdir(tmp_path)) == ["empty.db"]


def test_directory_as_path_is_refused(tmp_path):
    with pytest.raises(tune.StorageError, match="is a directory"):
        _study(tmp_path)
    assert os.listdir(tmp_path) == []


_READ_ONLY = """
import os, sys
from normax import tune
space = {"x": tune.uniform(0.0, 1.0), "lr": tune.log_uniform(1e-4, 1.0)}
try:
    tune.Study(space, lambda p: p["x"], storage=sys.argv[1]).optimize(1)
except tune.StorageError as exc:
    print("StorageError", exc)
"""


def _unprivileged(argv: list[str]) -> list[str]:
    """``argv`` run without the capabilities that let root ignore file permissions."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file permissions cannot bind")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", *argv]


@pytest.mark.parametrize("what", ["file", "folder"])
def test_read_only_file_or_folder_gives_storage_error(tmp_path, what):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "s.db"
    _made(path)
    if what == "file":
        path.chmod(0o444)
    else:
        folder.chmod(0o555)
    try:
        argv = _unprivileged([sys.executable, "-c", _READ_ONLY, str(path)])
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    finally:
        folder.chmod(0o755)
    assert out.stderr == "" and out.stdout.startswith("StorageError"), out
    assert str(path) in out.stdout and "read" in out.stdout
    assert "s.db.lock" not in os.listdir(folder)


def test_drivers_racing_to_create_a_study(tmp_path):
    # drivers starting together on a new path: one runs, the others are refused cleanly
    # (flock locks belong to an open file, so threads race like processes)
    for k in range(10):
        path, gate, outcomes = tmp_path / f"race{k}.db", threading.Barrier(4), []

        def driver(path=path, gate=gate, outcomes=outcomes):
            gate.wait()
            try:
                with _study(path) as s:
                    s.optimize(2)
                outcomes.append("ran")
            except tune.StorageError as exc:
                outcomes.append("refused" if "already open" in str(exc) else repr(exc))
            except Exception as exc:  # the failure this test is about
                outcomes.append(repr(exc))

        threads = [threading.Thread(target=driver) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert set(outcomes) <= {"ran", "refused"} and "ran" in outcomes, outcomes
        with _study(path) as s:
            assert len(s.trials) == 2 * outcomes.count("ran")


def test_a_killed_creation_leaves_nothing_for_long(tmp_path):
    # a driver killed while building a new study leaves its temporary files; the next one
    # removes them (their writer is gone), and the study path itself never holds half a study
    with subprocess.Popen([sys.executable, "-c", "pass"]) as proc:
        proc.wait()
    for suffix in (".db", ".db-wal", ".db-shm"):
        (tmp_path / f".tmp-{proc.pid}-abcd{suffix}").write_bytes(b"partial")
    with _study(tmp_path / "s.db") as s:
        s.optimize(1)
    assert sorted(os.listdir(tmp_path)) == ["s.db"]
