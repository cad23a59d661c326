"""Numba fallbacks of the softmax kernels (same algorithm as the C kernels).

Plain loops over the (outer, classes, inner) view with explicit signatures, shaped like the C
kernels so that LLVM vectorizes them:

* ``inner == 1``: each example is a contiguous row. The maximum keeps vector lanes; the
  exponentials run along the row.
* ``inner > 1``: a block of neighbouring columns is packed into a small (classes, B) buffer that
  stays in the L2 cache, and every pass walks the class axis with one running value per column,
  so the loads are contiguous and vectorize across the columns. When fewer columns than a
  kernel's minimum fit that budget (_STREAM_MIN_*: 64 for softmax and log-softmax, more than
  2048 float32 classes; 128 for the backwards, 1024; 16 for cross-entropy, 8192), the blocks
  are 256 columns wide and streamed: every pass reads the class rows from memory again, fetched
  ahead, and the last recomputes the exponentials, with the packed blocks' arithmetic per
  column.

The exponential of the max-shifted logits is the C kernel's: a branch-free range reduction
``exp(x) = 2^k exp(r)`` with a Taylor polynomial, in the input dtype (degree 7 in float32, 13 in
float64, about 1 ulp), because libm's ``exp`` is a call per element that no loop vectorizes.
Sums, the maximum's ties and everything after them follow the C kernels: ``s`` sums
``exp(z - max)`` in float64 over every entry but one maximum, so a class that dominates by 100
keeps its exp(-100). Only the reduction helpers are compiled with ``fastmath={"reassoc"}``, and
the exponentials and the loops around them with ``"contract"`` (FMA, as the C kernel's AVX2 and
AVX-512 builds); no flag that assumes finite values or ignores signed zeros, so NaN propagates
and the exponential's rounding trick holds. The exponentials carry their flags themselves, so
their bits do not depend on which kernel compiled them first (see ``_calling``). Float32
partial sums run in float32 over short chunks and are added in float64, as in the C kernel.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from llvmlite import ir
from numba import float32, float64, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._checks import writeable
from ._dtypes import is_half
from ._half_numba import load, round_into, store, view
from ._numba_notice import CompileNotice
from ._numba_prefetch import prefetch_read, prefetch_write
from ._softmax_numpy import finish

# The drivers compile lazily, for the dtypes and kernels a program uses (all of them up front
# took minutes on a busy 2-core machine), so the notice listens for as long as the module lives,
# and each driver's compilation (10-25 s each on a 2-core machine) says its own line.
_notice = CompileNotice(
    "softmax",
    __name__,
    drivers={
        "_forward": "softmax and log-softmax",
        "_forward_h": "softmax and log-softmax",
        "_backward": "softmax and log-softmax backward",
        "_backward_h": "softmax and log-softmax backward",
        "_xent_labels": "class-label cross-entropy",
        "_xent_labels_h": "class-label cross-entropy",
        "_xent_probs": "probability-target cross-entropy",
        "_xent_probs_h": "probability-target cross-entropy",
    },
)

_OPTS = {"parallel": True, "cache": True, "nogil": True}
_REASSOC = {"reassoc"}
# Loops with the exponential may contract a * b + c to one FMA, as the C kernel's AVX2 and
# AVX-512 builds do. The row sums are also reassociated into vector lanes; the exponential's
# rounding trick (x + S) - S survives that, since folding it would also need "nsz".
_CONTRACT = {"contract"}
_FAST_EXP = {"reassoc", "contract"}

# ---- exp: the C kernel's polynomial, vectorizable -------------------------------------------


@intrinsic
def _as_float(typingctx, bits):
    """The float32 / float64 whose bit pattern is the int32 / int64 ``bits``."""
    kinds = {types.int32: (float32, ir.FloatType()), types.int64: (float64, ir.DoubleType())}
    if bits not in kinds:
        return None
    ty, llty = kinds[bits]

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], llty)

    return ty(bits), codegen


@intrinsic
def _as_int(typingctx, x):
    """The int32 / int64 bit pattern of the float32 / float64 ``x``."""
    kinds = {float32: (types.int32, ir.IntType(32)), float64: (types.int64, ir.IntType(64))}
    if x not in kinds:
        return None
    ty, llty = kinds[x]

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], llty)

    return ty(x), codegen


# Constants as typed globals: a Python float literal would promote float32 arithmetic to float64.
_S32, _S64 = np.float32(1.5 * 2.0**23), 1.5 * 2.0**52  # adding it rounds x / ln2 to an integer k
_L2E32, _L2E64 = np.float32(1.44269504088896341), 1.4426950408889634074
_LN2HI32, _LN2LO32 = np.float32(0.693145751953125), np.float32(1.428606765330187045e-06)
_LN2HI64, _LN2LO64 = 6.93147180369123816490e-01, 1.90821492927058770002e-10
_P32 = tuple(np.float32(1.0 / math.factorial(k)) for k in range(8))
_P64 = tuple(1.0 / math.factorial(k) for k in range(14))
_ZERO32 = np.float32(0.0)
_TINY32, _TINY64 = np.float32(-87.33), -708.39  # below: under the smallest normal number
_LO32, _HI32 = np.float32(-104.0), np.float32(89.0)
_LO64, _HI64 = -746.0, 710.0


@nb.njit(cache=True, fastmath=_CONTRACT)
def _poly32(r):  # pragma: no cover - compiled
    """Taylor polynomial of exp to degree 7 (Horner; float32 constants keep float32 math)."""
    p = _P32[7] * r + _P32[6]
    p = p * r + _P32[5]
    p = p * r + _P32[4]
    p = p * r + _P32[3]
    p = p * r + _P32[2]
    p = p * r + _P32[1]
    return p * r + _P32[0]


@nb.njit(cache=True, fastmath=_CONTRACT)
def _poly64(r):  # pragma: no cover - compiled
    """Taylor polynomial of exp to degree 13."""
    p = _P64[13] * r + _P64[12]
    p = p * r + _P64[11]
    p = p * r + _P64[10]
    p = p * r + _P64[9]
    p = p * r + _P64[8]
    p = p * r + _P64[7]
    p = p * r + _P64[6]
    p = p * r + _P64[5]
    p = p * r + _P64[4]
    p = p * r + _P64[3]
    p = p * r + _P64[2]
    p = p * r + _P64[1]
    return p * r + _P64[0]


@nb.njit(cache=True, fastmath=_CONTRACT)
def _exp_neg32(x):  # pragma: no cover - compiled
    kf = x * _L2E32 + _S32
    k = kf - _S32
    r = (x - k * _LN2HI32) - k * _LN2LO32
    # kf's low bits hold k + 1.5 * 2^23; re-bias them into the exponent field of 2^k.
    scale = _as_float(np.int32((np.int64(_as_int(kf)) + (127 - 0x4B400000)) << 23))
    return _ZERO32 if x < _TINY32 else _poly32(r) * scale


@nb.njit(cache=True, fastmath=_CONTRACT)
def _exp_neg64(x):  # pragma: no cover - compiled
    kf = x * _L2E64 + _S64
    k = kf - _S64
    r = (x - k * _LN2HI64) - k * _LN2LO64
    scale = _as_float((_as_int(kf) + (1023 - 0x4338000000000000)) << 52)
    return 0.0 if x < _TINY64 else _poly64(r) * scale


@nb.njit(cache=True, fastmath=_CONTRACT)
def _exp_any32(x):  # pragma: no cover - compiled
    x = _LO32 if x < _LO32 else x
    x = _HI32 if x > _HI32 else x
    kf = x * _L2E32 + _S32
    k = kf - _S32
    r = (x - k * _LN2HI32) - k * _LN2LO32
    ki = np.int64(_as_int(kf)) - 0x4B400000
    k1 = ki >> 1
    k2 = ki - k1  # 2^k in two halves, so subnormal results come out right
    s1 = _as_float(np.int32((k1 + 127) << 23))
    s2 = _as_float(np.int32((k2 + 127) << 23))
    return _poly32(r) * s1 * s2


@nb.njit(cache=True, fastmath=_CONTRACT)
def _exp_any64(x):  # pragma: no cover - compiled
    x = _LO64 if x < _LO64 else x
    x = _HI64 if x > _HI64 else x
    kf = x * _L2E64 + _S64
    k = kf - _S64
    r = (x - k * _LN2HI64) - k * _LN2LO64
    ki = _as_int(kf) - 0x4338000000000000
    k1 = ki >> 1
    k2 = ki - k1
    return _poly64(r) * _as_float((k1 + 1023) << 52) * _as_float((k2 + 1023) << 52)


def _exp_neg(x):
    """exp(x) for x <= 0 or NaN (max-shifted logits); results below the smallest normal are 0."""
    raise NotImplementedError  # pragma: no cover - replaced by the overload in compiled code


def _exp_any(x):
    """exp(x) for any x, clamped like the C kernel's scalar exp (inf above, 0 far below)."""
    raise NotImplementedError  # pragma: no cover


def _typed(like, x):
    """``x`` converted to the float type of ``like``."""
    raise NotImplementedError  # pragma: no cover


@overload(_typed)
def _typed_impl(like, x):
    if like == float32:
        return lambda like, x: np.float32(x)
    if like == float64:
        return lambda like, x: np.float64(x)
    return None


def _widened(row, scratch):
    """A float row to compute with: ``row`` itself, or a half view's row widened into the
    float32 ``scratch``."""
    raise NotImplementedError  # pragma: no cover


@overload(_widened)
def _widened_impl(row, scratch):
    if row.dtype in (float32, float64):
        return lambda row, scratch: row

    def impl(row, scratch):
        _widen_row(row, scratch)
        return scratch

    return impl


def _exps(row, scratch):
    """Where a row kernel keeps its exponentials: the output row itself for a float array, the
    float32 scratch row for a half-precision view."""
    raise NotImplementedError  # pragma: no cover


@overload(_exps)
def _exps_impl(row, scratch):
    if row.dtype in (float32, float64):
        return lambda row, scratch: row
    return lambda row, scratch: scratch


def _calling(fn):
    """An overload's implementation that only calls the compiled ``fn``. An overload's own
    body is compiled once per process with the flags of its first caller, and so is a plain
    njit function first compiled inside a caller's compilation; so the exponentials are
    compiled functions with their own flags, called, and give the same bits whichever kernel
    compiled (or cached) them first."""
    return None if fn is None else (lambda x: fn(x))


@overload(_exp_neg)
def _exp_neg_impl(x):
    return _calling({float32: _exp_neg32, float64: _exp_neg64}.get(x))


@overload(_exp_any)
def _exp_any_impl(x):
    return _calling({float32: _exp_any32, float64: _exp_any64}.get(x))


# ---- rows (inner == 1) ------------------------------------------------------------------------


_I32 = ir.IntType(32)


@intrinsic
def _row_max(typingctx, z):
    """Max of a float32 / float64 row, the C kernel's way (row_max in csrc/softmax_impl.h): a
    row shorter than a vector scalar; otherwise four vector maxima (16 float32 / 8 float64
    lanes) seeded with the first vector, one more loop of single vectors, the last vector
    overlapping (max is idempotent), and the lanes folded into z[0] in order. Same comparisons
    (v > m keeps m, so a NaN never wins one; a NaN that loses them still turns the row's sum
    into NaN), so the same maximum as the C kernel, ties and signed zeros included.

    Written as LLVM IR on vectors: a select-based maximum is a reduction that LLVM's loop
    vectorizer leaves scalar without fast-math flags that assume no NaN, and Numba does not run
    the SLP vectorizer that would pack eight scalar lanes (they ran at 0.16 ns per element, the
    vectors at 0.02)."""
    if not (isinstance(z, types.Array) and z.ndim == 1 and z.layout == "C"):
        return None
    if z.dtype not in (float32, float64):
        return None
    lanes = 16 if z.dtype == float32 else 8
    align = 4 if z.dtype == float32 else 8

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        data, n = ary.data, ary.nitems
        vec = ir.VectorType(data.type.pointee, lanes).as_pointer()

        def k(v):
            return ir.Constant(n.type, v)

        def vload(j):
            return builder.load(builder.bitcast(builder.gep(data, [j]), vec), align=align)

        def keep_greater(v, m):
            return builder.select(builder.fcmp_ordered(">", v, m), v, m)

        m = cgutils.alloca_once_value(builder, builder.load(data))
        with builder.if_else(builder.icmp_signed("<", n, k(lanes))) as (short, whole):
            with short:
                with cgutils.for_range_slice(builder, k(1), n, k(1)) as (j, _):
                    v = builder.load(builder.gep(data, [j]))
                    builder.store(keep_greater(v, builder.load(m)), m)
            with whole:
                first = vload(k(0))
                acc = [cgutils.alloca_once_value(builder, first) for _ in range(4)]
                quads = builder.sdiv(builder.sub(n, k(lanes)), k(4 * lanes))
                with cgutils.for_range(builder, quads) as loop:
                    j = builder.add(k(lanes), builder.mul(loop.index, k(4 * lanes)))
                    for q in range(4):
                        v = vload(builder.add(j, k(q * lanes)))
                        builder.store(keep_greater(v, builder.load(acc[q])), acc[q])
                j = builder.add(k(lanes), builder.mul(quads, k(4 * lanes)))
                with cgutils.for_range(builder, builder.sdiv(builder.sub(n, j), k(lanes))) as loop:
                    v = vload(builder.add(j, builder.mul(loop.index, k(lanes))))
                    builder.store(keep_greater(v, builder.load(acc[0])), acc[0])
                m0 = keep_greater(vload(builder.sub(n, k(lanes))), builder.load(acc[0]))
                m1 = keep_greater(builder.load(acc[2]), builder.load(acc[1]))
                m0 = keep_greater(builder.load(acc[3]), m0)
                m0 = keep_greater(m1, m0)
                s = builder.load(m)
                for lane in range(lanes):
                    s = keep_greater(builder.extract_element(m0, ir.Constant(_I32, lane)), s)
                builder.store(s, m)
        return builder.load(m)

    return z.dtype(z), codegen


# Partial sums of the exponentials run in the input dtype over chunks of _CHUNK entries and are
# then added in float64, as in the C kernel: with reassoc LLVM splits a chunk over its vector
# lanes and unrolled accumulators, so no float32 partial adds more than ~16 terms (relative
# rounding below 1e-6). Widening every float32 exponential to float64 instead halves the vector
# width of the whole loop (the exponential included) and cost 1.8x the C kernel's time.
_CHUNK = 256


@nb.njit(cache=True, fastmath=_FAST_EXP)
def _chunk_exp_sum(z, m, e):  # pragma: no cover - compiled
    """Store exp(z - m) in e; return the sum of those that are not ties with the maximum and the
    number of ties, both in the input dtype. (A slice, not an index range: indices from 0 are
    known not to wrap around, so the loads stay contiguous vectors instead of gathers.)

    Two loops, the sums in the second, which only reads: a loop that stores into e while it
    sums runs vectorized only after a run-time test that e does not begin within a few vectors
    after z, and scalar otherwise, with its sums associated differently, so the last bits of a
    result depended on where the output row lay (a log-softmax of 13 classes, its out= right
    after z, differed from the same call with the output elsewhere). The exponentials are the
    same values from either form of the first loop; the chunk is still in L1 for the second."""
    zero = _typed(m, 0.0)
    one = _typed(m, 1.0)
    for j in range(z.size):
        e[j] = _exp_neg(z[j] - m)
    p = zero
    ties = zero
    for j in range(z.size):
        tie = z[j] - m == 0
        p += zero if tie else e[j]
        ties += one if tie else zero
    return p, ties


@nb.njit(cache=True)
def _fetch_next(nz, nout, j0, j1):  # pragma: no cover - compiled
    """Fetch entries [j0, j1) of the next row: its input for reading, its output for writing."""
    for b in range(j0 * nz.itemsize, j1 * nz.itemsize, 64):
        prefetch_read(nz, b)
    for b in range(j0 * nout.itemsize, j1 * nout.itemsize, 64):
        prefetch_write(nout, b)


@nb.njit(cache=True)
def _row_exp_sum(z, m, e, nz, nout):  # pragma: no cover - compiled
    """Store exp(z - m) in e; return s, the float64 sum over all entries but one maximum (ties
    with the maximum are counted, not summed, so s keeps a tiny exp(-100) term exactly). The
    exponentials, the chunk sums and the tie counts run in the input dtype (whole vectors);
    the chunks are added in float64.

    Meanwhile the next row's input nz and output nout are fetched, a chunk's worth per chunk,
    as the C kernel's half rows do: this pass is bound by the exponentials, the first by
    reading a row and the last by writing one, so the fetches overlap the memory traffic of
    the next row with this row's arithmetic. (The last row of a run passes itself.)"""
    s = 0.0
    ties = 0.0
    n = z.size
    for j0 in range(0, n, _CHUNK):
        j1 = min(j0 + _CHUNK, n)
        _fetch_next(nz, nout, j0, j1)
        p, c = _chunk_exp_sum(z[j0:j1], m, e[j0:j1])
        s += np.float64(p)
        ties += np.float64(c)
    return s + (ties - 1.0)


@nb.njit(cache=True, fastmath=_REASSOC)
def _row_dot(a, b, use_b):  # pragma: no cover - compiled
    """sum(a * b) (sum(a) without use_b) in float64."""
    d = 0.0
    if use_b:
        for j in range(a.size):
            d += np.float64(load(a[j])) * np.float64(load(b[j]))
    else:
        for j in range(a.size):
            d += np.float64(load(a[j]))
    return d


@nb.njit(cache=True)
def _first_nan(a, b, use_b, fallback):  # pragma: no cover - compiled
    """The NaN a row's results all take once a sum over it is NaN: its first NaN input in class
    order (a[j], then b[j] with use_b), widened to float64, else ``fallback`` (the sum's own
    NaN, from inf - inf or 0 * inf, which is the default NaN whatever the order). A vectorized
    sum that meets two NaNs keeps the one its lanes happen to meet first, and the float and
    16-bit instances of a loop need not split it into the same lanes."""
    for j in range(a.size):
        x = np.float64(load(a[j]))
        if x != x:
            return x
        if use_b:
            x = np.float64(load(b[j]))
            if x != x:
                return x
    return fallback


@nb.njit(cache=True, fastmath=_REASSOC)
def _row_wdot(w, z, m):  # pragma: no cover - compiled
    """sum_j w[j] * (z[j] - m) in float64."""
    d = 0.0
    mm = np.float64(m)
    for j in range(z.size):
        d += w[j] * (np.float64(z[j]) - mm)
    return d


# The row kernels take the logits z as a float row (a half row is widened into float32 scratch
# first: the vector maximum reads float rows, and the widened row stays in L1 / L2 for the
# passes that follow). Targets q, g, y and the outputs may be half views:
# load() widens each element as it is read, store() rounds each result once. The exponentials
# go where _exps says: the output row itself for a float array, a float32 scratch row for a
# half view (chosen inside the kernels, so that LLVM sees one array, not two that may overlap).


@nb.njit(cache=True)
def _softmax_row(z, out, scratch, log, nz, nout):  # pragma: no cover - compiled
    e = _exps(out, scratch)
    m = _row_max(z)
    s = _row_exp_sum(z, m, e, nz, nout)
    # In the input dtype, as the C kernel: (z - max) - log1p(s) in that order keeps the log 2
    # of a tie near 3e29 in float32.
    if log:
        lse = _typed(m, math.log1p(s))
        for j in range(z.size):
            out[j] = store(out, (z[j] - m) - lse)
    else:
        inv = _typed(m, 1.0 / (1.0 + s))
        for j in range(z.size):
            out[j] = store(out, e[j] * inv)


@nb.njit(cache=True)
def _backward_row(g, y, out, log):  # pragma: no cover - compiled
    d = _row_dot(g, y, not log)
    like = load(y[0])
    if d != d:
        # A NaN in g (or y, for softmax) makes d NaN and every result NaN: all take the row's
        # first NaN (_first_nan). Where two NaNs meet in one product, difference or vectorized
        # sum, which survives depends on the order in which the compiler puts the operands, and
        # that differs between the float and the 16-bit instances of these loops on some CPUs
        # (AVX2), so the loops below would give the half path other NaN payloads than the
        # float32 path.
        nan = _typed(like, _first_nan(g, y, not log, d))
        for j in range(g.size):
            out[j] = store(out, nan)
        return
    if log:
        for j in range(g.size):
            v = np.float64(load(g[j])) - np.float64(_exp_any(load(y[j]))) * d
            out[j] = store(out, _typed(like, v))
    else:
        for j in range(g.size):
            yj = np.float64(load(y[j]))
            out[j] = store(out, _typed(like, yj * (np.float64(load(g[j])) - d)))


@nb.njit(cache=True)
def _xent_label_row(z, dz, scratch, lab, w, wall, eps, scale, nz, nout):  # pragma: no cover
    e = _exps(dz, scratch)
    c = z.size
    m = _row_max(z)
    s = _row_exp_sum(z, m, e, nz, nout)
    lse = math.log1p(s)
    ec, keep = eps / c, 1.0 - eps
    wy, ty = w[lab], np.float64(z[lab]) - np.float64(m)
    big_a = keep * wy + ec * wall
    alpha = scale * big_a / (1.0 + s)
    if eps == 0.0:
        alpha_t = _typed(m, alpha)
        for k in range(c):
            dz[k] = store(dz, alpha_t * e[k])
        dz[lab] = store(dz, _typed(m, scale * wy * math.expm1(-(lse - ty))))
        return wy * (lse - ty)
    wt = _row_wdot(w, z, m)
    se = scale * ec
    e_lab = e[lab]  # e may be dz itself
    for k in range(c):
        dz[k] = store(dz, _typed(m, alpha * np.float64(e[k]) - se * w[k]))
    v = _typed(m, alpha * np.float64(e_lab) - se * w[lab])  # the entry the loop wrote
    dz[lab] = store(dz, _typed(m, np.float64(v) - scale * keep * wy))
    return big_a * lse - keep * wy * ty - ec * wt


@nb.njit(cache=True)
def _xent_prob_row(z, q, dz, scratch, w, eps, scale, nz, nout):  # pragma: no cover - compiled
    e = _exps(dz, scratch)
    c = z.size
    m = _row_max(z)
    s = _row_exp_sum(z, m, e, nz, nout)
    ec, keep = eps / c, 1.0 - eps
    big_a, at = _prob_coeffs(z, q, w, np.float64(m), ec, keep)
    if big_a != big_a:  # q's first NaN, not the one the vectorized sum kept (_first_nan)
        big_a = _first_nan(q, q, False, big_a)
    alpha = scale * big_a
    if alpha == alpha:  # else big_a's NaN, not whichever of it and s's the division keeps
        alpha /= 1.0 + s
    if alpha != alpha:
        # NaN in z or q: every gradient and the loss are NaN, alpha's, not whichever of alpha's
        # and e's the products below would keep, or of big_a's and at's (see _backward_row)
        nan = _typed(m, alpha)
        for k in range(c):
            dz[k] = store(dz, nan)
        return alpha
    for k in range(c):
        v = alpha * np.float64(e[k]) - scale * (w[k] * (keep * np.float64(load(q[k])) + ec))
        dz[k] = store(dz, _typed(m, v))
    return big_a * math.log1p(s) - at


@nb.njit(cache=True, fastmath=_REASSOC)
def _prob_coeffs(z, q, w, m, ec, keep):  # pragma: no cover - compiled
    """A = sum_k a_k and sum_k a_k (z_k - m) with a_k = w_k (keep q_k + ec)."""
    big_a = 0.0
    at = 0.0
    for k in range(z.size):
        a = w[k] * (keep * np.float64(load(q[k])) + ec)
        big_a += a
        at += a * (np.float64(z[k]) - m)
    return big_a, at


# ---- column blocks (inner > 1) ----------------------------------------------------------------

# The packed block (classes x B values) should stay in L2 between the passes over the class axis;
# B is a multiple of 16 (whole vectors), at least 16 and at most 256 columns (as in the C kernel).
_BLOCK_BYTES = 512 * 1024
# Class rows of a block are `inner` apart: with a power-of-two inner they share a few cache sets,
# and the hardware prefetcher does not cross the 4 KiB pages they lie on, so the passes that
# read them from memory fetch _PREFETCH classes ahead (as the C kernel).
_PREFETCH = 8
# Classes per partial sum in the input dtype (one term per lane each), as the C kernel's chunk.
_BLOCK_CHUNK = 16


@nb.njit(cache=True)
def _block_cols(c, inner, itemsize):  # pragma: no cover - compiled
    b = (_BLOCK_BYTES // (c * itemsize)) // 16 * 16
    b = min(max(b, 16), 256)
    return min(b, inner)


# In the block loops every class row of a block is taken as a 1-D slice (zo[k, i0:i0 + nbk]) and
# indexed from 0: an index i0 + i that Numba cannot prove non-negative gets a wrap-around test,
# and the loop then gathers and scatters lane by lane instead of loading whole vectors.


@nb.njit(cache=True)
def _block_max(zo, i0, nbk, pk, m):  # pragma: no cover - compiled
    """Column maxima of columns [i0, i0 + nbk) of the (classes, inner) slab zo, and a packed
    copy pk[k, i] of the block (its class rows are inner apart in zo, adjacent in pk)."""
    mm = m[:nbk]
    z0 = zo[0, i0 : i0 + nbk]
    for i in range(nbk):
        mm[i] = z0[i]
    row, first, span = zo.strides[0], i0 * zo.itemsize, nbk * zo.itemsize
    for k in range(zo.shape[0]):
        for b in range(0, span, 64):
            prefetch_read(zo, (k + _PREFETCH) * row + first + b)
        zr = zo[k, i0 : i0 + nbk]
        pr = pk[k, :nbk]
        for i in range(nbk):
            v = zr[i]
            pr[i] = v
            mm[i] = v if v > mm[i] else mm[i]


@nb.njit(cache=True, fastmath=_CONTRACT)
def _block_exp_sum(pk, nbk, m, s, ties):  # pragma: no cover - compiled
    """pk[k, i] = exp(pk[k, i] - m[i]) in place; s[i] as in _row_exp_sum, per column. As there,
    the sums and tie counts run in the input dtype over _BLOCK_CHUNK classes at a time (whole
    vectors across the columns) and are then added in float64."""
    mm = m[:nbk]
    zero, one = _typed(mm[0], 0.0), _typed(mm[0], 1.0)
    part = np.empty(nbk, pk.dtype)
    cnt = np.empty(nbk, pk.dtype)
    for i in range(nbk):
        s[i] = 0.0
        ties[i] = 0
    c = pk.shape[0]
    for k0 in range(0, c, _BLOCK_CHUNK):
        for i in range(nbk):
            part[i] = zero
            cnt[i] = zero
        for k in range(k0, min(k0 + _BLOCK_CHUNK, c)):
            pr = pk[k, :nbk]
            for i in range(nbk):
                t = pr[i] - mm[i]
                e = _exp_neg(t)
                pr[i] = e
                tie = t == 0
                part[i] += zero if tie else e
                cnt[i] += one if tie else zero
        for i in range(nbk):
            s[i] += np.float64(part[i])
            ties[i] += np.int64(cnt[i])
    for i in range(nbk):
        s[i] += ties[i] - 1


@nb.njit(cache=True)
def _softmax_block(zo, oo, i0, nbk, pk, m, s, ties, log):  # pragma: no cover - compiled
    """Columns [i0, i0 + nbk) of the (classes, inner) slab zo into oo. m has two rows of the
    input dtype: the column maxima, then log1p(s) or 1 / (1 + s), so the last pass runs in the
    input dtype as in the C kernel."""
    mx, fin = m[0, :nbk], m[1, :nbk]
    _block_max(zo, i0, nbk, pk, mx)
    _block_exp_sum(pk, nbk, mx, s, ties)
    row, first, span = oo.strides[0], i0 * oo.itemsize, nbk * oo.itemsize
    if log:
        for i in range(nbk):
            fin[i] = math.log1p(s[i])
        for k in range(zo.shape[0]):
            for b in range(0, span, 64):  # the strided output rows, fetched for writing
                prefetch_write(oo, (k + _PREFETCH) * row + first + b)
            zr, orow = zo[k, i0 : i0 + nbk], oo[k, i0 : i0 + nbk]
            for i in range(nbk):
                orow[i] = (zr[i] - mx[i]) - fin[i]
    else:
        for i in range(nbk):
            fin[i] = 1.0 / (1.0 + s[i])
        for k in range(zo.shape[0]):
            for b in range(0, span, 64):
                prefetch_write(oo, (k + _PREFETCH) * row + first + b)
            pr, orow = pk[k, :nbk], oo[k, i0 : i0 + nbk]
            for i in range(nbk):
                orow[i] = pr[i] * fin[i]


@nb.njit(cache=True)
def _stream_max(zo, i0, nbk, mx):  # pragma: no cover - compiled
    """mx[i] = the maximum of column i0 + i of the slab zo, read from memory a class row at a
    time (fetched ahead), widened by load()."""
    z0 = zo[0, i0 : i0 + nbk]
    for i in range(nbk):
        mx[i] = load(z0[i])
    for k in range(zo.shape[0]):
        _fetch_rows(zo, k, i0, nbk)
        zr = zo[k, i0 : i0 + nbk]
        for i in range(nbk):
            v = load(zr[i])
            mx[i] = v if v > mx[i] else mx[i]


@nb.njit(cache=True, fastmath=_CONTRACT)
def _stream_exp_sum(zo, i0, nbk, mx, ss, tt, pp, cc):  # pragma: no cover - compiled
    """_block_exp_sum's column sums s (and ties) of the slab zo itself, without storing the
    exponentials; pp / cc are the chunk partials in the compute dtype."""
    zero, one = _typed(mx[0], 0.0), _typed(mx[0], 1.0)
    ss[:] = 0.0
    tt[:] = 0
    c = zo.shape[0]
    for k0 in range(0, c, _BLOCK_CHUNK):
        pp[:] = zero
        cc[:] = zero
        for k in range(k0, min(k0 + _BLOCK_CHUNK, c)):
            _fetch_rows(zo, k, i0, nbk)
            zr = zo[k, i0 : i0 + nbk]
            for i in range(nbk):
                t = load(zr[i]) - mx[i]
                e = _exp_neg(t)
                tie = t == 0
                pp[i] += zero if tie else e
                cc[i] += one if tie else zero
        for i in range(nbk):
            ss[i] += np.float64(pp[i])
            tt[i] += np.int64(cc[i])
    for i in range(nbk):
        ss[i] += tt[i] - 1


@nb.njit(cache=True, fastmath=_CONTRACT)
def _stream_softmax(zo, oo, i0, nbk, m, s, ties, part, cnt, log):  # pragma: no cover - compiled
    """_softmax_block for a block too large for L2 (see _stream_cols), without its packed
    copy: each pass reads the class rows of zo again, fetched ahead, and the last recomputes
    exp(z - max) instead of reading it back. zo / oo may be half-precision views (widened by
    load(), rounded once by store()): no float32 tile of the block is made. The arithmetic per
    column is _block_max / _block_exp_sum / _softmax_block's, in the same order, with the same
    contractions as _block_exp_sum's exps, so the results are theirs bit for bit."""
    mx, fin, ss = m[0, :nbk], m[1, :nbk], s[:nbk]
    _stream_max(zo, i0, nbk, mx)
    _stream_exp_sum(zo, i0, nbk, mx, ss, ties[:nbk], part[:nbk], cnt[:nbk])
    for i in range(nbk):
        fin[i] = math.log1p(ss[i]) if log else 1.0 / (1.0 + ss[i])
    for k in range(zo.shape[0]):
        _fetch_rows(zo, k, i0, nbk)
        zr, orow = zo[k, i0 : i0 + nbk], oo[k, i0 : i0 + nbk]
        if log:
            for i in range(nbk):
                orow[i] = store(orow, (load(zr[i]) - mx[i]) - fin[i])
        else:
            for i in range(nbk):
                orow[i] = store(orow, _exp_neg(load(zr[i]) - mx[i]) * fin[i])


# The fewest columns a kernel packs into a block (the C kernel's NMX_STREAM_MIN*): with fewer,
# each class row of a packed block is a short run of bytes `inner` apart, and reading the
# block from memory again in wide streamed blocks is faster. Cross-entropy keeps 16: its reduced
# loss is summed block by block, so its threshold fixes that sum's rounding.
_STREAM_MIN_XENT, _STREAM_MIN_FWD, _STREAM_MIN_BWD = 16, 64, 128


@nb.njit(cache=True)
def _streams(c, itemsize, least):  # pragma: no cover - compiled
    """Whether blocks of c classes are streamed: fewer than `least` columns fit the L2 budget,
    so every pass reads the block from memory (the C kernel's nmx_block_streams)."""
    return _BLOCK_BYTES // (c * itemsize) < least


@nb.njit(cache=True)
def _stream_cols(c, inner, itemsize, least):  # pragma: no cover - compiled
    """Columns per block of the drivers: _block_cols', or for streamed blocks the widest, for
    long contiguous runs per class row (the C kernel's streamed blocks)."""
    if _streams(c, itemsize, least):
        return min(256, inner)
    return _block_cols(c, inner, itemsize)


@nb.njit(cache=True)
def _fetch_rows(a, k, i0, nbk):  # pragma: no cover - compiled
    """Fetch columns [i0, i0 + nbk) of class row k + _PREFETCH of the slab a."""
    row, first = a.strides[0], i0 * a.itemsize
    for b in range(0, nbk * a.itemsize, 64):
        prefetch_read(a, (k + _PREFETCH) * row + first + b)


@nb.njit(cache=True)
def _backward_block(go, yo, oo, i0, nbk, d, e, log, stream):  # pragma: no cover - compiled
    """Backward of columns [i0, i0 + nbk) of the (classes, inner) slabs: the first pass reads
    the class rows from memory, fetched ahead, and sums g y (g for log-softmax) in float64
    into d; the second reads them from L2, or, for a streamed block (too large for L2), from
    memory again, fetched ahead too, and writes dz = y (g - d), or g - exp(lp) d. d (float64)
    and e (y's dtype, float32 for 16-bit views) are rows of at least nbk.

    The slabs may be 16-bit views: the half drivers call it on them for streamed blocks, each
    element widened as it is read and each result rounded once (through float32) as it is
    written, so the same bits as a float32 tile (load and store are the identity for float
    arrays). Widening each row into float32 first and rounding from a float32 row took 1.7x
    (softmax) and 1.4x (log-softmax) the time (float16, 32000 x 512, one thread). The
    log-softmax's exponentials go to the row e first: in a loop of their own they run as whole
    vectors of the input dtype, where the float64 products beside them cut the vectors to the
    float64 width and took twice the time. The loops are written here, not in per-row helper
    functions: through such helpers the packed blocks of a (512, 32000) classes-first backward
    took 1.35-1.5x this time in float16 (both kernels) and float64 softmax, 1.0-1.3x in float32
    and float64 log-softmax (one and two threads); the streamed half softmax backward, 1.1-1.3x."""
    dd = d[:nbk]
    dd[:] = 0.0
    for k in range(go.shape[0]):
        _fetch_rows(go, k, i0, nbk)
        gr = go[k, i0 : i0 + nbk]
        if log:
            for i in range(nbk):
                dd[i] += np.float64(load(gr[i]))
        else:
            _fetch_rows(yo, k, i0, nbk)
            yr = yo[k, i0 : i0 + nbk]
            for i in range(nbk):
                dd[i] += np.float64(load(gr[i])) * np.float64(load(yr[i]))
    for k in range(go.shape[0]):
        if stream:
            _fetch_rows(go, k, i0, nbk)
            _fetch_rows(yo, k, i0, nbk)
        gr, yr, orow = go[k, i0 : i0 + nbk], yo[k, i0 : i0 + nbk], oo[k, i0 : i0 + nbk]
        if log:
            ee = e[:nbk]
            for i in range(nbk):
                ee[i] = _exp_any(load(yr[i]))
            for i in range(nbk):
                v = np.float64(load(gr[i])) - np.float64(ee[i]) * dd[i]
                orow[i] = store(orow, v)
        else:
            for i in range(nbk):
                v = np.float64(load(yr[i])) * (np.float64(load(gr[i])) - dd[i])
                orow[i] = store(orow, v)


@nb.njit(cache=True, fastmath=_CONTRACT)
def _block_grad(pk, qo, w, alpha, eps, scale, probs, do, i0, nbk):  # pragma: no cover - compiled
    """do[k, i0 + i] = alpha_i exp(z_ki - m_i) - scale w_k (keep q_ki + eps / C) (no q: labels),
    with the exponentials in pk. In the input dtype, as the C kernel: alpha and the subtracted
    term are rounded to it once, so the pass over the block is whole float32 vectors."""
    c = pk.shape[0]
    ec, keep = eps / c, 1.0 - eps
    like = pk[0, 0]
    al = np.empty(nbk, pk.dtype)
    for i in range(nbk):
        al[i] = _typed(like, alpha[i])
    row, first, span = do.strides[0], i0 * do.itemsize, nbk * do.itemsize
    for k in range(c):
        for b in range(0, span, 64):  # the strided dz rows: fetched for writing ahead of time
            prefetch_write(do, (k + _PREFETCH) * row + first + b)
        pr, dr = pk[k, :nbk], do[k, i0 : i0 + nbk]
        if probs:
            qr, wk = qo[k, i0 : i0 + nbk], scale * w[k]
            for i in range(nbk):
                dr[i] = al[i] * pr[i] - _typed(like, wk * (keep * np.float64(qr[i]) + ec))
        elif eps != 0.0:
            sub = _typed(like, scale * w[k] * ec)
            for i in range(nbk):
                dr[i] = al[i] * pr[i] - sub
        else:
            for i in range(nbk):
                dr[i] = al[i] * pr[i]


@nb.njit(cache=True)
def _xent_losses(yo, i0, probs, w, eps, scale, s, acc, lo):  # pragma: no cover - compiled
    """The losses lo of a block's columns from their sums s (see _block_exp_sum) and acc (see
    _xent_block), labels yo[1, i0 + i] (-1: ignored; unread for probabilities); s then holds each
    column's gradient factor alpha, and acc[1] log(sum_k exp(z_k - m)) for the label's entry."""
    keep = 1.0 - eps
    big_a, at, ty = acc[0], acc[1], acc[2]
    for i in range(lo.size):
        lse = math.log1p(s[i])
        if probs:
            lo[i] = big_a[i] * lse - at[i]
            s[i] = scale * big_a[i] / (1.0 + s[i])  # s now holds alpha
            continue
        lab = yo[1, i0 + i]
        if lab < 0:
            lo[i] = 0.0
            s[i] = 0.0
            continue
        wy = w[lab]
        big_a[i] += keep * wy
        if eps == 0.0:
            lo[i] = wy * (lse - ty[i])
        else:
            lo[i] = big_a[i] * lse - at[i] - keep * wy * ty[i]
        at[i] = lse  # kept for the label's gradient
        s[i] = scale * big_a[i] / (1.0 + s[i])


@nb.njit(cache=True)
def _xent_block(zo, qo, yo, w, wall, eps, scale, do, i0, nbk, work, lo):
    """Cross-entropy of columns [i0, i0 + nbk): integer labels yo (qo unused) when yo has
    rows, else probability targets qo; lo[i0 + i] receives the losses. work is the scratch
    (pk, m, s, ties, acc): acc[0] holds A, acc[1] sum_k a_k (z_k - m), acc[2] z_label - m per
    column."""  # pragma: no cover - compiled
    pk, m, s, ties, acc = work
    c = zo.shape[0]
    probs = yo.shape[0] == 0
    ec, keep = eps / c, 1.0 - eps
    _block_max(zo, i0, nbk, pk, m)
    big_a, at, ty = acc[0], acc[1], acc[2]
    for i in range(nbk):
        big_a[i] = 0.0
        at[i] = 0.0
        ty[i] = 0.0
    mm = m[:nbk]
    if probs or eps != 0.0:
        for k in range(c):
            pr, wk = pk[k, :nbk], w[k]
            qr = qo[k, i0 : i0 + nbk]
            for i in range(nbk):
                a = wk * ((keep * np.float64(qr[i]) + ec) if probs else ec)
                big_a[i] += a
                at[i] += a * (np.float64(pr[i]) - np.float64(mm[i]))
    if not probs:
        for i in range(nbk):
            lab = yo[0, i0 + i]
            if 0 <= lab < c:
                ty[i] = np.float64(pk[lab, i]) - np.float64(mm[i])
    _block_exp_sum(pk, nbk, m, s, ties)
    _xent_losses(yo, i0, probs, w, eps, scale, s, acc, lo[i0 : i0 + nbk])
    _block_grad(pk, qo, w, s, eps, scale, probs, do, i0, nbk)
    if not probs:
        for i in range(nbk):
            lab = yo[1, i0 + i]
            if lab < 0:
                for k in range(c):
                    do[k, i0 + i] = 0.0
            elif eps == 0.0:
                do[lab, i0 + i] = scale * w[lab] * math.expm1(-(at[i] - ty[i]))
            else:
                do[lab, i0 + i] = np.float64(do[lab, i0 + i]) - scale * keep * w[lab]


@nb.njit(cache=True, fastmath=_CONTRACT)
def _grad_entry(al, z, m, sub):  # pragma: no cover - compiled
    """One entry of a streamed block's gradient, alpha exp(z - m) - sub, with _block_grad's
    contraction: the same bits as the packed block's entry."""
    return al * _exp_neg(z - m) - sub


@nb.njit(cache=True)
def _stream_targets(zo, qo, w, probs, eps, i0, nbk, mx, big_a, at):  # pragma: no cover
    """_xent_block's sums A = sum_k a_k and sum_k a_k (z_k - m) of a streamed block, read from
    the slabs zo and qo (zo again for labels): the same float64 arithmetic, in the same order."""
    c = zo.shape[0]
    ec, keep = eps / c, 1.0 - eps
    for k in range(c):
        _fetch_rows(zo, k, i0, nbk)
        if probs:
            _fetch_rows(qo, k, i0, nbk)
        zr, qr, wk = zo[k, i0 : i0 + nbk], qo[k, i0 : i0 + nbk], w[k]
        for i in range(nbk):
            a = wk * ((keep * np.float64(load(qr[i])) + ec) if probs else ec)
            big_a[i] += a
            at[i] += a * (np.float64(load(zr[i])) - np.float64(mx[i]))


@nb.njit(cache=True, fastmath=_CONTRACT)
def _stream_grad(zo, qo, yo, w, al, mx, eps, scale, do, i0, nbk):  # pragma: no cover
    """_block_grad for a streamed block: the exponentials recomputed from the slab zo, each row
    of do written once (rounded by store() for a half view), the columns of ignored labels
    (yo[1, i] < 0) zeroed on the way rather than by a strided pass over the class axis."""
    c = zo.shape[0]
    probs = yo.shape[0] == 0
    ec, keep = eps / c, 1.0 - eps
    like = mx[0]
    zero = _typed(like, 0.0)
    masked = False
    for i in range(0 if probs else nbk):
        masked |= yo[1, i] < 0
    row, first, span = do.strides[0], i0 * do.itemsize, nbk * do.itemsize
    for k in range(c):
        _fetch_rows(zo, k, i0, nbk)
        for b in range(0, span, 64):
            prefetch_write(do, (k + _PREFETCH) * row + first + b)
        zr, dr = zo[k, i0 : i0 + nbk], do[k, i0 : i0 + nbk]
        if probs:
            _fetch_rows(qo, k, i0, nbk)
            qr, wk = qo[k, i0 : i0 + nbk], scale * w[k]
            for i in range(nbk):
                sub = _typed(like, wk * (keep * np.float64(load(qr[i])) + ec))
                dr[i] = store(dr, _grad_entry(al[i], load(zr[i]), mx[i], sub))
        elif eps == 0.0 and not masked:
            for i in range(nbk):
                dr[i] = store(dr, al[i] * _exp_neg(load(zr[i]) - mx[i]))
        elif eps == 0.0:
            for i in range(nbk):
                v = al[i] * _exp_neg(load(zr[i]) - mx[i])
                dr[i] = store(dr, v if yo[1, i] >= 0 else zero)
        else:
            sub = _typed(like, scale * w[k] * ec)
            for i in range(nbk):
                v = _grad_entry(al[i], load(zr[i]), mx[i], sub)
                dr[i] = store(dr, v if probs or yo[1, i] >= 0 else zero)


@nb.njit(cache=True)
def _stream_xent(zo, qo, yo, w, eps, scale, do, i0, nbk, work, lo):  # pragma: no cover
    """_xent_block for a block too large for L2 (see _stream_cols): no packed copy, every pass
    reads the class rows of the slabs from memory, fetched ahead. yo holds the block's labels
    as _xent_block's, from column 0 (lo too); zo, qo and do may be half views, widened by
    load() and rounded once by store(), with the per-column arithmetic of the float32 tiles, so
    the results are the packed path's bit for bit. work: (m, s, ties, part, cnt, acc, al)."""
    m, s, ties, part, cnt, acc, al = work
    c = zo.shape[0]
    probs = yo.shape[0] == 0
    keep = 1.0 - eps
    mm, ss = m[:nbk], s[:nbk]
    _stream_max(zo, i0, nbk, mm)
    acc[:, :nbk] = 0.0
    if probs or eps != 0.0:
        _stream_targets(zo, qo, w, probs, eps, i0, nbk, mm, acc[0], acc[1])
    ty = acc[2]
    if not probs:
        for i in range(nbk):  # yo[0] is the label clipped into [0, c)
            ty[i] = np.float64(load(zo[yo[0, i], i0 + i])) - np.float64(mm[i])
    _stream_exp_sum(zo, i0, nbk, mm, ss, ties[:nbk], part[:nbk], cnt[:nbk])
    _xent_losses(yo, 0, probs, w, eps, scale, ss, acc, lo[:nbk])
    like = mm[0]
    for i in range(nbk):
        al[i] = _typed(like, ss[i])
    _stream_grad(zo, qo, yo, w, al, mm, eps, scale, do, i0, nbk)
    if probs:
        return
    at = acc[1]
    for i in range(nbk):  # the label's entry, as _xent_block finishes it
        lab = yo[1, i]
        if lab < 0:
            continue
        if eps == 0.0:
            v = scale * w[lab] * math.expm1(-(at[i] - ty[i]))
        else:
            sub = _typed(like, scale * w[lab] * (eps / c))
            g = _grad_entry(al[i], load(zo[lab, i0 + i]), mm[i], sub)
            v = np.float64(g) - scale * keep * w[lab]
        do[lab, i0 + i] = store(do, _typed(like, v))


# ---- drivers ----------------------------------------------------------------------------------


@nb.njit(cache=True)
def _tasks(outer, c, inner, itemsize, chunks, least):  # pragma: no cover - compiled
    """(columns per block, blocks per example row, chunks, streamed): the work of a call is
    outer * blocks tasks (rows when inner == 1), dealt out in at most `chunks` chunks of
    neighbouring tasks; blocks of _stream_cols' width, and whether they are streamed (below
    `least` packed columns, the kernel's _STREAM_MIN_*)."""
    cols = 1 if inner == 1 else _stream_cols(c, inner, itemsize, least)
    nblk = (inner + cols - 1) // cols
    stream = inner > 1 and _streams(c, itemsize, least)
    return cols, nblk, max(1, min(outer * nblk, chunks)), stream


@nb.njit(cache=True)
def _stream_blocks(z, out, log, cols, nblk, t0, t1, dt):  # pragma: no cover - compiled
    """Streamed column blocks [t0, t1) of a softmax or log-softmax, computing in dtype dt."""
    inner = z.shape[2]
    m = np.empty((2, cols), dt)
    s = np.empty(cols)
    ties = np.empty(cols, np.int64)
    part = np.empty(cols, dt)
    cnt = np.empty(cols, dt)
    for t in range(t0, t1):
        o, i0 = t // nblk, (t % nblk) * cols
        nbk = min(cols, inner - i0)
        _stream_softmax(z[o], out[o], i0, nbk, m, s, ties, part, cnt, log)


@nb.njit(cache=True)
def _row_scratch(z, c):  # pragma: no cover - compiled
    """The float32 rows (z widened, exponentials) of a half row kernel; empty for float z."""
    n = c if z.itemsize == 2 else 0
    return np.empty(n, np.float32), np.empty(n, np.float32)


@nb.njit(cache=True)
def _softmax_rows(z, out, log, t0, t1):  # pragma: no cover - compiled
    """Rows [t0, t1) of an (outer, c, 1) softmax; z and out may be half views."""
    outer, c = z.shape[0], z.shape[1]
    z2, o2 = z.reshape((outer, c)), out.reshape((outer, c))
    zf, ef = _row_scratch(z, c)  # not one row: the log pass rereads z after the exps
    for o in range(t0, t1):
        nxt = o + 1 if o + 1 < t1 else o
        _softmax_row(_widened(z2[o], zf), o2[o], ef, log, z2[nxt], o2[nxt])


@nb.njit(**_OPTS)
def _forward(z, out, log, chunks):  # pragma: no cover - compiled
    outer, c, inner = z.shape
    cols, nblk, chunks, stream = _tasks(outer, c, inner, z.itemsize, chunks, _STREAM_MIN_FWD)
    ntasks = outer * nblk
    for ch in prange(chunks):
        t0, t1 = ntasks * ch // chunks, ntasks * (ch + 1) // chunks
        if inner == 1:  # rows as 1-D C-contiguous views (z[o, :, 0] would be strided)
            _softmax_rows(z, out, log, t0, t1)
        elif stream:
            _stream_blocks(z, out, log, cols, nblk, t0, t1, z.dtype)
        else:
            pk = np.empty((c, cols), z.dtype)
            m = np.empty((2, cols), z.dtype)
            s = np.empty(cols)
            ties = np.empty(cols, np.int64)
            for t in range(t0, t1):
                o, i0 = t // nblk, (t % nblk) * cols
                nbk = min(cols, inner - i0)
                _softmax_block(z[o], out[o], i0, nbk, pk, m, s, ties, log)


@nb.njit(cache=True)
def _backward_rows(g, y, out, log, t0, t1):  # pragma: no cover - compiled
    """Rows [t0, t1) of an (outer, c, 1) backward; the arrays may be half views."""
    outer, c = g.shape[0], g.shape[1]
    g2, y2, o2 = g.reshape((outer, c)), y.reshape((outer, c)), out.reshape((outer, c))
    for o in range(t0, t1):
        _backward_row(g2[o], y2[o], o2[o], log)


@nb.njit(**_OPTS)
def _backward(g, y, out, log, chunks):  # pragma: no cover - compiled
    outer, c, inner = g.shape
    cols, nblk, chunks, stream = _tasks(outer, c, inner, g.itemsize, chunks, _STREAM_MIN_BWD)
    ntasks = outer * nblk
    for ch in prange(chunks):
        t0, t1 = ntasks * ch // chunks, ntasks * (ch + 1) // chunks
        if inner == 1:
            _backward_rows(g, y, out, log, t0, t1)
        else:
            d = np.empty(cols)
            e = np.empty(cols, y.dtype)
            for t in range(t0, t1):
                o, i0 = t // nblk, (t % nblk) * cols
                nbk = min(cols, inner - i0)
                _backward_block(g[o], y[o], out[o], i0, nbk, d, e, log, stream)


@nb.njit(cache=True)
def _xent_setup(outer, inner, w):  # pragma: no cover - compiled
    """The zeroed losses and the sum of the class weights, outside the parallel driver: there
    Numba would make each of them a parallel region of its own, and on a busy machine every
    region waits for a descheduled thread (this doubled the call's time)."""
    return np.zeros((outer, inner)), w.sum()


@nb.njit(parallel=True, cache=True, nogil=True)
def _xent_run(z, q, y, w, has_ign, ign, eps, scale, dz, chunks):  # pragma: no cover - compiled
    """Shared driver of both cross-entropy kernels: labels y (q unused), or probabilities q when
    y has no rows."""
    outer, c, inner = z.shape
    loss, wall = _xent_setup(outer, inner, w)
    cols, nblk, chunks, stream = _tasks(outer, c, inner, z.itemsize, chunks, _STREAM_MIN_XENT)
    ntasks = outer * nblk
    for ch in prange(chunks):
        t0, t1 = ntasks * ch // chunks, ntasks * (ch + 1) // chunks
        if inner == 1:
            _xent_rows(z, q, y, w, wall, has_ign, ign, eps, scale, dz, loss, t0, t1)
        elif stream:
            _xent_stream_blocks(
                z, q, y, w, has_ign, ign, eps, scale, dz, loss, t0, t1, cols, nblk, z.dtype
            )
        else:
            _xent_blocks(z, q, y, w, wall, has_ign, ign, eps, scale, dz, loss, t0, t1, cols, nblk)
    return loss


@nb.njit(cache=True)
def _xent_rows(z, q, y, w, wall, has_ign, ign, eps, scale, dz, loss, t0, t1):
    """Rows [t0, t1) of an (outer, c, 1) block, as 1-D C-contiguous views; the arrays may be
    half views, the exponentials then kept in a float32 row."""  # pragma: no cover
    outer, c = z.shape[0], z.shape[1]
    z2, d2 = z.reshape((outer, c)), dz.reshape((outer, c))
    probs = y.shape[0] == 0
    q2 = q.reshape((outer, c)) if probs else z2
    zf, ef = _row_scratch(z, c)  # not one row: the loss rereads z after the exps
    for o in range(t0, t1):
        nxt = o + 1 if o + 1 < t1 else o
        nz, nd = z2[nxt], d2[nxt]
        if probs:
            zr = _widened(z2[o], zf)
            loss[o, 0] = _xent_prob_row(zr, q2[o], d2[o], ef, w, eps, scale, nz, nd)
            continue
        lab = y[o, 0]
        if (has_ign and lab == ign) or lab < 0 or lab >= c:
            d2[o] = 0  # +0.0 in every format
        else:
            zr = _widened(z2[o], zf)
            loss[o, 0] = _xent_label_row(zr, d2[o], ef, lab, w, wall, eps, scale, nz, nd)


@nb.njit(cache=True)
def _clip_labels(labels, has_ign, ign, c, lab2):  # pragma: no cover - compiled
    """The block's labels as the block kernels take them: lab2[0] the label clipped into
    [0, c) for reading z, lab2[1] the label, or -1 when the column is ignored or out of range."""
    for i in range(labels.size):
        lab = labels[i]
        bad = (has_ign and lab == ign) or lab < 0 or lab >= c
        lab2[0, i] = 0 if bad else lab
        lab2[1, i] = -1 if bad else lab


@nb.njit(cache=True)
def _xent_stream_blocks(z, q, y, w, has_ign, ign, eps, scale, dz, loss, t0, t1, cols, nblk, dt):
    """Streamed column blocks [t0, t1) of a cross-entropy (see _stream_xent), computing in dtype
    dt; q is read only for probability targets (y without rows)."""  # pragma: no cover
    c, inner = z.shape[1], z.shape[2]
    probs = y.shape[0] == 0
    m = np.empty(cols, dt)
    s = np.empty(cols)
    ties = np.empty(cols, np.int64)
    part = np.empty(cols, dt)
    cnt = np.empty(cols, dt)
    acc = np.empty((3, cols))
    al = np.empty(cols, dt)
    lab2 = np.empty((0 if probs else 2, cols), np.int64)
    work = (m, s, ties, part, cnt, acc, al)
    for t in range(t0, t1):
        o, i0 = t // nblk, (t % nblk) * cols
        nbk = min(cols, inner - i0)
        if not probs:
            _clip_labels(y[o, i0 : i0 + nbk], has_ign, ign, c, lab2)
        qo = q[o] if probs else z[o]
        _stream_xent(z[o], qo, lab2, w, eps, scale, dz[o], i0, nbk, work, loss[o, i0 : i0 + nbk])


@nb.njit(cache=True)
def _xent_blocks(z, q, y, w, wall, has_ign, ign, eps, scale, dz, loss, t0, t1, cols, nblk):
    """Tasks [t0, t1) of column blocks, with this chunk's scratch."""  # pragma: no cover
    c, inner = z.shape[1], z.shape[2]
    probs = y.shape[0] == 0
    pk = np.empty((c, cols), z.dtype)
    m = np.empty(cols, z.dtype)
    s = np.empty(cols)
    ties = np.empty(cols, np.int64)
    acc = np.empty((3, cols))
    lab2 = np.empty((0 if probs else 2, inner), np.int64)
    for t in range(t0, t1):
        o, i0 = t // nblk, (t % nblk) * cols
        nbk = min(cols, inner - i0)
        if not probs:
            _clip_labels(y[o, i0 : i0 + nbk], has_ign, ign, c, lab2[:, i0 : i0 + nbk])
        qo = q[o] if probs else z[o]
        work = (pk, m, s, ties, acc)
        _xent_block(z[o], qo, lab2, w, wall, eps, scale, dz[o], i0, nbk, work, loss[o])


@nb.njit(cache=True, nogil=True)
def _xent_labels(z, y, w, has_ign, ign, eps, scale, dz, chunks):  # pragma: no cover
    return _xent_run(z, z[:0], y, w, has_ign, ign, eps, scale, dz, chunks)


@nb.njit(cache=True, nogil=True)
def _xent_probs(z, q, w, eps, scale, dz, chunks):  # pragma: no cover - compiled
    return _xent_run(z, q, np.empty((0, 1), np.int64), w, False, 0, eps, scale, dz, chunks)


# Below this many elements the kernels run on one thread, as the C kernels do: waking the pool
# costs more than the work, and on a loaded machine a descheduled worker stalls the whole call.
_SERIAL_BELOW = 1 << 15


def _run(kernel, work, *args):
    """``kernel(*args, chunks)``: about four chunks of work per thread, so that on a busy machine
    a descheduled thread does not hold up the call; one thread for small work."""
    threads = nb.get_num_threads()
    if work >= _SERIAL_BELOW or threads == 1:
        return kernel(*args, 4 * threads)
    nb.set_num_threads(1)
    try:
        return kernel(*args, 1)
    finally:
        nb.set_num_threads(threads)


def _v3(x, outer, c, inner):
    return x.reshape(outer, c, inner)


def forward(z, out, outer, c, inner, log):
    """Write (log-)softmax of the (outer, c, inner) view of ``z`` into ``out``."""
    if is_half(z.dtype):
        return _forward_half(z, out, outer, c, inner, log)
    zv = _v3(writeable(z), outer, c, inner)
    _run(_forward, z.size, zv, _v3(out, outer, c, inner), bool(log))


def backward(g, y, out, outer, c, inner, log):
    """Write the gradient of (log-)softmax wrt the logits into ``out``."""
    if is_half(y.dtype):
        return _backward_half(g, y, out, outer, c, inner, log)
    v = (outer, c, inner)
    _run(_backward, g.size, _v3(writeable(g), *v), _v3(writeable(y), *v), _v3(out, *v), bool(log))


def xent(z, outer, c, inner, target, weight, ignore, eps, scale, dz, loss):
    """Fused cross-entropy on the canonical record: writes ``scale`` times the gradient into
    ``dz`` and the per-example losses into ``loss`` (if given); returns the summed loss."""
    if is_half(z.dtype):
        return _xent_half(z, outer, c, inner, target, weight, ignore, eps, scale, dz, loss)
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


# ---- half precision ---------------------------------------------------------------------------
# Numba cannot type float16 / bfloat16 arrays: the kernels see them as 16-bit integer views
# (_half_numba.view). As the C kernels do, the half drivers work on tiles: a row (inner == 1) or
# a column block of the (classes, inner) slab is widened into a float32 scratch that stays in
# the L2 cache, the float32 row / block kernel runs on it, and its results are rounded once into
# the half output. Classes-first column blocks whose float32 tile would not fit L2 (the streamed
# blocks of _tasks) skip the tile: their kernels read the 16-bit class rows directly, widening
# each value as it loads and rounding each result as it stores. So a half call reads and writes
# half the bytes of a float32 call, and its results are bit for bit the float32 kernels' on an
# upcast copy, rounded once.


@nb.njit(cache=True)
def _widen_row(src, dst):  # pragma: no cover - compiled
    for j in range(src.size):
        dst[j] = load(src[j])


@nb.njit(cache=True)
def _widen_cols(zo, i0, nbk, zb):  # pragma: no cover - compiled
    """zb[k, :nbk] = columns [i0, i0 + nbk) of class row k of the half slab zo, in float32."""
    row, first, span = zo.strides[0], i0 * zo.itemsize, nbk * zo.itemsize
    for k in range(zo.shape[0]):
        for b in range(0, span, 64):  # the strided class rows, fetched ahead (see _block_max)
            prefetch_read(zo, (k + _PREFETCH) * row + first + b)
        zr, br = zo[k, i0 : i0 + nbk], zb[k, :nbk]
        for i in range(nbk):
            br[i] = load(zr[i])


@nb.njit(cache=True)
def _narrow_cols(zb, oo, i0, nbk):  # pragma: no cover - compiled
    """Columns [i0, i0 + nbk) of the half slab oo = zb[:, :nbk] rounded once."""
    row, first, span = oo.strides[0], i0 * oo.itemsize, nbk * oo.itemsize
    for k in range(oo.shape[0]):
        for b in range(0, span, 64):
            prefetch_write(oo, (k + _PREFETCH) * row + first + b)
        br, orow = zb[k, :nbk], oo[k, i0 : i0 + nbk]
        for i in range(nbk):
            orow[i] = store(orow, br[i])


@nb.njit(**_OPTS)
def _forward_h(z, out, log, chunks):  # pragma: no cover - compiled
    """_forward for 16-bit views, through float32 tiles (the float32 path's block width)."""
    outer, c, inner = z.shape
    cols, nblk, chunks, stream = _tasks(outer, c, inner, 4, chunks, _STREAM_MIN_FWD)
    ntasks = outer * nblk
    for ch in prange(chunks):
        t0, t1 = ntasks * ch // chunks, ntasks * (ch + 1) // chunks
        if inner == 1:
            _softmax_rows(z, out, log, t0, t1)
        elif stream:  # no float32 tile: the half rows are widened as they are read
            _stream_blocks(z, out, log, cols, nblk, t0, t1, np.float32)
        else:
            zb = np.empty((c, cols), np.float32)
            ob = np.empty((c, cols), np.float32)  # not zb: see _backward_h
            pk = np.empty((c, cols), np.float32)
            m = np.empty((2, cols), np.float32)
            s = np.empty(cols)
            ties = np.empty(cols, np.int64)
            for t in range(t0, t1):
                o, i0 = t // nblk, (t % nblk) * cols
                nbk = min(cols, inner - i0)
                _widen_cols(z[o], i0, nbk, zb)
                _softmax_block(zb, ob, 0, nbk, pk, m, s, ties, log)
                _narrow_cols(ob, out[o], i0, nbk)


@nb.njit(**_OPTS)
def _backward_h(g, y, out, log, chunks):  # pragma: no cover - compiled
    """_backward for 16-bit views, through float32 tiles, or on the 16-bit rows themselves for
    streamed blocks.
    The output tile is not an input tile: overlapping arrays send the kernels' loops down their
    scalar fallbacks, which are slower and may pick a different NaN's payload when two NaNs
    meet."""
    outer, c, inner = g.shape
    cols, nblk, chunks, stream = _tasks(outer, c, inner, 4, chunks, _STREAM_MIN_BWD)
    ntasks = outer * nblk
    for ch in prange(chunks):
        t0, t1 = ntasks * ch // chunks, ntasks * (ch + 1) // chunks
        if inner == 1:
            _backward_rows(g, y, out, log, t0, t1)
        elif stream:
            ef = np.empty(cols, np.float32)
            d = np.empty(cols)
            for t in range(t0, t1):
                o, i0 = t // nblk, (t % nblk) * cols
                nbk = min(cols, inner - i0)
                _backward_block(g[o], y[o], out[o], i0, nbk, d, ef, log, True)
        else:
            gb = np.empty((c, cols), np.float32)
            yb = np.empty((c, cols), np.float32)
            ob = np.empty((c, cols), np.float32)
            d = np.empty(cols)
            ef = np.empty(cols, np.float32)
            for t in range(t0, t1):
                o, i0 = t // nblk, (t % nblk) * cols
                nbk = min(cols, inner - i0)
                _widen_cols(g[o], i0, nbk, gb)
                _widen_cols(y[o], i0, nbk, yb)
                _backward_block(gb, yb, ob, 0, nbk, d, ef, log, False)
                _narrow_cols(ob, out[o], i0, nbk)


def _forward_half(z, out, outer, c, inner, log):
    zv = _v3(view(writeable(z)), outer, c, inner)
    _run(_forward_h, z.size, zv, _v3(view(out), outer, c, inner), bool(log))


def _backward_half(g, y, out, outer, c, inner, log):
    v = (outer, c, inner)
    gv, yv = _v3(view(writeable(g)), *v), _v3(view(writeable(y)), *v)
    _run(_backward_h, g.size, gv, yv, _v3(view(out), *v), bool(log))


@nb.njit(cache=True)
def _xent_blocks_h(z, q, y, w, wall, has_ign, ign, eps, scale, dz, loss, t0, t1, cols, nblk):
    """_xent_blocks for 16-bit views, through float32 tiles of the column blocks."""
    c, inner = z.shape[1], z.shape[2]  # pragma: no cover
    probs = y.shape[0] == 0
    zb = np.empty((c, cols), np.float32)
    qb = np.empty((c if probs else 0, cols), np.float32)
    db = np.empty((c, cols), np.float32)
    pk = np.empty((c, cols), np.float32)
    m = np.empty(cols, np.float32)
    s = np.empty(cols)
    ties = np.empty(cols, np.int64)
    acc = np.empty((3, cols))
    lab2 = np.empty((0 if probs else 2, cols), np.int64)
    for t in range(t0, t1):
        o, i0 = t // nblk, (t % nblk) * cols
        nbk = min(cols, inner - i0)
        if not probs:  # the tile's columns, from 0
            _clip_labels(y[o, i0 : i0 + nbk], has_ign, ign, c, lab2)
        _widen_cols(z[o], i0, nbk, zb)
        if probs:
            _widen_cols(q[o], i0, nbk, qb)
        work = (pk, m, s, ties, acc)
        lo = loss[o, i0 : i0 + nbk]
        _xent_block(zb, qb if probs else zb, lab2, w, wall, eps, scale, db, 0, nbk, work, lo)
        _narrow_cols(db, dz[o], i0, nbk)


@nb.njit(parallel=True, cache=True, nogil=True)
def _xent_run_h(z, q, y, w, has_ign, ign, eps, scale, dz, chunks):  # pragma: no cover
    """_xent_run for 16-bit views (the float32 path's block width)."""
    outer, c, inner = z.shape
    loss, wall = _xent_setup(outer, inner, w)
    cols, nblk, chunks, stream = _tasks(outer, c, inner, 4, chunks, _STREAM_MIN_XENT)
    ntasks = outer * nblk
    for ch in prange(chunks):
        t0, t1 = ntasks * ch // chunks, ntasks * (ch + 1) // chunks
        if inner == 1:
            _xent_rows(z, q, y, w, wall, has_ign, ign, eps, scale, dz, loss, t0, t1)
        elif stream:  # no float32 tiles: the half rows are widened as they are read
            _xent_stream_blocks(
                z, q, y, w, has_ign, ign, eps, scale, dz, loss, t0, t1, cols, nblk, np.float32
            )
        else:
            _xent_blocks_h(z, q, y, w, wall, has_ign, ign, eps, scale, dz, loss, t0, t1, cols, nblk)
    return loss


@nb.njit(cache=True, nogil=True)
def _xent_labels_h(z, y, w, has_ign, ign, eps, scale, dz, chunks):  # pragma: no cover
    return _xent_run_h(z, z[:0], y, w, has_ign, ign, eps, scale, dz, chunks)


@nb.njit(cache=True, nogil=True)
def _xent_probs_h(z, q, w, eps, scale, dz, chunks):  # pragma: no cover - compiled
    return _xent_run_h(z, q, np.empty((0, 1), np.int64), w, False, 0, eps, scale, dz, chunks)


def _xent_half(z, outer, c, inner, target, weight, ignore, eps, scale, dz, loss):
    v = (outer, c, inner)
    z3, dz3 = _v3(view(writeable(z)), *v), _v3(view(dz), *v)
    w = np.ones(c) if weight is None else writeable(weight)
    if target.dtype.kind not in "iu":  # probabilities, in z's dtype
        q3 = _v3(view(writeable(target)), *v)
        per = _run(_xent_probs_h, z.size, z3, q3, w, eps, scale, dz3)
    else:
        labels = writeable(target.reshape(outer, inner).astype(np.int64, copy=False))
        has_ign = ignore is not None
        per = _run(_xent_labels_h, z.size, z3, labels, w, has_ign, ignore if has_ign else 0, eps,
                   scale, dz3)
    if loss is not None:  # rounded once from float64, by NumPy (see round_into)
        round_into(loss, per.reshape(loss.shape))
    return finish(per, None)
