"""Numba batch-norm kernels: the fallback when the C extension is not built.

The same algorithm as csrc/batchnorm_impl.h, as plain loops over the (outer, C, inner) view with
explicit signatures: one pass of sums shifted by a per-channel pivot (the channel's first value)
accumulated in float64, per-chunk partial sums added in chunk order, and element-wise passes in
the input dtype with the mean split into a head and a tail. Work is split into as many chunks as
Numba has threads: rows when inner == 1, (outer, channel) runs otherwise.

Half-precision inputs (float16, bfloat16) run the same kernels on 16-bit integer views of their
data (Numba cannot type float16 or bfloat16 arrays; see _half_numba): each element is widened
to float32 where it is read, the arithmetic is the float32 kernel's, and each output element is
rounded once to nearest even where it is written. So a half call moves half the bytes of a
float32 call, with results bit for bit those of the float32 kernel on an upcast copy. The
per-channel arrays (gamma, beta, running statistics, dgamma, dbeta) are float32 then.

Only the reduction kernels use ``fastmath={"reassoc"}``, so their sums vectorize; NaN and Inf
keep their IEEE meaning everywhere (no ``nnan``/``ninf``), and the element-wise kernels keep the
exact order of operations the head/tail split relies on.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba import boolean, float32, float64, int16, intp, prange, uint16, void

from . import _dtypes
from ._batchnorm_numpy import _quiet
from ._checks import writeable
from ._half_numba import load, store, view
from ._numba_notice import CompileNotice
from ._numba_prefetch import prefetch_read_l2

_notice = CompileNotice("batch-norm")

_PARALLEL_MIN_WORK = 1 << 15  # same threshold as the C kernels (csrc/normax.h)
_REASSOC = {"reassoc", "contract"}


# (storage, compute) types: float32 and float64 compute in their own type; the 16-bit views of
# float16 (uint16) and bfloat16 (int16) data are widened to float32 element by element.
_TYPES = ((float32, float32), (float64, float64), (uint16, float32), (int16, float32))


def _sigs(make):
    return [make(t, f) for t, f in _TYPES]


@nb.njit(cache=True)
def _prefetch_run(x, b):  # pragma: no cover - compiled
    """Prefetch run ``b`` (channel ``b % C`` of slab ``b // C``) of an (outer, C, inner) view of
    half-precision data, one hint per cache line; a no-op for other dtypes (a constant test).

    The run loops stream each run once. On half data, two streams of 16-bit values were not
    prefetched in time by the hardware (the gradient sums of (1, 2048, 8192) float16 read
    2.5x slower than from cache, float32 twice the bytes faster); a hint per line of the next
    run, issued before the current one is summed, brings them to cache speed. float32 and
    float64 runs were as fast or faster without it."""
    inner = x.shape[2]
    _prefetch_span(x, b * inner, (b + 1) * inner)


@nb.njit(cache=True)
def _prefetch_span(x, start, stop):  # pragma: no cover - compiled
    """Prefetch elements [start, stop) of the flattened half-precision ``x``, one hint per cache
    line; a no-op for other dtypes."""
    if x.itemsize != 2:
        return
    flat = x.reshape(-1)
    for i in range(start, min(stop, flat.size), 64 // x.itemsize):
        prefetch_read_l2(flat, i * x.itemsize)


# The rows-path sums of half-precision data with at most _PREFETCH_MAX_C channels hint each row
# _PREFETCH_AHEAD bytes before they read it (NHWC's 64 gradient sums took 0.9 ns per element on
# one machine, 0.6 with hints; rows of 2048 channels were slower with them, the hardware
# prefetcher following their four row streams well). The hints go a row (or block of four rows)
# at a time, between the rows summed. Issued as a burst of 8 KiB of lines before each 8 KiB
# block, they stalled the sums on another machine, where the hardware prefetcher keeps up alone:
# there, two threads, (200704, 64) in one process, the statistics took 1.27-1.52x the time of
# the same loop without hints; with the hints spread out they take 0.96-1.04x (the gradient sums
# 0.99-1.16x).
_PREFETCH_AHEAD = 8192
_PREFETCH_MAX_C = 256


@nb.njit(cache=True, inline="always")
def _hinted(x):  # pragma: no cover - compiled
    """Whether the rows of the (rows, C) ``x`` take hints: half-precision data of at most
    _PREFETCH_MAX_C channels (a constant test for the other dtypes)."""
    return x.itemsize == 2 and x.shape[1] <= _PREFETCH_MAX_C


@nb.njit(cache=True, inline="always")
def _prefetch_rows(flat, row, r, n):  # pragma: no cover - compiled
    """Hint rows [r, r + n) of ``row`` bytes each of the flattened ``flat``, moved on by
    _PREFETCH_AHEAD bytes, one hint per cache line."""
    for b in range(r * row + _PREFETCH_AHEAD, (r + n) * row + _PREFETCH_AHEAD, 64):
        prefetch_read_l2(flat, b)


# Each pass is a serial chunk kernel plus a driver that runs it once per chunk with prange. For a
# single chunk the driver calls it directly: a (32, 64) batch then never wakes the thread pool,
# which costs more than its arithmetic and stalls when the machine is busy.
_CHUNK = (intp, intp)  # lo, hi: a range of rows (inner == 1) or of (outer, C) runs


@nb.njit(
    _sigs(lambda t, f: void(t[:, ::1], float64[:, ::1], intp, *_CHUNK)),
    cache=True,
    fastmath=_REASSOC,
)
def _stats_rows(x, acc, k, lo, hi):  # pragma: no cover - compiled
    """Rows [lo, hi) of an (outer, C) view: blocks of four rows summed in the input dtype, the
    block sums added in float64 (as in the C kernel; _train_finish repairs an overflow)."""
    C = x.shape[1]
    s1, s2, pv = acc[k, :C], acc[k, C:], x[0]
    r = lo
    hint, flat, row = _hinted(x), x.reshape(-1), C * x.itemsize
    while r + 4 <= hi:
        if hint:
            _prefetch_rows(flat, row, r, 4)
        x0, x1, x2, x3 = x[r], x[r + 1], x[r + 2], x[r + 3]
        for c in range(C):
            p = load(pv[c])
            d0, d1 = load(x0[c]) - p, load(x1[c]) - p
            d2, d3 = load(x2[c]) - p, load(x3[c]) - p
            s1[c] += np.float64((d0 + d1) + (d2 + d3))
            s2[c] += np.float64((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3))
        r += 4
    for rr in range(r, hi):
        for c in range(C):
            d = np.float64(load(x[rr, c])) - np.float64(load(x[0, c]))
            acc[k, c] += d
            acc[k, C + c] += d * d


@nb.njit(_sigs(lambda t, f: void(t[:, ::1], intp, float64[::1])), cache=True)
def _stats_repair(x, c, out):  # pragma: no cover - compiled
    """Channel c of an (outer, C) view summed in float64, element by element."""
    p = np.float64(load(x[0, c]))
    out[0] = 0.0
    out[1] = 0.0
    for r in range(x.shape[0]):
        d = np.float64(load(x[r, c])) - p
        out[0] += d
        out[1] += d * d


@nb.njit(
    _sigs(lambda t, f: void(t[:, :, ::1], float64[:, ::1], intp, *_CHUNK)),
    cache=True,
    fastmath=_REASSOC,
)
def _stats_chunk(x, acc, k, lo, hi):  # pragma: no cover - compiled
    outer, C, inner = x.shape
    if inner == 1:
        _stats_rows(x.reshape((outer, C)), acc, k, lo, hi)
    else:
        for b in range(lo, hi):
            o, c = b // C, b % C
            p = np.float64(load(x[0, c, 0]))
            s1 = 0.0
            s2 = 0.0
            for i in range(inner):
                d = np.float64(load(x[o, c, i])) - p
                s1 += d
                s2 += d * d
            acc[k, c] += s1
            acc[k, C + c] += s2


@nb.njit(cache=True)
def _stats_part(x, acc, k, lo, hi):  # pragma: no cover - compiled
    """:func:`_stats_chunk` over [lo, hi); for half-precision runs (inner > 1) run by run, the
    next run prefetched (rows hint themselves: :func:`_prefetch_rows`)."""
    inner = x.shape[2]
    if x.itemsize == 2 and inner > 1:
        for b in range(lo, hi):
            if b + 1 < hi:
                _prefetch_run(x, b + 1)
            _stats_chunk(x, acc, k, b, b + 1)
    else:
        _stats_chunk(x, acc, k, lo, hi)


@nb.njit(_sigs(lambda t, f: void(t[:, :, ::1], float64[:, ::1])), parallel=True, cache=True)
def _stats(x, acc):  # pragma: no cover - compiled
    outer, C, inner = x.shape
    parts = acc.shape[0]
    units = outer if inner == 1 else outer * C
    if parts == 1:
        _stats_part(x, acc, 0, 0, units)
        return
    for k in prange(parts):
        _stats_part(x, acc, k, units * k // parts, units * (k + 1) // parts)


def _finish_args(t, f):
    """x, acc, gamma, beta, rm, rv, update, momentum, eps, mean, invstd, k of _train_finish."""
    vec = f[::1]
    return (t[:, :, ::1], float64[:, ::1], vec, vec, vec, vec, boolean, float64, float64,
            float64[::1], float64[::1], f[:, ::1])


@nb.njit(_sigs(lambda t, f: void(*_finish_args(t, f), intp, intp)), cache=True)
def _train_finish(
    x, acc, gamma, beta, rm, rv, update, momentum, eps, mean, invstd, k, c0, c1
):  # pragma: no cover
    """Channels [c0, c1): fold the parts' sums, then the statistics and the affine constants."""
    outer, C, inner = x.shape
    n = outer * inner
    fix = np.empty(2)
    for c in range(c0, c1):
        s1 = 0.0
        s2 = 0.0
        for part in range(acc.shape[0]):
            s1 += acc[part, c]
            s2 += acc[part, C + c]
        if inner == 1 and not (np.isfinite(s1) and np.isfinite(s2)):
            _stats_repair(x.reshape((outer, C)), c, fix)
            s1, s2 = fix[0], fix[1]
        dm = s1 / n
        # Squares that overflow (|x| near 1e300 in float64) make s2 = inf and s1 * dm may
        # overflow too: the variance is then inf (invstd 0, y 0), as the C kernel's fused
        # multiply-add gives, not inf - inf = NaN. A NaN or inf input (s1 not finite) stays NaN.
        var = np.inf if s2 == np.inf and np.isfinite(s1) else (s2 - s1 * dm) / n
        if var < 0.0:  # rounding only; NaN stays NaN
            var = 0.0
        m = np.float64(load(x[0, c, 0])) + dm
        inv = 1.0 / np.sqrt(var + eps)
        mean[c] = m
        invstd[c] = inv
        if update:
            rm[c] = (1.0 - momentum) * np.float64(rm[c]) + momentum * m
            rv[c] = (1.0 - momentum) * np.float64(rv[c]) + momentum * (var * (n / (n - 1.0)))
        k[0, c] = m
        k[1, c] = m - np.float64(k[0, c])
        k[2, c] = np.float64(gamma[c]) * inv
        k[3, c] = beta[c]


# The element-wise rows loops run over spans of whole rows, about this many elements, with the
# per-channel constants tiled to the span's length: rows of 64 channels (NHWC) then pay the
# loop's setup and its run-time overlap checks once per 1024 elements, not once per 64.
_ROW_SPAN = 1024


@nb.njit(cache=True)
def _tiled(k, rows):  # pragma: no cover - compiled
    """The (n, C) constants ``k`` repeated for ``rows`` consecutive rows: shape (n, rows * C)."""
    n, C = k.shape
    t = np.empty((n, rows * C), k.dtype)
    for j in range(rows):
        t[:, j * C:(j + 1) * C] = k
    return t


@nb.njit(_sigs(lambda t, f: void(t[:, :, ::1], f[:, ::1], t[:, :, ::1], *_CHUNK)), cache=True)
def _affine_chunk(x, k, y, lo, hi):  # pragma: no cover - compiled
    _, C, inner = x.shape
    if inner == 1:
        span = max(1, min(_ROW_SPAN // max(C, 1), hi - lo))
        kt = _tiled(k, span)
        k0, k1, k2, k3 = kt[0], kt[1], kt[2], kt[3]
        x1, y1 = x.reshape(-1), y.reshape(-1)
        for r in range(lo, hi, span):
            a, e = r * C, min(r + span, hi) * C
            xs, ys = x1[a:e], y1[a:e]
            for j in range(e - a):
                ys[j] = store(ys, ((load(xs[j]) - k0[j]) - k1[j]) * k2[j] + k3[j])
    else:
        for b in range(lo, hi):
            o, c = b // C, b % C
            mh, ml, sc, sh = k[0, c], k[1, c], k[2, c], k[3, c]
            for i in range(inner):
                y[o, c, i] = store(y, ((load(x[o, c, i]) - mh) - ml) * sc + sh)


@nb.njit(
    _sigs(lambda t, f: void(t[:, :, ::1], f[:, ::1], t[:, :, ::1], intp)),
    parallel=True,
    cache=True,
)
def _affine(x, k, y, parts):  # pragma: no cover - compiled
    outer, C, inner = x.shape
    units = outer if inner == 1 else outer * C
    if parts == 1:
        _affine_chunk(x, k, y, 0, units)
        return
    for part in prange(parts):
        _affine_chunk(x, k, y, units * part // parts, units * (part + 1) // parts)


# Rows of at least this many channels sum the gradient in blocks of four rows: row by row in
# float64, every element loads and stores two float64 sums, and from 1024 channels those sums
# and the mean (24 KiB) no longer stay in L1 beside the rows. One thread, 8M elements, blocked /
# row by row: 0.63-0.78x (float32, float64) and 0.89-1.31x (float16, bfloat16) at 1024
# channels, 0.47-0.76x for every dtype at 2048-4096, but 1.4-3x at 128-512, where the row-by-row
# sums are L1 hits.
_GRAD_BLOCK_MIN_C = 1024

# Rows of float32 and half-precision data of at most _GRAD_ROWS_F32_MAX_C channels sum the
# gradient in float32 over blocks of four rows, as the C kernel and the wide rows do, but row by
# row into two float32 rows, whose sums are then added in float64 (and repaired as the wide rows'
# when they overflow). In float64 every half element was widened twice, and a float32 vector
# holds twice the elements of a float64 one. Two threads, 12.8M elements, both loops without
# hints in one process: float16 and bfloat16 0.54-0.82x the time of the float64 loop at 32 and
# 64 channels, float32 0.79-1.08x at 64 but 1.19-1.25x at 128 and 256. One limit for all three
# keeps a half call the float32 kernel on the upcast data, bit for bit.
_GRAD_ROWS_F32_MAX_C = 64


@nb.njit(
    _sigs(
        lambda t, f: void(
            t[:, ::1], t[:, ::1], float64[::1], f[:, ::1], float64[:, ::1], intp, *_CHUNK
        )
    ),
    cache=True,
    fastmath=_REASSOC,
)
def _grad_rows(dy, x, mean, kc, acc, k, lo, hi):  # pragma: no cover - compiled
    """Rows [lo, hi) of (outer, C) views. Rows of _GRAD_BLOCK_MIN_C channels or more as the C
    kernel's grad_rows: blocks of four rows summed in the compute dtype with x - mean as
    (x - kc[0]) - kc[1] (the mean's head and tail), the block sums added in float64, a block sum
    that overflows float32 redone by :func:`_grad_finish`. float32 and half-precision rows of at
    most _GRAD_ROWS_F32_MAX_C channels in float32 over blocks of four rows, row by row, redone the
    same way. The leftover rows, and every other row, element by element in float64."""
    C = x.shape[1]
    s1, s2, mh, ml = acc[k, :C], acc[k, C:], kc[0], kc[1]
    r = lo
    while C >= _GRAD_BLOCK_MIN_C and r + 4 <= hi:
        g0r, g1r, g2r, g3r = dy[r], dy[r + 1], dy[r + 2], dy[r + 3]
        x0, x1, x2, x3 = x[r], x[r + 1], x[r + 2], x[r + 3]
        for c in range(C):
            hd, tl = mh[c], ml[c]
            g0, g1, g2, g3 = load(g0r[c]), load(g1r[c]), load(g2r[c]), load(g3r[c])
            e0, e1 = (load(x0[c]) - hd) - tl, (load(x1[c]) - hd) - tl
            e2, e3 = (load(x2[c]) - hd) - tl, (load(x3[c]) - hd) - tl
            s1[c] += np.float64((g0 + g1) + (g2 + g3))
            s2[c] += np.float64((g0 * e0 + g1 * e1) + (g2 * e2 + g3 * e3))
        r += 4
    hint, fdy, fx, row = _hinted(x), dy.reshape(-1), x.reshape(-1), C * x.itemsize
    if x.itemsize <= 4 and C <= _GRAD_ROWS_F32_MAX_C:
        u, v = np.zeros(C, np.float32), np.zeros(C, np.float32)
        while r + 4 <= hi:
            for rr in range(r, r + 4):
                if hint:
                    _prefetch_rows(fdy, row, rr, 1)
                    _prefetch_rows(fx, row, rr, 1)
                gr, xr = dy[rr], x[rr]
                for c in range(C):
                    g = load(gr[c])
                    u[c] += g
                    v[c] += g * ((load(xr[c]) - mh[c]) - ml[c])
            for c in range(C):
                s1[c] += np.float64(u[c])
                s2[c] += np.float64(v[c])
                u[c] = 0.0
                v[c] = 0.0
            r += 4
    for rr in range(r, hi):
        if hint:
            _prefetch_rows(fdy, row, rr, 1)
            _prefetch_rows(fx, row, rr, 1)
        gr, xr = dy[rr], x[rr]
        for c in range(C):
            g = np.float64(load(gr[c]))
            s1[c] += g
            s2[c] += g * (np.float64(load(xr[c])) - mean[c])


@nb.njit(_sigs(lambda t, f: void(t[:, ::1], t[:, ::1], float64, intp, float64[::1])), cache=True)
def _grad_repair(dy, x, m, c, out):  # pragma: no cover - compiled
    """Channel c's gradient sums of (outer, C) views in float64, element by element."""
    out[0] = 0.0
    out[1] = 0.0
    for r in range(x.shape[0]):
        g = np.float64(load(dy[r, c]))
        out[0] += g
        out[1] += g * (np.float64(load(x[r, c])) - m)


@nb.njit(
    _sigs(
        lambda t, f: void(
            t[:, :, ::1], t[:, :, ::1], float64[::1], f[:, ::1], float64[:, ::1], intp, *_CHUNK
        )
    ),
    cache=True,
    fastmath=_REASSOC,
)
def _grad_chunk(dy, x, mean, kc, acc, k, lo, hi):  # pragma: no cover - compiled
    outer, C, inner = x.shape
    if inner == 1:
        _grad_rows(dy.reshape((outer, C)), x.reshape((outer, C)), mean, kc, acc, k, lo, hi)
    else:
        for b in range(lo, hi):
            o, c = b // C, b % C
            m = mean[c]
            s1 = 0.0
            s2 = 0.0
            for i in range(inner):
                g = np.float64(load(dy[o, c, i]))
                s1 += g
                s2 += g * (np.float64(load(x[o, c, i])) - m)
            acc[k, c] += s1
            acc[k, C + c] += s2


@nb.njit(cache=True)
def _grad_part(dy, x, mean, kc, acc, k, lo, hi):  # pragma: no cover - compiled
    """:func:`_grad_chunk` over [lo, hi), prefetched as in :func:`_stats_part`."""
    inner = x.shape[2]
    if x.itemsize == 2 and inner > 1:
        for b in range(lo, hi):
            if b + 1 < hi:
                _prefetch_run(dy, b + 1)
                _prefetch_run(x, b + 1)
            _grad_chunk(dy, x, mean, kc, acc, k, b, b + 1)
    else:
        _grad_chunk(dy, x, mean, kc, acc, k, lo, hi)


@nb.njit(
    _sigs(lambda t, f: void(t[:, :, ::1], t[:, :, ::1], float64[::1], f[:, ::1], float64[:, ::1])),
    parallel=True,
    cache=True,
)
def _grad(dy, x, mean, kc, acc):  # pragma: no cover - compiled
    outer, C, inner = x.shape
    parts = acc.shape[0]
    units = outer if inner == 1 else outer * C
    if parts == 1:
        _grad_part(dy, x, mean, kc, acc, 0, 0, units)
        return
    for k in prange(parts):
        _grad_part(dy, x, mean, kc, acc, k, units * k // parts, units * (k + 1) // parts)


@nb.njit(
    _sigs(
        lambda t, f: void(
            t[:, :, ::1],
            t[:, :, ::1],
            float64[:, ::1],
            float64[::1],
            float64[::1],
            f[::1],
            f[::1],
            f[::1],
            f[:, ::1],
            intp,
            intp,
        )
    ),
    cache=True,
)
def _grad_finish(dy, x, acc, mean, invstd, gamma, dgamma, dbeta, k, c0, c1):  # pragma: no cover
    """Channels [c0, c1): fold the parts' sums, then dgamma, dbeta and the constants of dx."""
    outer, C, inner = x.shape
    n = np.float64(outer * inner)
    fix = np.empty(2)
    for c in range(c0, c1):
        sdy = 0.0
        sdx = 0.0
        for part in range(acc.shape[0]):
            sdy += acc[part, c]
            sdx += acc[part, C + c]
        if inner == 1 and not (np.isfinite(sdy) and np.isfinite(sdx)):
            _grad_repair(dy.reshape((outer, C)), x.reshape((outer, C)), mean[c], c, fix)
            sdy, sdx = fix[0], fix[1]
        inv = invstd[c]
        g = np.float64(gamma[c])
        dgamma[c] = sdx * inv
        dbeta[c] = sdy
        k[2, c] = sdy / n
        k[3, c] = g * inv
        k[4, c] = -g * inv * inv * inv * sdx / n


@nb.njit(
    _sigs(lambda t, f: void(t[:, :, ::1], t[:, :, ::1], f[:, ::1], t[:, :, ::1], *_CHUNK)),
    cache=True,
)
def _dx_chunk(dy, x, k, dx, lo, hi):  # pragma: no cover - compiled
    _, C, inner = x.shape
    if inner == 1:  # spans of rows, as in _affine_chunk
        span = max(1, min(_ROW_SPAN // max(C, 1), hi - lo))
        kt = _tiled(k, span)
        k0, k1, k2, k3, k4 = kt[0], kt[1], kt[2], kt[3], kt[4]
        g1, x1, o1 = dy.reshape(-1), x.reshape(-1), dx.reshape(-1)
        for r in range(lo, hi, span):
            a, e = r * C, min(r + span, hi) * C
            gs, xs, os = g1[a:e], x1[a:e], o1[a:e]
            for j in range(e - a):
                xc = (load(xs[j]) - k0[j]) - k1[j]
                os[j] = store(os, (load(gs[j]) - k2[j]) * k3[j] + xc * k4[j])
    else:
        for b in range(lo, hi):
            o, c = b // C, b % C
            mh, ml, gm, ga, gb = k[0, c], k[1, c], k[2, c], k[3, c], k[4, c]
            for i in range(inner):
                v = (load(dy[o, c, i]) - gm) * ga + ((load(x[o, c, i]) - mh) - ml) * gb
                dx[o, c, i] = store(dx, v)


@nb.njit(
    _sigs(lambda t, f: void(t[:, :, ::1], t[:, :, ::1], f[:, ::1], t[:, :, ::1], intp)),
    parallel=True,
    cache=True,
)
def _dx(dy, x, k, dx, parts):  # pragma: no cover - compiled
    outer, C, inner = x.shape
    units = outer if inner == 1 else outer * C
    if parts == 1:
        _dx_chunk(dy, x, k, dx, 0, units)
        return
    for part in prange(parts):
        _dx_chunk(dy, x, k, dx, units * part // parts, units * (part + 1) // parts)


# ---- channel by channel when each channel is one run (outer == 1) ----------------------------
# In the (C, m) layout (columns are examples) each channel's data is one contiguous run. The
# passes then go a group of channels at a time, back to back: the group's sums, its statistics
# and its output while its runs (at most _GROUP_BYTES of each input) are still in the cache, so
# memory sees each input once: a training forward moves 2 x bytes(x) instead of 3 x, a backward
# 3 x instead of 5 x, as the C kernel's resident groups do. Each channel is summed by one part
# and finished and written by the pass-by-pass code, so the results are the same bits.
_GROUP_BYTES = 256 << 10


@nb.njit(cache=True)
def _group(x):  # pragma: no cover - compiled
    """Channels per group of the (1, C, inner) view ``x``."""
    return max(1, _GROUP_BYTES // max(1, x.shape[2] * x.itemsize))


@nb.njit(
    _sigs(lambda t, f: void(*_finish_args(t, f), t[:, :, ::1], intp, intp, intp)), cache=True
)
def _train_runs(
    x, acc, gamma, beta, rm, rv, update, momentum, eps, mean, invstd, k, y, p, c0, c1
):  # pragma: no cover - compiled
    """Channels [c0, c1) of a (1, C, inner) view by groups, their sums in part p."""
    g = _group(x)
    for c in range(c0, c1, g):
        e = min(c + g, c1)
        _stats_chunk(x, acc, p, c, e)
        _train_finish(x, acc, gamma, beta, rm, rv, update, momentum, eps, mean, invstd, k, c, e)
        _affine_chunk(x, k, y, c, e)


@nb.njit(_sigs(lambda t, f: void(*_finish_args(t, f), t[:, :, ::1])), parallel=True, cache=True)
def _train_channels(
    x, acc, gamma, beta, rm, rv, update, momentum, eps, mean, invstd, k, y
):  # pragma: no cover - compiled
    C, parts = x.shape[1], acc.shape[0]
    if parts == 1:
        _train_runs(x, acc, gamma, beta, rm, rv, update, momentum, eps, mean, invstd, k, y, 0, 0, C)
        return
    for p in prange(parts):
        c0, c1 = C * p // parts, C * (p + 1) // parts
        _train_runs(
            x, acc, gamma, beta, rm, rv, update, momentum, eps, mean, invstd, k, y, p, c0, c1
        )


def _back_args(t, f):
    """dy, x, mean, k, acc, invstd, gamma, dgamma, dbeta, dx of :func:`_back_runs`."""
    return (t[:, :, ::1], t[:, :, ::1], float64[::1], f[:, ::1], float64[:, ::1], float64[::1],
            f[::1], f[::1], f[::1], t[:, :, ::1])


@nb.njit(_sigs(lambda t, f: void(*_back_args(t, f), intp, intp, intp)), cache=True)
def _back_runs(
    dy, x, mean, k, acc, invstd, gamma, dgamma, dbeta, dx, p, c0, c1
):  # pragma: no cover - compiled
    """The backward of channels [c0, c1) of (1, C, inner) views by groups, sums in part p."""
    g = _group(x)
    for c in range(c0, c1, g):
        e = min(c + g, c1)
        _grad_chunk(dy, x, mean, k, acc, p, c, e)
        _grad_finish(dy, x, acc, mean, invstd, gamma, dgamma, dbeta, k, c, e)
        _dx_chunk(dy, x, k, dx, c, e)


@nb.njit(_sigs(lambda t, f: void(*_back_args(t, f))), parallel=True, cache=True)
def _back_channels(
    dy, x, mean, k, acc, invstd, gamma, dgamma, dbeta, dx
):  # pragma: no cover - compiled
    C, parts = x.shape[1], acc.shape[0]
    if parts == 1:
        _back_runs(dy, x, mean, k, acc, invstd, gamma, dgamma, dbeta, dx, 0, 0, C)
        return
    for p in prange(parts):
        c0, c1 = C * p // parts, C * (p + 1) // parts
        _back_runs(dy, x, mean, k, acc, invstd, gamma, dgamma, dbeta, dx, p, c0, c1)


# ---- the backend signature (the canonical record, as for the C kernels) ----------------------


_notice.close()


def _parts(x3: np.ndarray) -> int:
    """Chunks to split the work into: one per thread, one for small inputs."""
    outer, channels, inner = x3.shape
    if x3.size < _PARALLEL_MIN_WORK:
        return 1
    units = outer if inner == 1 else outer * channels
    return max(1, min(nb.get_num_threads(), units))


def _or(p, fill: float, channels: int, dtype) -> np.ndarray:
    return np.full(channels, fill, dtype) if p is None else p


def train(x, outer, c, inner, gamma, beta, running_mean, running_var, momentum, eps, y, mean,
          invstd):
    """Training forward: writes ``y`` and the float64 batch statistics ``mean``, ``invstd``."""
    x, gamma, beta = writeable(x), writeable(gamma), writeable(beta)
    x3, y3 = view(x).reshape(outer, c, inner), view(y).reshape(outer, c, inner)
    dtype = _dtypes.compute_dtype(x.dtype)
    acc = np.zeros((_parts(x3), 2 * c))
    k = np.empty((4, c), dtype)
    finish = (
        x3,
        acc,
        _or(gamma, 1.0, c, dtype),
        _or(beta, 0.0, c, dtype),
        _or(running_mean, 0.0, c, dtype),
        _or(running_var, 0.0, c, dtype),
        running_mean is not None,
        momentum,
        eps,
        mean,
        invstd,
        k,
    )
    if outer == 1 and inner > 1:
        _train_channels(*finish, y3)
        return
    _stats(x3, acc)
    _train_finish(*finish, 0, c)
    _affine(x3, k, y3, acc.shape[0])


@_quiet  # per-channel NumPy arithmetic on NaN/Inf statistics: NaN out, as in the C kernels
def infer(x, outer, c, inner, gamma, beta, running_mean, running_var, eps, y):
    """Inference with running statistics: writes ``y``."""
    x3 = view(writeable(x)).reshape(outer, c, inner)
    k = np.zeros((4, c), _dtypes.compute_dtype(x.dtype))
    k[0] = running_mean
    scale = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    k[2] = scale if gamma is None else gamma * scale
    if beta is not None:
        k[3] = beta
    _affine(x3, k, view(y).reshape(x3.shape), _parts(x3))


@_quiet
def backward(dy, x, outer, c, inner, mean, invstd, gamma, dx, dgamma, dbeta):
    """Gradient of :func:`train`: writes ``dx`` (and ``dgamma``, ``dbeta`` when ``gamma`` is
    given)."""
    dy, x, gamma = view(writeable(dy)), writeable(x), writeable(gamma)
    mean, invstd = writeable(mean), writeable(invstd)
    x3, dtype = view(x).reshape(outer, c, inner), _dtypes.compute_dtype(x.dtype)
    dx = view(dx)
    acc = np.zeros((_parts(x3), 2 * c))
    k = np.empty((5, c), dtype)
    k[0] = mean  # the mean as a head and a tail in the input dtype
    k[1] = mean - k[0].astype(np.float64)
    dy3, dx3 = dy.reshape(x3.shape), dx.reshape(x3.shape)
    sum_gx = np.empty(c, dtype) if dgamma is None else dgamma
    sum_g = np.empty(c, dtype) if dbeta is None else dbeta
    g = _or(gamma, 1.0, c, dtype)
    if outer == 1 and inner > 1:
        _back_channels(dy3, x3, mean, k, acc, invstd, g, sum_gx, sum_g, dx3)
        return
    _grad(dy3, x3, mean, k, acc)
    _grad_finish(dy3, x3, acc, mean, invstd, g, sum_gx, sum_g, k, 0, c)
    _dx(dy3, x3, k, dx3, acc.shape[0])
