/* Softmax kernels for one dtype; included by softmax.c with T, SFX, EXP and LANES defined, and
 * by softmax_half.c for float32 with NMX_SOFTMAX_HALF_TU: there only the inline pieces and the
 * half-only stream_xent_h are compiled, and the task runner is softmax.c's.
 *
 * Two layouts of the (outer, classes, inner) block:
 *   inner == 1: each example is a contiguous row; loops run along the row in LANES-wide steps
 *     with LANES float64 partial sums (a row's tail is padded with -inf, which adds exp = 0).
 *   inner > 1: a block of up to NMX_BLOCK_MAX neighbouring columns is processed together; every
 *     pass walks the class axis and keeps one running max / sum per column, so loads stay
 *     contiguous and vectorize across columns.
 * Each pass is: max; s = sum of exp(z - max) except one maximum (ties count separately, exactly);
 * then the output. Inputs are read from memory once; the second and third passes hit cache.
 */
#define NM(x) NMX_CAT(x, SFX)

/* ------------------------------------------------------------------ rows (inner == 1) */

static inline __attribute__((always_inline)) VT NM(vload)(const T *p) {
    VT v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Max of a row of at least LANES entries, by whole vectors (see nmx_rows_halves). */
static inline __attribute__((always_inline)) T NM(row_max_whole)(const T *z, nmx_index n, T m) {
    /* Four independent maxima hide the compare latency. */
    VT m0 = NM(vload)(z), m1 = m0, m2 = m0, m3 = m0;
    nmx_index j = LANES;
    for (; j + 4 * LANES <= n; j += 4 * LANES) {
        VT v0 = NM(vload)(z + j), v1 = NM(vload)(z + j + LANES);
        VT v2 = NM(vload)(z + j + 2 * LANES), v3 = NM(vload)(z + j + 3 * LANES);
        m0 = NMX_VMAX(VT, VI, v0, m0);
        m1 = NMX_VMAX(VT, VI, v1, m1);
        m2 = NMX_VMAX(VT, VI, v2, m2);
        m3 = NMX_VMAX(VT, VI, v3, m3);
    }
    for (; j + LANES <= n; j += LANES) {
        VT v = NM(vload)(z + j);
        m0 = NMX_VMAX(VT, VI, v, m0);
    }
    VT v = NM(vload)(z + n - LANES); /* overlapping tail: max is idempotent */
    m0 = NMX_VMAX(VT, VI, v, m0);
    m1 = NMX_VMAX(VT, VI, m2, m1);
    m0 = NMX_VMAX(VT, VI, m3, m0);
    m0 = NMX_VMAX(VT, VI, m1, m0);
    for (int k = 0; k < LANES; k++) m = m0[k] > m ? m0[k] : m;
    return m;
}

#if LANES == 16
#define NMX_LO NMX_LO16
#define NMX_HI NMX_HI16
#else
#define NMX_LO NMX_LO8
#define NMX_HI NMX_HI8
#endif

/* row_max_whole by 32-byte halves: the same comparisons lane for lane. */
static inline __attribute__((always_inline)) T NM(row_max_halves)(const T *z, nmx_index n, T m) {
    VH m0[2], m1[2], m2[2], m3[2];
    memcpy(m0, z, sizeof m0);
    memcpy(m1, m0, sizeof m1);
    memcpy(m2, m0, sizeof m2);
    memcpy(m3, m0, sizeof m3);
    nmx_index j = LANES;
    for (; j + 4 * LANES <= n; j += 4 * LANES) {
        VT v0 = NM(vload)(z + j), v1 = NM(vload)(z + j + LANES);
        VT v2 = NM(vload)(z + j + 2 * LANES), v3 = NM(vload)(z + j + 3 * LANES);
        NMX_HMAX(VH, NMX_LO(v0), NMX_HI(v0), m0);
        NMX_HMAX(VH, NMX_LO(v1), NMX_HI(v1), m1);
        NMX_HMAX(VH, NMX_LO(v2), NMX_HI(v2), m2);
        NMX_HMAX(VH, NMX_LO(v3), NMX_HI(v3), m3);
    }
    for (; j + LANES <= n; j += LANES) {
        VT v = NM(vload)(z + j);
        NMX_HMAX(VH, NMX_LO(v), NMX_HI(v), m0);
    }
    VT v = NM(vload)(z + n - LANES); /* overlapping tail: max is idempotent */
    NMX_HMAX(VH, NMX_LO(v), NMX_HI(v), m0);
    NMX_HMAX(VH, m2[0], m2[1], m1);
    NMX_HMAX(VH, m3[0], m3[1], m0);
    NMX_HMAX(VH, m1[0], m1[1], m0);
    T w[LANES];
    memcpy(w, m0, sizeof w);
    for (int k = 0; k < LANES; k++) m = w[k] > m ? w[k] : m;
    return m;
}

/* Max of a row. A NaN that loses the comparisons still turns s (row_sum) into NaN. */
static inline __attribute__((always_inline)) T NM(row_max)(const T *z, nmx_index n) {
    T m = z[0];
    if (n < LANES) {
        for (nmx_index j = 1; j < n; j++) m = z[j] > m ? z[j] : m;
        return m;
    }
    return nmx_rows_halves() ? NM(row_max_halves)(z, n, m) : NM(row_max_whole)(z, n, m);
}

/* One vector: e = exp(z - m) (stored if `store`); ties with the maximum are counted in cnt, the
 * other exponentials added to part. The accumulators are two 32-byte halves (part[0..1] and
 * cnt[0..1], lanes 0..LANES/2-1 and the rest), and e is stored as two halves: GCC 12 keeps a
 * 64-byte vector that the target cannot hold in one register (the AVX2 and SSE2 clones) in
 * memory, moving it through general registers 8 bytes at a time, when it is carried from one
 * loop iteration to the next or copied out whole; halves stay in registers. */
static inline __attribute__((always_inline)) void NM(exp_step)(const T *z, const VT *m, T *e,
                                                                VH *part, VIH *cnt, int store) {
    const VT zero = {0};
    VT t = NM(vload)(z) - *m;
    VT ev = NMX_CAT(nmx_vexp, SFX)(&t);
    VI tie = NMX_CAT(nmx_vzero, SFX)(&t); /* t == 0, without a per-lane compare */
    VT kept = NMX_VSEL(VT, VI, tie, zero, ev);
    VH k[2];
    VIH c[2];
    if (store) {
        memcpy(k, &ev, sizeof k);
        memcpy(e, &k[0], sizeof k[0]);
        memcpy(e + LANES / 2, &k[1], sizeof k[1]);
    }
    memcpy(k, &kept, sizeof k);
    memcpy(c, &tie, sizeof c);
    part[0] += k[0];
    part[1] += k[1];
    cnt[0] -= c[0]; /* a true comparison is -1 */
    cnt[1] -= c[1];
}

/* exp_step by 32-byte halves past the 64-byte p * 2^k (see nmx_rows_halves): the underflow cut
 * and the ties are native comparisons of halves, where exp_step's masks (nmx_vexp's and
 * nmx_vzero's integer arithmetic on the whole vector) take five or six instructions each, and no
 * 64-byte mask is assembled from halves. The same masks, NaN lanes included, so the same bits. */
static inline __attribute__((always_inline)) void NM(exp_steph)(const T *z, const VT *m, T *e,
                                                                 VH *part, VIH *cnt, int store) {
    const VH zero = {0}, cut = zero - NMX_CAT(NMX_EXP_CUT, SFX);
    VT t = NM(vload)(z) - *m;
    VT raw = NMX_CAT(nmx_vexp_raw, SFX)(&t);
    VH t0 = NMX_LO(t), t1 = NMX_HI(t);
    VH e0 = NMX_VSEL(VH, VIH, t0 < cut, zero, NMX_LO(raw));
    VH e1 = NMX_VSEL(VH, VIH, t1 < cut, zero, NMX_HI(raw));
    if (store) {
        memcpy(e, &e0, sizeof e0);
        memcpy(e + LANES / 2, &e1, sizeof e1);
    }
    VIH tie0 = t0 == zero, tie1 = t1 == zero;
    part[0] += NMX_VSEL(VH, VIH, tie0, zero, e0);
    part[1] += NMX_VSEL(VH, VIH, tie1, zero, e1);
    cnt[0] -= tie0; /* a true comparison is -1 */
    cnt[1] -= tie1;
}
#undef NMX_LO
#undef NMX_HI

/* exp_step on whole-vector accumulators, for the column blocks (arrays of accumulators, which
 * live in memory anyway). */
static inline __attribute__((always_inline)) void NM(exp_stepv)(const T *z, const VT *m, T *e,
                                                                 VT *part, VI *cnt, int store) {
    VH p[2];
    VIH c[2];
    memcpy(p, part, sizeof p);
    memcpy(c, cnt, sizeof c);
    NM(exp_step)(z, m, e, p, c, store);
    memcpy(part, p, sizeof p);
    memcpy(cnt, c, sizeof c);
}

/* sum of the float64 accumulators plus (ties - 1), as a tree: a serial chain of 16 dependent
 * additions per row costs more than the exponentials of a 10-class row. */
static inline __attribute__((always_inline)) double NM(hsum)(const nmx_vf64 *acc, const VI *cnt) {
    double t[8], c[LANES];
    for (int k = 0; k < 8; k++) t[k] = acc[0][k] + acc[1][k];
    for (int k = 0; k < LANES; k++) c[k] = (double)(*cnt)[k];
    for (int w = LANES / 2; w >= 1; w /= 2)
        for (int k = 0; k < w; k++) c[k] += c[k + w];
    for (int w = 4; w >= 1; w /= 2)
        for (int k = 0; k < w; k++) t[k] += t[k + w];
    return t[0] + (c[0] - 1.0);
}

/* s = sum of exp(z_j - m) over every entry but one maximum; exp(z_j - m) stored in e if store.
 * Partial sums run in T over chunks of NMX_CHUNK vectors (at most NMX_CHUNK terms per lane, so
 * float32 rounding stays below 1e-6 relative) and are then added in float64; widening every
 * vector instead costs as much as the exponential. The tail is padded with -inf (exp = 0). */
#ifndef NMX_CHUNK
#define NMX_CHUNK 16
#endif
static inline __attribute__((always_inline)) double NM(row_sum_by)(const T *z, nmx_index n, T m,
                                                                    T *e, int store, int halves) {
    nmx_vf64 acc[2] = {{0}, {0}};
    VIH cnt[2] = {{0}, {0}};
    VI cntv;
    const VT mv = (VT){0} + m;
    nmx_index j = 0;
    while (j + LANES <= n) {
        VH part[2] = {{0}, {0}};
        VT pv;
        nmx_index stop = n - j > NMX_CHUNK * LANES ? j + NMX_CHUNK * LANES : n;
        for (; j + LANES <= stop; j += LANES)
            if (halves)
                NM(exp_steph)(z + j, &mv, store ? e + j : NULL, part, cnt, store);
            else
                NM(exp_step)(z + j, &mv, store ? e + j : NULL, part, cnt, store);
        memcpy(&pv, part, sizeof pv);
        NMX_CAT(nmx_vacc, SFX)(acc, &pv);
    }
    if (j < n) {
        T zb[LANES], eb[LANES];
        VH part[2] = {{0}, {0}};
        VT pv;
        for (int k = 0; k < LANES; k++) zb[k] = -(T)INFINITY;
        memcpy(zb, z + j, (size_t)(n - j) * sizeof(T));
        NM(exp_step)(zb, &mv, eb, part, cnt, 1);
        memcpy(&pv, part, sizeof pv);
        NMX_CAT(nmx_vacc, SFX)(acc, &pv);
        if (store)
            for (nmx_index k = 0; k < n - j; k++) e[j + k] = eb[k];
    }
    memcpy(&cntv, cnt, sizeof cntv);
    return NM(hsum)(acc, &cntv);
}

static inline __attribute__((always_inline)) double NM(row_sum)(const T *z, nmx_index n, T m, T *e,
                                                                 int store) {
    return nmx_rows_halves() ? NM(row_sum_by)(z, n, m, e, store, 1)
                             : NM(row_sum_by)(z, n, m, e, store, 0);
}

/* sum_j a_j * b_j (b == NULL: sum_j a_j) with float64 partial sums. */
static inline __attribute__((always_inline)) double NM(row_dot)(const T *a, const T *b,
                                                                nmx_index n) {
    double acc[LANES] = {0};
    nmx_index j = 0;
    if (b)
        for (; j + LANES <= n; j += LANES)
            for (int k = 0; k < LANES; k++) acc[k] += (double)a[j + k] * (double)b[j + k];
    else
        for (; j + LANES <= n; j += LANES)
            for (int k = 0; k < LANES; k++) acc[k] += (double)a[j + k];
    for (; j < n; j++) acc[0] += (double)a[j] * (b ? (double)b[j] : 1.0);
    double s = 0.0;
    for (int k = 0; k < LANES; k++) s += acc[k];
    return s;
}

static inline __attribute__((always_inline)) void NM(softmax_row)(const T *z, T *out, nmx_index n,
                                                                  int log_) {
    T m = NM(row_max)(z, n);
    if (log_) {
        /* (z - max) - log1p(s), in that order: z - max is exact, so a tie near 3e29 keeps log 2. */
        T lse = (T)NMX_LOG1P(NM(row_sum)(z, n, m, out, 1)); /* out is overwritten below */
        for (nmx_index j = 0; j < n; j++) out[j] = (z[j] - m) - lse;
    } else {
        T inv = (T)(1.0 / (1.0 + NM(row_sum)(z, n, m, out, 1)));
        for (nmx_index j = 0; j < n; j++) out[j] *= inv;
    }
}

static inline __attribute__((always_inline)) void NM(backward_row)(const T *g, const T *y, T *dz,
                                                                   nmx_index n, int log_) {
    if (log_) {
        T sg = (T)NM(row_dot)(g, NULL, n);
        for (nmx_index j = 0; j < n; j++) dz[j] = g[j] - EXP(y[j]) * sg;
    } else {
        T d = (T)NM(row_dot)(g, y, n);
        for (nmx_index j = 0; j < n; j++) dz[j] = y[j] * (g[j] - d);
    }
}

/* p_y - 1 for the label's shifted logit t = z_y - max, without cancellation: when y is a maximum
 * (t == 0, p_y = 1 / (1 + s)) it is exactly -s / (1 + s), so a class that dominates by 100 keeps
 * its gradient of about -exp(-100); otherwise p_y <= 1/2 and the subtraction is benign. */
static inline double NM(p_minus_one)(T t, double s) {
    return t == 0 ? -s / (1.0 + s) : (double)EXP(t) / (1.0 + s) - 1.0;
}

/* Loss of one example with integer label y; dz receives scale * d(loss)/dz.
 * loss = A * log1p(s) - sum_k a_k (z_k - max) with a_k = (1 - eps) w_y [k == y] + eps/C w_k. */
static inline __attribute__((always_inline)) double NM(xent_label_row)(const T *z, T *dz, int64_t y,
                                                                       const nmx_xent_args *a,
                                                                       double wall) {
    nmx_index n = a->classes;
    /* Labels are validated before the kernel; out-of-range ones are treated as ignored anyway
     * so that no input can make this read outside z. */
    if ((a->has_ignore && y == a->ignore) || y < 0 || y >= n) {
        memset(dz, 0, (size_t)n * sizeof(T));
        return 0.0;
    }
    T m = NM(row_max)(z, n);
    double s = NM(row_sum)(z, n, m, dz, 1), lse = NMX_LOG1P(s);
    double wy = a->weight ? a->weight[y] : 1.0, ty = (double)z[y] - (double)m, sc = a->scale;
    if (a->eps == 0.0) {
        T alpha = (T)(sc * wy / (1.0 + s));
        for (nmx_index j = 0; j < n; j++) dz[j] *= alpha;
        dz[y] = (T)(sc * wy * NM(p_minus_one)(z[y] - m, s));
        return wy * (lse - ty);
    }
    double ec = a->eps / (double)n, keep = 1.0 - a->eps, wt = 0.0;
    double big_a = keep * wy + ec * wall;
    T alpha = (T)(sc * big_a / (1.0 + s));
    for (nmx_index j = 0; j < n; j++) {
        double wj = a->weight ? a->weight[j] : 1.0;
        wt += wj * ((double)z[j] - (double)m);
        dz[j] = alpha * dz[j] - (T)(sc * ec * wj);
    }
    dz[y] -= (T)(sc * keep * wy);
    return big_a * lse - keep * wy * ty - ec * wt;
}

/* Same with probability targets q: a_k = w_k ((1 - eps) q_k + eps / C). */
static inline __attribute__((always_inline)) double NM(xent_prob_row)(const T *z, const T *q, T *dz,
                                                                      const nmx_xent_args *a) {
    nmx_index n = a->classes;
    T m = NM(row_max)(z, n);
    double s = NM(row_sum)(z, n, m, dz, 1), lse = NMX_LOG1P(s);
    double ec = a->eps / (double)n, keep = 1.0 - a->eps, sc = a->scale, big_a = 0.0, at = 0.0;
    for (nmx_index j = 0; j < n; j++) {
        double aj = (a->weight ? a->weight[j] : 1.0) * (keep * (double)q[j] + ec);
        big_a += aj;
        at += aj * ((double)z[j] - (double)m);
    }
    T alpha = (T)(sc * big_a / (1.0 + s));
    for (nmx_index j = 0; j < n; j++) {
        double aj = (a->weight ? a->weight[j] : 1.0) * (keep * (double)q[j] + ec);
        dz[j] = alpha * dz[j] - (T)(sc * aj);
    }
    return big_a * lse - at;
}

/* ------------------------------------------------------- column blocks (inner > 1) */
/* zb points at (o, 0, i0); class c of column i is zb[c * inner + i], for i < nb. */

/* Column maxima of a block; with pk, also a packed copy (classes x nb, contiguous) of the block.
 * Class rows of the block are `inner` apart: with a power-of-two inner (say 4096 floats) they
 * all map to the same few cache sets, and the hardware prefetcher does not cross the 4 KiB
 * pages they lie on. Packing once and prefetching a few classes ahead avoids both. */
static inline __attribute__((always_inline)) void NM(block_max)(const T *zb, nmx_index n,
                                                                nmx_index inner, nmx_index nb,
                                                                T *m, T *pk) {
    /* Full vectors of columns as vectors (the compiler leaves this loop scalar), the rest as
     * scalars; the same comparison either way, so NaN handling is unchanged. */
    nmx_index nvl = pk ? 0 : nb / LANES * LANES;
    for (nmx_index i = 0; i < nvl; i += LANES) {
        VT mv = NM(vload)(zb + i);
        for (nmx_index c = 1; c < n; c++) {
            VT v = NM(vload)(zb + c * inner + i);
            mv = NMX_VMAX(VT, VI, v, mv);
        }
        memcpy(m + i, &mv, sizeof mv);
    }
    for (nmx_index i = nvl; i < nb; i++) m[i] = zb[i];
    for (nmx_index c = 0; c < n && (pk || nvl < nb); c++) {
        const T *zr = zb + c * inner;
        if (c + NMX_PREFETCH < n)
            for (nmx_index i = 0; i < nb; i += 64 / (nmx_index)sizeof(T))
                __builtin_prefetch(zr + NMX_PREFETCH * inner + i);
        for (nmx_index i = nvl; i < nb; i++) m[i] = zr[i] > m[i] ? zr[i] : m[i];
        if (pk) memcpy(pk + c * nb, zr, (size_t)nb * sizeof(T));
    }
}

/* s per column, as row_sum, of the block zb whose class rows are `inner` apart; exp(z - m) is
 * stored in eb (same layout, may be zb itself). The first nb / LANES * LANES columns run
 * as vectors (partial sums in T over NMX_CHUNK classes, then float64), the rest as scalars. */
static inline __attribute__((always_inline)) void NM(block_sum)(const T *zb, T *eb, nmx_index n,
                                                                nmx_index inner, nmx_index nb,
                                                                const T *m, double *s) {
    enum { NV = NMX_BLOCK_MAX / LANES };
    nmx_index nv = nb / LANES, nvl = nv * LANES;
    nmx_vf64 acc[2 * NV];
    VT part[NV], mv[NV];
    VI cnt[NV];
    for (nmx_index v = 0; v < nv; v++) {
        acc[2 * v] = acc[2 * v + 1] = (nmx_vf64){0};
        cnt[v] = (VI){0};
        mv[v] = NM(vload)(m + v * LANES);
    }
    for (nmx_index c0 = 0; c0 < n; c0 += NMX_CHUNK) {
        nmx_index c1 = n - c0 > NMX_CHUNK ? c0 + NMX_CHUNK : n;
        for (nmx_index v = 0; v < nv; v++) part[v] = (VT){0};
        for (nmx_index c = c0; c < c1; c++)
            for (nmx_index v = 0; v < nv; v++)
                NM(exp_stepv)(zb + c * inner + v * LANES, &mv[v], eb + c * inner + v * LANES,
                              &part[v], &cnt[v], 1);
        for (nmx_index v = 0; v < nv; v++) NMX_CAT(nmx_vacc, SFX)(&acc[2 * v], &part[v]);
    }
    for (nmx_index v = 0; v < nv; v++)
        for (int k = 0; k < LANES; k++)
            s[v * LANES + k] =
                (k < 8 ? acc[2 * v][k] : acc[2 * v + 1][k - 8]) + (double)(cnt[v][k] - 1);
    double cnts[LANES];
    for (nmx_index i = nvl; i < nb; i++) s[i] = cnts[i - nvl] = 0.0;
    for (nmx_index c = 0; c < n && nvl < nb; c++) {
        const T *zr = zb + c * inner;
        T *er = eb + c * inner;
        for (nmx_index i = nvl; i < nb; i++) {
            T t = zr[i] - m[i];
            T e = EXP(t);
            er[i] = e;
            s[i] += t == 0 ? 0.0 : (double)e;
            cnts[i - nvl] += t == 0 ? 1.0 : 0.0;
        }
    }
    for (nmx_index i = nvl; i < nb; i++) s[i] += cnts[i - nvl] - 1.0;
}

static inline __attribute__((always_inline)) void NM(softmax_block)(const T *zb, T *ob, T *pk,
                                                                    nmx_index n, nmx_index inner,
                                                                    nmx_index nb, int log_) {
    T m[NMX_BLOCK_MAX];
    double s[NMX_BLOCK_MAX];
    NM(block_max)(zb, n, inner, nb, m, pk);
    nmx_index ws = pk ? nb : inner;
    T *we = pk ? pk : ob;
    NM(block_sum)(pk ? pk : zb, we, n, ws, nb, m, s);
    if (log_) { /* exp was stored only to keep one code path; z is read again */
        for (nmx_index i = 0; i < nb; i++) s[i] = NMX_LOG1P(s[i]);
        for (nmx_index c = 0; c < n; c++)
            for (nmx_index i = 0; i < nb; i++)
                ob[c * inner + i] = (T)(((double)zb[c * inner + i] - (double)m[i]) - s[i]);
    } else {
        T inv[NMX_BLOCK_MAX];
        for (nmx_index i = 0; i < nb; i++) inv[i] = (T)(1.0 / (1.0 + s[i]));
        for (nmx_index c = 0; c < n; c++)
            for (nmx_index i = 0; i < nb; i++) ob[c * inner + i] = we[c * ws + i] * inv[i];
    }
}

#include "softmax_stream.h"

/* Fetch class row c + NMX_SPREFETCH of a block's nb columns of g and y (y may be NULL; rows
 * `inner` apart) ahead of its use, for a streamed block (see softmax_stream.h). */
static inline __attribute__((always_inline)) void NM(prefetch_rows2)(const T *g, const T *y,
                                                                     nmx_index c, nmx_index n,
                                                                     nmx_index inner,
                                                                     nmx_index nb) {
    nmx_index ahead = c + NMX_SPREFETCH, line = 64 / (nmx_index)sizeof(T);
    if (ahead >= n) return;
    for (nmx_index i = 0; i < nb; i += line) {
        __builtin_prefetch(g + ahead * inner + i);
        if (y) __builtin_prefetch(y + ahead * inner + i);
    }
}

/* One class row of a backward block: acc[i] += g[i] y[i] (g[i] for log-softmax), the exact
 * products added in float64; and the row of dz from the column sums d. The half-precision block
 * (softmax_half.h) runs the same two on its widened rows. */
static inline __attribute__((always_inline)) void NM(backward_sums)(const T *gc, const T *yc,
                                                                    double *acc, nmx_index nb,
                                                                    int log_) {
    if (log_)
        for (nmx_index i = 0; i < nb; i++) acc[i] += (double)gc[i];
    else
        for (nmx_index i = 0; i < nb; i++) acc[i] += (double)gc[i] * (double)yc[i];
}

static inline __attribute__((always_inline)) void NM(backward_out)(const T *gc, const T *yc,
                                                                   const T *d, T *dc, nmx_index nb,
                                                                   int log_) {
    if (log_)
        for (nmx_index i = 0; i < nb; i++) dc[i] = gc[i] - EXP(yc[i]) * d[i];
    else
        for (nmx_index i = 0; i < nb; i++) dc[i] = yc[i] * (gc[i] - d[i]);
}

/* Backward of a block of nb columns: d_i = sum_c g_ci y_ci (or sum_c g_ci for log-softmax),
 * exact products added in class order in float64, then dz = y (g - d) or g - exp(lp) d. A
 * block sized by nmx_block_cols is read by the second pass from L2. A streamed block (`stream`,
 * nmx_stream_cols wide; see softmax_stream.h) is read from memory in both passes, its class
 * rows fetched NMX_SPREFETCH ahead. The log branch is taken once per block: inside the element
 * loop it would be if-converted, computing exp for softmax elements too. */
static inline __attribute__((always_inline)) void NM(backward_block)(const T *g, const T *y, T *dz,
                                                                     nmx_index n, nmx_index inner,
                                                                     nmx_index nb, int log_,
                                                                     int stream) {
    double acc[NMX_BLOCK_MAX];
    T d[NMX_BLOCK_MAX];
    for (nmx_index i = 0; i < nb; i++) acc[i] = 0.0;
    for (nmx_index c = 0; c < n; c++) {
        if (stream) NM(prefetch_rows2)(g, log_ ? NULL : y, c, n, inner, nb);
        NM(backward_sums)(g + c * inner, y + c * inner, acc, nb, log_);
    }
    for (nmx_index i = 0; i < nb; i++) d[i] = (T)acc[i];
    for (nmx_index c = 0; c < n; c++) {
        if (stream) NM(prefetch_rows2)(g, y, c, n, inner, nb);
        NM(backward_out)(g + c * inner, y + c * inner, d, dz + c * inner, nb, log_);
    }
}

/* Zero column i of a block (an ignored example). */
static inline void NM(zero_column)(T *db, nmx_index n, nmx_index inner, nmx_index i) {
    for (nmx_index c = 0; c < n; c++) db[c * inner + i] = 0;
}

/* Per-column weights sum_c a_ci and sum_c a_ci (z_ci - m_i) of the smoothing / probability
 * terms (the label term is added by the caller). wz holds z with class rows ws apart. */
static inline void NM(block_coeffs)(const T *wz, nmx_index ws, const T *qb, nmx_index inner,
                                    nmx_index nb, const T *m, const nmx_xent_args *a,
                                    double *big_a, double *at) {
    nmx_index n = a->classes;
    double ec = a->eps / (double)n, keep = 1.0 - a->eps;
    for (nmx_index i = 0; i < nb; i++) big_a[i] = at[i] = 0.0;
    if (!qb && a->eps == 0.0) return;
    for (nmx_index c = 0; c < n; c++) {
        double wc = a->weight ? a->weight[c] : 1.0;
        for (nmx_index i = 0; i < nb; i++) {
            double ac = wc * (qb ? keep * (double)qb[c * inner + i] + ec : ec);
            big_a[i] += ac;
            at[i] += ac * ((double)wz[c * ws + i] - (double)m[i]);
        }
    }
}

static inline int NM(ignored)(const nmx_xent_args *a, int64_t y) {
    return (a->has_ignore && y == a->ignore) || y < 0 || y >= a->classes;
}

/* lse_i = log1p(s_i) of a block's columns, as NMX_LOG1P: the libm log in a loop of its own, so
 * that the divisions and selects around it run as vectors. */
static inline __attribute__((always_inline)) void NM(block_log1p)(const double *s, double *lse,
                                                                  nmx_index nb) {
    double lg[NMX_BLOCK_MAX];
    for (nmx_index i = 0; i < nb; i++) lg[i] = log(1.0 + s[i]);
    for (nmx_index i = 0; i < nb; i++) {
        double u = 1.0 + s[i];
        lse[i] = u == 1.0 ? s[i] : lg[i] * (s[i] / (u - 1.0));
    }
}

/* Labels of a block's columns, read once: yv (-1 for an ignored column), the label's weight wy
 * and its shifted logit ty = z_y - m (0 when ignored). */
static inline __attribute__((always_inline)) void NM(block_labels)(const T *wz, nmx_index ws,
                                                                   const T *m,
                                                                   const nmx_xent_args *a,
                                                                   nmx_index col0, nmx_index nb,
                                                                   int64_t *yv, double *wy, T *ty) {
    for (nmx_index i = 0; i < nb; i++) {
        int64_t y = nmx_label_at(a->labels, a->label_bytes, col0 + i);
        int ign = NM(ignored)(a, y);
        yv[i] = ign ? -1 : y;
        wy[i] = ign ? 0.0 : a->weight ? a->weight[y] : 1.0;
        ty[i] = ign ? 0 : wz[y * ws + i] - m[i];
    }
}

/* Loss and gradient factor alpha of each column; with labels, ignored columns get 0 for both.
 * Branch-free over the columns, so the float64 divisions run as vectors (correctly rounded
 * either way: the results are those of the scalar expressions). */
static inline __attribute__((always_inline)) void NM(block_losses)(const double *s,
                                                                   const double *lse,
                                                                   const double *big_a,
                                                                   const double *at,
                                                                   const int64_t *yv,
                                                                   const double *wy, const T *ty,
                                                                   double keep, double sc,
                                                                   nmx_index nb, double *loss,
                                                                   T *alpha) {
    if (!yv) {
        for (nmx_index i = 0; i < nb; i++) {
            loss[i] = big_a[i] * lse[i] - at[i];
            alpha[i] = (T)(sc * big_a[i] / (1.0 + s[i]));
        }
        return;
    }
    for (nmx_index i = 0; i < nb; i++) {
        double ba = big_a[i] + keep * wy[i];
        double li = ba * lse[i] - at[i] - keep * wy[i] * (double)ty[i];
        T al = (T)(sc * ba / (1.0 + s[i]));
        loss[i] = yv[i] >= 0 ? li : 0.0;
        alpha[i] = yv[i] >= 0 ? al : 0;
    }
}

/* p_y - 1 of each labelled column, as NM(p_minus_one), with exp(ty) as block_sum stored it in we
 * (vector and scalar exp agree down to ty = -87.3 in float32; below, p_y / (1 + s) < 2^-126 and
 * p_y - 1 rounds to -1 either way). Read before the gradient overwrites we. */
static inline __attribute__((always_inline)) void NM(block_pm1)(const T *we, nmx_index ws,
                                                                const int64_t *yv, const T *ty,
                                                                const double *s, nmx_index nb,
                                                                double *pm) {
    /* Branch-free, so that the loop runs as vectors: an ignored column (yv < 0) reads class 0
     * of its own column, a valid entry, and discards it. */
    for (nmx_index i = 0; i < nb; i++) {
        double d = 1.0 + s[i];
        T e = we[(yv[i] >= 0 ? yv[i] : 0) * ws + i];
        e = yv[i] >= 0 ? e : 1;
        double neg = -s[i] / d, other = (double)e / d - 1.0;
        pm[i] = ty[i] == 0 ? neg : other;
    }
}

/* block_pm1 for a streamed block: exp(ty) recomputed as block_sum / stream_sum computed it for
 * the label's entry (the vector exp on full vectors of columns, the scalar one on the rest). */
static inline __attribute__((always_inline)) void NM(stream_pm1)(const int64_t *yv, const T *ty,
                                                                 const double *s, nmx_index nb,
                                                                 double *pm) {
    T e[NMX_BLOCK_MAX], zero[NMX_BLOCK_MAX] = {0};
    NM(stream_exp)(ty, zero, nb, e);
    for (nmx_index i = 0; i < nb; i++) {
        double d = 1.0 + s[i];
        T ey = yv[i] >= 0 ? e[i] : 1;
        pm[i] = ty[i] == 0 ? -s[i] / d : (double)ey / d - 1.0;
    }
}

/* The label entries of dz: scale * w_y * (p_y - 1) without smoothing (pm from block_pm1), the
 * label term subtracted with it; ignored columns are zeroed. */
static inline __attribute__((always_inline)) void NM(block_label_grad)(
    T *db, nmx_index n, nmx_index inner, nmx_index nb, const int64_t *yv, const double *wy,
    const double *pm, const nmx_xent_args *a) {
    double keep = 1.0 - a->eps, sc = a->scale;
    for (nmx_index i = 0; i < nb; i++) {
        if (yv[i] < 0) {
            NM(zero_column)(db, n, inner, i);
            continue;
        }
        T *dy = db + yv[i] * inner + i;
        if (pm)
            *dy = (T)(sc * wy[i] * pm[i]);
        else
            *dy -= (T)(sc * keep * wy[i]);
    }
}

/* Cross-entropy of a column block: packed into pk (when not NULL), in place on the strided
 * block, or streamed (see softmax_stream.h). */
static inline __attribute__((always_inline)) double NM(xent_block)(const T *zb, T *db, T *pk,
                                                                   int stream,
                                                                   const nmx_xent_args *a,
                                                                   nmx_index o, nmx_index i0,
                                                                   nmx_index nb) {
    nmx_index n = a->classes, inner = a->inner, col0 = o * inner + i0;
    T m[NMX_BLOCK_MAX], alpha[NMX_BLOCK_MAX], ty[NMX_BLOCK_MAX];
    double s[NMX_BLOCK_MAX], big_a[NMX_BLOCK_MAX], at[NMX_BLOCK_MAX], lse[NMX_BLOCK_MAX];
    double wy[NMX_BLOCK_MAX], loss[NMX_BLOCK_MAX], pm[NMX_BLOCK_MAX];
    int64_t yv[NMX_BLOCK_MAX];
    const T *qb = a->probs ? (const T *)a->probs + o * n * inner + i0 : NULL;
    NM(sblk) sb = {.z = zb, .o = db, .n = n, .inner = inner, .nb = nb};
    T erow[NMX_BLOCK_MAX];
    if (stream)
        NM(stream_max)(&sb, m, erow);
    else
        NM(block_max)(zb, n, inner, nb, m, pk);
    const T *wz = pk ? pk : zb; /* z values, class rows ws apart */
    nmx_index ws = pk ? nb : inner;
    T *we = pk ? pk : db; /* exp(z - m), same layout as wz (overwrites the packed copy) */
    NM(block_coeffs)(wz, ws, qb, inner, nb, m, a, big_a, at);
    if (!qb) NM(block_labels)(wz, ws, m, a, col0, nb, yv, wy, ty);
    if (stream)
        NM(stream_sum)(&sb, m, s, erow);
    else
        NM(block_sum)(wz, we, n, ws, nb, m, s);
    int label_pm1 = !qb && a->eps == 0.0;
    if (label_pm1 && stream)
        NM(stream_pm1)(yv, ty, s, nb, pm);
    else if (label_pm1)
        NM(block_pm1)(we, ws, yv, ty, s, nb, pm);
    double keep = 1.0 - a->eps, sc = a->scale, ec = a->eps / (double)n, total = 0.0;
    NM(block_log1p)(s, lse, nb);
    NM(block_losses)(s, lse, big_a, at, qb ? NULL : yv, wy, ty, keep, sc, nb, loss, alpha);
    for (nmx_index i = 0; i < nb; i++) {
        if (a->loss) ((T *)a->loss)[col0 + i] = (T)loss[i];
        total += loss[i];
    }
    for (nmx_index c = 0; c < n; c++) {
        double wc = a->weight ? a->weight[c] : 1.0;
        T *dr = db + c * inner;
        const T *er = we + c * ws;
        if (stream) {
            NM(stream_exp)(zb + c * inner, m, nb, erow);
            er = erow;
        }
        if (qb)
            for (nmx_index i = 0; i < nb; i++)
                dr[i] = alpha[i] * er[i] - (T)(sc * wc * (keep * (double)qb[c * inner + i] + ec));
        else if (a->eps != 0.0)
            for (nmx_index i = 0; i < nb; i++) dr[i] = alpha[i] * er[i] - (T)(sc * wc * ec);
        else
            for (nmx_index i = 0; i < nb; i++) dr[i] = alpha[i] * er[i];
        if (c + NMX_PREFETCH < n) /* the strided dz rows: fetch for writing ahead of time */
            for (nmx_index i = 0; i < nb; i += 64 / (nmx_index)sizeof(T))
                __builtin_prefetch(dr + NMX_PREFETCH * inner + i, 1);
    }
    if (!qb) NM(block_label_grad)(db, n, inner, nb, yv, wy, label_pm1 ? pm : NULL, a);
    return total;
}

#if LANES == 16 && defined(NMX_SOFTMAX_HALF_TU)
/* Row c of a streamed block's half targets q (class rows `inner` apart), widened into qb; the
 * row NMX_SPREFETCH classes ahead is fetched meanwhile, as NM(srow) does for the input. */
static inline __attribute__((always_inline)) void NM(sqrow)(const NM(sblk) * b, const uint16_t *q,
                                                            nmx_index c, T *qb) {
    if (c + NMX_SPREFETCH < b->n)
        for (nmx_index i = 0; i < b->nb; i += 32)
            __builtin_prefetch(q + (c + NMX_SPREFETCH) * b->inner + i);
    nmx_half_to_float(b->kind, q + c * b->inner, qb, b->nb);
}

/* Cross-entropy of a streamed column block in half storage (b->h, b->ho; q: half probability
 * targets or NULL), as xent_block computes it on the widened block, operation for operation:
 * block_coeffs' pass and the label entries read widened rows or elements, and each dz class
 * row is finished in an L1 buffer (label entries and ignored columns included, as
 * block_label_grad sets them) before it is rounded once. The block's losses are added to
 * *total in groups of `group` columns, each summed from 0 in column order: the sums the
 * gathered tiles of that width produced. Cloned like run_tasks, for the same contractions. */
NMX_CLONES static void NM(stream_xent_h)(const NM(sblk) * b, const uint16_t *q,
                                         const nmx_xent_args *a, nmx_index col0, nmx_index group,
                                         double *total) {
    nmx_index n = b->n, nb = b->nb, nl = 0, ni = 0;
    T m[NMX_BLOCK_MAX], alpha[NMX_BLOCK_MAX], ty[NMX_BLOCK_MAX], buf[NMX_BLOCK_MAX];
    T qb[NMX_BLOCK_MAX], dr[NMX_BLOCK_MAX], e[NMX_BLOCK_MAX], lf[NMX_BLOCK_MAX];
    double s[NMX_BLOCK_MAX], big_a[NMX_BLOCK_MAX], at[NMX_BLOCK_MAX], lse[NMX_BLOCK_MAX];
    double wy[NMX_BLOCK_MAX], loss[NMX_BLOCK_MAX], pm[NMX_BLOCK_MAX];
    int64_t yv[NMX_BLOCK_MAX];
    nmx_index lcol[NMX_BLOCK_MAX], icol[NMX_BLOCK_MAX]; /* labelled (by label), ignored */
    double keep = 1.0 - a->eps, sc = a->scale, ec = a->eps / (double)n;
    NM(stream_max)(b, m, buf);
    for (nmx_index i = 0; i < nb; i++) big_a[i] = at[i] = 0.0;
    if (q || a->eps != 0.0)
        for (nmx_index c = 0; c < n; c++) { /* block_coeffs */
            const T *r = NM(srow)(b, c, buf);
            double wc = a->weight ? a->weight[c] : 1.0;
            if (q) NM(sqrow)(b, q, c, qb);
            for (nmx_index i = 0; i < nb; i++) {
                double ac = wc * (q ? keep * (double)qb[i] + ec : ec);
                big_a[i] += ac;
                at[i] += ac * ((double)r[i] - (double)m[i]);
            }
        }
    if (!q)
        for (nmx_index i = 0; i < nb; i++) { /* block_labels, one widened element a column */
            int64_t y = nmx_label_at(a->labels, a->label_bytes, col0 + i);
            int ign = NM(ignored)(a, y);
            T zy = 0;
            if (!ign) nmx_half_to_float(b->kind, b->h + y * b->inner + i, &zy, 1);
            yv[i] = ign ? -1 : y;
            wy[i] = ign ? 0.0 : a->weight ? a->weight[y] : 1.0;
            ty[i] = ign ? 0 : zy - m[i];
            if (ign) {
                icol[ni++] = i;
                continue;
            }
            nmx_index k = nl++; /* insertion by label: the dz rows are visited in class order */
            for (; k > 0 && yv[lcol[k - 1]] > y; k--) lcol[k] = lcol[k - 1];
            lcol[k] = i;
        }
    NM(stream_sum)(b, m, s, buf);
    int label_pm1 = !q && a->eps == 0.0;
    if (label_pm1) NM(stream_pm1)(yv, ty, s, nb, pm);
    NM(block_log1p)(s, lse, nb);
    NM(block_losses)(s, lse, big_a, at, q ? NULL : yv, wy, ty, keep, sc, nb, loss, alpha);
    for (nmx_index g = 0; g < nb; g += group) {
        double t = 0.0;
        for (nmx_index i = g; i < nb && i < g + group; i++) t += loss[i];
        *total += t;
    }
    if (a->loss) {
        for (nmx_index i = 0; i < nb; i++) lf[i] = (T)loss[i];
        nmx_float_to_half(b->kind, lf, (uint16_t *)a->loss + col0, nb);
    }
    for (nmx_index c = 0, k = 0; c < n; c++) {
        double wc = a->weight ? a->weight[c] : 1.0;
        const T *r = NM(srow)(b, c, buf);
        NM(stream_exp)(r, m, nb, e);
        if (q) {
            NM(sqrow)(b, q, c, qb);
            for (nmx_index i = 0; i < nb; i++)
                dr[i] = alpha[i] * e[i] - (T)(sc * wc * (keep * (double)qb[i] + ec));
        } else if (a->eps != 0.0) {
            for (nmx_index i = 0; i < nb; i++) dr[i] = alpha[i] * e[i] - (T)(sc * wc * ec);
        } else {
            for (nmx_index i = 0; i < nb; i++) dr[i] = alpha[i] * e[i];
        }
        for (; k < nl && yv[lcol[k]] == c; k++) { /* block_label_grad */
            nmx_index i = lcol[k];
            if (label_pm1)
                dr[i] = (T)(sc * wy[i] * pm[i]);
            else
                dr[i] -= (T)(sc * keep * wy[i]);
        }
        for (nmx_index j = 0; j < ni; j++) dr[icol[j]] = 0;
        uint16_t *ho = b->ho + c * b->inner;
        if (c + NMX_SPREFETCH < n) /* the strided dz rows: fetch for writing ahead of time */
            for (nmx_index i = 0; i < nb; i += 32)
                __builtin_prefetch(ho + NMX_SPREFETCH * b->inner + i, 1);
        nmx_float_to_half(b->kind, dr, ho, nb);
    }
}
#endif

/* Transposes of a group of nr <= NMX_GROUP rows of n <= NMX_SMALL_C classes: zt[c * G + r] =
 * z[r * n + c] (rows past nr are zeros), and back. float32 transposes in registers through a
 * padded copy (the 16-wide row loads overlap and may run past the group); float64 and compilers
 * without the shuffle builtin move scalars. */
#define NMX_GROUP 16
static inline __attribute__((always_inline)) void NM(group_in)(const T *z, T *zt, nmx_index n,
                                                               nmx_index nr) {
#if defined(NMX_HAVE_TR16) && LANES == 16
    nmx_vf32 v[16];
    for (nmx_index r = 0; r < 16; r++) {
        if ((r + 1) * n + LANES <= nr * n + n) { /* the 16-wide load stays inside the group */
            v[r] = NM(vload)(z + r * n);
            continue;
        }
        T t[LANES] = {0};
        for (nmx_index c = 0; c < n && r < nr; c++) t[c] = z[r * n + c];
        v[r] = NM(vload)(t);
    }
    nmx_transpose16_f32(v);
    /* All 16 class rows, a fixed-size copy: the rows c >= n are never read, and a copy of n rows
     * becomes a call to memcpy. The callers' buffers hold NMX_SMALL_C rows. */
    _Static_assert(NMX_SMALL_C >= 16, "group buffers hold 16 class rows");
    memcpy(zt, v, sizeof v);
#else
    for (nmx_index c = 0; c < n; c++)
        for (nmx_index r = 0; r < NMX_GROUP; r++) zt[c * NMX_GROUP + r] = r < nr ? z[r * n + c] : 0;
#endif
}

static inline __attribute__((always_inline)) void NM(group_out)(const T *dt, T *dz, nmx_index n,
                                                                nmx_index nr) {
#if defined(NMX_HAVE_TR16) && LANES == 16
    nmx_vf32 v[16];
    for (nmx_index c = 0; c < 16; c++) v[c] = c < n ? NM(vload)(dt + c * NMX_GROUP) : (VT){0};
    nmx_transpose16_f32(v);
    /* Rows in order: a 16-wide store's tail is overwritten by the next row; the last rows, whose
     * store would leave the group, are copied element by element. */
    for (nmx_index r = 0; r < nr; r++) {
        if ((r + 1) * n + LANES <= nr * n + n)
            memcpy(dz + r * n, &v[r], sizeof v[r]);
        else
            for (nmx_index c = 0; c < n; c++) dz[r * n + c] = v[r][c];
    }
#else
    for (nmx_index r = 0; r < nr; r++)
        for (nmx_index c = 0; c < n; c++) dz[r * n + c] = dt[c * NMX_GROUP + r];
#endif
}

#if defined(NMX_HAVE_TR16) && LANES == 16
/* Lanes [8h, 8h + 8) of a float32 vector, widened to float64. */
static inline __attribute__((always_inline)) nmx_vf64 NM(wide)(const VT *v, int h) {
    nmx_vf32h x;
    memcpy(&x, (const char *)v + h * sizeof x, sizeof x);
    return __builtin_convertvector(x, nmx_vf64);
}

/* xent_block on a transposed group (inner == nb == NMX_GROUP == LANES) in the common case:
 * integer labels yl, no class weights, no smoothing. Every column is one vector lane, so the
 * per-column values stay in registers, where the general kernel keeps arrays of NMX_BLOCK_MAX
 * in memory; that costs a 32-row call more than its arithmetic. The operations are the general
 * kernel's with its constants in place (big_a = at = 0, keep = w_y = 1, so A = 1 and the loss is
 * lse - ty exactly, contracted or not): the same bits. lt (or NULL) receives the 16 losses. */
static inline __attribute__((always_inline)) double NM(xent_group_plain)(const T *zt, T *dt,
                                                                         const int64_t *yl,
                                                                         const nmx_xent_args *a,
                                                                         T *lt) {
    typedef int32_t vi32h __attribute__((vector_size(32)));
    nmx_index n = a->classes;
    double sc = a->scale, total = 0.0, loss[NMX_GROUP], pm[NMX_GROUP], lg[8];
    VT m = NM(vload)(zt), part = {0}, ty = {0}, ey = {0}, alpha = {0};
    VI cnt = {0}, ok = {0};
    for (nmx_index c = 1; c < n; c++) { /* block_max */
        VT v = NM(vload)(zt + c * NMX_GROUP);
        m = NMX_VMAX(VT, VI, v, m);
    }
    for (nmx_index c = 0; c < n; c++) /* block_sum: one chunk, n <= NMX_CHUNK */
        NM(exp_stepv)(zt + c * NMX_GROUP, &m, dt + c * NMX_GROUP, &part, &cnt, 1);
    for (int i = 0; i < NMX_GROUP; i++) { /* block_labels; an ignored column reads class 0 */
        int64_t y = yl[i];
        int use = !NM(ignored)(a, y);
        nmx_index k = (use ? y : 0) * NMX_GROUP + i;
        ok[i] = -use;
        ty[i] = use ? zt[k] - m[i] : 0;
        ey[i] = use ? dt[k] : 1;
    }
    nmx_vf64 acc[2] = {{0}, {0}};
    NMX_CAT(nmx_vacc, SFX)(acc, &part);
    VI cm1 = cnt - 1;
    for (int h = 0; h < 2; h++) {
        vi32h ch;
        memcpy(&ch, (const char *)&cm1 + h * sizeof ch, sizeof ch);
        nmx_vf64 s = acc[h] + __builtin_convertvector(ch, nmx_vf64), u = 1.0 + s;
        nmx_vf64 t = NM(wide)(&ty, h), e = NM(wide)(&ey, h), neg = -s / u, oth = e / u - 1.0;
        nmx_vf64 p = NMX_VSEL(nmx_vf64, nmx_vi64, t == 0, neg, oth); /* block_pm1 */
        nmx_vf64 lgv;
        for (int k = 0; k < 8; k++) lg[k] = log(u[k]); /* block_log1p */
        memcpy(&lgv, lg, sizeof lgv);
        nmx_vf64 lse = NMX_VSEL(nmx_vf64, nmx_vi64, u == 1.0, s, lgv * (s / (u - 1.0)));
        nmx_vf64 li = lse - t, al = sc / u; /* block_losses */
        for (int k = 0; k < 8; k++) {
            int use = ok[8 * h + k] != 0;
            loss[8 * h + k] = use ? li[k] : 0.0;
            alpha[8 * h + k] = use ? (T)al[k] : 0;
            pm[8 * h + k] = p[k];
        }
    }
    for (int i = 0; i < NMX_GROUP; i++) {
        if (lt) lt[i] = (T)loss[i];
        total += loss[i];
    }
    for (nmx_index c = 0; c < n; c++) { /* the gradient, then block_label_grad */
        VT e = NM(vload)(dt + c * NMX_GROUP), d = alpha * e;
        d = NMX_VSEL(VT, VI, ok, d, (VT){0});
        memcpy(dt + c * NMX_GROUP, &d, sizeof d);
    }
    for (int i = 0; i < NMX_GROUP; i++)
        if (ok[i]) dt[yl[i] * NMX_GROUP + i] = (T)(sc * pm[i]);
    return total;
}
#endif

/* A group of up to NMX_GROUP rows with few classes (n <= NMX_SMALL_C), transposed so that the
 * column-block kernel runs across the rows: a 10-class row is too short for the row kernel's
 * vectors, and one row at a time leaves the per-row latency chain exposed. Padding rows get the
 * label -1, which the block kernel treats as ignored (zero loss, not returned). */
static inline __attribute__((always_inline)) double NM(xent_small_rows)(const T *z, T *dz,
                                                                        const nmx_xent_args *a,
                                                                        nmx_index r0,
                                                                        nmx_index nr) {
    nmx_index n = a->classes;
    T zt[NMX_SMALL_C * NMX_GROUP], dt[NMX_SMALL_C * NMX_GROUP], lt[NMX_GROUP];
    int64_t yl[NMX_GROUP];
    NM(group_in)(z + r0 * n, zt, n, nr);
    for (nmx_index r = 0; r < NMX_GROUP; r++)
        yl[r] = r < nr ? nmx_label_at(a->labels, a->label_bytes, r0 + r) : -1;
    nmx_xent_args b = *a;
    b.outer = 1;
    b.inner = NMX_GROUP;
    b.labels = yl;
    b.label_bytes = 8;
    b.loss = a->loss ? lt : NULL;
#if defined(NMX_HAVE_TR16) && LANES == 16
    double total = !a->weight && a->eps == 0.0
                       ? NM(xent_group_plain)(zt, dt, yl, a, b.loss)
                       : NM(xent_block)(zt, dt, NULL, 0, &b, 0, 0, NMX_GROUP);
#else
    double total = NM(xent_block)(zt, dt, NULL, 0, &b, 0, 0, NMX_GROUP);
#endif
    NM(group_out)(dt, dz + r0 * n, n, nr);
    if (a->loss)
        for (nmx_index r = 0; r < nr; r++) ((T *)a->loss)[r0 + r] = lt[r];
    return total;
}

/* Softmax / log-softmax of a group of up to NMX_GROUP rows with few classes, transposed the same
 * way: the block kernel's vectors then run across 16 rows at once instead of along one 10-class
 * row. Padding rows are zeros, computed and dropped. */
static inline __attribute__((always_inline)) void NM(softmax_small_rows)(const T *z, T *out,
                                                                         nmx_index n,
                                                                         nmx_index r0,
                                                                         nmx_index nr, int log_) {
    T zt[NMX_SMALL_C * NMX_GROUP], ot[NMX_SMALL_C * NMX_GROUP];
    if (n < 1) return; /* never (the driver skips empty views); tells the compiler zt is set */
    NM(group_in)(z + r0 * n, zt, n, nr);
    NM(softmax_block)(zt, ot, NULL, n, NMX_GROUP, NMX_GROUP, log_);
    NM(group_out)(ot, out + r0 * n, n, nr);
}

/* ------------------------------------------------------------------ drivers */

typedef struct {
    int kind;
    const T *x, *y; /* z (forward), or g and p / lp (backward) */
    T *out;
    const nmx_xent_args *a;
    nmx_index n, inner, cols, nblk;
    double wall;
    int stream; /* column blocks streamed from the input (softmax_stream.h), not packed */
    int nt;     /* streamed softmax outputs: non-temporal stores (stream.h) */
} NM(job);

#if LANES == 16
/* run_tasks below, for the half kernels, which call the float32 runner compiled in softmax.c. */
double NM(nmx_softmax_tasks)(const NM(job) * jb, nmx_index t0, nmx_index t1, T *pk);
#endif

#ifndef NMX_SOFTMAX_HALF_TU
/* Rows [t0, t1) with few classes, in groups (see xent_small_rows and softmax_small_rows). A
 * function of its own: inlined into run_tasks, the group kernels share that function's frame and
 * registers with every other kernel and spill most of their per-column values, which costs a
 * small call more than the arithmetic. */
NMX_CLONES static NMX_NOINLINE_CLONED double NM(run_small_rows)(const NM(job) * jb,
                                                                nmx_index t0, nmx_index t1) {
    double total = 0.0;
    if (jb->kind == NMX_XENT) {
        for (nmx_index r = t0; r < t1; r += NMX_GROUP)
            total += NM(xent_small_rows)(jb->x, jb->out, jb->a, r,
                                         t1 - r < NMX_GROUP ? t1 - r : NMX_GROUP);
        return total;
    }
    for (nmx_index r = t0; r < t1; r += NMX_GROUP)
        NM(softmax_small_rows)(jb->x, jb->out, jb->n, r, t1 - r < NMX_GROUP ? t1 - r : NMX_GROUP,
                               jb->kind == NMX_LOG_SOFTMAX);
    return total;
}

/* Whether run_small_rows takes the tasks of jb: rows of at most NMX_SMALL_C classes, of softmax,
 * log-softmax, or cross-entropy with integer labels. */
static inline int NM(small_rows)(const NM(job) * jb) {
    if (jb->inner != 1 || jb->n > NMX_SMALL_C) return 0;
    return jb->kind == NMX_SOFTMAX || jb->kind == NMX_LOG_SOFTMAX ||
           (jb->kind == NMX_XENT && jb->a->labels);
}

/* Run tasks [t0, t1): rows when inner == 1, else blocks of `cols` columns, with pk (NULL or
 * jb->n * jb->cols elements) for the packed copy of a block. The target clones give AVX-512 /
 * AVX2+FMA code on CPUs that have it without -march=native. The half-precision kernels call
 * the float32 version on float32 tiles (softmax_half.h). */
NMX_CLONES static double NM(run_tasks)(const NM(job) * jb, nmx_index t0, nmx_index t1, T *pk) {
    double total = 0.0;
    nmx_index n = jb->n, inner = jb->inner;
    const nmx_xent_args *a = jb->a;
    if (NM(small_rows)(jb)) return NM(run_small_rows)(jb, t0, t1);
    /* Task t is block t % nblk of example row t / nblk; step through them without dividing per
     * task (a division costs more than a 10-class row). */
    nmx_index o = t0 / jb->nblk, ib = t0 % jb->nblk;
    for (nmx_index t = t0; t < t1; t++) {
        if (t > t0 && ++ib == jb->nblk) {
            ib = 0;
            o++;
        }
        nmx_index i0 = ib * jb->cols;
        nmx_index nb = inner - i0 < jb->cols ? inner - i0 : jb->cols;
        nmx_index off = o * n * inner + i0;
        const T *x = jb->x + off;
        T *out = jb->out + off;
        if (jb->kind == NMX_XENT && inner == 1) {
            double loss = a->probs ? NM(xent_prob_row)(x, (const T *)a->probs + off, out, a)
                                   : NM(xent_label_row)(
                                         x, out, nmx_label_at(a->labels, a->label_bytes, o), a,
                                         jb->wall);
            if (a->loss) ((T *)a->loss)[o] = (T)loss;
            total += loss;
        } else if (jb->kind == NMX_XENT) {
            total += NM(xent_block)(x, out, pk, jb->stream, a, o, i0, nb);
        } else if (jb->kind == NMX_BWD || jb->kind == NMX_BWD_LOG) {
            int lg = jb->kind == NMX_BWD_LOG;
            if (inner == 1)
                NM(backward_row)(x, jb->y + off, out, n, lg);
            else
                NM(backward_block)(x, jb->y + off, out, n, inner, nb, lg, jb->stream);
        } else if (inner == 1) {
            NM(softmax_row)(x, out, n, jb->kind == NMX_LOG_SOFTMAX);
        } else if (jb->stream) {
            NM(sblk) sb = {.z = x, .o = out, .n = n, .inner = inner, .nb = nb, .nt = jb->nt};
            NM(stream_softmax)(&sb, jb->kind == NMX_LOG_SOFTMAX);
        } else {
            NM(softmax_block)(x, out, pk, n, inner, nb, jb->kind == NMX_LOG_SOFTMAX);
        }
    }
    return total;
}

/* A plain function, not a clone: GCC gives a cloned function's dispatcher default visibility
 * whatever the attributes say, and the extension modules should export nothing of the kernels. */
#if LANES == 16
double NM(nmx_softmax_tasks)(const NM(job) * jb, nmx_index t0, nmx_index t1, T *pk) {
    return NM(run_tasks)(jb, t0, t1, pk);
}
#endif

static double NM(run_range)(const NM(job) * jb, nmx_index t0, nmx_index t1) {
    /* Packed copy of one column block (forward kernels with inner > 1); without memory the
     * kernels work in place on the strided block, slower but identical. */
    T *pk = NULL;
    if (jb->inner > 1 && jb->kind != NMX_BWD && jb->kind != NMX_BWD_LOG && !jb->stream && t1 > t0)
        pk = malloc((size_t)(jb->n * jb->cols) * sizeof(T));
    double total = NM(run_tasks)(jb, t0, t1, pk);
    free(pk);
    return total;
}

static double NM(run)(NM(job) * jb, nmx_index outer) {
    /* An empty view has nothing to compute (and no column block to size: no division by 0). */
    if (outer <= 0 || jb->n <= 0 || jb->inner <= 0) return 0.0;
    jb->stream = jb->inner > 1 && nmx_block_streams(jb->n, (nmx_index)sizeof(T), jb->kind);
    jb->cols = jb->inner == 1 ? 1
               : jb->stream   ? nmx_stream_cols(jb->inner)
                              : nmx_block_cols(jb->n, jb->inner, (nmx_index)sizeof(T));
    jb->nblk = (jb->inner + jb->cols - 1) / jb->cols;
    nmx_index ntasks = outer * jb->nblk, work = outer * jb->n * jb->inner;
    /* Streamed softmax writes outputs larger than the cache with non-temporal stores
     * (stream_softmax): (32000, 512) took 0.90x (float32) and 0.92x (float64) the time. The
     * other kernels keep plain stores: with non-temporal ones log-softmax took 1.00-1.02x,
     * cross-entropy 0.99-1.07x, the backward 1.06x and 1.15x (medians of 6 runs each). */
    jb->nt = jb->stream && jb->kind == NMX_SOFTMAX &&
             nmx_store_mode(sizeof(T) * (size_t)work, NMX_STREAM) != NMX_STORE;
    /* At most one chunk's work is one chunk (nmx_run_chunk's least size): small calls skip the
     * divisions that size the chunks. */
    if (work <= NMX_RUN_CHUNK_WORK) return NM(run_range)(jb, 0, ntasks);
    /* Chunks of whole row groups, so that few-class rows group as they would on one thread. */
    nmx_index chunk = nmx_run_chunk(ntasks, work, jb->inner == 1 ? NMX_GROUP : 1);
    nmx_index nchunks = (ntasks + chunk - 1) / chunk;
    if (nchunks <= 1) return NM(run_range)(jb, 0, ntasks);
    /* One slot per chunk (see nmx_run_chunk): the same sum on any number of threads. Dynamic
     * scheduling: on a shared machine a descheduled thread no longer holds up the call; the
     * others take its remaining chunks. */
    double part[NMX_RUN_CHUNKS];
    int nt = nmx_threads_for(work);
    if (nt <= 1) {
        for (nmx_index k = 0; k < nchunks; k++)
            part[k] = NM(run_range)(jb, k * chunk, nmx_chunk_end(k, chunk, ntasks));
    } else {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (nmx_index k = 0; k < nchunks; k++)
            part[k] = NM(run_range)(jb, k * chunk, nmx_chunk_end(k, chunk, ntasks));
    }
    return nmx_sum_parts(part, nchunks);
}

double NMX_CAT(nmx_xent, SFX)(const T *z, T *dz, const nmx_xent_args *a) {
    double wall = (double)a->classes;
    if (a->weight) {
        wall = 0.0;
        for (nmx_index c = 0; c < a->classes; c++) wall += a->weight[c];
    }
    NM(job) jb = {NMX_XENT, z, NULL, dz, a, a->classes, a->inner, 0, 0, wall, 0, 0};
    return NM(run)(&jb, a->outer);
}

void NMX_CAT(nmx_softmax, SFX)(const T *z, T *out, nmx_index outer, nmx_index classes,
                               nmx_index inner, int log_) {
    NM(job) jb = {log_ ? NMX_LOG_SOFTMAX : NMX_SOFTMAX, z, NULL, out, NULL, classes, inner,
                  0, 0, 0.0, 0, 0};
    NM(run)(&jb, outer);
}

void NMX_CAT(nmx_softmax_backward, SFX)(const T *g, const T *y, T *dz, nmx_index outer,
                                        nmx_index classes, nmx_index inner, int log_) {
    NM(job) jb = {log_ ? NMX_BWD_LOG : NMX_BWD, g, y, dz, NULL, classes, inner, 0, 0, 0.0, 0, 0};
    NM(run)(&jb, outer);
}
#endif /* NMX_SOFTMAX_HALF_TU */

#undef NM
