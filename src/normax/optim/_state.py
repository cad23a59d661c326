"""Optimizer state as plain arrays, and .npz files written atomically and read without pickle.

A state_dict becomes ``{"optim.meta": <JSON string array>, "optim.state.<i>.<name>": array}``:
hyperparameters and step counts go into the JSON (Python's float repr round-trips exactly), the
state arrays are stored raw, so a run resumed from a file continues bit for bit. A SHA-256
digest of every array is stored with the data and checked on load, so a truncated or altered
file is refused before anything is restored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import zipfile

import numpy as np

FORMAT = "normax.optim/1"


def digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``arrays`` (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.data if a.size else b"")
    return h.hexdigest()


def to_arrays(state_dict: dict, prefix: str = "optim.") -> dict[str, np.ndarray]:
    """Flatten an optimizer ``state_dict`` into named arrays (no objects, no pickle)."""
    meta = {
        "format": FORMAT,
        "optimizer": state_dict["optimizer"],
        "param_groups": state_dict["param_groups"],
        "state": {str(i): sorted(entry) for i, entry in state_dict["state"].items()},
    }
    arrays = {f"{prefix}meta": np.array(json.dumps(meta))}
    for i, entry in state_dict["state"].items():
        for name, arr in entry.items():
            arrays[f"{prefix}state.{i}.{name}"] = arr
    return arrays


def from_arrays(arrays: dict[str, np.ndarray], prefix: str = "optim.") -> dict:
    """Inverse of :func:`to_arrays`; ValueError if an entry is missing or malformed."""
    try:
        meta = json.loads(str(arrays[f"{prefix}meta"][()]))
        if meta["format"] != FORMAT:
            raise ValueError(f"unknown format {meta['format']!r}")
        state = {
            int(i): {name: arrays[f"{prefix}state.{i}.{name}"] for name in names}
            for i, names in meta["state"].items()
        }
        groups = meta["param_groups"]
        for g in groups:
            if isinstance(g.get("betas"), list):
                g["betas"] = tuple(g["betas"])
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise ValueError(f"optimizer state is incomplete or malformed: {exc!r}") from None
    return {"optimizer": meta["optimizer"], "param_groups": groups, "state": state}


_TMP_PREFIX = ".tmp-"


def atomic_savez(path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` (plus their digest) to ``path`` via a temporary file and a rename.

    A crash or error while writing leaves any previous file at ``path`` untouched. The
    temporary file's name carries the writer's process id, so a later save in the same folder
    removes what a killed writer (``kill -9``, a power cut) left behind.
    """
    path = os.fspath(path)
    arrays = dict(arrays)
    arrays["__digest__"] = np.array(digest(arrays))
    directory = os.path.dirname(os.path.abspath(path))
    remove_orphans(directory)
    fd, tmp = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # uncompressed: load_npz refuses compressed members
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_orphans(directory: str, suffixes: tuple[str, ...] = (".npz",)) -> None:
    """Delete ``.tmp-<pid>-*<suffix>`` files whose writer process no longer exists."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(_TMP_PREFIX) and name.endswith(suffixes)):
            continue
        pid = name[len(_TMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # someone else's process (EPERM), or not a pid
        return True
    return True


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One ``.npy`` member, its declared sizes checked before a byte of data is read.

    Only stored (uncompressed) members are accepted, as written by :func:`atomic_savez`: then
    what a member holds can never exceed its bytes in the file, so a small file cannot expand
    into gigabytes, and no decompressor meets a corrupted compression field.
    """
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"member {info.filename!r} is compressed (method {info.compress_type})")
    if info.file_size != info.compress_size:
        raise ValueError(f"member {info.filename!r} declares inconsistent sizes")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"member {info.filename!r} has .npy version {version}")
        if dtype.hasobject:
            raise ValueError(f"member {info.filename!r} holds Python objects")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes != info.file_size - f.tell():
            raise ValueError(
                f"member {info.filename!r} declares {shape} {dtype} ({nbytes} bytes) but "
                f"holds {info.file_size - f.tell()} bytes"
            )
        arr = np.empty(math.prod(shape), dtype=dtype)
        raw, got = arr.view(np.uint8), 0  # read straight into the array: one copy in memory
        while got < nbytes:
            n = f.readinto(raw[got:])
            if not n:
                raise ValueError(f"member {info.filename!r} ends early")
            got += n
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def load_npz(path) -> dict[str, np.ndarray]:
    """Every array of a file written by :func:`atomic_savez`, digest-checked, without pickle.

    The zip directory and every member's declared sizes are checked before anything is read,
    so memory use stays within the file's own size. Any damage is a ValueError.
    """
    try:
        with open(os.fspath(path), "rb") as f, zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
            size = os.fstat(f.fileno()).st_size
            if sum(i.compress_size for i in infos) > size:
                raise ValueError("members declare more bytes than the file holds")
            arrays = {}
            for info in infos:
                name = info.filename.removesuffix(".npy")
                if name in arrays or not info.filename.endswith(".npy"):
                    raise ValueError(f"unexpected member {info.filename!r}")
                arrays[name] = _read_member(zf, info)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, ValueError, TypeError, OSError, EOFError, RecursionError) as exc:
        raise ValueError(
            f"{os.fspath(path)!r} is not a readable checkpoint (truncated or corrupted?): {exc}"
        ) from None
    stored = arrays.pop("__digest__", None)
    if stored is None or stored.shape != () or str(stored[()]) != digest(arrays):
        raise ValueError(
            f"{os.fspath(path)!r} failed its integrity check: the file was "
            "modified or corrupted after it was written"
        )
    return arrays


def save_state(optimizer, path) -> None:
    """Save ``optimizer.state_dict()`` to ``path`` (.npz), atomically."""
    atomic_savez(path, to_arrays(optimizer.state_dict()))


def load_state(optimizer, path) -> None:
    """Restore an optimizer saved by :func:`save_state`; nothing changes if the file is bad.

    Raises ValueError if the file is damaged or does not fit ``optimizer``.
    """
    sd = from_arrays(load_npz(path))
    checked_load(optimizer, sd, os.fspath(path))


def checked_load(optimizer, sd: dict, where: str) -> None:
    """``optimizer.load_state_dict(sd)`` for state read from a file: every mistake a ValueError.

    A file's content is a value: a hyperparameter stored as a string is a damaged file, not a
    caller's type error.
    """
    try:
        optimizer._checked_state(sd)  # every check first, so a failure changes nothing
    except (TypeError, OverflowError) as exc:
        raise ValueError(f"{where!r} holds unusable optimizer state: {exc}") from None
    optimizer.load_state_dict(sd)
