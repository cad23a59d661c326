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
from ._check import in_place


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
        raise TypeError(f"{name} has unsupported dtype {p.dtype}; supported: float32, float64")
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
    """A gradient must be an array of its parameter's shape and dtype.

    Its layout is the fused step's concern: a strided gradient is copied there, once.
    """
    if not isinstance(g, np.ndarray):
        raise TypeError(f"grads{name[6:]} must be a numpy array, got {type(g).__name__}")
    if g.shape != p.shape:
        raise ValueError(
            f"grads{name[6:]} has shape {g.shape}, expected {p.shape} (the shape of its parameter)"
        )
    if g.dtype != p.dtype:
        raise TypeError(
            f"grads{name[6:]} has dtype {g.dtype}, expected {p.dtype} (the dtype of its parameter)"
        )
    return g


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
