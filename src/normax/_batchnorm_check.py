"""The one contract of batch normalization: every check, written once.

The compiled front door (``normax._batchnorm_ext``) runs the calls these checks would pass
unchanged; it hands every other call to the functions here, which normalize it (contiguous
copies, dtype casts, axis) or raise. Either way the call becomes one canonical record (the
``(outer, C, inner)`` view, contiguous dtype-matched arrays, C scalars, caller-allocated outputs)
and runs on the active backend through :data:`KERNELS`, whose modules share one signature::

    train(x, outer, C, inner, gamma, beta, running_mean, running_var, momentum, eps,
          y, mean, invstd)
    infer(x, outer, C, inner, gamma, beta, running_mean, running_var, eps, y)
    backward(dy, x, outer, C, inner, mean, invstd, gamma, dx, dgamma, dbeta)

Half-precision storage (float16, and bfloat16 from ``ml_dtypes``) follows PyTorch's mixed rule:
``x``, ``y``, ``dy`` and ``dx`` are in the half type, while gamma, beta, the running statistics,
dgamma and dbeta are float32 (the compute type); mean and invstd of the cache stay float64.
gamma, beta and the read-only statistics of inference are converted to float32; the running
buffers of training are updated in place, so they must already be float32.

Without the compiled extension, these functions are the public API.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _backend, _checks, _dtypes

KERNELS = _backend.KernelTable(
    c="normax._batchnorm_ext", numba="normax._batchnorm_numba", numpy="normax._batchnorm_numpy"
)


class BatchNormCache(NamedTuple):
    """What :func:`batch_norm_backward` needs from a training forward.

    Attributes
    ----------
    x : ndarray
        The input (C-contiguous; a copy if the input was not). Not copied otherwise: changing
        it in place before the backward pass changes the gradient.
    mean, invstd : ndarray
        Batch mean and ``1 / sqrt(var + eps)`` per channel, float64, shape ``(C,)``.
    gamma : ndarray or None
        The scale used in the forward pass (``None``: no affine transform).
    axis : int
        The channel axis, in ``[0, x.ndim)``.
    """

    x: np.ndarray
    mean: np.ndarray
    invstd: np.ndarray
    gamma: np.ndarray | None
    axis: int


# ---- checks ------------------------------------------------------------------------------------


def _input(x, axis, name: str = "x"):
    """``x`` as a C-contiguous float array (half precision allowed) with ndim >= 2, its channel
    axis and its view."""
    x = _checks.float_array(x, name, half=True)
    if x.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dimensions, got shape {x.shape}")
    ax = _checks.normalize_axis(axis, x.ndim)
    return _checks.contiguous(x), ax, _checks.view3d(x.shape, ax)


def _training_batch(x: np.ndarray, outer: int, inner: int) -> None:
    """A non-empty training batch needs two values per channel (an empty one returns empty)."""
    if outer * inner == 1 and x.size > 0:
        raise ValueError(
            f"x has shape {x.shape}: training needs more than 1 value per channel "
            "(the batch variance is undefined)"
        )


def _param(p, name: str, channels: int, dtype: np.dtype):
    """A per-channel parameter of shape (C,) as a contiguous array of ``dtype`` (None passes).

    ``dtype`` is the compute type of x (float32 for half-precision x); ``p`` may be given in any
    float type, half precision included, and is converted to it."""
    if p is None:
        return None
    p = _checks.float_array(p, name, half=True)
    if p.shape != (channels,):
        raise ValueError(
            f"{name} has shape {p.shape}, expected ({channels},) for the {channels} channels of x"
        )
    # np.ascontiguousarray would hand back an unaligned C-contiguous array unchanged.
    return np.require(p, dtype=dtype, requirements=("C", "A"))


def _running(rm, rv, channels: int, dtype: np.dtype) -> None:
    """Running buffers are updated in place: both or neither, writeable, exact shape and dtype."""
    if rm is None and rv is None:
        return
    if rm is None or rv is None:
        given, missing = (
            ("running_mean", "running_var") if rv is None else ("running_var", "running_mean")
        )
        raise ValueError(
            f"running_mean and running_var must be given together: got {given} "
            f"but {missing} is None"
        )
    _checks.check_out(rm, (channels,), dtype, "running_mean")
    _checks.check_out(rv, (channels,), dtype, "running_var")


def _eps(eps, training: bool) -> float:
    """``eps`` as a float: finite and >= 0, and > 0 in training (as PyTorch requires: with 0 a
    constant channel would divide by zero)."""
    try:
        v = float(eps)
    except OverflowError:  # an int beyond the double range: a number, not a finite one
        v = math.inf
    except (TypeError, ValueError):
        raise TypeError(f"eps must be a real number, got {eps!r}") from None
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if training and v == 0.0:
        raise ValueError(f"eps must be positive during training, got {eps!r}")
    return v


def _no_overlap(*arguments: tuple[np.ndarray | None, str], written: tuple[str, ...]) -> None:
    """No ``written`` buffer may share memory with an argument listed before it (the order of
    ``arguments`` fixes which pair, and so which message, is reported first)."""
    for k, (a, name) in enumerate(arguments):
        if a is not None and name in written:
            _checks.no_overlap(a, name, *arguments[:k])


def _output(out, x: np.ndarray) -> np.ndarray:
    if out is None:
        return _backend.empty_output(x.shape, x.dtype)
    return out


def _cache(cache) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, int]:
    """The fields of a BatchNormCache, checked: a cache edited or forged by hand cannot make a
    kernel read outside its arrays."""
    if type(cache) is not BatchNormCache:
        raise TypeError(
            f"cache must be the BatchNormCache returned by batch_norm_train, "
            f"got {type(cache).__name__}"
        )
    x, ax, (_, channels, _) = _input(cache.x, cache.axis, "cache.x")
    mean = _stat(cache.mean, "cache.mean", channels, x.size > 0)
    invstd = _stat(cache.invstd, "cache.invstd", channels, x.size > 0)
    gamma = _param(cache.gamma, "cache.gamma", channels, _dtypes.compute_dtype(x.dtype))
    return x, mean, invstd, gamma, ax


def _stat(a, name: str, channels: int, read: bool) -> np.ndarray:
    """A batch statistic of the cache; made contiguous only if a kernel will ``read`` it."""
    a = _checks.float_array(a, name)
    if a.shape != (channels,):
        raise ValueError(f"{name} has shape {a.shape}, expected ({channels},)")
    return np.require(a, dtype=np.float64, requirements=("C", "A")) if read else a


def _empty_stats(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Statistics of an empty batch: no memory per channel (C may be huge when N is 0)."""
    return np.broadcast_to(np.float64(0.0), (channels,)), np.broadcast_to(
        np.float64(1.0), (channels,)
    )


# ---- the checked path of each public function --------------------------------------------------


def batch_norm_train(
    x, gamma, beta, running_mean=None, running_var=None, *, axis=1, momentum=0.1, eps=1e-5, out=None
):
    """Checked path of :func:`normax.batch_norm_train` (same signature and contract)."""
    x, ax, (outer, channels, inner) = _input(x, axis)
    _training_batch(x, outer, inner)
    dtype = _dtypes.compute_dtype(x.dtype)  # of the per-channel arrays: float32 for half x
    gamma = _param(gamma, "gamma", channels, dtype)
    beta = _param(beta, "beta", channels, dtype)
    _running(running_mean, running_var, channels, dtype)
    momentum = _checks.real_scalar(momentum, "momentum", 0.0, 1.0)
    eps = _eps(eps, training=True)
    if out is not None:
        _checks.check_out(out, x.shape, x.dtype)
    rm, rv = running_mean, running_var
    _no_overlap(
        (x, "x"), (gamma, "gamma"), (beta, "beta"), (rv, "running_var"), (rm, "running_mean"),
        (out, "out"), written=("running_var", "running_mean", "out"),
    )  # fmt: skip
    y = _output(out, x)
    if x.size == 0:  # an empty batch: empty y, running statistics untouched (as PyTorch)
        mean, invstd = _empty_stats(channels)
    else:
        mean, invstd = np.empty(channels), np.empty(channels)
        KERNELS.active().train(
            x, outer, channels, inner, gamma, beta, rm, rv, momentum, eps, y, mean, invstd
        )
    return y, BatchNormCache(x, mean, invstd, gamma, ax)


def batch_norm_infer(x, gamma, beta, running_mean, running_var, *, axis=1, eps=1e-5, out=None):
    """Checked path of :func:`normax.batch_norm_infer` (same signature and contract)."""
    x, _, (outer, channels, inner) = _input(x, axis)
    dtype = _dtypes.compute_dtype(x.dtype)
    gamma = _param(gamma, "gamma", channels, dtype)
    beta = _param(beta, "beta", channels, dtype)
    for name, value in (("running_mean", running_mean), ("running_var", running_var)):
        if value is None:
            raise TypeError(f"{name} must be a numpy array, got None")
    rm = _param(running_mean, "running_mean", channels, dtype)
    rv = _param(running_var, "running_var", channels, dtype)
    eps = _eps(eps, training=False)
    if out is not None:
        _checks.check_out(out, x.shape, x.dtype)
        _checks.no_overlap(out, "out", (x, "x"), (gamma, "gamma"), (beta, "beta"),
                           (rm, "running_mean"), (rv, "running_var"))
    y = _output(out, x)
    if x.size:
        KERNELS.active().infer(x, outer, channels, inner, gamma, beta, rm, rv, eps, y)
    return y


def batch_norm_backward(dy, cache, *, out=None):
    """Checked path of :func:`normax.batch_norm_backward` (same signature and contract)."""
    x, mean, invstd, gamma, ax = _cache(cache)
    dy = _checks.float_array(dy, "dy", half=True)
    if dy.dtype != x.dtype:
        raise TypeError(f"dy has dtype {dy.dtype}, expected {x.dtype} (the dtype of x)")
    if dy.shape != x.shape:
        raise ValueError(f"dy has shape {dy.shape}, expected {x.shape} (the shape of x)")
    dy = _checks.contiguous(dy)
    if out is not None:
        _checks.check_out(out, x.shape, x.dtype)
        _checks.no_overlap(out, "out", (x, "x"), (dy, "dy"), (gamma, "gamma"),
                           (mean, "cache.mean"), (invstd, "cache.invstd"))
    outer, channels, inner = _checks.view3d(x.shape, ax)
    dx = _output(out, x)
    dgamma = dbeta = None
    if gamma is not None:
        dtype = _dtypes.compute_dtype(x.dtype)
        dgamma, dbeta = np.zeros(channels, dtype), np.zeros(channels, dtype)
    if x.size:
        KERNELS.active().backward(
            dy, x, outer, channels, inner, mean, invstd, gamma, dx, dgamma, dbeta
        )
    return dx, dgamma, dbeta
