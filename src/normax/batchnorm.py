"""Batch normalization: training forward, inference, and the exact backward.

Every public function checks its arguments here, once, then calls the active backend (C, Numba
or the NumPy reference, see :mod:`normax._backend`), so all backends raise the same errors and
nothing is written when a check fails. The common case (C-contiguous float arrays, float
scalars) takes a short path of identity tests: a (32, 64) training step costs a few
microseconds from Python, most of it in the kernel call.

Layouts are chosen with ``axis``, the channel axis; statistics run over all other axes:

==============================  ======  ======================
layout                          axis    kernel view
==============================  ======  ======================
(N, C)                          1       (N, C, 1)
(N, C, H, W)                    1       (N, C, H*W)
(N, H, W, C)                    -1      (N*H*W, C, 1)
(C, m) (examples are columns)   0       (1, C, m)
==============================  ======  ======================
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _backend, _checks
from . import _batchnorm_numpy as _ref

__all__ = ["BatchNormCache", "batch_norm_backward", "batch_norm_infer", "batch_norm_train"]

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


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


_new_cache = tuple.__new__  # skips the NamedTuple's Python-level __new__ on the hot path


def _numba(name: str):
    """A backend entry that imports the Numba kernels on first use."""

    def call(*args):
        from . import _batchnorm_numba

        return getattr(_batchnorm_numba, name)(*args)

    call.__name__ = name
    return call


_core = _backend._core
_TRAIN = {"numba": _numba("train"), "numpy": _ref.train}
_INFER = {"numba": _numba("infer"), "numpy": _ref.infer}
_BACKWARD = {"numba": _numba("backward"), "numpy": _ref.backward}
if _core is not None:
    _TRAIN["c"] = _core.bn_train
    _INFER["c"] = _core.bn_infer
    _BACKWARD["c"] = _core.bn_backward


# ---- checks ------------------------------------------------------------------------------------


def _input(x, axis, name: str = "x") -> tuple[np.ndarray, int, int]:
    """``x`` as a C-contiguous float array with ndim >= 2, its channel axis and channel count."""
    if type(x) is not np.ndarray or (x.dtype is not _F32 and x.dtype is not _F64):
        x = _checks.float_array(x, name)
    nd = x.ndim
    if nd < 2:
        raise ValueError(f"{name} must have at least 2 dimensions, got shape {x.shape}")
    if type(axis) is not int or not -nd <= axis < nd:
        axis = _checks.normalize_axis(axis, nd)
    elif axis < 0:
        axis += nd
    if not x.flags.c_contiguous or not x.dtype.isnative or not x.flags.aligned:
        x = _checks.contiguous(x)
    return x, axis, x.shape[axis]


def _batch(x: np.ndarray, axis: int, channels: int, training: bool) -> None:
    """Refuse an empty input, and in training a single value per channel."""
    if channels == 0:
        raise ValueError(f"x has shape {x.shape}: no channels along axis {axis}")
    n = x.size // channels
    if n == 0:
        raise ValueError(f"x has shape {x.shape}: the batch is empty (0 values per channel)")
    if n == 1 and training:
        raise ValueError(
            f"x has shape {x.shape}: training needs more than 1 value per channel "
            "(the batch variance is undefined)"
        )


def _param(p, name: str, channels: int, dtype: np.dtype):
    """A per-channel parameter of shape (C,) as a contiguous array of ``dtype`` (None passes)."""
    if p is None:
        return None
    if (
        type(p) is np.ndarray
        and p.dtype is dtype
        and p.shape == (channels,)
        and p.flags.c_contiguous
        and p.flags.aligned
    ):
        return p
    p = _checks.float_array(p, name)
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
    for buf, name in ((rm, "running_mean"), (rv, "running_var")):
        if (
            type(buf) is not np.ndarray
            or buf.dtype is not dtype
            or buf.shape != (channels,)
            or not (flags := buf.flags).writeable
            or not flags.c_contiguous
            or not flags.aligned
        ):
            _checks.check_out(buf, (channels,), dtype, name)


def _no_overlap(*pairs) -> None:
    """The last check of every call: no buffer that is written may share memory with another
    argument. The C binding runs the same test, in the same order and with the same message, at
    a fraction of the cost, so callers do it here only for the other backends."""
    for a, a_name, b, b_name in pairs:
        if a is not None and b is not None and np.may_share_memory(a, b):
            raise ValueError(f"{a_name} overlaps {b_name}; pass a separate array")


def _scalars(momentum, eps) -> tuple[float, float]:
    if type(momentum) is not float or not 0.0 <= momentum <= 1.0:
        momentum = _checks.real_scalar(momentum, "momentum", 0.0, 1.0)
    return momentum, _eps(eps)


def _eps(eps) -> float:
    if type(eps) is float and 0.0 <= eps < math.inf:
        return eps
    try:
        v = float(eps)
    except OverflowError:  # an int beyond the double range: a number, not a finite one
        v = math.inf
    except (TypeError, ValueError):
        raise TypeError(f"eps must be a real number, got {eps!r}") from None
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return v


# ---- public API --------------------------------------------------------------------------------


def batch_norm_train(
    x, gamma, beta, running_mean=None, running_var=None, *, axis=1, momentum=0.1, eps=1e-5, out=None
):
    """Batch-normalize ``x`` with its own batch statistics (training mode).

    ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` with the biased batch variance over all
    axes but ``axis``. Running statistics, when given, are updated in place with the unbiased
    variance: ``running = (1 - momentum) * running + momentum * batch`` (PyTorch's convention;
    Keras' ``momentum=0.99`` is ``momentum=0.01`` here).

    Parameters
    ----------
    x : ndarray of float32 or float64, ndim >= 2
        Input; ``axis`` is its channel (feature) axis.
    gamma, beta : ndarray of shape (C,) or None
        Scale and shift; None means no affine transform. Cast to the dtype of ``x``.
    running_mean, running_var : ndarray of shape (C,) and the dtype of ``x``, optional
        Writeable buffers updated in place; give both or neither.
    axis : int
        Channel axis: 1 for (N, C) and (N, C, H, W), -1 for (N, H, W, C), 0 for (C, m).
    momentum : float in [0, 1]
        Weight of the new batch statistic in the running average.
    eps : float >= 0
        Added to the variance before the square root.
    out : ndarray, optional
        Receives ``y``: C-contiguous, shape and dtype of ``x``, not overlapping any input.

    Returns
    -------
    y : ndarray
        Normalized output, shape and dtype of ``x``.
    cache : BatchNormCache
        What :func:`batch_norm_backward` needs.

    Examples
    --------
    >>> import numpy as np, normax
    >>> x = np.random.default_rng(0).normal(3.0, 2.0, size=(64, 8)).astype(np.float32)
    >>> rm, rv = np.zeros(8, np.float32), np.ones(8, np.float32)
    >>> y, cache = normax.batch_norm_train(x, None, None, rm, rv, momentum=0.1)
    >>> bool(abs(y.mean(axis=0)).max() < 1e-5), bool(abs(y.std(axis=0) - 1).max() < 1e-3)
    (True, True)
    """
    x, ax, channels = _input(x, axis)
    if channels == 0 or x.size < 2 * channels:
        _batch(x, ax, channels, True)
    dtype = x.dtype
    gamma = _param(gamma, "gamma", channels, dtype)
    beta = _param(beta, "beta", channels, dtype)
    _running(running_mean, running_var, channels, dtype)
    momentum, eps = _scalars(momentum, eps)
    if out is not None:
        _checks.check_out(out, x.shape, dtype)
    if (running_mean is not None or out is not None) and _backend._active != "c":
        _no_overlap(
            (running_mean, "running_mean", x, "x"),
            (running_var, "running_var", x, "x"),
            (running_mean, "running_mean", running_var, "running_var"),
            (out, "out", x, "x"),
            (out, "out", running_mean, "running_mean"),
            (out, "out", running_var, "running_var"),
            (out, "out", gamma, "gamma"),
            (out, "out", beta, "beta"),
        )
    y, mean, invstd = _TRAIN[_backend._active](
        x, ax, gamma, beta, running_mean, running_var, momentum, eps, out
    )
    return y, _new_cache(BatchNormCache, (x, mean, invstd, gamma, ax))


def batch_norm_infer(x, gamma, beta, running_mean, running_var, *, axis=1, eps=1e-5, out=None):
    """Batch-normalize ``x`` with running statistics (inference mode).

    ``y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta``, per channel.

    Parameters
    ----------
    x : ndarray of float32 or float64, ndim >= 2
        Input; ``axis`` is its channel axis.
    gamma, beta : ndarray of shape (C,) or None
        Scale and shift; None means no affine transform.
    running_mean, running_var : ndarray of shape (C,)
        Statistics to normalize with (read only; cast to the dtype of ``x``).
    axis : int
        Channel axis (see :func:`batch_norm_train`).
    eps : float >= 0
        Added to the variance before the square root.
    out : ndarray, optional
        Receives ``y``: C-contiguous, shape and dtype of ``x``, not overlapping ``x``.

    Returns
    -------
    ndarray
        Shape and dtype of ``x``.

    Examples
    --------
    >>> import numpy as np, normax
    >>> x = np.array([[1.0, 2.0], [3.0, 6.0]])
    >>> normax.batch_norm_infer(x, None, None, np.array([1.0, 2.0]), np.array([4.0, 16.0]),
    ...                         eps=0.0)
    array([[0., 0.],
           [1., 1.]])
    """
    x, ax, channels = _input(x, axis)
    _batch(x, ax, channels, False)
    dtype = x.dtype
    gamma = _param(gamma, "gamma", channels, dtype)
    beta = _param(beta, "beta", channels, dtype)
    for name, value in (("running_mean", running_mean), ("running_var", running_var)):
        if value is None:
            raise TypeError(f"{name} must be a numpy array, got None")
    running_mean = _param(running_mean, "running_mean", channels, dtype)
    running_var = _param(running_var, "running_var", channels, dtype)
    eps = _eps(eps)
    if out is not None:
        _checks.check_out(out, x.shape, dtype)
        if _backend._active != "c":
            _no_overlap(
                (out, "out", x, "x"),
                (out, "out", gamma, "gamma"),
                (out, "out", beta, "beta"),
                (out, "out", running_mean, "running_mean"),
                (out, "out", running_var, "running_var"),
            )
    return _INFER[_backend._active](x, ax, gamma, beta, running_mean, running_var, eps, out)


def batch_norm_backward(dy, cache, *, out=None):
    """Gradients of :func:`batch_norm_train` with respect to ``x``, ``gamma`` and ``beta``.

    Exact through the batch statistics:
    ``dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))``,
    ``dgamma = sum(dy * xhat)``, ``dbeta = sum(dy)`` over all axes but the channel axis.

    Parameters
    ----------
    dy : ndarray
        Gradient of the loss with respect to ``y``; shape and dtype of the forward input.
    cache : BatchNormCache
        Returned by :func:`batch_norm_train`.
    out : ndarray, optional
        Receives ``dx``: C-contiguous, shape and dtype of ``x``, not overlapping ``dy`` or ``x``.

    Returns
    -------
    dx : ndarray
        Shape and dtype of ``x``.
    dgamma, dbeta : ndarray of shape (C,) or None
        None when the forward pass ran without ``gamma``.

    Examples
    --------
    >>> import numpy as np, normax
    >>> x = np.random.default_rng(0).normal(size=(16, 3))
    >>> y, cache = normax.batch_norm_train(x, np.ones(3), np.zeros(3))
    >>> dx, dgamma, dbeta = normax.batch_norm_backward(np.ones_like(y), cache)
    >>> bool(np.allclose(dx, 0.0)), dbeta.tolist()
    (True, [16.0, 16.0, 16.0])
    """
    if type(cache) is not BatchNormCache:
        raise TypeError(
            f"cache must be the BatchNormCache returned by batch_norm_train, "
            f"got {type(cache).__name__}"
        )
    x = cache.x
    if type(dy) is not np.ndarray or dy.dtype is not x.dtype:
        dy = _checks.float_array(dy, "dy")
        if dy.dtype != x.dtype:
            raise TypeError(f"dy has dtype {dy.dtype}, expected {x.dtype} (the dtype of x)")
    if dy.shape != x.shape:
        raise ValueError(f"dy has shape {dy.shape}, expected {x.shape} (the shape of x)")
    if not dy.flags.c_contiguous or not dy.dtype.isnative or not dy.flags.aligned:
        dy = _checks.contiguous(dy)
    if out is not None:
        _checks.check_out(out, x.shape, x.dtype)
        if _backend._active != "c":
            _no_overlap((out, "out", x, "x"), (out, "out", dy, "dy"),
                        (out, "out", cache.gamma, "gamma"))
    return _BACKWARD[_backend._active](
        dy, x, cache.axis, cache.mean, cache.invstd, cache.gamma, out
    )
