"""Pure-NumPy batch normalization: the reference every other backend is tested against.

Float64 accumulation and a two-pass variance, written as the textbook formulas, on the
``(outer, C, inner)`` view. The functions take the canonical record built by the front door or
:mod:`normax._batchnorm_check` and share their signatures with the C and Numba backends.

Half-precision inputs (float16, bfloat16) are upcast exactly, the arithmetic runs in float64 as
for the other types, and each half output is rounded once from that result (see
:func:`_store`); gamma, beta, the running statistics, dgamma and dbeta are float32 then.
"""

from __future__ import annotations

import numpy as np

from . import _dtypes
from ._checks import view3d

_AXES = (0, 2)  # statistics run over outer and inner of the (outer, C, inner) view


def _channel(v: np.ndarray) -> np.ndarray:
    """A per-channel vector as float64, broadcasting against the (outer, C, inner) view."""
    return v.astype(np.float64).reshape(1, -1, 1)


def _store(dst: np.ndarray, value: np.ndarray) -> None:
    """``dst[...] = value`` rounded once to the dtype of ``dst``.

    NumPy rounds float64 to float16 directly, but ml_dtypes converts float64 to bfloat16
    through float32, which can round twice (a value just above a bfloat16 midpoint that float32
    rounds onto the midpoint then ties to even). Rounding to float32 *to odd* first (truncate,
    and set the last bit when anything was dropped) keeps the information the second rounding
    needs, so the result is the single rounding of ``value``.
    """
    if _dtypes.half_kind(dst.dtype) != _dtypes.KIND_BF16:
        dst[...] = value
        return
    value = np.asarray(value, np.float64)
    near = value.astype(np.float32)
    bits = near.view(np.uint32)
    away = np.abs(near.astype(np.float64)) > np.abs(value)  # rounded away from zero: truncate
    bits -= away.astype(np.uint32)  # one float32 step back towards zero (|near| > 0 here)
    inexact = near.astype(np.float64) != value
    bits |= (inexact & np.isfinite(value)).astype(np.uint32)
    dst[...] = near


# NaN or Inf in x gives NaN in its channel, and eps=0 with a constant channel gives inf/NaN, as
# in the C and Numba kernels: by design, so NumPy's floating-point warnings are silenced.
_quiet = np.errstate(invalid="ignore", divide="ignore", over="ignore")


@_quiet
def train(
    x, outer, c, inner, gamma, beta, running_mean, running_var, momentum, eps, y, mean, invstd
):
    """Training forward: writes ``y`` and the float64 batch statistics ``mean``, ``invstd``."""
    xd = x.reshape(outer, c, inner).astype(np.float64)
    n = outer * inner
    mean[...] = xd.mean(axis=_AXES)
    centered = xd - mean.reshape(1, c, 1)
    var = np.mean(centered * centered, axis=_AXES)
    invstd[...] = 1.0 / np.sqrt(var + eps)
    out = centered * invstd.reshape(1, c, 1)
    if gamma is not None:
        out *= _channel(gamma)
    if beta is not None:
        out += _channel(beta)
    if running_mean is not None:
        running_mean[...] = (1.0 - momentum) * running_mean.astype(np.float64) + momentum * mean
        unbiased = var * (n / (n - 1))
        running_var[...] = (1.0 - momentum) * running_var.astype(np.float64) + momentum * unbiased
    _store(y.reshape(outer, c, inner), out)


@_quiet
def infer(x, outer, c, inner, gamma, beta, running_mean, running_var, eps, y):
    """Inference with running statistics: ``gamma * (x - rm) / sqrt(rv + eps) + beta``."""
    out = (x.reshape(outer, c, inner).astype(np.float64) - _channel(running_mean)) / np.sqrt(
        _channel(running_var) + eps
    )
    if gamma is not None:
        out *= _channel(gamma)
    if beta is not None:
        out += _channel(beta)
    _store(y.reshape(outer, c, inner), out)


@_quiet
def backward(dy, x, outer, c, inner, mean, invstd, gamma, dx, dgamma, dbeta):
    """Gradient of :func:`train` through the batch statistics: writes ``dx`` (and ``dgamma``,
    ``dbeta`` when ``gamma`` is given)."""
    g = dy.reshape(outer, c, inner).astype(np.float64)
    inv = invstd.reshape(1, c, 1)
    xhat = (x.reshape(outer, c, inner).astype(np.float64) - mean.reshape(1, c, 1)) * inv
    n = outer * inner
    sum_g = g.sum(axis=_AXES)
    sum_gx = (g * xhat).sum(axis=_AXES)
    scale = inv if gamma is None else inv * _channel(gamma)
    _store(
        dx.reshape(outer, c, inner),
        scale * (g - sum_g.reshape(1, c, 1) / n - xhat * (sum_gx.reshape(1, c, 1) / n)),
    )
    if gamma is not None:
        dgamma[...] = sum_gx
        dbeta[...] = sum_g


# ---- the reference by layout: the test and benchmark oracle -----------------------------------


def _record(x: np.ndarray, axis: int, out):
    outer, c, inner = view3d(x.shape, axis)
    return outer, c, inner, np.empty(x.shape, x.dtype) if out is None else out


def train_by_axis(x, axis, gamma, beta, running_mean, running_var, momentum, eps, out=None):
    """:func:`train` on a contiguous ``x`` with channel axis ``axis``: ``(y, mean, invstd)``."""
    outer, c, inner, y = _record(x, axis, out)
    mean, invstd = np.empty(c), np.empty(c)
    train(
        x, outer, c, inner, gamma, beta, running_mean, running_var, momentum, eps, y, mean, invstd
    )
    return y, mean, invstd


def infer_by_axis(x, axis, gamma, beta, running_mean, running_var, eps, out=None):
    """:func:`infer` on a contiguous ``x`` with channel axis ``axis``: ``y``."""
    outer, c, inner, y = _record(x, axis, out)
    infer(x, outer, c, inner, gamma, beta, running_mean, running_var, eps, y)
    return y


def backward_by_axis(dy, x, axis, mean, invstd, gamma, out=None):
    """:func:`backward` on contiguous arrays with channel axis ``axis``:
    ``(dx, dgamma, dbeta)``, the last two None without ``gamma``."""
    outer, c, inner, dx = _record(x, axis, out)
    dgamma = dbeta = None
    if gamma is not None:
        dtype = _dtypes.compute_dtype(x.dtype)
        dgamma, dbeta = np.empty(c, dtype), np.empty(c, dtype)
    backward(dy, x, outer, c, inner, mean, invstd, gamma, dx, dgamma, dbeta)
    return dx, dgamma, dbeta
