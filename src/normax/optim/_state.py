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
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"optimizer state is incomplete or malformed: {exc!r}") from None
    return {"optimizer": meta["optimizer"], "param_groups": groups, "state": state}


def atomic_savez(path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` (plus their digest) to ``path`` via a temporary file and a rename.

    A crash or error while writing leaves any previous file at ``path`` untouched.
    """
    path = os.fspath(path)
    arrays = dict(arrays)
    arrays["__digest__"] = np.array(digest(arrays))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_npz(path) -> dict[str, np.ndarray]:
    """Every array of a file written by :func:`atomic_savez`, digest-checked, without pickle."""
    try:
        # open the file here: np.load leaks its own handle when the zip directory is damaged
        with open(os.fspath(path), "rb") as f:
            z = np.load(f, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            with z:
                arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ValueError(
            f"{os.fspath(path)!r} is not a readable checkpoint (truncated or corrupted?): {exc}"
        ) from None
    stored = arrays.pop("__digest__", None)
    if stored is None or str(stored[()]) != digest(arrays):
        raise ValueError(
            f"{os.fspath(path)!r} failed its integrity check: the file was "
            "modified or corrupted after it was written"
        )
    return arrays


def save_state(optimizer, path) -> None:
    """Save ``optimizer.state_dict()`` to ``path`` (.npz), atomically."""
    atomic_savez(path, to_arrays(optimizer.state_dict()))


def load_state(optimizer, path) -> None:
    """Restore an optimizer saved by :func:`save_state`; nothing changes if the file is bad."""
    optimizer.load_state_dict(from_arrays(load_npz(path)))
