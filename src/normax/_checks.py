"""Argument checks shared by every backend.

They run once, before dispatch, so that the C, Numba and NumPy backends raise the same exception
type with the same message for the same bad input, and hand every backend the same contiguous
arrays. Messages name the argument and the offending value.
"""

from __future__ import annotations

import math
import operator

import numpy as np

from . import _dtypes

FLOAT_DTYPES = (_dtypes.FLOAT32, _dtypes.FLOAT64)


def float_array(x, name: str, *, half: bool = False) -> np.ndarray:
    """``x`` as an ndarray of float32 or float64 (TypeError for any other dtype).

    With ``half``, float16 and bfloat16 arrays pass too (kernels that store in half precision
    and compute in float32).
    """
    if not isinstance(x, np.ndarray):
        if isinstance(x, (list, tuple)) or np.isscalar(x):
            x = np.asarray(x)
        else:
            raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    if not _dtypes.is_float(x.dtype, half=half):
        raise TypeError(
            f"{name} has unsupported dtype {x.dtype}; "
            f"supported: {_dtypes.supported_names(half=half)}"
        )
    return x


def contiguous(x: np.ndarray) -> np.ndarray:
    """C-contiguous, aligned, native byte order; a copy only when needed."""
    if x.flags.c_contiguous and x.flags.aligned and x.dtype.isnative:
        return x
    # np.ascontiguousarray alone hands back an unaligned C-contiguous array unchanged.
    return np.require(x, dtype=x.dtype.newbyteorder("="), requirements=("C", "A"))


def normalize_axis(axis, ndim: int, name: str = "axis") -> int:
    """``axis`` in ``[-ndim, ndim)`` mapped to ``[0, ndim)``."""
    try:
        a = operator.index(axis)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(axis).__name__}") from None
    if not -ndim <= a < ndim:
        raise ValueError(f"{name} {a} is out of range for an array of {ndim} dimensions")
    return a % ndim


def view3d(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    """The (outer, C, inner) view of a C-contiguous array of ``shape`` around ``axis``."""
    outer = math.prod(shape[:axis])
    inner = math.prod(shape[axis + 1 :])
    return outer, shape[axis], inner


def real_scalar(value, name: str, low: float, high: float, *, low_open=False) -> float:
    """A finite float in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    try:
        v = float(value)
    except OverflowError:  # an int beyond the double range: a number, just not a finite one
        v = math.inf
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    bad_low = v <= low if low_open else v < low
    if not math.isfinite(v) or bad_low or v > high:
        lo = "(" if low_open else "["
        raise ValueError(f"{name} must be a finite number in {lo}{low}, {high}], got {value!r}")
    return v


def check_out(out, shape: tuple[int, ...], dtype: np.dtype, name: str = "out") -> np.ndarray:
    """``out`` must be a writeable C-contiguous ndarray of exactly ``shape`` and ``dtype``."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} has shape {out.shape}, expected {tuple(shape)}")
    if out.dtype != dtype:
        raise TypeError(f"{name} has dtype {out.dtype}, expected {dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    if not (out.flags.c_contiguous and out.flags.aligned and out.dtype.isnative):
        raise ValueError(f"{name} must be C-contiguous, aligned and in native byte order")
    return out


def no_overlap(out: np.ndarray, name: str, *inputs: tuple[np.ndarray | None, str]) -> None:
    """Refuse an ``out`` that shares memory with an input it must not overwrite.

    Both arrays are contiguous here, so the bounds test of ``may_share_memory`` is exact and
    costs nanoseconds, unlike the general ``shares_memory``.
    """
    for arr, arr_name in inputs:
        if arr is not None and np.may_share_memory(out, arr):
            raise ValueError(f"{name} overlaps {arr_name}; pass a separate array")


def writeable(a):
    """``a`` itself, or a copy if it is a read-only array (None passes).

    The Numba kernels are compiled for explicit signatures of mutable arrays and Numba types a
    read-only array differently, so it would match no signature. Copying the rare read-only input
    (an array the caller froze, a buffer from bytes) keeps one compiled kernel per dtype.
    """
    return a if a is None or a.flags.writeable else a.copy()
