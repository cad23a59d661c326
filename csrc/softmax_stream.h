/* Streamed column blocks for one dtype; included by softmax_impl.h (T, SFX, LANES, VT, VI, NM).
 *
 * With inner > 1 and tens of thousands of classes, a column block cannot stay in L2 between the
 * passes over the class axis even at the 16-column minimum (32000 classes x 16 float32 = 2 MiB),
 * and 16 columns are one 64-byte run per class row, `inner` apart: every pass then waits on
 * L3 or memory over short strided runs. Such blocks are streamed instead: NMX_BLOCK_MAX columns
 * (1 KiB class rows in float32, contiguous, which the hardware prefetcher follows; software
 * prefetch a few class rows ahead covers the page crossings), each pass reading the input
 * itself in class order with the per-column maxima and sums in L1. The last pass recomputes
 * exp(z - max) instead of storing it in the output and reading it back: 3 reads and 1 write of
 * the array. The kernels stream sooner than the 16-column minimum forces them to: a packed
 * block narrower than 64 columns (softmax, log-softmax) or 128 (the backward) reads short
 * strided runs too and loses to a streamed one (nmx_block_streams in softmax_common.h).
 * When that output is larger than the cache (stream.h), softmax writes each class row
 * from an L1 buffer with non-temporal stores, so the destination is not read for ownership
 * first.
 *
 * The arithmetic per column is block_max / block_sum's, operation for operation: the same
 * comparisons in class order, the same exp_step on full vectors of columns (partial sums in T
 * over NMX_CHUNK classes, then float64) and the same scalar code on the last inner % LANES
 * columns (a block width that is a multiple of LANES puts the same columns there), the same
 * final scaling. The results are therefore bit for bit those of the packed path.
 *
 * The backward (backward_block in softmax_impl.h) takes the same wide blocks: both its passes
 * read g and y from memory, class rows fetched ahead, with the per-column sums in L1. Each
 * column's sum is the same whatever the block width, so its results are those of 16-column
 * blocks, which would read both passes from memory as 64-byte runs `inner` apart.
 *
 * Cross-entropy in half storage (float32 instance only, stream_xent_h in softmax_impl.h) reads
 * its blocks through a one-row float32 buffer: each class row of the block is widened just
 * before it is used (nmx_half_to_float, exact). Half softmax and log-softmax widen inside their
 * vector loads instead (softmax_hcol_impl.h).
 */

/* A streamed block: input class rows `inner` apart starting at z (or h, half storage), output
 * rows `inner` apart at o (or ho). */
typedef struct {
    const T *z;
    T *o;
    nmx_index n, inner, nb;
    int nt; /* softmax's output rows written with non-temporal stores (stream.h) */
#if LANES == 16
    const uint16_t *h;
    uint16_t *ho;
    int kind;
#endif
} NM(sblk);

#ifndef NMX_SPREFETCH
#define NMX_SPREFETCH 4 /* class rows ahead: 4 KiB of float32 in flight per stream */
#endif

/* Class row c of the block's input, as T; half rows are widened into buf (nb elements). The
 * row NMX_SPREFETCH classes ahead is fetched meanwhile. */
static inline __attribute__((always_inline)) const T *NM(srow)(const NM(sblk) * b, nmx_index c,
                                                               T *buf) {
    nmx_index line = 64 / (nmx_index)sizeof(T), ahead = c + NMX_SPREFETCH, inner = b->inner;
#if LANES == 16
    if (b->h) {
        if (ahead < b->n)
            for (nmx_index i = 0; i < b->nb; i += 32) __builtin_prefetch(b->h + ahead * inner + i);
        nmx_half_to_float(b->kind, b->h + c * inner, buf, b->nb);
        return buf;
    }
#endif
    (void)buf;
    if (ahead < b->n)
        for (nmx_index i = 0; i < b->nb; i += line) __builtin_prefetch(b->z + ahead * inner + i);
    return b->z + c * inner;
}

/* Column maxima, as block_max: the same comparison, classes in order. */
static inline __attribute__((always_inline)) void NM(stream_max)(const NM(sblk) * b, T *m, T *buf) {
    enum { NV = NMX_BLOCK_MAX / LANES };
    nmx_index nb = b->nb, nv = nb / LANES, nvl = nv * LANES;
    VT mv[NV];
    const T *r = NM(srow)(b, 0, buf);
    for (nmx_index v = 0; v < nv; v++) mv[v] = NM(vload)(r + v * LANES);
    for (nmx_index i = nvl; i < nb; i++) m[i] = r[i];
    for (nmx_index c = 1; c < b->n; c++) {
        r = NM(srow)(b, c, buf);
        for (nmx_index v = 0; v < nv; v++) {
            VT x = NM(vload)(r + v * LANES);
            mv[v] = NMX_VMAX(VT, VI, x, mv[v]);
        }
        for (nmx_index i = nvl; i < nb; i++) m[i] = r[i] > m[i] ? r[i] : m[i];
    }
    for (nmx_index v = 0; v < nv; v++) memcpy(m + v * LANES, &mv[v], sizeof mv[v]);
}

/* s per column, as block_sum; the exponentials go to a one-row scratch in L1 (exp_step stores
 * them either way: without the store GCC merges its two selects and scalarizes them). */
static inline __attribute__((always_inline)) void NM(stream_sum)(const NM(sblk) * b, const T *m,
                                                                 double *s, T *buf) {
    enum { NV = NMX_BLOCK_MAX / LANES };
    nmx_index n = b->n, nb = b->nb, nv = nb / LANES, nvl = nv * LANES;
    nmx_vf64 acc[2 * NV];
    VT part[NV], mv[NV];
    VI cnt[NV];
    T e[NMX_BLOCK_MAX];
    double cnts[LANES];
    for (nmx_index v = 0; v < nv; v++) {
        acc[2 * v] = acc[2 * v + 1] = (nmx_vf64){0};
        cnt[v] = (VI){0};
        mv[v] = NM(vload)(m + v * LANES);
    }
    for (nmx_index i = nvl; i < nb; i++) s[i] = cnts[i - nvl] = 0.0;
    for (nmx_index c0 = 0; c0 < n; c0 += NMX_CHUNK) {
        nmx_index c1 = n - c0 > NMX_CHUNK ? c0 + NMX_CHUNK : n;
        for (nmx_index v = 0; v < nv; v++) part[v] = (VT){0};
        for (nmx_index c = c0; c < c1; c++) {
            const T *r = NM(srow)(b, c, buf);
            for (nmx_index v = 0; v < nv; v++)
                NM(exp_stepv)(r + v * LANES, &mv[v], e + v * LANES, &part[v], &cnt[v], 1);
            for (nmx_index i = nvl; i < nb; i++) {
                T t = r[i] - m[i];
                T x = EXP(t);
                s[i] += t == 0 ? 0.0 : (double)x;
                cnts[i - nvl] += t == 0 ? 1.0 : 0.0;
            }
        }
        for (nmx_index v = 0; v < nv; v++) NMX_CAT(nmx_vacc, SFX)(&acc[2 * v], &part[v]);
    }
    for (nmx_index v = 0; v < nv; v++)
        for (int k = 0; k < LANES; k++)
            s[v * LANES + k] =
                (k < 8 ? acc[2 * v][k] : acc[2 * v + 1][k - 8]) + (double)(cnt[v][k] - 1);
    for (nmx_index i = nvl; i < nb; i++) s[i] += cnts[i - nvl] - 1.0;
}

/* e = exp(r - m) over a class row of nb columns, as exp_step / block_sum compute it: the vector
 * exp on full vectors, the scalar one on the rest. */
static inline __attribute__((always_inline)) void NM(stream_exp)(const T *r, const T *m,
                                                                 nmx_index nb, T *e) {
    nmx_index nvl = nb / LANES * LANES;
    for (nmx_index i = 0; i < nvl; i += LANES) {
        VT t = NM(vload)(r + i) - NM(vload)(m + i);
        VT ev = NMX_CAT(nmx_vexp, SFX)(&t);
        memcpy(e + i, &ev, sizeof ev);
    }
    for (nmx_index i = nvl; i < nb; i++) {
        T t = r[i] - m[i];
        e[i] = EXP(t);
    }
}

#ifndef NMX_SOFTMAX_HALF_TU /* the half kernels stream blocks of their own (softmax_hcol_impl.h) */
/* Softmax or log-softmax of a streamed block (T storage), as softmax_block. Cloned like
 * run_tasks (and called from it), so its exponentials contract to the same FMAs. */
NMX_CLONES static void NM(stream_softmax)(const NM(sblk) * b, int log_) {
    T m[NMX_BLOCK_MAX], buf[NMX_BLOCK_MAX], e[NMX_BLOCK_MAX];
    double s[NMX_BLOCK_MAX];
    nmx_index n = b->n, nb = b->nb;
    NM(stream_max)(b, m, buf);
    NM(stream_sum)(b, m, s, buf);
    if (log_) {
        for (nmx_index i = 0; i < nb; i++) s[i] = NMX_LOG1P(s[i]);
        for (nmx_index c = 0; c < n; c++) {
            const T *r = NM(srow)(b, c, buf);
            T *o = b->o + c * b->inner;
            for (nmx_index i = 0; i < nb; i++) o[i] = (T)(((double)r[i] - (double)m[i]) - s[i]);
        }
        return;
    }
    T inv[NMX_BLOCK_MAX];
    for (nmx_index i = 0; i < nb; i++) inv[i] = (T)(1.0 / (1.0 + s[i]));
    for (nmx_index c = 0; c < n; c++) {
        const T *r = NM(srow)(b, c, buf);
        T *o = b->o + c * b->inner, *w = b->nt ? e : o;
        NM(stream_exp)(r, m, nb, e);
        /* In a NaN column both factors can be NaN, and the product is then the NaN of
         * whichever operand the compiler put first (their signs may differ). The select pins
         * the one softmax_block's loop returns: the factor's. */
        for (nmx_index i = 0; i < nb; i++) w[i] = inv[i] != inv[i] ? inv[i] : e[i] * inv[i];
        if (b->nt) nmx_stream(o, w, sizeof(T) * (size_t)nb);
    }
    if (b->nt) nmx_stream_fence();
}
#endif
