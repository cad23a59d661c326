"""Pure-NumPy reference of the fused optimizer updates: the oracle for the C and Numba kernels.

:func:`step` takes the canonical record of ``normax.optim._check`` (the signature of every
backend). Each update function handles one parameter array and its state in place, with the
kind's named scalars ``h`` (``_kinds.HYPER``) and the same order of floating-point operations
as the C kernel, so the three backends agree to the last bit on IEEE hardware. The scalars are
rounded to the array's dtype once, as the C kernels do.

Mixed precision: a half-precision gradient is widened to float32 (exactly) before the float32
update, and a half copy receives the updated float32 parameters rounded once to nearest even
(NumPy's float16 cast and ml_dtypes' bfloat16 cast both round that way).
"""

from __future__ import annotations

import numpy as np

from ._kinds import FIRST, MOMENTUM, NESTEROV, RMSPROP, SGD


def _lerp(a: np.ndarray, b: np.ndarray, w, one, small: bool) -> None:
    """``a <- lerp(a, b, w)`` with the two-sided formula that is exact at both ends."""
    if small:
        a += w * (b - a)
    else:
        np.subtract(b, (b - a) * (one - w), out=a)


def sgd(p, g, buf, h, flags) -> None:
    t = p.dtype.type
    lr, wd, mu, damp1 = (t(x) for x in h)
    d = g + wd * p if h.weight_decay != 0.0 else g
    if buf is not None:
        if flags & FIRST:
            buf[...] = d
        else:
            buf *= mu
            buf += damp1 * d
        d = d + mu * buf if flags & NESTEROV else buf
    p -= lr * d


def momentum(p, g, v, h, flags) -> None:
    t = p.dtype.type
    lr, beta, omb = (t(x) for x in h)
    v *= beta
    v += omb * g
    p -= lr * v


def rmsprop(p, g, sq, ga, buf, h, flags) -> None:
    t = p.dtype.type
    lr, wd, alpha, w, eps, mu = (t(x) for x in h)
    d = g + wd * p if h.weight_decay != 0.0 else g
    sq *= alpha
    sq += w * d * d
    if ga is not None:
        _lerp(ga, d, w, t(1), abs(h.one_minus_alpha) < 0.5)
        avg = np.sqrt(sq - ga * ga)
    else:
        avg = np.sqrt(sq)
    avg += eps
    if buf is not None:
        buf *= mu
        buf += d / avg
        p -= lr * buf
    else:
        p -= lr * (d / avg)


def adam(p, g, m, v, vmax, h, flags) -> None:
    t = p.dtype.type
    step, wd, decay, w, b2, omb2, eps, bc2s = (t(x) for x in h)
    if h.decay != 1.0:
        p *= decay
    d = g + wd * p if h.weight_decay != 0.0 else g
    _lerp(m, d, w, t(1), abs(h.one_minus_beta1) < 0.5)
    v *= b2
    v += omb2 * d * d
    if vmax is not None:
        np.maximum(vmax, v, out=vmax)
        v = vmax
    denom = np.sqrt(v)
    denom /= bc2s
    denom += eps
    p -= step * (m / denom)


def step(kind, flags, hyper, params, grads, s0, s1, s2, half=None) -> None:
    """Update every array of ``params`` in place (the canonical record of a fused step)."""
    n = len(params)
    s0, s1, s2 = ([None] * n if s is None else s for s in (s0, s1, s2))
    with np.errstate(all="ignore"):  # NaN in, NaN out, silently, as in the C kernel
        for k in range(n):
            # the record matches sizes, not shapes: update flat views, as the kernels do
            p = params[k].reshape(-1)
            g = grads[k].reshape(-1).astype(p.dtype, copy=False)  # a half gradient, widened
            states = (None if a is None else a.reshape(-1) for a in (s0[k], s1[k], s2[k]))
            _update(kind, flags, hyper, p, g, *states)
            if half is not None:
                half[k].reshape(-1)[...] = p  # rounded once, to nearest even


def _update(kind, flags, hyper, p, g, a, b, c) -> None:
    if kind == SGD:
        sgd(p, g, a, hyper, flags)
    elif kind == MOMENTUM:
        momentum(p, g, a, hyper, flags)
    elif kind == RMSPROP:
        rmsprop(p, g, a, b, c, hyper, flags)
    else:  # ADAM: the checker admits no other kind
        adam(p, g, a, b, c, hyper, flags)


__all__ = ["step"]
