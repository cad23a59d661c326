"""Pure-NumPy batch normalization: the reference every other backend is tested against.

Float64 accumulation and a two-pass variance, written as the textbook formulas. The functions
take arguments already checked by :mod:`normax.batchnorm` and share their signatures with the C
binding and the Numba backend.
"""

from __future__ import annotations

import numpy as np


def _layout(x: np.ndarray, axis: int) -> tuple[tuple[int, ...], list[int], int]:
    """Axes to reduce, the broadcast shape of a per-channel vector, and the batch count."""
    axes = tuple(i for i in range(x.ndim) if i != axis)
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    return axes, shape, x.size // max(x.shape[axis], 1)


# NaN or Inf in x gives NaN in its channel, and eps=0 with a constant channel gives inf/NaN, as
# in the C and Numba kernels: by design, so NumPy's floating-point warnings are silenced.
_quiet = np.errstate(invalid="ignore", divide="ignore", over="ignore")


def _store(value: np.ndarray, out: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    if out is None:
        return value.astype(dtype)
    out[...] = value
    return out


@_quiet
def train(x, axis, gamma, beta, running_mean, running_var, momentum, eps, out):
    """Training forward; returns ``(y, mean, invstd)`` with float64 statistics."""
    axes, shape, n = _layout(x, axis)
    xd = x.astype(np.float64)
    mean = xd.mean(axis=axes)
    centered = xd - mean.reshape(shape)
    var = np.mean(centered * centered, axis=axes)
    invstd = 1.0 / np.sqrt(var + eps)
    y = centered * invstd.reshape(shape)
    if gamma is not None:
        y *= gamma.astype(np.float64).reshape(shape)
    if beta is not None:
        y += beta.astype(np.float64).reshape(shape)
    if running_mean is not None:
        running_mean[...] = (1.0 - momentum) * running_mean.astype(np.float64) + momentum * mean
        unbiased = var * (n / (n - 1))
        running_var[...] = (1.0 - momentum) * running_var.astype(np.float64) + momentum * unbiased
    return _store(y, out, x.dtype), mean, invstd


@_quiet
def infer(x, axis, gamma, beta, running_mean, running_var, eps, out):
    """Inference with running statistics: ``gamma * (x - rm) / sqrt(rv + eps) + beta``."""
    _, shape, _ = _layout(x, axis)
    rm = running_mean.astype(np.float64).reshape(shape)
    rv = running_var.astype(np.float64).reshape(shape)
    y = (x.astype(np.float64) - rm) / np.sqrt(rv + eps)
    if gamma is not None:
        y *= gamma.astype(np.float64).reshape(shape)
    if beta is not None:
        y += beta.astype(np.float64).reshape(shape)
    return _store(y, out, x.dtype)


@_quiet
def backward(dy, x, axis, mean, invstd, gamma, out):
    """Gradient of :func:`train` through the batch statistics: ``(dx, dgamma, dbeta)``."""
    axes, shape, n = _layout(x, axis)
    g = dy.astype(np.float64)
    inv = invstd.reshape(shape)
    xhat = (x.astype(np.float64) - mean.reshape(shape)) * inv
    dbeta = g.sum(axis=axes)
    dgamma = (g * xhat).sum(axis=axes)
    scale = inv if gamma is None else inv * gamma.astype(np.float64).reshape(shape)
    dx = scale * (g - dbeta.reshape(shape) / n - xhat * (dgamma.reshape(shape) / n))
    dx = _store(dx, out, x.dtype)
    if gamma is None:
        return dx, None, None
    return dx, dgamma.astype(x.dtype), dbeta.astype(x.dtype)
