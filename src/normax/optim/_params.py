"""Parameter structures: a list or dict of arrays, or a list of parameter groups.

The optimizer flattens whatever it is given into one list of arrays and remembers the shape of
the structure, so that ``step(grads)`` can require the same structure back and name the exact
entry that does not match.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from .._checks import FLOAT_DTYPES
from .._dtypes import FLOAT32
from ._check import check_half_grad, in_place, is_half


def _is_group(obj) -> bool:
    return isinstance(obj, Mapping) and "params" in obj


def split_groups(params) -> tuple[list[dict], bool]:
    """``(groups, grouped)``: each group a dict with "params" (list or dict) and options."""
    if isinstance(params, np.ndarray):
        raise TypeError("params must be a list or dict of arrays, not a single array")
    if isinstance(params, Mapping):
        return [{"params": params}], False
    if not isinstance(params, Sequence) or isinstance(params, str):
        raise TypeError(f"params must be a list or dict of arrays, got {type(params).__name__}")
    if params and all(_is_group(g) for g in params):
        return [dict(g) for g in params], True
    if any(isinstance(g, Mapping) for g in params):
        raise TypeError("a list of parameter groups needs a 'params' entry in every group")
    return [{"params": params}], False


def entries(container) -> list[tuple[object, object]]:
    """``(key, value)`` pairs of a list (integer keys) or dict (its keys)."""
    if isinstance(container, Mapping):
        return list(container.items())
    if isinstance(container, Sequence) and not isinstance(container, (str, np.ndarray)):
        return list(enumerate(container))
    raise TypeError(f"expected a list or dict of arrays, got {type(container).__name__}")


def label(key, group: int | None) -> str:
    """How an entry is named in messages: params['w'], params[3], params[1][3]."""
    where = "" if group is None else f"[{group}]"
    return f"params{where}[{key!r}]"


def check_param(p, name: str) -> np.ndarray:
    """A parameter must be a writeable, C-contiguous float32/float64 ndarray (updated in place)."""
    if not isinstance(p, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(p).__name__}")
    if p.dtype not in FLOAT_DTYPES:
        hint = (
            " (keep float32 master weights and pass step(grads, half_params=...) for a "
            "half-precision copy)"
            if is_half(p.dtype)
            else ""
        )
        raise TypeError(
            f"{name} has unsupported dtype {p.dtype}; supported: float32, float64{hint}"
        )
    return in_place(p, name)


def check_distinct(arrays: list[np.ndarray], names: list[str]) -> None:
    """No parameter may share memory with another (the update would race)."""
    spans = sorted(
        (p.__array_interface__["data"][0], p.nbytes, i) for i, p in enumerate(arrays) if p.nbytes
    )
    for (a0, an, i), (b0, _, j) in itertools.pairwise(spans):
        if b0 < a0 + an:
            raise ValueError(
                f"{names[i]} and {names[j]} share memory; every parameter must be a separate array"
            )


def check_grad(g, p: np.ndarray, name: str) -> np.ndarray:
    """A gradient must be an array of its parameter's shape and dtype, or float16/bfloat16
    for a float32 parameter (mixed precision).

    Its layout is the fused step's concern: a strided gradient is copied there, once.
    """
    where = f"grads{name[6:]}"
    if not isinstance(g, np.ndarray):
        raise TypeError(f"{where} must be a numpy array, got {type(g).__name__}")
    if g.shape != p.shape:
        raise ValueError(
            f"{where} has shape {g.shape}, expected {p.shape} (the shape of its parameter)"
        )
    if is_half(g.dtype):
        check_half_grad(g, p.dtype, where)
    elif g.dtype != p.dtype:
        raise TypeError(
            f"{where} has dtype {g.dtype}, expected {p.dtype} (the dtype of its parameter)"
        )
    return g


def check_half(h, p: np.ndarray, name: str) -> np.ndarray:
    """A half copy of a parameter: a writeable float16/bfloat16 array of its shape, for a
    float32 parameter."""
    where = f"half_params{name[6:]}"
    if not isinstance(h, np.ndarray):
        raise TypeError(f"{where} must be a numpy array, got {type(h).__name__}")
    if not is_half(h.dtype):
        raise TypeError(f"{where} has dtype {h.dtype}; a half copy is float16 or bfloat16")
    if p.dtype != FLOAT32:
        raise TypeError(
            f"{where} is a half copy of {name}, which is {p.dtype}; half copies need float32 "
            "params (the master weights)"
        )
    if h.shape != p.shape:
        raise ValueError(
            f"{where} has shape {h.shape}, expected {p.shape} (the shape of its parameter)"
        )
    return in_place(h, where)


def check_half_distinct(halves: list, params: list, grads: list, names: list[str]) -> None:
    """No half copy shares memory with a parameter, a gradient or another half copy.

    The optimizer's state arrays are its own, so they cannot meet a caller's array. Sorted by
    start, a pair that overlaps is found when its later member is reached: by the furthest end
    seen so far (if the later one is a copy) or the furthest end of the copies seen so far.
    """
    spans = sorted(
        (a.__array_interface__["data"][0], a.nbytes, what + names[i][6:], what == "half_params")
        for what, arrays in (("half_params", halves), ("params", params), ("grads", grads))
        for i, a in enumerate(arrays)
        if a.nbytes
    )
    reach = (0, "")  # furthest end so far and whose
    half_reach = (0, "")
    for start, nbytes, name, copy in spans:
        other = reach if copy else half_reach
        if start < other[0]:
            raise ValueError(
                f"{other[1]} and {name} share memory; a half copy must be a separate array"
            )
        reach = max(reach, (start + nbytes, name))
        if copy:
            half_reach = max(half_reach, (start + nbytes, name))


def match(grads, keys: list, by_name: bool, what: str) -> list:
    """The values of ``grads`` in the order of ``keys`` (dict names, or list positions)."""
    if isinstance(grads, (np.ndarray, str)):
        raise TypeError(f"{what} must be a list or dict of arrays, got {type(grads).__name__}")
    if by_name:
        if not isinstance(grads, Mapping):
            raise TypeError(
                f"{what} must be a dict with the keys of params, got {type(grads).__name__}"
            )
        missing = [k for k in keys if k not in grads]
        extra = [k for k in grads if k not in set(keys)]
        if missing or extra:
            raise ValueError(
                f"{what} keys do not match params: missing {missing}, unexpected {extra}"
            )
        return [grads[k] for k in keys]
    if isinstance(grads, Mapping) or not isinstance(grads, Sequence):
        raise TypeError(f"{what} must be a list like params, got {type(grads).__name__}")
    if len(grads) != len(keys):
        raise ValueError(f"{what} has {len(grads)} arrays, params has {len(keys)}")
    return list(grads)
