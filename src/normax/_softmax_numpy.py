"""Pure-NumPy reference of the softmax kernels: the test oracle and the benchmark baseline.

Everything is computed in float64 on the ``(outer, classes, inner)`` view with the class axis
moved last, with the same formulas as the C kernels: ``s`` sums ``exp(z - max)`` over every
entry but one maximum (ties count exactly), log-sum-exp is ``log1p(s)``.

float16 and bfloat16 records (storage types) take the same path: the inputs are upcast (to
float64 here, finer than the float32 the other backends compute in) and every output is rounded
once into z's dtype when it is stored.
"""

from __future__ import annotations

import numpy as np


def _parts(z3: np.ndarray):
    """``(t, e, s)`` of a float64 (rows, C) array: t = z - max, e = exp(t), s as above.

    A NaN or +inf in a row makes some t NaN, hence s NaN, hence the whole row NaN.
    """
    m = z3.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        t = z3 - m
        e = np.exp(t)
    tie = t == 0
    s = np.where(tie, 0.0, e).sum(axis=-1, keepdims=True) + (tie.sum(axis=-1, keepdims=True) - 1)
    return t, e, s


def _rows(x3: np.ndarray) -> np.ndarray:
    """(outer, C, inner) -> (outer * inner, C) float64 copy, classes last."""
    return np.moveaxis(x3, 1, -1).reshape(-1, x3.shape[1]).astype(np.float64)


def _store(rows: np.ndarray, out3: np.ndarray) -> None:
    outer, c, inner = out3.shape
    with np.errstate(over="ignore"):  # a half-precision out rounds beyond its range to inf
        out3[...] = np.moveaxis(rows.reshape(outer, inner, c), -1, 1)


def forward(z, out, outer, c, inner, log):
    """Write softmax (or log-softmax when ``log``) of the (outer, c, inner) view into ``out``."""
    t, e, s = _parts(_rows(z.reshape(outer, c, inner)))
    with np.errstate(invalid="ignore"):
        res = t - np.log1p(s) if log else e / (1.0 + s)
    _store(res, out.reshape(outer, c, inner))


def backward(g, y, out, outer, c, inner, log):
    """Write the gradient of (log-)softmax wrt the logits into ``out``."""
    g2, y2 = _rows(g.reshape(outer, c, inner)), _rows(y.reshape(outer, c, inner))
    with np.errstate(invalid="ignore", over="ignore"):
        if log:
            res = g2 - np.exp(y2) * g2.sum(axis=-1, keepdims=True)
        else:
            res = y2 * (g2 - (g2 * y2).sum(axis=-1, keepdims=True))
    _store(res, out.reshape(outer, c, inner))


def xent(z, outer, c, inner, target, weight, ignore, eps, scale, dz, loss):
    """Fused cross-entropy on the canonical record: writes ``scale`` times the gradient into
    ``dz`` and the per-example losses into ``loss`` (if given); returns the summed loss."""
    w = np.ones(c) if weight is None else weight
    if target.dtype.kind not in "iu":  # probabilities (bfloat16's dtype kind is "V")
        t = target.reshape(outer, c, inner)
    else:
        t = target.reshape(outer, inner).astype(np.int64, copy=False)
    per = _xent_rows(z.reshape(outer, c, inner), t, w, ignore, eps, scale,
                     dz.reshape(outer, c, inner))
    return finish(per, loss)


def finish(per: np.ndarray, loss) -> float:
    """Store the float64 per-example losses ``per`` into ``loss`` (if given); their sum."""
    with np.errstate(over="ignore"):  # inf beyond a half loss's range or the double limit
        if loss is not None:
            loss.reshape(-1)[...] = per.reshape(-1)
        return float(per.sum())


def _xent_rows(z3, target, w, ign, eps, scale, dz3):
    """Per-example losses (float64, (outer, inner)); writes scale * gradient into ``dz3``.

    ``target`` is int64 (outer, inner) labels or (outer, C, inner) probabilities. With
    coefficients ``a_k`` (one-hot label mixed with eps / C, times the class weight), the loss is
    ``A log1p(s) - sum_k a_k t_k`` and its gradient ``A p - a``, where ``A = sum_k a_k``.
    """
    outer, c, inner = z3.shape
    t, e, s = _parts(_rows(z3))
    lse = np.log1p(s)[:, 0]
    ec, keep = eps / c, 1.0 - eps
    with np.errstate(invalid="ignore", over="ignore"):
        if target.ndim == 3:
            a = w * (keep * _rows(target) + ec)
            big_a = a.sum(axis=-1)
            loss = big_a * lse - (a * t).sum(axis=-1)
            grad = scale * (big_a[:, None] * e / (1.0 + s) - a)
        else:
            loss, grad = _label_rows(target.reshape(-1), t, e, s, lse, w, ign, eps, scale)
    _store(grad, dz3)
    return loss.reshape(outer, inner)


def _label_rows(y, t, e, s, lse, w, ign, eps, scale):
    c = t.shape[1]
    keep_row = np.ones(y.shape, bool) if ign is None else y != ign
    yy = np.where(keep_row, y, 0)[:, None]
    ec, keep = eps / c, 1.0 - eps
    wy = w[yy[:, 0]]
    ty = np.take_along_axis(t, yy, axis=-1)[:, 0]
    big_a = keep * wy + ec * w.sum()
    loss = big_a * lse - keep * wy * ty
    if eps:
        loss = loss - ec * (w * t).sum(axis=-1)
    grad = scale * (big_a[:, None] * e / (1.0 + s) - ec * w)
    if eps:
        label_grad = np.take_along_axis(grad, yy, axis=-1)[:, 0] - scale * keep * wy
    else:
        label_grad = scale * wy * np.expm1(-(lse - ty))  # p_y - 1 without cancellation
    np.put_along_axis(grad, yy, label_grad[:, None], axis=-1)
    grad[~keep_row] = 0.0
    return np.where(keep_row, loss, 0.0), grad
