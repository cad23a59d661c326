"""The one contract of softmax, log-softmax and softmax cross-entropy: every check, written once.

The compiled front door (``normax._softmax_ext``) runs the calls these checks would pass
unchanged and hands every other call to the functions here, which normalize it or raise. Either
way the call becomes one canonical record and runs on the active backend through
:data:`KERNELS`, whose modules share one signature::

    forward(z, out, outer, C, inner, log)
    backward(g, y, out, outer, C, inner, log)
    xent(z, outer, C, inner, target, weight, ignore, eps, scale, dz, loss) -> summed loss

``target`` holds int32/int64 labels already checked to lie in ``[0, C)`` or equal ``ignore``,
or probabilities of z's dtype; ``scale`` is the gradient factor (1 / summed weight for "mean");
``loss`` receives the per-example losses (or is None). Without the compiled extension, these
functions are the public API.

float16 and bfloat16 logits are storage types: every backend computes in float32 (sums in
float64) and rounds ``out`` / ``dz`` / the per-example losses once to z's dtype; probability
targets are converted to z's dtype. The reduced loss ("mean", "sum") is a Python float for every
dtype: it is accumulated in float64, and rounding it to half precision would only lose digits
that a training loop averaging losses over batches wants to keep.
"""

from __future__ import annotations

import math
import operator

import numpy as np

from . import _backend, _dtypes
from ._checks import (
    check_out,
    contiguous,
    float_array,
    no_overlap,
    normalize_axis,
    real_scalar,
    view3d,
)

KERNELS = _backend.KernelTable(
    c="normax._softmax_ext", numba="normax._softmax_numba", numpy="normax._softmax_numpy"
)

REDUCTIONS = {"mean": 0, "sum": 1, "none": 2}
_LABEL_DTYPES = (np.dtype(np.int64), np.dtype(np.int32))
_INT64 = np.iinfo(np.int64)
_DOUBLE_MAX = float(np.finfo(np.float64).max)


def _logits(z, axis, name: str = "z"):
    """``z`` as a contiguous float array, the normalized axis and the (outer, C, inner) view.

    A 0-d array is one example of one class (softmax 1.0, log-softmax 0.0, as PyTorch).
    """
    z = float_array(z, name, half=True)
    if z.ndim == 0:
        normalize_axis(axis, 1)
        return contiguous(z), 0, (1, 1, 1)
    ax = normalize_axis(axis, z.ndim)
    return contiguous(z), ax, view3d(z.shape, ax)


def _output(out, like: np.ndarray, *inputs) -> np.ndarray:
    if out is None:
        return _backend.empty_output(like.shape, like.dtype)
    check_out(out, like.shape, like.dtype)
    no_overlap(out, "out", *inputs)
    return out


def forward(z, axis, out, log: bool):
    """Checked path of :func:`normax.softmax` (``log`` False) and :func:`normax.log_softmax`."""
    z, _, (outer, c, inner) = _logits(z, axis)
    out = _output(out, z, (z, "z"))
    if z.size:  # an empty array gives an empty result, as PyTorch
        KERNELS.active().forward(z, out, outer, c, inner, log)
    return out


def backward(g, y, axis, out, log: bool, names: tuple[str, str]):
    """Checked path of :func:`normax.softmax_backward` and :func:`normax.log_softmax_backward`."""
    y, _, (outer, c, inner) = _logits(y, axis, names[1])
    g = float_array(g, names[0], half=True)
    if g.shape != y.shape:
        raise ValueError(f"{names[0]} has shape {g.shape}, expected {names[1]}'s shape {y.shape}")
    if g.dtype != y.dtype:
        raise TypeError(f"{names[0]} has dtype {g.dtype}, expected {names[1]}'s dtype {y.dtype}")
    g = contiguous(g)
    out = _output(out, y, (g, names[0]), (y, names[1]))
    if y.size:
        KERNELS.active().backward(g, y, out, outer, c, inner, log)
    return out


def softmax(z, axis=-1, *, out=None):
    """Checked path of :func:`normax.softmax`."""
    return forward(z, axis, out, False)


def log_softmax(z, axis=-1, *, out=None):
    """Checked path of :func:`normax.log_softmax`."""
    return forward(z, axis, out, True)


def softmax_backward(dp, p, axis=-1, *, out=None):
    """Checked path of :func:`normax.softmax_backward`."""
    return backward(dp, p, axis, out, False, ("dp", "p"))


def log_softmax_backward(dlp, lp, axis=-1, *, out=None):
    """Checked path of :func:`normax.log_softmax_backward`."""
    return backward(dlp, lp, axis, out, True, ("dlp", "lp"))


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
    """Checked path of :func:`normax.softmax_cross_entropy` (same signature and contract)."""
    z = float_array(z, "z", half=True)
    if z.ndim == 0:
        raise ValueError("z must have at least 1 dimension (the class axis), got shape ()")
    z, ax, (outer, c, inner) = _logits(z, axis)
    red = REDUCTIONS.get(reduction) if isinstance(reduction, str) else None
    if red is None:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    target, labels = _target(target, z, ax)
    eps = real_scalar(label_smoothing, "label_smoothing", 0.0, 1.0)
    w = None if weight is None else _weight(weight, c)
    ign = None if ignore_index is None else _ignore_index(ignore_index, labels)
    if out is not None:
        _output(out, z, (z, "z"), (target, "target"), (w, "weight"))
    n = outer * inner
    if c == 0 and n:
        raise ValueError(f"z has shape {z.shape}: no classes along axis {ax}")
    if labels:
        bad = first_bad_label(target, c, ign)
        if bad >= 0:
            raise _label_error(target, bad, c)
        if target.dtype not in _LABEL_DTYPES:
            target = target.astype(np.int64)
    target = contiguous(target)
    if red == 0 and w is not None:
        w = _bounded(w, n)
    scale = 1.0 if red != 0 else _mean_scale(target, labels, n, w, ign)
    dz = _backend.empty_output(z.shape, z.dtype) if out is None else out
    loss = _backend.empty_output(z.shape[:ax] + z.shape[ax + 1 :], z.dtype) if red == 2 else None
    total = 0.0
    if n:  # an empty batch: every target ignored, so "mean" is 0.0 (documented)
        total = KERNELS.active().xent(z, outer, c, inner, target, w, ign, eps, scale, dz, loss)
    return reduce(total, scale, red, loss), dz


def reduce(total: float, scale: float, red: int, loss):
    """The returned loss: the mean (0.0 when nothing counts), the sum (Python floats, whatever
    z's dtype), or the array of per-example losses."""
    if red == 2:
        return loss
    return total if red == 1 else (total * scale if scale else 0.0)


def _bounded(w: np.ndarray, n: int) -> np.ndarray:
    """Weights scaled by a power of two (exact) so that no sum of ``n + C`` of them overflows.

    A weighted mean does not change when every weight is scaled; without this, weights whose
    sum overflows would give a zero gradient on one backend and NaN (0 * inf) on another.
    """
    count = n + w.size
    top = float(w.max()) if w.size else 0.0
    if top <= _DOUBLE_MAX / count:
        return w
    return np.ldexp(w, -(math.frexp(top)[1] + count.bit_length()))


def _mean_scale(target: np.ndarray, labels: bool, n: int, w, ign) -> float:
    """1 / (summed weight of the targets that count), or 0.0 when none does."""
    if labels:
        flat = target.reshape(-1).astype(np.int64, copy=False)
        kept = flat if ign is None else flat[flat != ign]
        wsum = float(kept.size if w is None else w[kept].sum())
    else:
        wsum = float(n)
    return 1.0 / wsum if wsum > 0 else 0.0


def _target(target, z: np.ndarray, ax: int):
    """``(target, is_labels)``: integer class indices or probabilities of z's dtype.

    Probabilities of any float dtype normax reads (half precision included) are converted to
    z's dtype: with half-precision logits, targets are stored in half precision too.
    """
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
    if _dtypes.is_float(target.dtype, half=True):
        if target.shape != z.shape:
            raise ValueError(
                f"target has shape {target.shape}; probability targets need z's shape {z.shape}"
            )
        return target.astype(z.dtype, copy=False), False
    raise TypeError(
        f"target has unsupported dtype {target.dtype}; expected integer class indices or "
        "float16/bfloat16/float32/float64 probabilities"
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
    if target.size == 0 or (0 <= target.min() and target.max() < c):
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

