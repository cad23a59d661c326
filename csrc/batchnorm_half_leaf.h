/* The leaf loops of batchnorm_impl.h (float32 instance) reading and writing half-precision
 * storage directly, included by batchnorm_half.h once per storage format with
 *   HSUF      the name suffix (f16 or bf16)
 *   HLD(h)    the exact float32 value of the half bit pattern h
 *   HST(f)    f rounded to the nearest half (ties to even), as a bit pattern
 *
 * Each loop is its float32 twin with every load of x / dy widened by HLD and every store of the
 * result rounded by HST: the float32 expressions are the same, term for term and in the same
 * order, so the results are the bits of the float32 loop run on the widened input (the half
 * kernels' contract, checked by tests/test_half_batchnorm.py). Fusing the conversions saves the
 * float32 tile round trip through L1 (a store and a reload per element and per pass) and the
 * separate conversion calls: for bfloat16 both conversions are a few integer instructions per
 * vector, in registers, inside the SIMD clone of the loop.
 */
#define HCAT2(a, b) a##_##b
#define HCAT(a, b) HCAT2(a, b)
#define HFN(name) HCAT(name, HSUF)
#define HSTRIP ((nmx_index)(64 / sizeof(uint16_t))) /* channels of a strip: one line */

/* stats_rows over `rows` rows of n channels, rows xs elements apart. */
NMX_CLONES static void HFN(stats_rows)(const uint16_t *restrict x, nmx_index xs, nmx_index rows,
                                       nmx_index n, const float *restrict pv,
                                       double *restrict s1, double *restrict s2) {
    nmx_index r = 0;
    for (; r + 4 <= rows; r += 4) {
        const uint16_t *x0 = x + r * xs;
        for (nmx_index c = 0; c < n; c++) {
            float p = pv[c];
            float d0 = HLD(x0[c]) - p, d1 = HLD(x0[xs + c]) - p;
            float d2 = HLD(x0[2 * xs + c]) - p, d3 = HLD(x0[3 * xs + c]) - p;
            s1[c] += (double)((d0 + d1) + (d2 + d3));
            s2[c] += (double)((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3));
        }
    }
    for (; r < rows; r++) {
        const uint16_t *x0 = x + r * xs;
        for (nmx_index c = 0; c < n; c++) {
            double d = (double)HLD(x0[c]) - (double)pv[c];
            s1[c] += d;
            s2[c] += d * d;
        }
    }
}

NMX_CLONES static void HFN(stats_run)(const uint16_t *restrict x, nmx_index n, double p,
                                      double *restrict s1, double *restrict s2) {
    double sa = 0, sb = 0;
    nmx_index i = 0;
#define NMX_STATS_TERM(k, u, v) (u = (double)HLD(x[k]) - p, v = u * u)
    NMX_RUN_SUMS(NMX_STATS_TERM);
#undef NMX_STATS_TERM
    *s1 += sa;
    *s2 += sb;
}

NMX_CLONES static void HFN(affine_rows)(const uint16_t *restrict x, nmx_index xs,
                                        uint16_t *restrict y, nmx_index ys, nmx_index rows,
                                        nmx_index n, const float *restrict mh,
                                        const float *restrict ml, const float *restrict sc,
                                        const float *restrict sh, int mode) {
    nmx_index c0 = 0;
    /* by strips, as the float32 affine_rows */
    if ((mode & NMX_HSTRIPS) && nmx_strips(rows, n, sizeof(uint16_t)))
        for (; c0 + HSTRIP <= n; c0 += HSTRIP)
            for (nmx_index r = 0; r < rows; r++) {
                const uint16_t *xr = x + r * xs;
                uint16_t *yr = y + r * ys;
                for (nmx_index c = c0; c < c0 + HSTRIP; c++) {
                    float v = ((HLD(xr[c]) - mh[c]) - ml[c]) * sc[c] + sh[c];
                    yr[c] = HST(v);
                }
            }
    for (nmx_index r = 0; r < rows; r++) {
        const uint16_t *xr = x + r * xs;
        uint16_t *yr = y + r * ys;
        for (nmx_index c = c0; c < n; c++) {
            float v = ((HLD(xr[c]) - mh[c]) - ml[c]) * sc[c] + sh[c];
            yr[c] = HST(v);
        }
    }
}

NMX_CLONES static void HFN(affine_run)(const uint16_t *restrict x, uint16_t *restrict y,
                                       nmx_index n, float mh, float ml, float sc, float sh,
                                       int mode) {
    (void)mode; /* no non-temporal stores here (nmx_bn_hleaves.nt) */
    for (nmx_index i = 0; i < n; i++) {
        float v = ((HLD(x[i]) - mh) - ml) * sc + sh;
        y[i] = HST(v);
    }
}

/* grad_rows over `rows` rows of n channels, rows xs elements apart. */
NMX_CLONES static void HFN(grad_rows)(const uint16_t *restrict dy, const uint16_t *restrict x,
                                      nmx_index xs, nmx_index rows, nmx_index n,
                                      const float *restrict mh, const float *restrict ml,
                                      const double *restrict m, double *restrict sdy,
                                      double *restrict sdx) {
    nmx_index r = 0;
    for (; r + 4 <= rows; r += 4) {
        const uint16_t *g = dy + r * xs, *x0 = x + r * xs;
        for (nmx_index c = 0; c < n; c++) {
            float h = mh[c], l = ml[c];
            float g0 = HLD(g[c]), g1 = HLD(g[xs + c]), g2 = HLD(g[2 * xs + c]);
            float g3 = HLD(g[3 * xs + c]);
            float e0 = (HLD(x0[c]) - h) - l, e1 = (HLD(x0[xs + c]) - h) - l;
            float e2 = (HLD(x0[2 * xs + c]) - h) - l, e3 = (HLD(x0[3 * xs + c]) - h) - l;
            sdy[c] += (double)((g0 + g1) + (g2 + g3));
            sdx[c] += (double)((g0 * e0 + g1 * e1) + (g2 * e2 + g3 * e3));
        }
    }
    for (; r < rows; r++) {
        const uint16_t *g0 = dy + r * xs, *x0 = x + r * xs;
        for (nmx_index c = 0; c < n; c++) {
            double a0 = (double)HLD(g0[c]);
            sdy[c] += a0;
            sdx[c] += a0 * ((double)HLD(x0[c]) - m[c]);
        }
    }
}

NMX_CLONES static void HFN(grad_run)(const uint16_t *restrict dy, const uint16_t *restrict x,
                                     nmx_index n, double m, double *restrict sdy,
                                     double *restrict sdx) {
    double sa = 0, sb = 0;
    nmx_index i = 0;
#define NMX_GRAD_TERM(k, u, v) (u = (double)HLD(dy[k]), v = u * ((double)HLD(x[k]) - m))
    NMX_RUN_SUMS(NMX_GRAD_TERM);
#undef NMX_GRAD_TERM
    *sdy += sa;
    *sdx += sb;
}

/* dx_rows: k points at the first channel of the slice in five arrays C apart. */
NMX_CLONES static void HFN(dx_rows)(const uint16_t *restrict dy, const uint16_t *restrict x,
                                    nmx_index xs, uint16_t *restrict dx, nmx_index ys,
                                    nmx_index rows, nmx_index n, const float *restrict k,
                                    nmx_index C, int mode) {
    const float *restrict mh = k, *restrict ml = k + C, *restrict gm = k + 2 * C;
    const float *restrict ga = k + 3 * C, *restrict gb = k + 4 * C;
    nmx_index c0 = 0;
    /* by strips, as affine_rows */
    if ((mode & NMX_HSTRIPS) && nmx_strips(rows, n, sizeof(uint16_t)))
        for (; c0 + HSTRIP <= n; c0 += HSTRIP)
            for (nmx_index r = 0; r < rows; r++) {
                const uint16_t *g = dy + r * xs, *xr = x + r * xs;
                uint16_t *o = dx + r * ys;
                for (nmx_index c = c0; c < c0 + HSTRIP; c++) {
                    float v = (HLD(g[c]) - gm[c]) * ga[c] + ((HLD(xr[c]) - mh[c]) - ml[c]) * gb[c];
                    o[c] = HST(v);
                }
            }
    for (nmx_index r = 0; r < rows; r++) {
        const uint16_t *g = dy + r * xs, *xr = x + r * xs;
        uint16_t *o = dx + r * ys;
        for (nmx_index c = c0; c < n; c++) {
            float v = (HLD(g[c]) - gm[c]) * ga[c] + ((HLD(xr[c]) - mh[c]) - ml[c]) * gb[c];
            o[c] = HST(v);
        }
    }
}

NMX_CLONES static void HFN(dx_run)(const uint16_t *restrict dy, const uint16_t *restrict x,
                                   uint16_t *restrict dx, nmx_index n, float mh, float ml,
                                   float gm, float ga, float gb, int mode) {
    (void)mode;
    for (nmx_index i = 0; i < n; i++) {
        float v = (HLD(dy[i]) - gm) * ga + ((HLD(x[i]) - mh) - ml) * gb;
        dx[i] = HST(v);
    }
}

#undef HSTRIP
#undef HFN
#undef HCAT
#undef HCAT2
