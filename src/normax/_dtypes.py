"""The element types normax computes on, and the half-precision storage types.

float32 and float64 arrays compute in their own type. float16 (NumPy's) and bfloat16 (the
``ml_dtypes`` package's, the type JAX and TensorFlow use with NumPy) are storage types: a kernel
reads them, computes in float32 (sums and statistics in float32 or wider) and rounds each result
to the input's type once. ``ml_dtypes`` is optional: an array can only be bfloat16 if it is
installed, and asking for bfloat16 by name without it raises an ImportError that says so.
"""

from __future__ import annotations

import sys

import numpy as np

FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)
FLOAT16 = np.dtype(np.float16)

# Kinds of half-precision storage: the values of the C kernels' `kind` argument (csrc/half.h).
KIND_F16 = 1
KIND_BF16 = 2

_INSTALL_HINT = "pip install ml_dtypes (or pip install 'normax[bf16]')"


def bfloat16() -> np.dtype:
    """The bfloat16 dtype of ``ml_dtypes``.

    Raises
    ------
    ImportError
        If ``ml_dtypes`` is not installed.
    """
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError(f"bfloat16 needs the ml_dtypes package: {_INSTALL_HINT}") from None
    return np.dtype(ml_dtypes.bfloat16)


def _loaded_bfloat16() -> np.dtype | None:
    # No array can be bfloat16 unless ml_dtypes was imported: don't import it to find out.
    module = sys.modules.get("ml_dtypes")
    return None if module is None else np.dtype(module.bfloat16)


def half_kind(dtype: np.dtype) -> int:
    """:data:`KIND_F16` or :data:`KIND_BF16` for a half-precision dtype, else 0."""
    if dtype == FLOAT16:
        return KIND_F16
    bf16 = _loaded_bfloat16()
    return KIND_BF16 if bf16 is not None and dtype == bf16 else 0


def is_half(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is float16 or bfloat16 (stored in half precision, computed in float32)."""
    return half_kind(dtype) != 0


def is_float(dtype: np.dtype, *, half: bool = False) -> bool:
    """float32 or float64, and with ``half`` also float16 or bfloat16."""
    return dtype == FLOAT32 or dtype == FLOAT64 or (half and is_half(dtype))


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The type the arithmetic runs in: float32 for half-precision storage, else ``dtype``."""
    return FLOAT32 if is_half(dtype) else np.dtype(dtype)


def supported_names(*, half: bool = False) -> str:
    """The dtypes a kernel accepts, for error messages."""
    return "float16, bfloat16, float32, float64" if half else "float32, float64"


def resolve(name) -> np.dtype:
    """A dtype from a name or dtype-like; "bfloat16" works only with ``ml_dtypes`` installed.

    Raises
    ------
    TypeError
        For a name that is not a float type normax computes on.
    ImportError
        For "bfloat16" without ``ml_dtypes``.
    """
    if isinstance(name, str) and name.strip().lower() in ("bfloat16", "bf16"):
        return bfloat16()
    try:
        dtype = np.dtype(name)
    except TypeError:
        raise TypeError(
            f"dtype must be one of {supported_names(half=True)}, got {name!r}"
        ) from None
    if not is_float(dtype, half=True):
        raise TypeError(f"dtype must be one of {supported_names(half=True)}, got {dtype}")
    return dtype
