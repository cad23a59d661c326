"""Numba fallbacks of the softmax kernels (same results as the C kernels).

Plain loops over the (outer, classes, inner) view with explicit signatures; each example
(one column ``(o, :, i)``) is independent, so the examples are spread over threads with
``prange``. Arithmetic is float64 whatever the input dtype; results are written into ``out``.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from numba import boolean, float32, float64, int64, prange, void

from ._checks import writeable
from ._softmax_numpy import finish

_F = (float32, float64)
_OPTS = {"parallel": True, "cache": True, "nogil": True}


@nb.njit(cache=True, inline="always")
def _max_sum(z, o, i, e):
    """(max, s) of column (o, :, i), with exp(z - max) stored in e[o, :, i].

    s sums exp(z - max) over all entries but one maximum: ties with the maximum are counted, not
    summed, so s keeps a tiny exp(-100) term exactly; a NaN or +inf makes some t NaN, so s NaN.
    """
    c = z.shape[1]
    m = np.float64(z[o, 0, i])
    for k in range(1, c):
        v = np.float64(z[o, k, i])
        if v > m:
            m = v
    s = 0.0
    ties = 0
    for k in range(c):
        t = np.float64(z[o, k, i]) - m
        ek = math.exp(t)
        e[o, k, i] = ek
        if t == 0.0:
            ties += 1
        else:
            s += ek
    return m, s + (ties - 1)


@nb.njit([void(f[:, :, ::1], f[:, :, ::1], boolean) for f in _F], **_OPTS)
def _forward(z, out, log):
    outer, c, inner = z.shape
    for col in prange(outer * inner):
        o, i = col // inner, col % inner
        m, s = _max_sum(z, o, i, out)
        lse = math.log1p(s)
        inv = 1.0 / (1.0 + s)
        for k in range(c):
            if log:
                out[o, k, i] = (np.float64(z[o, k, i]) - m) - lse
            else:
                out[o, k, i] = np.float64(out[o, k, i]) * inv


@nb.njit([void(f[:, :, ::1], f[:, :, ::1], f[:, :, ::1], boolean) for f in _F], **_OPTS)
def _backward(g, y, out, log):
    outer, c, inner = g.shape
    for col in prange(outer * inner):
        o, i = col // inner, col % inner
        d = 0.0
        for k in range(c):
            d += np.float64(g[o, k, i]) * (1.0 if log else np.float64(y[o, k, i]))
        for k in range(c):
            gk, yk = np.float64(g[o, k, i]), np.float64(y[o, k, i])
            out[o, k, i] = gk - math.exp(yk) * d if log else yk * (gk - d)


_LABEL_SIG = [
    float64[:, ::1](f[:, :, ::1], int64[:, ::1], float64[::1], boolean, int64, float64, float64,
                    f[:, :, ::1])
    for f in _F
]  # fmt: skip


@nb.njit(_LABEL_SIG, **_OPTS)
def _xent_labels(z, y, w, has_ign, ign, eps, scale, dz):
    outer, c, inner = z.shape
    loss = np.zeros((outer, inner))
    wall = w.sum()
    ec, keep = eps / c, 1.0 - eps
    for col in prange(outer * inner):
        o, i = col // inner, col % inner
        lab = y[o, i]
        if (has_ign and lab == ign) or lab < 0 or lab >= c:
            for k in range(c):
                dz[o, k, i] = 0.0
        else:
            m, s = _max_sum(z, o, i, dz)
            lse = math.log1p(s)
            wy, ty = w[lab], np.float64(z[o, lab, i]) - m
            big_a = keep * wy + ec * wall
            alpha = scale * big_a / (1.0 + s)
            wt = 0.0
            for k in range(c):
                t = np.float64(z[o, k, i]) - m
                dz[o, k, i] = alpha * np.float64(dz[o, k, i]) - scale * ec * w[k]
                wt += w[k] * t
            if eps == 0.0:
                dz[o, lab, i] = scale * wy * math.expm1(-(lse - ty))
                loss[o, i] = wy * (lse - ty)
            else:
                dz[o, lab, i] = np.float64(dz[o, lab, i]) - scale * keep * wy
                loss[o, i] = big_a * lse - keep * wy * ty - ec * wt
    return loss


_PROB_SIG = [
    float64[:, ::1](f[:, :, ::1], f[:, :, ::1], float64[::1], float64, float64, f[:, :, ::1])
    for f in _F
]


@nb.njit(_PROB_SIG, **_OPTS)
def _xent_probs(z, q, w, eps, scale, dz):
    outer, c, inner = z.shape
    loss = np.zeros((outer, inner))
    ec, keep = eps / c, 1.0 - eps
    for col in prange(outer * inner):
        o, i = col // inner, col % inner
        m, s = _max_sum(z, o, i, dz)
        big_a = 0.0
        at = 0.0
        for k in range(c):
            a = w[k] * (keep * np.float64(q[o, k, i]) + ec)
            big_a += a
            at += a * (np.float64(z[o, k, i]) - m)
        alpha = scale * big_a / (1.0 + s)
        for k in range(c):
            a = w[k] * (keep * np.float64(q[o, k, i]) + ec)
            dz[o, k, i] = alpha * np.float64(dz[o, k, i]) - scale * a
        loss[o, i] = big_a * math.log1p(s) - at
    return loss


# Below this many elements the kernels run on one thread, as the C kernels do: waking the pool
# costs more than the work, and on a loaded machine a descheduled worker stalls the whole call.
_SERIAL_BELOW = 1 << 15


def _run(kernel, work, *args):
    threads = nb.get_num_threads()
    if work >= _SERIAL_BELOW or threads == 1:
        return kernel(*args)
    nb.set_num_threads(1)
    try:
        return kernel(*args)
    finally:
        nb.set_num_threads(threads)


def _v3(x, outer, c, inner):
    return x.reshape(outer, c, inner)


def forward(z, out, outer, c, inner, log):
    """Write (log-)softmax of the (outer, c, inner) view of ``z`` into ``out``."""
    zv = _v3(writeable(z), outer, c, inner)
    _run(_forward, z.size, zv, _v3(out, outer, c, inner), bool(log))


def backward(g, y, out, outer, c, inner, log):
    """Write the gradient of (log-)softmax wrt the logits into ``out``."""
    v = (outer, c, inner)
    _run(_backward, g.size, _v3(writeable(g), *v), _v3(writeable(y), *v), _v3(out, *v), bool(log))


def xent(z, outer, c, inner, target, weight, ignore, eps, scale, dz, loss):
    """Fused cross-entropy on the canonical record: writes ``scale`` times the gradient into
    ``dz`` and the per-example losses into ``loss`` (if given); returns the summed loss."""
    z3, dz3 = _v3(writeable(z), outer, c, inner), _v3(dz, outer, c, inner)
    w = np.ones(c) if weight is None else writeable(weight)
    if target.dtype.kind == "f":
        per = _run(_xent_probs, z.size, z3, _v3(writeable(target), outer, c, inner), w, eps,
                   scale, dz3)
    else:
        labels = writeable(target.reshape(outer, inner).astype(np.int64, copy=False))
        has_ign = ignore is not None
        per = _run(_xent_labels, z.size, z3, labels, w, has_ign, ignore if has_ign else 0, eps,
                   scale, dz3)
    return finish(per, loss)
