/* Half-precision row kernels for one set of conversions; included by softmax_hrow.h with
 * HSFX (name suffix), HAI (attributes of the inlined helpers), HRUN (of the runners),
 * HF16_LOAD / HF16_STORE and HBF16_LOAD / HBF16_STORE (16-lane conversions), HWIDEN (16 float32
 * lanes to two float64 vectors, as nmx_hwiden), and HF16 / HBF16
 * (1: define the float16 / bfloat16 runner), and HMASK16 (1: AVX-512 BW masked loads and
 * stores of 16 halves for the last columns of a column block). Same arithmetic as the float32
 * row kernels of softmax_impl.h, operation for operation.
 */
#define HN(x) NMX_CAT(x, HSFX)

/* 16 halves at p, widened into *v. */
HAI void HN(hload)(int kind, const uint16_t *p, nmx_vf32 *v) {
    if (kind == NMX_BF16)
        HBF16_LOAD(p, v);
    else
        HF16_LOAD(p, v);
}

/* *v rounded to 16 halves at p. */
HAI void HN(hstore)(int kind, uint16_t *p, const nmx_vf32 *v) {
    if (kind == NMX_BF16)
        HBF16_STORE(p, v);
    else
        HF16_STORE(p, v);
}

/* row_max_whole_f32 on a half row of at least 16 entries: the same comparisons in the same
 * order. */
HAI float HN(hrow_max_whole)(int kind, const uint16_t *z, nmx_index n, float m) {
    nmx_vf32 m0, m1, m2, m3, v0, v1, v2, v3, v;
    HN(hload)(kind, z, &m0);
    m1 = m2 = m3 = m0;
    nmx_index j = 16;
    for (; j + 64 <= n; j += 64) {
        HN(hload)(kind, z + j, &v0);
        HN(hload)(kind, z + j + 16, &v1);
        HN(hload)(kind, z + j + 32, &v2);
        HN(hload)(kind, z + j + 48, &v3);
        m0 = NMX_VMAX(nmx_vf32, nmx_vi32, v0, m0);
        m1 = NMX_VMAX(nmx_vf32, nmx_vi32, v1, m1);
        m2 = NMX_VMAX(nmx_vf32, nmx_vi32, v2, m2);
        m3 = NMX_VMAX(nmx_vf32, nmx_vi32, v3, m3);
    }
    for (; j + 16 <= n; j += 16) {
        HN(hload)(kind, z + j, &v);
        m0 = NMX_VMAX(nmx_vf32, nmx_vi32, v, m0);
    }
    HN(hload)(kind, z + n - 16, &v);
    m0 = NMX_VMAX(nmx_vf32, nmx_vi32, v, m0);
    m1 = NMX_VMAX(nmx_vf32, nmx_vi32, m2, m1);
    m0 = NMX_VMAX(nmx_vf32, nmx_vi32, m3, m0);
    m0 = NMX_VMAX(nmx_vf32, nmx_vi32, m1, m0);
    for (int k = 0; k < 16; k++) m = m0[k] > m ? m0[k] : m;
    return m;
}

/* row_max_halves_f32 on a half row. */
HAI float HN(hrow_max_halves)(int kind, const uint16_t *z, nmx_index n, float m) {
    nmx_vf32 v0, v1, v2, v3, v;
    nmx_vf32h m0[2], m1[2], m2[2], m3[2];
    HN(hload)(kind, z, &v);
    m0[0] = NMX_LO16(v);
    m0[1] = NMX_HI16(v);
    memcpy(m1, m0, sizeof m1);
    memcpy(m2, m0, sizeof m2);
    memcpy(m3, m0, sizeof m3);
    nmx_index j = 16;
    for (; j + 64 <= n; j += 64) {
        HN(hload)(kind, z + j, &v0);
        HN(hload)(kind, z + j + 16, &v1);
        HN(hload)(kind, z + j + 32, &v2);
        HN(hload)(kind, z + j + 48, &v3);
        NMX_HMAX(nmx_vf32h, NMX_LO16(v0), NMX_HI16(v0), m0);
        NMX_HMAX(nmx_vf32h, NMX_LO16(v1), NMX_HI16(v1), m1);
        NMX_HMAX(nmx_vf32h, NMX_LO16(v2), NMX_HI16(v2), m2);
        NMX_HMAX(nmx_vf32h, NMX_LO16(v3), NMX_HI16(v3), m3);
    }
    for (; j + 16 <= n; j += 16) {
        HN(hload)(kind, z + j, &v);
        NMX_HMAX(nmx_vf32h, NMX_LO16(v), NMX_HI16(v), m0);
    }
    HN(hload)(kind, z + n - 16, &v);
    NMX_HMAX(nmx_vf32h, NMX_LO16(v), NMX_HI16(v), m0);
    NMX_HMAX(nmx_vf32h, m2[0], m2[1], m1);
    NMX_HMAX(nmx_vf32h, m3[0], m3[1], m0);
    NMX_HMAX(nmx_vf32h, m1[0], m1[1], m0);
    float w[16];
    memcpy(w, m0, sizeof w);
    for (int k = 0; k < 16; k++) m = w[k] > m ? w[k] : m;
    return m;
}

/* row_max_f32 on a half row: the same comparisons in the same order. */
HAI float HN(hrow_max)(int kind, const uint16_t *z, nmx_index n) {
    float m = nmx_h2f(kind, z[0]);
    if (n < 16) {
        for (nmx_index j = 1; j < n; j++) {
            float v = nmx_h2f(kind, z[j]);
            m = v > m ? v : m;
        }
        return m;
    }
    return nmx_rows_halves() ? HN(hrow_max_halves)(kind, z, n, m)
                             : HN(hrow_max_whole)(kind, z, n, m);
}

/* row_sum_f32 on a half row: s, with exp(z - m) stored in the float32 e. The store is kept
 * even where the exponentials are not needed (log-softmax), as in the float32 kernel: without it
 * GCC merges the two selects of each step and scalarizes their comparisons (4x slower). */
HAI double HN(hrow_sum_by)(int kind, const uint16_t *z, nmx_index n, float m, float *e,
                           const nmx_hnext *next, int halves) {
    nmx_vf64 acc[2] = {{0}, {0}};
    nmx_vi32h ch[2] = {{0}, {0}};
    nmx_vi32 cnt;
    const nmx_vf32 mv = (nmx_vf32){0} + m;
    nmx_index j = 0;
    while (j + 16 <= n) {
        nmx_vf32h ph[2] = {{0}, {0}};
        nmx_vf32 part;
        nmx_index stop = n - j > NMX_CHUNK * 16 ? j + NMX_CHUNK * 16 : n;
        nmx_hnext_fetch(next, j, stop);
        for (; j + 16 <= stop; j += 16) {
            nmx_vf32 v;
            HN(hload)(kind, z + j, &v);
            if (halves)
                exp_steph_f32((const float *)&v, &mv, e + j, ph, ch, 1);
            else
                exp_step_f32((const float *)&v, &mv, e + j, ph, ch, 1);
        }
        memcpy(&part, ph, sizeof part);
        nmx_vacc_f32(acc, &part);
    }
    memcpy(&cnt, ch, sizeof cnt);
    if (j < n) {
        float zb[16], eb[16];
        nmx_vf32 part = {0};
        nmx_vi32 tail = {0}; /* cnt's address stays private: the loop keeps it in a register */
        for (nmx_index k = 0; k < 16; k++) zb[k] = j + k < n ? nmx_h2f(kind, z[j + k]) : -INFINITY;
        nmx_hexp_tail(zb, &mv, eb, &part, &tail);
        nmx_vacc_f32(acc, &part);
        cnt += tail;
        for (nmx_index k = 0; k < n - j; k++) e[j + k] = eb[k];
    }
    return hsum_f32(acc, &cnt);
}

HAI double HN(hrow_sum)(int kind, const uint16_t *z, nmx_index n, float m, float *e,
                        const nmx_hnext *next) {
    return nmx_rows_halves() ? HN(hrow_sum_by)(kind, z, n, m, e, next, 1)
                             : HN(hrow_sum_by)(kind, z, n, m, e, next, 0);
}

/* out = round(e * c) over a row, e in float32. */
HAI void HN(hscale)(int kind, const float *e, float c, uint16_t *out, nmx_index n) {
    nmx_index j = 0;
    for (; j + 16 <= n; j += 16) {
        nmx_vf32 v;
        memcpy(&v, e + j, sizeof v);
        v *= c;
        HN(hstore)(kind, out + j, &v);
    }
    for (; j < n; j++) out[j] = nmx_f2h(kind, e[j] * c);
}

/* softmax_row_f32 with z and out in half storage; e is float32 scratch of n elements (written
 * by log-softmax too, whose last pass reads z again). */
HAI void HN(hrow_softmax)(int kind, const uint16_t *z, uint16_t *out, float *e, nmx_index n,
                              int log_, const nmx_hnext *next) {
    float m = HN(hrow_max)(kind, z, n);
    if (!log_) {
        float inv = (float)(1.0 / (1.0 + HN(hrow_sum)(kind, z, n, m, e, next)));
        HN(hscale)(kind, e, inv, out, n);
        return;
    }
    float lse = (float)NMX_LOG1P(HN(hrow_sum)(kind, z, n, m, e, next));
    nmx_index j = 0;
    for (; j + 16 <= n; j += 16) {
        nmx_vf32 v;
        HN(hload)(kind, z + j, &v);
        v = (v - m) - lse;
        HN(hstore)(kind, out + j, &v);
    }
    for (; j < n; j++) out[j] = nmx_f2h(kind, (nmx_h2f(kind, z[j]) - m) - lse);
}

/* xent_label_row_f32 without label smoothing (eps == 0), z and dz in half storage. */
HAI double HN(hrow_xent)(int kind, const uint16_t *z, uint16_t *dz, float *e, int64_t y,
                             const nmx_xent_args *a, const nmx_hnext *next) {
    nmx_index n = a->classes;
    if (ignored_f32(a, y)) {
        memset(dz, 0, (size_t)n * sizeof *dz); /* +0 in both formats */
        return 0.0;
    }
    float m = HN(hrow_max)(kind, z, n), zy = nmx_h2f(kind, z[y]);
    double s = HN(hrow_sum)(kind, z, n, m, e, next), lse = NMX_LOG1P(s);
    double wy = a->weight ? a->weight[y] : 1.0, ty = (double)zy - (double)m, sc = a->scale;
    HN(hscale)(kind, e, (float)(sc * wy / (1.0 + s)), dz, n);
    dz[y] = nmx_f2h(kind, (float)(sc * wy * p_minus_one_f32(zy - m, s)));
    return wy * (lse - ty);
}

/* The output pass of the log-softmax backward, dz = g - exp(y) * sg, by L1-sized pieces of the
 * row widened into float32: there the float32 kernel's own loop (its clamped scalar exp, which
 * the compiler vectorizes with the same contractions) runs unchanged, faster than a hand-written
 * vector exp on the widened registers. The pieces are converted by half.c's bulk loops: the
 * 16-lane loads and stores passed every vector through the stack in the AVX2 instance. */
HAI void HN(hlog_backward_out)(int kind, const uint16_t *g, const uint16_t *y, uint16_t *dz,
                               nmx_index n, float sg, const nmx_hnext *next) {
    enum { PIECE = 256 };
    float gb[PIECE], yb[PIECE], ob[PIECE];
    for (nmx_index j0 = 0; j0 < n; j0 += PIECE) {
        nmx_index len = n - j0 < PIECE ? n - j0 : PIECE;
        nmx_hnext_fetch(next, j0, j0 + len);
        nmx_half_to_float(kind, g + j0, gb, len);
        nmx_half_to_float(kind, y + j0, yb, len);
        for (nmx_index k = 0; k < len; k++) ob[k] = gb[k] - nmx_exp_f32(yb[k]) * sg;
        nmx_float_to_half(kind, ob, dz + j0, len);
    }
}

/* The 16 lanes of *v in float64, four to a 32-byte vector (lanes 4q to 4q + 3 in t[q]), by
 * this instance's HWIDEN. */
HAI void HN(hwiden4)(const nmx_vf32 *v, nmx_vf64h *t) {
    nmx_vf64 w[2];
    HWIDEN(v, &w[0], &w[1]);
    memcpy(t, w, sizeof w);
}

/* backward_row_f32 with g, y and dz in half storage, operation for operation: row_dot's sixteen
 * float64 partial sums, lane k taking the elements j = k (mod 16) of the full vectors and the
 * first lane the leftover elements, added in lane order (each product is exact, in float64 or
 * where it provably is in float32, so the sums are row_dot's); then each element's float32
 * expression, rounded once. The next row's g, y and dz are fetched during the output pass,
 * which reads this row back from the cache. */
HAI void HN(hrow_backward)(int kind, const uint16_t *g, const uint16_t *y, uint16_t *dz,
                           nmx_index n, int log_, const nmx_hnext *next) {
    /* Lanes 0-3, 4-7, 8-11 and 12-15 of the sums, each a 32-byte register in every clone: a
     * loop-carried 64-byte vector lives in memory in the AVX2 one (see softmax_common.h). */
    nmx_vf64h acc[4];
    nmx_index j;
    /* mode 0: the sum of g; 1: g y with the product formed in float64; 2: formed in float32,
     * exact for two float16 (at most 22 significant bits, within [2^-48, 2^32]) and for two
     * bfloat16 while it stays within [2^-100, 2^100] (normal, at most 16 bits): a row where a
     * bfloat16 product left that range (0, Inf and NaN included) is summed again in mode 1. */
    for (int mode = log_ ? 0 : 2;; mode = 1) {
        /* Sign bit set in a lane whose product's magnitude bits fell below 2^-100 or above
         * 2^100 (integer arithmetic: see NMX_VABOVE_U32). */
        nmx_vu32h far[2] = {{0}, {0}};
        for (int q = 0; q < 4; q++) acc[q] = (nmx_vf64h){0};
        for (j = 0; j + 16 <= n; j += 16) {
            nmx_vf32 gv, yv;
            nmx_vf64h t[4];
            HN(hload)(kind, g + j, &gv);
            if (mode == 2) {
                HN(hload)(kind, y + j, &yv);
                gv *= yv;
                nmx_vu32h mag[2];
                memcpy(mag, &gv, sizeof mag);
                for (int q = 0; q < 2; q++) {
                    mag[q] &= 0x7fffffffu;
                    far[q] |= (0x71800000u - mag[q]) | (mag[q] - 0x0d800000u);
                }
            }
            HN(hwiden4)(&gv, t);
            if (mode == 1) {
                nmx_vf64h u[4];
                HN(hload)(kind, y + j, &yv);
                HN(hwiden4)(&yv, u);
                for (int q = 0; q < 4; q++) t[q] *= u[q];
            }
            for (int q = 0; q < 4; q++) acc[q] += t[q];
        }
        unsigned any = 0;
        for (int k = 0; k < 8; k++) any |= (far[0][k] | far[1][k]) >> 31;
        if (mode != 2 || kind == NMX_F16 || !any) break;
    }
    /* The lanes by subscript: the accumulators' addresses never escape, so they stay in
     * registers through the loop. */
    double first = acc[0][0], s = 0.0;
    for (nmx_index k = j; k < n; k++)
        first += (double)nmx_h2f(kind, g[k]) * (log_ ? 1.0 : (double)nmx_h2f(kind, y[k]));
    s += first;
    for (int k = 1; k < 16; k++) s += acc[k / 4][k % 4];
    const float d = (float)s; /* sum(g y), or sum(g) for log-softmax */
    if (log_) {
        HN(hlog_backward_out)(kind, g, y, dz, n, d, next);
        return;
    }
    for (j = 0; j + 16 <= n; j += 16) {
        if (j % 32 == 0) nmx_hnext_fetch(next, j, j + 32);
        nmx_vf32 gv, yv, o;
        HN(hload)(kind, g + j, &gv);
        HN(hload)(kind, y + j, &yv);
        o = yv * (gv - d);
        HN(hstore)(kind, dz + j, &o);
    }
    for (; j < n; j++) {
        float gj = nmx_h2f(kind, g[j]), yj = nmx_h2f(kind, y[j]);
        dz[j] = nmx_f2h(kind, yj * (gj - d));
    }
}

#include "softmax_hcol_impl.h"

/* Rows (or column blocks, inner > 1) [r0, r1) of a direct job; e is the thread's scratch. */
HAI double HN(hrows)(int kind, const nmx_hjob *h, nmx_index r0, nmx_index r1, float *e) {
    if (h->f.inner > 1) {
        HN(hcols)(kind, h, r0, r1, e);
        return 0.0;
    }
    nmx_index n = h->f.n;
    const nmx_xent_args *a = h->f.a;
    double total = 0.0;
    for (nmx_index r = r0; r < r1; r++) {
        const uint16_t *z = h->x + r * n;
        uint16_t *out = h->out + r * n;
        nmx_hnext next = {NULL, NULL, NULL};
        if (r + 1 < h->outer) next = (nmx_hnext){z + n, out + n, h->y ? h->y + (r + 1) * n : NULL};
        if (h->f.kind == NMX_BWD || h->f.kind == NMX_BWD_LOG) {
            HN(hrow_backward)(kind, z, h->y + r * n, out, n, h->f.kind == NMX_BWD_LOG, &next);
            continue;
        }
        if (h->f.kind != NMX_XENT) {
            HN(hrow_softmax)(kind, z, out, e, n, h->f.kind == NMX_LOG_SOFTMAX, &next);
            continue;
        }
        int64_t y = nmx_label_at(a->labels, a->label_bytes, r);
        double loss = HN(hrow_xent)(kind, z, out, e, y, a, &next);
        if (a->loss) ((uint16_t *)a->loss)[r] = nmx_f2h(kind, (float)loss);
        total += loss;
    }
    return total;
}

/* One runner per storage format, so that `kind` is a constant inside the loops. */
#if HF16
HRUN static double HN(nmx_hrows_f16)(const nmx_hjob *h, nmx_index r0, nmx_index r1, float *e) {
    return HN(hrows)(NMX_F16, h, r0, r1, e);
}
#endif

#if HBF16
HRUN static double HN(nmx_hrows_bf16)(const nmx_hjob *h, nmx_index r0, nmx_index r1, float *e) {
    return HN(hrows)(NMX_BF16, h, r0, r1, e);
}
#endif

#undef HN
#undef HSFX
#undef HWIDEN
#undef HAI
#undef HRUN
#undef HF16_LOAD
#undef HF16_STORE
#undef HBF16_LOAD
#undef HBF16_STORE
#undef HF16
#undef HBF16
#undef HMASK16
