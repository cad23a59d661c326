"""Softmax, log-softmax and fused softmax cross-entropy.

Every function checks its arguments here, once, then hands C-contiguous arrays viewed as
``(outer, classes, inner)`` to the active backend (C, Numba or the NumPy reference), so that all
backends raise the same errors and give the same results.

Numerics: every reduction is max-shifted and written as ``1 + s``, where ``s`` sums
``exp(z_j - max)`` over all entries but one maximum. Log-softmax is ``(z - max) - log1p(s)`` and
the loss of an integer label is ``log1p(s) - (z[label] - max)``: logits up to 1e30 (float32) or
1e300 (float64) give finite, exact results, and a class that dominates by 100 keeps its loss of
about ``exp(-100)`` in float64. A row holding NaN or +inf gives NaN for that row only.
"""

from __future__ import annotations

import operator

import numpy as np

from . import _backend, _outpool
from ._checks import (
    FLOAT_DTYPES,
    check_out,
    contiguous,
    float_array,
    no_overlap,
    normalize_axis,
    real_scalar,
    view3d,
)

__all__ = [
    "log_softmax",
    "log_softmax_backward",
    "softmax",
    "softmax_backward",
    "softmax_cross_entropy",
]

_REDUCTIONS = {"mean": 0, "sum": 1, "none": 2}
_LABEL_DTYPES = (np.dtype(np.int64), np.dtype(np.int32))
_INT64 = np.iinfo(np.int64)


def _numba():
    from . import _softmax_numba

    return _softmax_numba


def _numpy():
    from . import _softmax_numpy

    return _softmax_numpy


def _forward_numba(*args):
    return _numba().softmax(*args)


def _forward_numpy(*args):
    return _numpy().softmax(*args)


def _backward_numba(*args):
    return _numba().softmax_backward(*args)


def _backward_numpy(*args):
    return _numpy().softmax_backward(*args)


def _xent_numba(*args):
    return _xent_python(_numba().xent, *args)


def _xent_numpy(*args):
    return _xent_python(_numpy().xent, *args)


_core = _backend._core
_xent_fast = None
_FORWARD = {"numba": _forward_numba, "numpy": _forward_numpy}
_BACKWARD = {"numba": _backward_numba, "numpy": _backward_numpy}
_XENT = {"numba": _xent_numba, "numpy": _xent_numpy}
if _core is not None:
    _FORWARD["c"], _BACKWARD["c"], _XENT["c"] = _core.softmax, _core.softmax_backward, _core.xent
    # Common calls skip the Python checks (it accepts only what they would pass unchanged).
    _xent_fast = _core.xent_fast


def _logits(z, axis, name: str = "z"):
    """``z`` as a float array, the normalized axis and the (outer, classes, inner) view."""
    z = float_array(z, name)
    ax = normalize_axis(axis, z.ndim)
    if z.size == 0:
        raise ValueError(f"{name} is empty (shape {z.shape})")
    return z, ax, view3d(z.shape, ax)


def _output(out, like: np.ndarray, *inputs) -> np.ndarray:
    if out is None:
        return _outpool.empty_like(like)  # a large one reuses a freed output's pages
    check_out(out, like.shape, like.dtype)
    no_overlap(out, "out", *inputs)
    return out


def softmax(z, axis=-1, *, out=None):
    """Softmax of ``z`` along ``axis``: ``exp(z - max) / sum(exp(z - max))``.

    Parameters
    ----------
    z : ndarray of float32 or float64
        Logits; ``axis`` is the class axis.
    axis : int, default -1
        Class axis: -1 for (N, C), 1 for (N, C, H, W), 0 for the (C, m) column layout.
    out : ndarray, optional
        C-contiguous array of z's shape and dtype that receives the result; it must not overlap z.

    Returns
    -------
    ndarray
        Probabilities of z's dtype and shape, summing to 1 along ``axis``.

    Examples
    --------
    >>> import numpy as np, normax
    >>> normax.softmax(np.array([[0.0, np.log(3.0)]])).round(3)
    array([[0.25, 0.75]])
    """
    return _forward(z, axis, out, False)


def log_softmax(z, axis=-1, *, out=None):
    """Log-softmax of ``z`` along ``axis``, computed as ``(z - max) - log1p(s)``.

    Same parameters as :func:`softmax`. Exact for ties of huge logits (``[3e29, 3e29]`` in float32
    gives ``-log 2`` twice) and for a dominating class (its value is ``-s``, not 0).

    Examples
    --------
    >>> import numpy as np, normax
    >>> normax.log_softmax(np.array([1e30, 1e30], dtype=np.float32)).round(4)
    array([-0.6931, -0.6931], dtype=float32)
    """
    return _forward(z, axis, out, True)


def _forward(z, axis, out, log):
    z, _, (outer, c, inner) = _logits(z, axis)
    out = _output(out, z, (z, "z"))
    _backend.impl(_FORWARD)(contiguous(z), out, outer, c, inner, log)
    return out


def softmax_backward(dp, p, axis=-1, *, out=None):
    """Gradient with respect to the logits given ``dp = dL/dp`` and ``p = softmax(z)``.

    Returns ``p * (dp - sum(dp * p, axis))`` (float64 sums), of p's dtype and shape.

    Examples
    --------
    >>> import numpy as np, normax
    >>> p = normax.softmax(np.array([[1.0, 2.0, 3.0]]))
    >>> bool(abs(normax.softmax_backward(np.ones_like(p), p)).max() < 1e-15)  # sum(p) = 1
    True
    """
    return _backward(dp, p, axis, out, False, ("dp", "p"))


def log_softmax_backward(dlp, lp, axis=-1, *, out=None):
    """Gradient with respect to the logits given ``dlp = dL/dlp`` and ``lp = log_softmax(z)``.

    Returns ``dlp - exp(lp) * sum(dlp, axis)`` (float64 sums), of lp's dtype and shape.

    Examples
    --------
    >>> import numpy as np, normax
    >>> lp = normax.log_softmax(np.array([[0.0, 0.0]]))
    >>> normax.log_softmax_backward(np.array([[1.0, 0.0]]), lp)
    array([[ 0.5, -0.5]])
    """
    return _backward(dlp, lp, axis, out, True, ("dlp", "lp"))


def _backward(g, y, axis, out, log, names):
    y, _, (outer, c, inner) = _logits(y, axis, names[1])
    g = float_array(g, names[0])
    if g.shape != y.shape:
        raise ValueError(f"{names[0]} has shape {g.shape}, expected {names[1]}'s shape {y.shape}")
    if g.dtype != y.dtype:
        raise TypeError(f"{names[0]} has dtype {g.dtype}, expected {names[1]}'s dtype {y.dtype}")
    out = _output(out, y, (g, names[0]), (y, names[1]))
    _backend.impl(_BACKWARD)(contiguous(g), contiguous(y), out, outer, c, inner, log)
    return out


def softmax_cross_entropy(
    z,
    target,
    *,
    axis=-1,
    reduction="mean",
    weight=None,
    ignore_index=None,
    label_smoothing=0.0,
    out=None,
):
    """Softmax cross-entropy and its gradient with respect to the logits, in one pass.

    Semantics equal ``torch.nn.functional.cross_entropy`` with the same arguments, except that
    when every target is ignored, ``"mean"`` gives 0.0 and a zero gradient instead of NaN.

    Parameters
    ----------
    z : ndarray of float32 or float64
        Logits; ``axis`` is the class axis (C classes).
    target : ndarray
        Either integer class indices (any integer dtype) of z's shape without ``axis``, or float
        probabilities of z's shape (soft labels, e.g. a one-hot matrix).
    axis : int, default -1
        Class axis: -1 for (N, C), 1 for (N, C, H, W), 0 for the (C, m) column layout.
    reduction : {"mean", "sum", "none"}
        ``"mean"`` divides the summed loss by the summed weight of the non-ignored integer targets
        (by the number of examples for probability targets).
    weight : array_like of C non-negative finite numbers, optional
        Per-class weights.
    ignore_index : int, optional
        Integer targets equal to it contribute no loss and no gradient.
    label_smoothing : float in [0, 1]
        Mixes the target with the uniform distribution: ``(1 - eps) * target + eps / C``.
    out : ndarray, optional
        C-contiguous array of z's shape and dtype that receives the gradient.

    Returns
    -------
    loss : float or ndarray
        A float64 scalar for "mean" and "sum"; for "none" the per-example losses, an array of
        z's dtype and shape without ``axis``.
    dz : ndarray
        Gradient of the returned loss (of the sum of the losses for "none"), z's dtype and shape.

    Examples
    --------
    The course-notes layout: classes are rows, the m examples are columns, Y is one-hot.

    >>> import numpy as np, normax
    >>> Z = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]])      # (C, m) = (3, 2)
    >>> Y = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    >>> loss, dZ = normax.softmax_cross_entropy(Z, Y, axis=0)
    >>> round(loss, 6), dZ.shape
    (0.239545, (3, 2))
    >>> loss2, _ = normax.softmax_cross_entropy(Z, np.array([0, 1]), axis=0)
    >>> bool(np.isclose(loss, loss2))
    True
    """
    if _backend._active == "c":
        res = _xent_fast(z, target, axis, reduction, weight, ignore_index, label_smoothing, out)
        if res is not NotImplemented:
            return res
    return _xent_checked(z, target, axis, reduction, weight, ignore_index, label_smoothing, out)


def _xent_checked(z, target, axis, reduction, weight, ignore_index, label_smoothing, out):
    """Every check, then the active backend."""
    z, ax, (outer, c, inner) = _logits(z, axis)
    red = _REDUCTIONS.get(reduction) if isinstance(reduction, str) else None
    if red is None:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    target, labels = _target(target, z, ax)
    if type(label_smoothing) is float and label_smoothing == 0.0:
        eps = 0.0
    else:
        eps = real_scalar(label_smoothing, "label_smoothing", 0.0, 1.0)
    w = None if weight is None else _weight(weight, c)
    ign = None if ignore_index is None else _ignore_index(ignore_index, labels)
    if out is not None:
        _output(out, z, (z, "z"), (target, "target"), (w, "weight"))
    if labels and target.dtype not in _LABEL_DTYPES:
        # Validate in the caller's dtype (a uint64 label beyond int64 keeps its value in the
        # message), then hand the kernels int64.
        _raise_bad_label(target, c, ign)
        target = target.astype(np.int64)
    loss = None
    if red == 2:
        loss = np.empty(target.shape if labels else z.shape[:ax] + z.shape[ax + 1 :], z.dtype)
    res = _backend.impl(_XENT)(
        contiguous(z), contiguous(target), w, out, loss,
        outer, c, inner, ign, eps, red,
    )  # fmt: skip
    if type(res) is int:
        raise _label_error(target, res, c)
    return res


def _target(target, z: np.ndarray, ax: int):
    """``(target, is_labels)``: integer class indices or probabilities of z's dtype."""
    if not isinstance(target, np.ndarray):
        target = np.asarray(target)
    kind = target.dtype.kind
    if kind in "iu":
        want = z.shape[:ax] + z.shape[ax + 1 :]
        if target.shape != want:
            raise ValueError(
                f"target has shape {target.shape}; class indices for z of shape {z.shape} "
                f"with axis={ax} need shape {want}"
            )
        return target, True
    if kind == "f" and target.dtype in FLOAT_DTYPES:
        if target.shape != z.shape:
            raise ValueError(
                f"target has shape {target.shape}; probability targets need z's shape {z.shape}"
            )
        return target.astype(z.dtype, copy=False), False
    raise TypeError(
        f"target has unsupported dtype {target.dtype}; expected integer class indices or "
        "float32/float64 probabilities"
    )


def _weight(weight, c: int) -> np.ndarray:
    w = np.asarray(weight)
    if w.dtype.kind not in "iuf":
        raise TypeError(f"weight has unsupported dtype {w.dtype}; expected real numbers")
    if w.shape != (c,):
        raise ValueError(f"weight has shape {w.shape}, expected ({c},) for {c} classes")
    w = np.ascontiguousarray(w, dtype=np.float64)
    bad = np.flatnonzero(~(np.isfinite(w) & (w >= 0)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"weight must be finite and non-negative, got {float(w[i])} at index {i}")
    return w


def _ignore_index(ignore_index, labels: bool) -> int:
    try:
        ign = operator.index(ignore_index)
    except TypeError:
        raise TypeError(
            f"ignore_index must be an int or None, got {type(ignore_index).__name__}"
        ) from None
    if not labels:
        raise ValueError(
            f"ignore_index={ign} applies only to integer class indices, not probability targets"
        )
    if not _INT64.min <= ign <= _INT64.max:
        raise ValueError(f"ignore_index {ign} does not fit in int64")
    return ign


def first_bad_label(target: np.ndarray, c: int, ign) -> int:
    """Flat index of the first label outside [0, c) that is not ``ign``, or -1.

    A min/max check clears the common case in two vectorized reductions; only a failing array
    is searched for the position.
    """
    if 0 <= target.min() and target.max() < c:
        return -1
    flat = target.ravel()
    bad = (flat < 0) | (flat >= c)
    if ign is not None:
        bad &= flat != ign
    idx = np.flatnonzero(bad)
    return int(idx[0]) if idx.size else -1


def _label_error(target: np.ndarray, flat: int, c: int) -> ValueError:
    where = np.unravel_index(flat, target.shape)
    where = int(where[0]) if len(where) == 1 else tuple(int(i) for i in where)
    value = int(target.ravel()[flat])
    return ValueError(f"label {value} at index {where} is out of range for {c} classes")


def _raise_bad_label(target: np.ndarray, c: int, ign) -> None:
    bad = first_bad_label(target, c, ign)
    if bad >= 0:
        raise _label_error(target, bad, c)


def _xent_python(kernel, z, target, w, out, loss, outer, c, inner, ign, eps, red):
    """The C binding's contract for the Numba and NumPy kernels: validate labels, pick the
    gradient scale, run ``kernel``, reduce. Returns ``(loss, dz)`` or the bad label's index."""
    labels = target.dtype.kind in "iu"
    n = outer * inner
    wsum = float(n)
    if labels:
        bad = first_bad_label(target, c, ign)
        if bad >= 0:
            return bad
        t = target.reshape(outer, inner).astype(np.int64, copy=False)
        kept = t if ign is None else t[t != ign]
        wsum = float(kept.size if w is None else w[kept].sum())
    else:
        t = target.reshape(outer, c, inner)
    scale = 1.0 if red != 0 else (1.0 / wsum if wsum > 0 else 0.0)
    dz = _outpool.empty_like(z) if out is None else out
    w64 = np.ones(c) if w is None else w
    per = kernel(z.reshape(outer, c, inner), t, w64, ign, eps, scale, dz.reshape(outer, c, inner))
    with np.errstate(over="ignore"):  # losses near the double limit sum to inf, as in C
        total = float(per.sum())
    if red == 2:
        loss[...] = per.reshape(loss.shape)
        return loss, dz
    return (total * scale if scale else 0.0) if red == 0 else total, dz
