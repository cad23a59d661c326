"""Checkpoints: a model's parameters and buffers and an optimizer's state in one .npz file.

The file is written to a temporary name in the same directory and renamed over the target, so
an interrupted save never leaves a half-written checkpoint. It is read without pickle, its
SHA-256 digest is verified, and every name, shape and dtype is checked against the model (and
the optimizer) before a single array is overwritten.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..optim import _state

FORMAT = "normax.checkpoint/1"


def _describe(arrays: dict[str, np.ndarray]) -> dict[str, list]:
    return {k: [list(a.shape), a.dtype.str] for k, a in arrays.items()}


def save_checkpoint(path: str | os.PathLike, model, optimizer=None) -> None:
    """Save ``model.parameters()``, ``model.buffers()`` and ``optimizer`` state to ``path``.

    Parameters
    ----------
    path : str or path-like
        Target file (written atomically; an existing file is replaced only on success).
    model : normax.nn.Module
    optimizer : normax.optim.Optimizer, optional
    """
    params, buffers = model.parameters(), model.buffers()
    meta = {
        "format": FORMAT,
        "params": _describe(params),
        "buffers": _describe(buffers),
        "optimizer": optimizer is not None,
    }
    arrays = {"checkpoint.meta": np.array(json.dumps(meta))}
    arrays.update({f"param.{k}": v for k, v in params.items()})
    arrays.update({f"buffer.{k}": v for k, v in buffers.items()})
    if optimizer is not None:
        arrays.update(_state.to_arrays(optimizer.state_dict(), prefix="optim."))
    _state.atomic_savez(path, arrays)


def _match(kind: str, stored: dict[str, np.ndarray], current: dict[str, np.ndarray]) -> None:
    missing = sorted(set(current) - set(stored))
    extra = sorted(set(stored) - set(current))
    if missing or extra:
        raise ValueError(
            f"checkpoint does not fit this model: {kind} missing from the file "
            f"{missing}, {kind} the model lacks {extra}"
        )
    for name, arr in current.items():
        got = stored[name]
        if got.shape != arr.shape or got.dtype != arr.dtype:
            raise ValueError(
                f"checkpoint does not fit this model: {kind[:-1]} {name!r} is "
                f"{got.shape} {got.dtype} in the file, {arr.shape} {arr.dtype} "
                "in the model"
            )


def load_checkpoint(path: str | os.PathLike, model, optimizer=None) -> None:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``model`` (and optimizer).

    Raises ValueError, with nothing changed, if the file is truncated, altered or damaged in any
    way (its digest and every member's declared size are checked before any data is read), was
    saved from a model of another architecture (names, shapes or dtypes differ), holds a NaN,
    infinite or negative running variance, or holds no (or unusable) optimizer state when
    ``optimizer`` is given.
    """
    arrays = _state.load_npz(path)
    try:
        meta = json.loads(str(arrays["checkpoint.meta"][()]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"unknown format {meta.get('format')!r}")
        stored = {
            kind: {k: arrays[f"{kind[:-1]}.{k}"] for k in meta[kind]}
            for kind in ("params", "buffers")
        }
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise ValueError(f"{os.fspath(path)!r} is not a normax checkpoint: {exc!r}") from None
    params, buffers = model.parameters(), model.buffers()
    _match("params", stored["params"], params)
    _match("buffers", stored["buffers"], buffers)
    _check_variances(stored["buffers"], os.fspath(path))
    sd = None
    if optimizer is not None:
        if not meta.get("optimizer"):
            raise ValueError(f"{os.fspath(path)!r} holds no optimizer state")
        sd = _state.from_arrays(arrays, prefix="optim.")
        try:  # every check now, so a failure changes nothing
            optimizer._checked_state(sd)
        except (TypeError, OverflowError) as exc:  # a stored value of the wrong kind
            raise ValueError(f"{os.fspath(path)!r} holds unusable optimizer state: {exc}") from None
    for current, saved in ((params, stored["params"]), (buffers, stored["buffers"])):
        for name, arr in current.items():
            np.copyto(arr, saved[name])
    if sd is not None:
        optimizer.load_state_dict(sd)


def _check_variances(buffers: dict[str, np.ndarray], where: str) -> None:
    """Running variances must be finite and >= 0: a NaN or negative one poisons every forward
    pass in evaluation mode without a word."""
    for name, arr in buffers.items():
        if name.rsplit(".", 1)[-1] == "running_var" and not (
            np.isfinite(arr).all() and (arr >= 0).all()
        ):
            bad = arr[~(np.isfinite(arr) & (arr >= 0))][0]
            raise ValueError(f"{where!r}: buffer {name!r} holds the variance {bad}, not >= 0")
