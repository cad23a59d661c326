/* Half-precision rows (inner == 1) read and written in place; included by softmax_half.h.
 *
 * Softmax, log-softmax and the integer-label cross-entropy without smoothing make their passes
 * over the float16 / bfloat16 row itself: every vector is widened to float32 as it is loaded,
 * and the last pass rounds each result once into the half output. Converting a long row into a
 * float32 buffer first, as the tile path does, adds two passes over twice the bytes (the float32
 * copy and the float32 result) and the conversion calls, which cost more than the halved memory
 * traffic saves. The float32 arithmetic is that of the float32 row kernels, operation for
 * operation (same exp, same chunked sums, same order), so every result is bit for bit the float32
 * kernel's on the upcast row, rounded once.
 *
 * The conversions are half.h's exact scalar ones written on whole vectors (GNU vector
 * extensions), so each SIMD clone of the row runner vectorizes them: bfloat16 widens with a shift
 * and rounds with integer arithmetic; float16 rebiases the exponent, with subnormals through an
 * int -> float conversion. Both round to nearest even and keep NaN, infinities and subnormals.
 */

typedef uint16_t nmx_vu16 __attribute__((vector_size(32)));

#define NMX_HAI static inline __attribute__((always_inline))

/* Rows with at least this many classes take the direct path; shorter ones are grouped into
 * conversion tiles (several rows per bulk conversion beats per-row vector tails). */
#ifndef NMX_HROW_MIN
#define NMX_HROW_MIN 128
#endif

NMX_HAI float nmx_h2f(int kind, uint16_t h) {
    return kind == NMX_BF16 ? nmx_bf16_to_f32(h) : nmx_f16_to_f32(h);
}

NMX_HAI uint16_t nmx_f2h(int kind, float f) {
    return kind == NMX_BF16 ? nmx_f32_to_bf16(f) : nmx_f32_to_f16(f);
}

/* 16 halves at p, widened exactly (half.h's nmx_bf16_to_f32 / nmx_f16_to_f32 per lane). */
NMX_HAI nmx_vf32 nmx_hload(int kind, const uint16_t *p) {
    nmx_vu16 h;
    memcpy(&h, p, sizeof h);
    nmx_vu32 u = __builtin_convertvector(h, nmx_vu32);
    if (kind == NMX_BF16) return (nmx_vf32)(u << 16);
    nmx_vu32 sign = (u & 0x8000u) << 16, mag = u & 0x7fffu, shifted = mag << 13;
    nmx_vu32 normal = shifted + (112u << 23);
    nmx_vu32 special = (shifted + (224u << 23)) | ((nmx_vu32)(mag > 0x7c00u) & 0x00400000u);
    nmx_vu32 sub = (nmx_vu32)(__builtin_convertvector((nmx_vi32)mag, nmx_vf32) * 0x1p-24f);
    nmx_vu32 bits = NMX_VSEL(nmx_vu32, nmx_vi32, mag >= 0x0400u, normal, sub);
    bits = NMX_VSEL(nmx_vu32, nmx_vi32, mag >= 0x7c00u, special, bits);
    return (nmx_vf32)(sign | bits);
}

/* Round 16 floats to halves at p, ties to even (half.h's nmx_f32_to_bf16 / nmx_f32_to_f16). */
NMX_HAI void nmx_hstore(int kind, uint16_t *p, nmx_vf32 v) {
    const nmx_vu32 zero = {0};
    nmx_vu32 u = (nmx_vu32)v, a = u & 0x7fffffffu, bits;
    nmx_vi32 nan = a > 0x7f800000u;
    if (kind == NMX_BF16) {
        nmx_vu32 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        bits = NMX_VSEL(nmx_vu32, nmx_vi32, nan, (u >> 16) | 0x0040u, rounded);
    } else {
        nmx_vu32 r = a - (112u << 23);
        nmx_vu32 normal = (r + 0x0fffu + ((r >> 13) & 1u)) >> 13;
        nmx_vu32 sub = (nmx_vu32)((nmx_vf32)a + 0.5f) - nmx_f32_bits(0.5f);
        bits = NMX_VSEL(nmx_vu32, nmx_vi32, a >= 0x38800000u, normal, sub);
        bits = NMX_VSEL(nmx_vu32, nmx_vi32, a >= 0x477ff000u, zero + 0x7c00u, bits);
        bits = NMX_VSEL(nmx_vu32, nmx_vi32, nan, 0x7e00u | ((a >> 13) & 0x03ffu), bits);
        bits |= (u >> 16) & 0x8000u;
    }
    nmx_vu16 h = __builtin_convertvector(bits, nmx_vu16);
    memcpy(p, &h, sizeof h);
}

/* row_max_f32 on a half row: the same comparisons in the same order. */
NMX_HAI float nmx_hrow_max(int kind, const uint16_t *z, nmx_index n) {
    float m = nmx_h2f(kind, z[0]);
    if (n < 16) {
        for (nmx_index j = 1; j < n; j++) {
            float v = nmx_h2f(kind, z[j]);
            m = v > m ? v : m;
        }
        return m;
    }
    nmx_vf32 m0 = nmx_hload(kind, z), m1 = m0, m2 = m0, m3 = m0;
    nmx_index j = 16;
    for (; j + 64 <= n; j += 64) {
        nmx_vf32 v0 = nmx_hload(kind, z + j), v1 = nmx_hload(kind, z + j + 16);
        nmx_vf32 v2 = nmx_hload(kind, z + j + 32), v3 = nmx_hload(kind, z + j + 48);
        m0 = NMX_VSEL(nmx_vf32, nmx_vi32, v0 > m0, v0, m0);
        m1 = NMX_VSEL(nmx_vf32, nmx_vi32, v1 > m1, v1, m1);
        m2 = NMX_VSEL(nmx_vf32, nmx_vi32, v2 > m2, v2, m2);
        m3 = NMX_VSEL(nmx_vf32, nmx_vi32, v3 > m3, v3, m3);
    }
    for (; j + 16 <= n; j += 16) {
        nmx_vf32 v = nmx_hload(kind, z + j);
        m0 = NMX_VSEL(nmx_vf32, nmx_vi32, v > m0, v, m0);
    }
    nmx_vf32 v = nmx_hload(kind, z + n - 16);
    m0 = NMX_VSEL(nmx_vf32, nmx_vi32, v > m0, v, m0);
    m1 = NMX_VSEL(nmx_vf32, nmx_vi32, m2 > m1, m2, m1);
    m0 = NMX_VSEL(nmx_vf32, nmx_vi32, m3 > m0, m3, m0);
    m0 = NMX_VSEL(nmx_vf32, nmx_vi32, m1 > m0, m1, m0);
    for (int k = 0; k < 16; k++) m = m0[k] > m ? m0[k] : m;
    return m;
}

/* exp_step_f32 on a widened vector v: t = v - m. Vectors are passed by pointer, as in the
 * float32 kernels (GCC scalarizes the comparison of a 64-byte vector passed by value). */
NMX_HAI void nmx_hexp_step(const nmx_vf32 *v, const nmx_vf32 *m, float *e, nmx_vf32 *part,
                           nmx_vi32 *cnt, int store) {
    const nmx_vf32 zero = {0};
    nmx_vf32 t = *v - *m;
    nmx_vf32 ev = nmx_vexp_f32(&t);
    if (store) memcpy(e, &ev, sizeof ev);
    nmx_vi32 tie = t == zero;
    *part += NMX_VSEL(nmx_vf32, nmx_vi32, tie, zero, ev);
    *cnt -= tie;
}

/* The padded last vector of a row (zb: float32, -inf past the row's end). Kept out of line:
 * inlined, GCC merges it with the main loop's identical step and then scalarizes the merged
 * comparisons. Cloned like the row runners, so its exp contracts to the same FMAs. */
NMX_CLONES static void nmx_hexp_tail(const float *zb, const nmx_vf32 *m, float *eb, nmx_vf32 *part,
                                     nmx_vi32 *cnt) {
    nmx_vf32 v = vload_f32(zb);
    nmx_hexp_step(&v, m, eb, part, cnt, 1);
}

/* row_sum_f32 on a half row: s, with exp(z - m) stored in the float32 e if `store` (a constant
 * at each call: GCC scalarizes the tie comparison of a loop that tests a pointer instead). */
NMX_HAI double nmx_hrow_sum(int kind, const uint16_t *z, nmx_index n, float m, float *e,
                            int store) {
    nmx_vf64 acc[2] = {{0}, {0}};
    nmx_vi32 cnt = {0};
    const nmx_vf32 mv = (nmx_vf32){0} + m;
    nmx_index j = 0;
    while (j + 16 <= n) {
        nmx_vf32 part = {0};
        nmx_index stop = n - j > NMX_CHUNK * 16 ? j + NMX_CHUNK * 16 : n;
        for (; j + 16 <= stop; j += 16) {
            nmx_vf32 v = nmx_hload(kind, z + j);
            nmx_hexp_step(&v, &mv, store ? e + j : NULL, &part, &cnt, store);
        }
        nmx_vacc_f32(acc, &part);
    }
    if (j < n) {
        float zb[16], eb[16];
        nmx_vf32 part = {0};
        for (nmx_index k = 0; k < 16; k++) zb[k] = j + k < n ? nmx_h2f(kind, z[j + k]) : -INFINITY;
        nmx_hexp_tail(zb, &mv, eb, &part, &cnt);
        nmx_vacc_f32(acc, &part);
        if (store)
            for (nmx_index k = 0; k < n - j; k++) e[j + k] = eb[k];
    }
    return hsum_f32(acc, &cnt);
}

/* out = round(e * c) over a row, e in float32. */
NMX_HAI void nmx_hscale(int kind, const float *e, float c, uint16_t *out, nmx_index n) {
    nmx_index j = 0;
    for (; j + 16 <= n; j += 16) nmx_hstore(kind, out + j, vload_f32(e + j) * c);
    for (; j < n; j++) out[j] = nmx_f2h(kind, e[j] * c);
}

/* softmax_row_f32 with z and out in half storage; e is float32 scratch of n elements.
 * log-softmax needs no exponentials kept (its last pass reads z again) but stores them anyway,
 * as the float32 kernel does: without the store GCC merges the two selects of each step and
 * then scalarizes every comparison, which costs four times the row. */
NMX_HAI void nmx_hrow_softmax(int kind, const uint16_t *z, uint16_t *out, float *e, nmx_index n,
                              int log_) {
    float m = nmx_hrow_max(kind, z, n);
    if (!log_) {
        float inv = (float)(1.0 / (1.0 + nmx_hrow_sum(kind, z, n, m, e, 1)));
        nmx_hscale(kind, e, inv, out, n);
        return;
    }
    float lse = (float)NMX_LOG1P(nmx_hrow_sum(kind, z, n, m, e, 1));
    nmx_index j = 0;
    for (; j + 16 <= n; j += 16) nmx_hstore(kind, out + j, (nmx_hload(kind, z + j) - m) - lse);
    for (; j < n; j++) out[j] = nmx_f2h(kind, (nmx_h2f(kind, z[j]) - m) - lse);
}

/* xent_label_row_f32 without label smoothing (eps == 0), z and dz in half storage. */
NMX_HAI double nmx_hrow_xent(int kind, const uint16_t *z, uint16_t *dz, float *e, int64_t y,
                             const nmx_xent_args *a) {
    nmx_index n = a->classes;
    if (ignored_f32(a, y)) {
        memset(dz, 0, (size_t)n * sizeof *dz); /* +0 in both formats */
        return 0.0;
    }
    float m = nmx_hrow_max(kind, z, n), zy = nmx_h2f(kind, z[y]);
    double s = nmx_hrow_sum(kind, z, n, m, e, 1), lse = NMX_LOG1P(s);
    double wy = a->weight ? a->weight[y] : 1.0, ty = (double)zy - (double)m, sc = a->scale;
    nmx_hscale(kind, e, (float)(sc * wy / (1.0 + s)), dz, n);
    dz[y] = nmx_f2h(kind, (float)(sc * wy * p_minus_one_f32(zy - m, s)));
    return wy * (lse - ty);
}

/* Whether a half job runs on the rows directly: rows long enough, and a kernel written above. */
static int nmx_hrow_direct(const nmx_hjob *h) {
    const nmx_xent_args *a = h->f.a;
    if (h->f.inner != 1 || h->f.n < NMX_HROW_MIN) return 0;
    if (h->f.kind == NMX_SOFTMAX || h->f.kind == NMX_LOG_SOFTMAX) return 1;
    return h->f.kind == NMX_XENT && a->labels && a->eps == 0.0;
}

/* float32 scratch per thread of the direct path: the exponentials of one row. */
static nmx_index nmx_hrow_scratch(const nmx_hjob *h) { return h->f.n; }

/* Rows [r0, r1) of a direct job; e is the thread's scratch. */
NMX_HAI double nmx_hrows(int kind, const nmx_hjob *h, nmx_index r0, nmx_index r1, float *e) {
    nmx_index n = h->f.n;
    const nmx_xent_args *a = h->f.a;
    double total = 0.0;
    for (nmx_index r = r0; r < r1; r++) {
        const uint16_t *z = h->x + r * n;
        uint16_t *out = h->out + r * n;
        if (h->f.kind != NMX_XENT) {
            nmx_hrow_softmax(kind, z, out, e, n, h->f.kind == NMX_LOG_SOFTMAX);
            continue;
        }
        double loss = nmx_hrow_xent(kind, z, out, e, nmx_label_at(a->labels, a->label_bytes, r), a);
        if (a->loss) ((uint16_t *)a->loss)[r] = nmx_f2h(kind, (float)loss);
        total += loss;
    }
    return total;
}

/* One SIMD clone set per storage format, so that `kind` is a constant inside the loops. */
NMX_CLONES static double nmx_hrows_f16(const nmx_hjob *h, nmx_index r0, nmx_index r1, float *e) {
    return nmx_hrows(NMX_F16, h, r0, r1, e);
}

NMX_CLONES static double nmx_hrows_bf16(const nmx_hjob *h, nmx_index r0, nmx_index r1, float *e) {
    return nmx_hrows(NMX_BF16, h, r0, r1, e);
}
