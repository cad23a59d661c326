/* The leaf loops of batchnorm_half_leaf.h for float16 storage, written on vectors of 16 lanes
 * with the F16C conversions, included by batchnorm_half.h once per instruction set with
 *   HVSUF        the name suffix (f16v4: AVX-512, f16v3: AVX2, f16avx: AVX without FMA)
 *   HVT          the target attribute string
 *   HV_LOAD16    HV_LOAD16(p, v): 16 float16 at p, widened exactly into *v (an nmx_hvf)
 *   HV_STORE16   HV_STORE16(p, v): *v rounded to 16 float16 at p (nearest even)
 *
 * Compilers do not vectorize a scalar float16 conversion, so these loops are written on GNU
 * vectors, lane by lane the float32 loops of batchnorm_impl.h: the same expressions, term for
 * term, in the same order and in the same statements (so GCC's and Clang's FMA contraction,
 * which follows the statements, fuses the same products as in the float32 clone the dispatch
 * pairs these loops with; the AVX instance, like the SSE2 clone, fuses none), and every lane's
 * sums in the same sequence. The results
 * are therefore the bits of the float32 loops run on the widened input. A slice of fewer than 16
 * channels is computed on a zero-padded vector and only its own lanes are kept; the few values a
 * run sums after its lane accumulators are widened one at a time (vcvtph2ps on one lane).
 */
#define HVCAT2(a, b) a##_##b
#define HVCAT(a, b) HVCAT2(a, b)
#define HV(name) HVCAT(name, HVSUF)
#define HVI static inline __attribute__((always_inline, target(HVT)))
#define HVF static __attribute__((target(HVT)))
#define HV_SPLAT(f) {f, f, f, f, f, f, f, f, f, f, f, f, f, f, f, f}

/* ---- lanes: 16 values in and out, m < 16 of them through a zero-padded copy ---------------- */

HVI void HV(ld)(const uint16_t *p, int m, nmx_hvf *v) {
    if (m == 16) {
        HV_LOAD16(p, v);
        return;
    }
    uint16_t b[16] = {0};
    memcpy(b, p, sizeof(uint16_t) * (size_t)m);
    HV_LOAD16(b, v);
}

HVI void HV(st)(uint16_t *p, int m, const nmx_hvf *v) {
    if (m == 16) {
        HV_STORE16(p, v);
        return;
    }
    uint16_t b[16];
    HV_STORE16(b, v);
    memcpy(p, b, sizeof(uint16_t) * (size_t)m);
}

HVI void HV(lf)(const float *p, int m, nmx_hvf *v) {
    if (m == 16) {
        memcpy(v, p, sizeof *v);
        return;
    }
    float b[16] = {0};
    memcpy(b, p, sizeof(float) * (size_t)m);
    memcpy(v, b, sizeof b);
}

/* The 16 lanes of *v widened to double, as two vectors of 8. */
HVI void HV(wide)(const nmx_hvf *v, nmx_hvd *d) {
    nmx_hvf8 lo, hi;
    memcpy(&lo, v, sizeof lo);
    memcpy(&hi, (const char *)v + sizeof lo, sizeof hi);
    d[0] = __builtin_convertvector(lo, nmx_hvd);
    d[1] = __builtin_convertvector(hi, nmx_hvd);
}

/* s[j] += (double)v[j] for the first m lanes. */
HVI void HV(addd)(double *s, int m, const nmx_hvf *v) {
    nmx_hvd d[2], t[2];
    HV(wide)(v, d);
    if (m == 16) {
        memcpy(t, s, sizeof t);
        t[0] += d[0];
        t[1] += d[1];
        memcpy(s, t, sizeof t);
        return;
    }
    double w[16];
    memcpy(w, d, sizeof w);
    for (int j = 0; j < m; j++) s[j] += w[j];
}

/* 8 float16 at p widened to double. */
HVI void HV(ld8d)(const uint16_t *p, nmx_hvd *d) {
    __m256 w = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    nmx_hvf8 f;
    memcpy(&f, &w, sizeof f);
    *d = __builtin_convertvector(f, nmx_hvd);
}

/* One float16 widened (exactly, as the vector conversions). */
HVI double HV(ld1d)(uint16_t h) { return (double)_cvtsh_ss(h); }

/* ---- statistics ------------------------------------------------------------------------- */

/* stats_rows on 16 channels (m of them real) of four rows xs apart. */
HVI void HV(stats4)(const uint16_t *x0, nmx_index xs, int m, const float *pv, double *s1,
                    double *s2) {
    nmx_hvf p, d0, d1, d2, d3;
    HV(lf)(pv, m, &p);
    HV(ld)(x0, m, &d0);
    HV(ld)(x0 + xs, m, &d1);
    HV(ld)(x0 + 2 * xs, m, &d2);
    HV(ld)(x0 + 3 * xs, m, &d3);
    d0 = d0 - p, d1 = d1 - p, d2 = d2 - p, d3 = d3 - p;
    nmx_hvf a = (d0 + d1) + (d2 + d3);
    nmx_hvf b = (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
    HV(addd)(s1, m, &a);
    HV(addd)(s2, m, &b);
}

/* stats_rows' leftover rows, in double, on 16 channels (m of them real) of one row. */
HVI void HV(stats1)(const uint16_t *x0, int m, const float *pv, double *s1, double *s2) {
    nmx_hvf xv, p;
    nmx_hvd xd[2], pd[2];
    HV(lf)(pv, m, &p);
    HV(ld)(x0, m, &xv);
    HV(wide)(&xv, xd);
    HV(wide)(&p, pd);
    if (m == 16) {
        nmx_hvd a[2], b[2];
        memcpy(a, s1, sizeof a);
        memcpy(b, s2, sizeof b);
        for (int h = 0; h < 2; h++) {
            nmx_hvd d = xd[h] - pd[h];
            a[h] += d;
            b[h] += d * d;
        }
        memcpy(s1, a, sizeof a);
        memcpy(s2, b, sizeof b);
        return;
    }
    double xw[16], pw[16];
    memcpy(xw, xd, sizeof xw);
    memcpy(pw, pd, sizeof pw);
    for (int j = 0; j < m; j++) {
        double d = xw[j] - pw[j];
        s1[j] += d;
        s2[j] += d * d;
    }
}

HVF void HV(stats_rows)(const uint16_t *restrict x, nmx_index xs, nmx_index rows, nmx_index n,
                        const float *restrict pv, double *restrict s1, double *restrict s2) {
    nmx_index r = 0, n16 = n & ~(nmx_index)15;
    int m = (int)(n - n16);
    for (; r + 4 <= rows; r += 4) {
        const uint16_t *x0 = x + r * xs;
        for (nmx_index c = 0; c < n16; c += 16) HV(stats4)(x0 + c, xs, 16, pv + c, s1 + c, s2 + c);
        if (m) HV(stats4)(x0 + n16, xs, m, pv + n16, s1 + n16, s2 + n16);
    }
    for (; r < rows; r++) {
        const uint16_t *x0 = x + r * xs;
        for (nmx_index c = 0; c < n16; c += 16) HV(stats1)(x0 + c, 16, pv + c, s1 + c, s2 + c);
        if (m) HV(stats1)(x0 + n16, m, pv + n16, s1 + n16, s2 + n16);
    }
}

/* The run sums of NMX_RUN_SUMS: L = 32 or 8 double lanes, lane j summing the values i with
 * i % L == j of the whole blocks of L, then the lanes in order and the rest one by one.
 * TERM(u, v) turns the widened values in u (and g: dy) into the two terms u and v. */
#define HV_RUN_LANES(L, LOADS, TERM)                                                      \
    do {                                                                                  \
        nmx_hvd a_[(L) / 8] = {0}, b_[(L) / 8] = {0};                                    \
        for (; i + (L) <= n; i += (L)) {                                                  \
            nmx_hvd u_[(L) / 8], g_[(L) / 8];                                             \
            LOADS;                                                                        \
            for (int j = 0; j < (L) / 8; j++) {                                           \
                nmx_hvd v_;                                                               \
                TERM(u_[j], v_, g_[j]);                                                   \
                a_[j] += u_[j];                                                           \
                b_[j] += v_;                                                              \
            }                                                                             \
        }                                                                                 \
        double aw_[L], bw_[L];                                                            \
        memcpy(aw_, a_, sizeof aw_);                                                      \
        memcpy(bw_, b_, sizeof bw_);                                                      \
        for (int j = 0; j < (L); j++) {                                                   \
            sa += aw_[j];                                                                 \
            sb += bw_[j];                                                                 \
        }                                                                                 \
    } while (0)

/* u_ (and g_) of the block at i: 32 values as four vectors of 8 doubles, or 8 as one. */
#define HV_LOAD32(p, d)                                                                   \
    do {                                                                                  \
        nmx_hvf f_[2];                                                                    \
        HV_LOAD16((p) + i, &f_[0]);                                                       \
        HV_LOAD16((p) + i + 16, &f_[1]);                                                  \
        HV(wide)(&f_[0], (d));                                                            \
        HV(wide)(&f_[1], (d) + 2);                                                        \
    } while (0)

HVF void HV(stats_run)(const uint16_t *restrict x, nmx_index n, double p, double *restrict s1,
                       double *restrict s2) {
    double sa = 0, sb = 0;
    nmx_index i = 0;
    const nmx_hvd pv = {p, p, p, p, p, p, p, p};
#define HV_STATS_TERM(u, v, g) (u = u - pv, v = u * u)
    if (n >= 4 * NMX_LANES)
        HV_RUN_LANES(NMX_LANES, HV_LOAD32(x, u_); (void)g_, HV_STATS_TERM);
    else if (n >= 8)
        HV_RUN_LANES(8, HV(ld8d)(x + i, u_); (void)g_, HV_STATS_TERM);
#undef HV_STATS_TERM
    for (; i < n; i++) {
        double u = HV(ld1d)(x[i]) - p, v = u * u;
        sa += u;
        sb += v;
    }
    *s1 += sa;
    *s2 += sb;
}

/* ---- y = ((x - mh) - ml) * sc + sh -------------------------------------------------------- */

HVI void HV(affine16)(const uint16_t *x, uint16_t *y, int m, const float *mh, const float *ml,
                      const float *sc, const float *sh) {
    nmx_hvf xv, h, l, s, t;
    HV(ld)(x, m, &xv);
    HV(lf)(mh, m, &h);
    HV(lf)(ml, m, &l);
    HV(lf)(sc, m, &s);
    HV(lf)(sh, m, &t);
    nmx_hvf v = ((xv - h) - l) * s + t;
    HV(st)(y, m, &v);
}

HVF void HV(affine_rows)(const uint16_t *restrict x, nmx_index xs, uint16_t *restrict y,
                         nmx_index ys, nmx_index rows, nmx_index n, const float *restrict mh,
                         const float *restrict ml, const float *restrict sc,
                         const float *restrict sh) {
    nmx_index n16 = n & ~(nmx_index)15;
    int m = (int)(n - n16);
    for (nmx_index r = 0; r < rows; r++) {
        const uint16_t *xr = x + r * xs;
        uint16_t *yr = y + r * ys;
        for (nmx_index c = 0; c < n16; c += 16)
            HV(affine16)(xr + c, yr + c, 16, mh + c, ml + c, sc + c, sh + c);
        if (m) HV(affine16)(xr + n16, yr + n16, m, mh + n16, ml + n16, sc + n16, sh + n16);
    }
}

HVF void HV(affine_run)(const uint16_t *restrict x, uint16_t *restrict y, nmx_index n, float mh,
                        float ml, float sc, float sh) {
    /* broadcast by initializers: 0 + (-0.0) would turn a -0 into +0 */
    const nmx_hvf h = HV_SPLAT(mh), l = HV_SPLAT(ml), s = HV_SPLAT(sc), t = HV_SPLAT(sh);
    nmx_index i = 0;
    for (; i + 16 <= n; i += 16) {
        nmx_hvf xv;
        HV_LOAD16(x + i, &xv);
        nmx_hvf v = ((xv - h) - l) * s + t;
        HV_STORE16(y + i, &v);
    }
    if (i < n) {
        nmx_hvf xv;
        HV(ld)(x + i, (int)(n - i), &xv);
        nmx_hvf v = ((xv - h) - l) * s + t;
        HV(st)(y + i, (int)(n - i), &v);
    }
}

/* ---- gradient sums ------------------------------------------------------------------------ */

/* grad_rows on 16 channels (m of them real) of four rows xs apart. */
HVI void HV(grad4)(const uint16_t *g, const uint16_t *x0, nmx_index xs, int m, const float *mh,
                   const float *ml, double *sdy, double *sdx) {
    nmx_hvf h, l, g0, g1, g2, g3, e0, e1, e2, e3;
    HV(lf)(mh, m, &h);
    HV(lf)(ml, m, &l);
    HV(ld)(g, m, &g0);
    HV(ld)(g + xs, m, &g1);
    HV(ld)(g + 2 * xs, m, &g2);
    HV(ld)(g + 3 * xs, m, &g3);
    HV(ld)(x0, m, &e0);
    HV(ld)(x0 + xs, m, &e1);
    HV(ld)(x0 + 2 * xs, m, &e2);
    HV(ld)(x0 + 3 * xs, m, &e3);
    e0 = (e0 - h) - l, e1 = (e1 - h) - l;
    e2 = (e2 - h) - l, e3 = (e3 - h) - l;
    nmx_hvf a = (g0 + g1) + (g2 + g3);
    nmx_hvf b = (g0 * e0 + g1 * e1) + (g2 * e2 + g3 * e3);
    HV(addd)(sdy, m, &a);
    HV(addd)(sdx, m, &b);
}

/* grad_rows' leftover rows, in double, on 16 channels (m of them real) of one row. */
HVI void HV(grad1)(const uint16_t *g, const uint16_t *x0, int m, const double *mean, double *sdy,
                   double *sdx) {
    nmx_hvf gv, xv;
    nmx_hvd gd[2], xd[2];
    HV(ld)(g, m, &gv);
    HV(ld)(x0, m, &xv);
    HV(wide)(&gv, gd);
    HV(wide)(&xv, xd);
    if (m == 16) {
        nmx_hvd a[2], b[2], md[2];
        memcpy(md, mean, sizeof md);
        memcpy(a, sdy, sizeof a);
        memcpy(b, sdx, sizeof b);
        for (int k = 0; k < 2; k++) {
            nmx_hvd a0 = gd[k];
            a[k] += a0;
            b[k] += a0 * (xd[k] - md[k]);
        }
        memcpy(sdy, a, sizeof a);
        memcpy(sdx, b, sizeof b);
        return;
    }
    double gw[16], xw[16];
    memcpy(gw, gd, sizeof gw);
    memcpy(xw, xd, sizeof xw);
    for (int j = 0; j < m; j++) {
        double a0 = gw[j];
        sdy[j] += a0;
        sdx[j] += a0 * (xw[j] - mean[j]);
    }
}

HVF void HV(grad_rows)(const uint16_t *restrict dy, const uint16_t *restrict x, nmx_index xs,
                       nmx_index rows, nmx_index n, const float *restrict mh,
                       const float *restrict ml, const double *restrict m,
                       double *restrict sdy, double *restrict sdx) {
    nmx_index r = 0, n16 = n & ~(nmx_index)15;
    int t = (int)(n - n16);
    for (; r + 4 <= rows; r += 4) {
        const uint16_t *g = dy + r * xs, *x0 = x + r * xs;
        for (nmx_index c = 0; c < n16; c += 16)
            HV(grad4)(g + c, x0 + c, xs, 16, mh + c, ml + c, sdy + c, sdx + c);
        if (t) HV(grad4)(g + n16, x0 + n16, xs, t, mh + n16, ml + n16, sdy + n16, sdx + n16);
    }
    for (; r < rows; r++) {
        const uint16_t *g = dy + r * xs, *x0 = x + r * xs;
        for (nmx_index c = 0; c < n16; c += 16)
            HV(grad1)(g + c, x0 + c, 16, m + c, sdy + c, sdx + c);
        if (t) HV(grad1)(g + n16, x0 + n16, t, m + n16, sdy + n16, sdx + n16);
    }
}

HVF void HV(grad_run)(const uint16_t *restrict dy, const uint16_t *restrict x, nmx_index n,
                      double m, double *restrict sdy, double *restrict sdx) {
    double sa = 0, sb = 0;
    nmx_index i = 0;
    const nmx_hvd mv = {m, m, m, m, m, m, m, m};
    /* u is dy, g is x: v = dy * (x - m) */
#define HV_GRAD_TERM(u, v, g) (v = u * (g - mv))
    if (n >= 4 * NMX_LANES)
        HV_RUN_LANES(NMX_LANES, HV_LOAD32(dy, u_); HV_LOAD32(x, g_), HV_GRAD_TERM);
    else if (n >= 8)
        HV_RUN_LANES(8, HV(ld8d)(dy + i, u_); HV(ld8d)(x + i, g_), HV_GRAD_TERM);
#undef HV_GRAD_TERM
    for (; i < n; i++) {
        double u = HV(ld1d)(dy[i]), v = u * (HV(ld1d)(x[i]) - m);
        sa += u;
        sb += v;
    }
    *sdy += sa;
    *sdx += sb;
}

/* ---- dx = (dy - gm) * ga + ((x - mh) - ml) * gb ------------------------------------------- */

HVI void HV(dx16)(const uint16_t *g, const uint16_t *x, uint16_t *o, int m, const float *k,
                  nmx_index C) {
    nmx_hvf gv, xv, mh, ml, gm, ga, gb;
    HV(ld)(g, m, &gv);
    HV(ld)(x, m, &xv);
    HV(lf)(k, m, &mh);
    HV(lf)(k + C, m, &ml);
    HV(lf)(k + 2 * C, m, &gm);
    HV(lf)(k + 3 * C, m, &ga);
    HV(lf)(k + 4 * C, m, &gb);
    nmx_hvf v = (gv - gm) * ga + ((xv - mh) - ml) * gb;
    HV(st)(o, m, &v);
}

HVF void HV(dx_rows)(const uint16_t *restrict dy, const uint16_t *restrict x, nmx_index xs,
                     uint16_t *restrict dx, nmx_index ys, nmx_index rows, nmx_index n,
                     const float *restrict k, nmx_index C) {
    nmx_index n16 = n & ~(nmx_index)15;
    int m = (int)(n - n16);
    for (nmx_index r = 0; r < rows; r++) {
        const uint16_t *g = dy + r * xs, *xr = x + r * xs;
        uint16_t *o = dx + r * ys;
        for (nmx_index c = 0; c < n16; c += 16) HV(dx16)(g + c, xr + c, o + c, 16, k + c, C);
        if (m) HV(dx16)(g + n16, xr + n16, o + n16, m, k + n16, C);
    }
}

HVF void HV(dx_run)(const uint16_t *restrict dy, const uint16_t *restrict x,
                    uint16_t *restrict dx, nmx_index n, float mh, float ml, float gm, float ga,
                    float gb) {
    const nmx_hvf h = HV_SPLAT(mh), l = HV_SPLAT(ml), gmv = HV_SPLAT(gm), gav = HV_SPLAT(ga);
    const nmx_hvf gbv = HV_SPLAT(gb);
    nmx_index i = 0;
    for (; i + 16 <= n; i += 16) {
        nmx_hvf gv, xv;
        HV_LOAD16(dy + i, &gv);
        HV_LOAD16(x + i, &xv);
        nmx_hvf v = (gv - gmv) * gav + ((xv - h) - l) * gbv;
        HV_STORE16(dx + i, &v);
    }
    if (i < n) {
        nmx_hvf gv, xv;
        HV(ld)(dy + i, (int)(n - i), &gv);
        HV(ld)(x + i, (int)(n - i), &xv);
        nmx_hvf v = (gv - gmv) * gav + ((xv - h) - l) * gbv;
        HV(st)(dx + i, (int)(n - i), &v);
    }
}

/* The eight loops, for the drivers of batchnorm_half.h. */
static const nmx_bn_hleaves HV(nmx_bn_leaves) = {
    HV(stats_rows), HV(stats_run), HV(affine_rows), HV(affine_run),
    HV(grad_rows),  HV(grad_run),  HV(dx_rows),     HV(dx_run),
};

#undef HV_LOAD32
#undef HV_RUN_LANES
#undef HV_SPLAT
#undef HVF
#undef HVI
#undef HV
#undef HVCAT
#undef HVCAT2
