"""Numba versions of the fused optimizer updates (imported only when the numba backend runs).

Each kernel is a plain ``prange`` loop over one parameter array that reads and writes every
element once, with the element formula of the C kernel (``csrc/optim.c``) in the same order.
Scalars arrive already rounded to the array's dtype, so float32 arrays are updated in float32
arithmetic exactly as in C. Kernels compile on first use per dtype and are cached on disk.

Mixed precision: Numba cannot type bfloat16 arrays, so a half-precision gradient is widened to a
float32 copy first and the half copy of the parameters is rounded from the updated weights
afterwards (round to nearest even), both by the parallel conversion kernels of
:mod:`normax._half_numba` for arrays of ``PARALLEL_MIN_WORK`` elements or more (NumPy's own
float16 casts run element by element: an Adam step over 10**7 float16 gradients took 7.5x the C
kernel's time with them), by NumPy casts below. This costs an extra float32 buffer and pass per
array that the fused C kernel avoids; the results are the same.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from .. import _dtypes
from ._kinds import ADAM, AMSGRAD, CENTERED, FIRST, MOMENTUM, NESTEROV, RMSPROP, SGD

# Below this many elements an array is updated on one thread, as in the C kernel: waking the
# thread pool costs more than the arithmetic of a small array.
PARALLEL_MIN_WORK = 1 << 15


@functools.cache
def _kernel(loop, flags: tuple, parallel: bool):
    """``loop(*flags)`` compiled, parallel or serial; each variant compiles on first use.

    The option flags are closure constants rather than arguments, so Numba prunes the branches
    they guard and the loop body is straight-line code that LLVM vectorizes. With the flags as
    run-time arguments the branches stayed inside the loop and Adam ran ~90x slower per element.
    ``error_model="numpy"``: a division by zero gives inf or NaN as in C, not an exception.
    """
    return numba.njit(parallel=parallel, cache=True, nogil=True, error_model="numpy")(loop(*flags))


def _sgd(l2, mom, nesterov, first):
    def sgd(p, g, buf, lr, wd, mu, damp1):
        for i in numba.prange(p.size):
            d = g[i] + wd * p[i] if l2 else g[i]
            if mom:
                b = d if first else mu * buf[i] + damp1 * d
                buf[i] = b
                d = d + mu * b if nesterov else b
            p[i] = p[i] - lr * d

    return sgd


def _momentum():
    def momentum(p, g, v, lr, beta, omb):
        for i in numba.prange(p.size):
            vi = beta * v[i] + omb * g[i]
            v[i] = vi
            p[i] = p[i] - lr * vi

    return momentum


def _rmsprop(l2, centered, mom, small_w):
    def rmsprop(p, g, sq, ga, buf, lr, wd, alpha, w, eps, mu, wc):
        for i in numba.prange(p.size):
            d = g[i] + wd * p[i] if l2 else g[i]
            s = sq[i] * alpha + w * d * d
            sq[i] = s
            if centered:
                a = ga[i] + w * (d - ga[i]) if small_w else d - (d - ga[i]) * wc
                ga[i] = a
                s = s - a * a
            avg = np.sqrt(s) + eps
            if mom:
                b = mu * buf[i] + d / avg
                buf[i] = b
                p[i] = p[i] - lr * b
            else:
                p[i] = p[i] - lr * (d / avg)

    return rmsprop


def _adam(l2, amsgrad, small_w):
    def adam(p, g, m, v, vmax, step, wd, decay, w, b2, omb2, eps, bc2s, wc):
        for i in numba.prange(p.size):
            pi = p[i] * decay
            d = g[i] + wd * pi if l2 else g[i]
            mi = m[i] + w * (d - m[i]) if small_w else d - (d - m[i]) * wc
            vi = v[i] * b2 + omb2 * d * d
            m[i] = mi
            v[i] = vi
            if amsgrad:
                vi = vmax[i] if vmax[i] >= vi else vi
                vmax[i] = vi
            denom = np.sqrt(vi) / bc2s + eps
            p[i] = pi - step * (mi / denom)

    return adam


def _flat(a):
    return a.reshape(-1)


_SCRATCH: dict[tuple[str, int], np.ndarray] = {}


def _placeholder(dtype: np.dtype, n: int, slot: int) -> np.ndarray:
    """An array standing in for an unused state slot (the kernel never touches it).

    It must not overlap any real array: LLVM vectorizes a loop behind a runtime check that the
    written arrays do not overlap, and passing the parameter itself in an unused slot made that
    check fail and the update run 5-10x slower, element by element. One buffer per slot, grown
    with np.empty: its pages are never written, so they cost address space, not memory.
    """
    buf = _SCRATCH.get((dtype.str, slot))
    if buf is None or buf.size < n:
        buf = _SCRATCH[(dtype.str, slot)] = np.empty(max(n, 1), dtype)
    return buf[:n]


def step(kind, flags, hyper, params, grads, s0, s1, s2, half=None) -> None:
    """Update every array of ``params`` in place (the canonical record of a fused step)."""
    loop, opts = _variant(kind, flags, hyper, s0, s2)
    for k, p in enumerate(params):
        large = p.size >= PARALLEL_MIN_WORK
        g = _flat(_widened(grads[k], large)).astype(p.dtype, copy=False)
        kernel = _kernel(loop, opts, large)
        t = p.dtype.type
        h = [t(x) for x in hyper]
        if kind in (RMSPROP, ADAM):
            # wc = 1 - w (w: one_minus_alpha or one_minus_beta1, already rounded), as in C
            h.append(t(1) - h[3])
        states = (
            _flat(s[k]) if s is not None else _placeholder(p.dtype, p.size, j)
            for j, s in enumerate((s0, s1, s2)[: _N_STATES[kind]])
        )
        kernel(_flat(p), g, *states, *h)
        if half is not None:
            _round_into(half[k], p, large)


def _widened(g, large):
    """A large half-precision gradient ``g`` widened to float32 (exact), else ``g`` itself,
    which the caller's cast widens."""
    if not large or not _dtypes.half_kind(g.dtype):
        return g
    from .. import _half_numba

    return _half_numba.widen(g)


def _round_into(out, p, large):
    """``out[...] = p``, each weight rounded once to nearest even; beyond the half range is
    infinity, as in C."""
    if large:
        from .. import _half_numba

        _half_numba.round_into(out, p)
        return
    with np.errstate(all="ignore"):
        out[...] = p


def _variant(kind, flags, hyper, s0, s2):
    """The loop builder of ``kind`` and its option flags (the closure constants)."""
    if kind == SGD:
        opts = (
            hyper.weight_decay != 0.0,
            s0 is not None,
            bool(flags & NESTEROV),
            bool(flags & FIRST),
        )
        return _sgd, opts
    if kind == MOMENTUM:
        return _momentum, ()
    if kind == RMSPROP:
        opts = (
            hyper.weight_decay != 0.0,
            bool(flags & CENTERED),
            s2 is not None,
            abs(hyper.one_minus_alpha) < 0.5,
        )
        return _rmsprop, opts
    # ADAM: the checker admits no other kind
    return _adam, (
        hyper.weight_decay != 0.0,
        bool(flags & AMSGRAD),
        abs(hyper.one_minus_beta1) < 0.5,
    )


_N_STATES = {SGD: 1, MOMENTUM: 1, RMSPROP: 3, ADAM: 3}
