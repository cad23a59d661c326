/* The leaf loops of batchnorm_half_leaf.h for float16 and bfloat16 storage, written on vectors,
 * included by batchnorm_half.h once per storage format and instruction set with
 *   HVSUF        the name suffix (f16v4 / bf16v4: AVX-512, bf16v4b: AVX-512 rounding with
 *                AVX-512 BF16, f16v3 / bf16v3: AVX2, f16avx / bf16avx: AVX without FMA)
 *   HVT          the target attribute string
 *   HVW          float32 lanes per vector (one register: 16, or 8 for AVX); doubles are HVW / 2
 *   HVF, HVD     the GNU vector types of HVW floats and of HVW / 2 doubles
 *   HV_LOAD      HV_LOAD(p, v): HVW halves at p, widened exactly into *v
 *   HV_ROUND     HV_ROUND(v): *v rounded to HVW halves (nearest even), packed in an integer
 *                vector
 *   HV_PUT       HV_PUT(p, q): the packed halves q stored at p
 *   HV_PUT_NT    HV_PUT_NT(p, q): the same with a non-temporal store (p aligned to their size)
 *   HV_LOADD     HV_LOADD(p, d): HVW / 2 halves at p, widened exactly into the doubles *d
 *   HV_LD1       HV_LD1(h): one half, widened exactly to float
 *   HV_WIDE      HV_WIDE(v, d): the lanes of *v widened into the doubles d[0] (low), d[1]
 * for a slice of m < HVW lanes (reading and writing only its own elements),
 *   HV_LOAD_PART HV_LOAD_PART(p, m, v): m halves at p widened into *v, the other lanes zero
 *   HV_PUT_PART  HV_PUT_PART(p, m, q): the first m of the packed halves q stored at p
 *   HV_LF_PART   HV_LF_PART(p, m, v): m floats at p into *v, the other lanes zero
 * and optionally, to compute a line of 2 * HVW halves as its even- and odd-indexed ones,
 *   HV_LOAD_EO   HV_LOAD_EO(p, v): 2 * HVW halves at p, widened exactly: the even-indexed
 *                ones into v[0], the odd-indexed ones into v[1]
 *   HV_ROUND_EO  HV_ROUND_EO(v): v[0] and v[1] rounded and interleaved back, 2 * HVW halves
 *   HV_PUT2      HV_PUT2(p, q), HV_PUT2_NT(p, q): those stored at p (non-temporally: p aligned
 *                to their size)
 * The run loops (affine_span, dx_span) take them as they are, since all lanes of a run share
 * their constants; the row loops (affine_rows, dx_rows) then take their per-channel constants
 * paired (nmx_bn_hleaves.eo = 2 * HVW: in every whole group of 2 * HVW channels, the even
 * channels' constants, then the odd ones').
 *
 * Compilers do not vectorize a scalar float16 conversion, nor turn the float32 loops with
 * bfloat16's integer conversions fused in into code as lean as these, so these loops are
 * written on GNU vectors, lane by lane the float32 loops of batchnorm_impl.h: the same
 * expressions, term for term, in the same order and in the same statements (so GCC's and
 * Clang's FMA contraction, which follows the statements, fuses the same products as in the
 * float32 clone the dispatch pairs these loops with; the AVX instance, like the SSE2 clone,
 * fuses none), and every lane's sums in the same sequence. The results are therefore the bits
 * of the float32 loops run on the widened input, whatever the storage format: only the
 * conversions differ. A slice of fewer than HVW channels is computed on a zero-padded vector
 * and only its own lanes are kept (the sums of short rows, up to four vectors, load whole vectors
 * from each row's start instead, and drop the lanes that read the next rows); the few values a run
 * sums after its lane accumulators are widened one at a time (HV_LD1).
 */
#define HVCAT2(a, b) a##_##b
#define HVCAT(a, b) HVCAT2(a, b)
#define HV(name) HVCAT(name, HVSUF)
#define HVI static inline __attribute__((always_inline, target(HVT)))
#define HVF_FN static __attribute__((target(HVT)))
#define HV_STORE(p, v) HV_PUT(p, HV_ROUND(v))

/* ---- lanes: HVW values in and out, or the first m < HVW -------------------------------- */

/* A strip of the row loops: one 64-byte line of halves, HV_SV vectors. */
#define HV_STRIP ((nmx_index)(64 / sizeof(uint16_t)))
#define HV_SV (64 / (int)sizeof(uint16_t) / HVW)
/* The widest whole rows whose sums stats_short and grad_short keep in registers: four vectors
 * of floats (two lines on AVX-512, their double sums half of its registers; one line on AVX2,
 * where six or eight vectors made the float16 training forward of 48 channels slower). */
#define HV_SHORT (4 * HVW)

HVI void HV(ld)(const uint16_t *p, int m, HVF *v) {
    if (m == HVW)
        HV_LOAD(p, v);
    else
        HV_LOAD_PART(p, m, v);
}

HVI void HV(st)(uint16_t *p, int m, const HVF *v) {
    if (m == HVW)
        HV_STORE(p, v);
    else
        HV_PUT_PART(p, m, HV_ROUND(v));
}

/* HVF and HVD at any float or double address. Loads and stores through these types are one
 * register move each, whatever -mmove-max says about memcpy: a memcpy of a whole register can
 * be split into narrower moves, and a vector read back over two narrower stores waits for a
 * failed store forwarding. */
typedef HVF HV(uf) __attribute__((aligned(4), may_alias));
typedef HVD HV(ud) __attribute__((aligned(8), may_alias));

HVI void HV(lf)(const float *p, int m, HVF *v) {
    if (m == HVW)
        *v = *(const HV(uf) *)p;
    else
        HV_LF_PART(p, m, v);
}

/* A vector of the row loops stored at p: non-temporally in the modes with NMX_HNT. */
HVI void HV(put)(uint16_t *p, const HVF *v, int mode) {
    if (mode & NMX_HNT)
        HV_PUT_NT(p, HV_ROUND(v));
    else
        HV_STORE(p, v);
}

#ifdef HV_LOAD_EO
/* The 2 * HVW rounded halves of the even- and odd-indexed lanes v[0], v[1] stored at p. */
HVI void HV(put_eo)(uint16_t *p, const HVF *v, int nt) {
    if (nt)
        HV_PUT2_NT(p, HV_ROUND_EO(v));
    else
        HV_PUT2(p, HV_ROUND_EO(v));
}
#endif

/* f in every lane (an exact broadcast: 0 + f would turn -0 into +0). */
HVI HVF HV(splat)(float f) {
    HVF v;
    for (int j = 0; j < HVW; j++) v[j] = f;
    return v;
}

HVI HVD HV(splatd)(double f) {
    HVD v;
    for (int j = 0; j < HVW / 2; j++) v[j] = f;
    return v;
}

/* HVW / 2 doubles at p, in and out (one vector at a time: GCC keeps arrays of vectors that
 * are copied whole in memory). */
HVI HVD HV(ldd)(const double *p) { return *(const HV(ud) *)p; }

HVI void HV(std)(double *p, HVD d) { *(HV(ud) *)p = d; }

/* s[j] += (double)v[j] for the first m lanes. */
HVI void HV(addd)(double *s, int m, const HVF *v) {
    HVD d[2];
    HV_WIDE(v, d);
    if (m == HVW) {
        HV(std)(s, HV(ldd)(s) + d[0]);
        HV(std)(s + HVW / 2, HV(ldd)(s + HVW / 2) + d[1]);
        return;
    }
    double w[HVW];
    memcpy(w, d, sizeof w);
    for (int j = 0; j < m; j++) s[j] += w[j];
}

/* One half widened (exactly, as the vector conversions). */
HVI double HV(ld1d)(uint16_t h) { return (double)HV_LD1(h); }

/* ---- statistics ------------------------------------------------------------------------- */

/* stats_rows on HVW channels (m of them real) of four rows xs apart. */
HVI void HV(stats4)(const uint16_t *x0, nmx_index xs, int m, const float *pv, double *s1,
                    double *s2) {
    HVF p, d0, d1, d2, d3;
    HV(lf)(pv, m, &p);
    HV(ld)(x0, m, &d0);
    HV(ld)(x0 + xs, m, &d1);
    HV(ld)(x0 + 2 * xs, m, &d2);
    HV(ld)(x0 + 3 * xs, m, &d3);
    d0 = d0 - p, d1 = d1 - p, d2 = d2 - p, d3 = d3 - p;
    HVF a = (d0 + d1) + (d2 + d3);
    HVF b = (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
    HV(addd)(s1, m, &a);
    HV(addd)(s2, m, &b);
}

/* stats_rows' leftover rows, in double, on HVW channels (m of them real) of one row. */
HVI void HV(stats1)(const uint16_t *x0, int m, const float *pv, double *s1, double *s2) {
    HVF xv, p;
    HVD xd[2], pd[2];
    HV(lf)(pv, m, &p);
    HV(ld)(x0, m, &xv);
    HV_WIDE(&xv, xd);
    HV_WIDE(&p, pd);
    if (m == HVW) {
        for (int h = 0; h < 2; h++) {
            nmx_index o = h * (HVW / 2);
            HVD d = xd[h] - pd[h], a = HV(ldd)(s1 + o), b = HV(ldd)(s2 + o);
            a += d;
            b += d * d;
            HV(std)(s1 + o, a);
            HV(std)(s2 + o, b);
        }
        return;
    }
    double xw[HVW], pw[HVW];
    memcpy(xw, xd, sizeof xw);
    memcpy(pw, pd, sizeof pw);
    for (int j = 0; j < m; j++) {
        double d = xw[j] - pw[j];
        s1[j] += d;
        s2[j] += d * d;
    }
}

/* The double sums of short rows (n <= HV_SHORT channels, k = ceil(n / HVW) vectors), kept in
 * registers from block to block: s[j] for j < n in lanes, zero past n. */
HVI void HV(sums_in)(const double *s, nmx_index n, int k, HVD *v) {
    double w[HV_SHORT] = {0};
    memcpy(w, s, (size_t)n * sizeof(double));
    for (int j = 0; j < 2 * k; j++) v[j] = HV(ldd)(w + j * (HVW / 2));
}

HVI void HV(sums_out)(double *s, nmx_index n, int k, const HVD *v) {
    double w[HV_SHORT];
    for (int j = 0; j < 2 * k; j++) HV(std)(w + j * (HVW / 2), v[j]);
    memcpy(s, w, (size_t)n * sizeof(double));
}

/* a[0:2] += the lanes of the float vector s widened to double: a block's sum into the register
 * sums of short rows. */
HVI void HV(addw)(HVD *a, HVF s) {
    HVD d[2];
    HV_WIDE(&s, d);
    a[0] += d[0], a[1] += d[1];
}

/* The per-channel floats of such rows, one vector per HVW channels, zero past n. */
HVI void HV(consts_in)(const float *p, nmx_index n, int k, HVF *v) {
    for (int j = 0; j < k; j++) {
        nmx_index m = n - j * HVW;
        HV(lf)(p + j * HVW, m < HVW ? (int)m : HVW, &v[j]);
    }
}

/* f(..., k) for the sums of short rows of n <= HV_SHORT channels, k = ceil(n / HVW) a constant. */
#define HV_SHORT_CALL(n, f, ...)                                                          \
    ((n) <= HVW       ? f(__VA_ARGS__, 1)                                                 \
     : (n) <= 2 * HVW ? f(__VA_ARGS__, 2)                                                 \
     : (n) <= 3 * HVW ? f(__VA_ARGS__, 3)                                                 \
                      : f(__VA_ARGS__, 4))

/* stats_rows' blocks of four whole rows of n <= HV_SHORT channels, as the float32 stats_short: k
 * whole vectors from every row's start, the lanes past n (the next rows) dropped, and the sums
 * in registers across blocks; blocks stop where a load would pass the `rows` rows at x. Returns
 * the row where they stopped. Against the stats4 blocks, which read and write the sums back
 * every block: NHWC float16 with 64 channels and bfloat16 with 32, and (200000, 48) bfloat16,
 * 18-25 MiB, two threads, separate processes in turn, four rounds: the training forward took
 * 0.62-1.31 of the time (medians 0.79-0.93), the backward 0.29-1.12 (medians 0.68-0.91); on
 * AVX2, rows of 32 channels 0.64-1.07 and 0.42-0.70. */
HVI nmx_index HV(stats_short)(const uint16_t *restrict x, nmx_index full, nmx_index rows,
                              nmx_index n, const float *restrict pv, double *restrict s1,
                              double *restrict s2, int k) {
    HVF p[HV_SHORT / HVW];
    HVD a[2 * HV_SHORT / HVW], b[2 * HV_SHORT / HVW];
    HV(consts_in)(pv, n, k, p);
    HV(sums_in)(s1, n, k, a);
    HV(sums_in)(s2, n, k, b);
    nmx_index r = 0;
    for (; r < full && (r + 3) * n + k * HVW <= rows * n; r += 4) {
        const uint16_t *x0 = x + r * n;
        for (int j = 0; j < k; j++) {
            HVF d0, d1, d2, d3;
            HV_LOAD(x0 + j * HVW, &d0);
            HV_LOAD(x0 + n + j * HVW, &d1);
            HV_LOAD(x0 + 2 * n + j * HVW, &d2);
            HV_LOAD(x0 + 3 * n + j * HVW, &d3);
            d0 = d0 - p[j], d1 = d1 - p[j], d2 = d2 - p[j], d3 = d3 - p[j];
            HVF sa = (d0 + d1) + (d2 + d3);
            HVF sb = (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
            HV(addw)(a + 2 * j, sa);
            HV(addw)(b + 2 * j, sb);
        }
    }
    HV(sums_out)(s1, n, k, a);
    HV(sums_out)(s2, n, k, b);
    return r;
}

HVF_FN void HV(stats_rows)(const uint16_t *restrict x, nmx_index xs, nmx_index rows,
                           nmx_index n, const float *restrict pv, double *restrict s1,
                           double *restrict s2) {
    nmx_index r = 0, nv = n - n % HVW;
    int m = (int)(n - nv);
    if (xs == n && n <= HV_SHORT)
        r = HV_SHORT_CALL(n, HV(stats_short), x, rows - rows % 4, rows, n, pv, s1, s2);
    for (; r + 4 <= rows; r += 4) {
        const uint16_t *x0 = x + r * xs;
        for (nmx_index c = 0; c < nv; c += HVW)
            HV(stats4)(x0 + c, xs, HVW, pv + c, s1 + c, s2 + c);
        if (m) HV(stats4)(x0 + nv, xs, m, pv + nv, s1 + nv, s2 + nv);
    }
    for (; r < rows; r++) {
        const uint16_t *x0 = x + r * xs;
        for (nmx_index c = 0; c < nv; c += HVW) HV(stats1)(x0 + c, HVW, pv + c, s1 + c, s2 + c);
        if (m) HV(stats1)(x0 + nv, m, pv + nv, s1 + nv, s2 + nv);
    }
}

/* The run sums of NMX_RUN_SUMS: L = 32 or 8 double lanes, lane j summing the values i with
 * i % L == j of the whole blocks of L, then the lanes in order and the rest one by one. LOADS
 * widens the block at i into u_ (and g_); TERM(u, v, g) makes the two terms u and v of a
 * vector of lanes. */
#define HV_RUN_LANES(L, LOADS, TERM)                                                      \
    do {                                                                                  \
        enum { K_ = (L) / (HVW / 2) };                                                    \
        HVD a_[K_], b_[K_];                                                               \
        for (int j = 0; j < K_; j++) a_[j] = b_[j] = HV(splatd)(0.0);                     \
        for (; i + (L) <= n; i += (L)) {                                                  \
            HVD u_[K_], g_[K_];                                                           \
            for (int j = 0; j < K_; j++) {                                                \
                LOADS;                                                                    \
            }                                                                             \
            for (int j = 0; j < K_; j++) {                                                \
                HVD v_;                                                                   \
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

HVF_FN void HV(stats_run)(const uint16_t *restrict x, nmx_index n, double p,
                          double *restrict s1, double *restrict s2) {
    double sa = 0, sb = 0;
    nmx_index i = 0;
    const HVD pv = HV(splatd)(p);
#define HV_STATS_LOAD HV_LOADD(x + i + j * (HVW / 2), &u_[j]), (void)g_
#define HV_STATS_TERM(u, v, g) (u = u - pv, v = u * u)
    if (n >= 4 * NMX_LANES)
        HV_RUN_LANES(NMX_LANES, HV_STATS_LOAD, HV_STATS_TERM);
    else if (n >= 8)
        HV_RUN_LANES(8, HV_STATS_LOAD, HV_STATS_TERM);
#undef HV_STATS_LOAD
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

/* The part of a run of n halves at y to store non-temporally (NMX_HNT: y on an even address):
 * [*i0, *i1), its whole lines. */
HVI void HV(lines)(const uint16_t *y, nmx_index n, nmx_index *i0, nmx_index *i1) {
    nmx_index head = (nmx_index)((64 - (uintptr_t)y % 64) % 64 / sizeof(uint16_t));
    *i0 = head < n ? head : n;
    *i1 = *i0 + (n - *i0) / HV_STRIP * HV_STRIP;
}

HVI void HV(affine)(const uint16_t *x, uint16_t *y, int m, const float *mh, const float *ml,
                    const float *sc, const float *sh, int mode) {
    HVF xv, h, l, s, t;
    HV(ld)(x, m, &xv);
    HV(lf)(mh, m, &h);
    HV(lf)(ml, m, &l);
    HV(lf)(sc, m, &s);
    HV(lf)(sh, m, &t);
    HVF v = ((xv - h) - l) * s + t;
    if (m == HVW)
        HV(put)(y, &v, mode);
    else
        HV(st)(y, m, &v);
}

#ifdef HV_LOAD_EO
/* HV(affine) on a line of 2 * HVW halves, its constants paired. */
HVI void HV(affine_eo)(const uint16_t *x, uint16_t *y, const float *mh, const float *ml,
                       const float *sc, const float *sh, int mode) {
    HVF xv[2], v[2];
    HV_LOAD_EO(x, xv);
    for (int q = 0; q < 2; q++) {
        HVF h, l, s, t;
        nmx_index o = q * HVW;
        HV(lf)(mh + o, HVW, &h);
        HV(lf)(ml + o, HVW, &l);
        HV(lf)(sc + o, HVW, &s);
        HV(lf)(sh + o, HVW, &t);
        v[q] = ((xv[q] - h) - l) * s + t;
    }
    HV(put_eo)(y, v, mode & NMX_HNT);
}
#endif

/* HV(affine) on channels [a, b) of one row (constants in channel order): whole vectors stored
 * in `mode`, a partial one plain. */
HVI void HV(affine_cols)(const uint16_t *xr, uint16_t *yr, nmx_index a, nmx_index b,
                         const float *mh, const float *ml, const float *sc, const float *sh,
                         int mode) {
    nmx_index c = a;
    for (; c + HVW <= b; c += HVW)
        HV(affine)(xr + c, yr + c, HVW, mh + c, ml + c, sc + c, sh + c, mode);
    if (c < b) HV(affine)(xr + c, yr + c, (int)(b - c), mh + c, ml + c, sc + c, sh + c, mode);
}

HVF_FN void HV(affine_rows)(const uint16_t *restrict x, nmx_index xs, uint16_t *restrict y,
                            nmx_index ys, nmx_index rows, nmx_index n, const float *restrict mh,
                            const float *restrict ml, const float *restrict sc,
                            const float *restrict sh, int mode) {
    nmx_index c0 = 0;
    /* By strips of one line of halves down every row, the strip's constants in registers (the
     * float32 affine_rows' strips). */
    if ((mode & NMX_HSTRIPS) && nmx_strips(rows, n, sizeof(uint16_t)))
        for (; c0 + HV_STRIP <= n; c0 += HV_STRIP) {
            HVF h[HV_SV], l[HV_SV], s[HV_SV], t[HV_SV];
            for (int j = 0; j < HV_SV; j++) {
                nmx_index c = c0 + j * HVW;
                HV(lf)(mh + c, HVW, &h[j]);
                HV(lf)(ml + c, HVW, &l[j]);
                HV(lf)(sc + c, HVW, &s[j]);
                HV(lf)(sh + c, HVW, &t[j]);
            }
            for (nmx_index r = 0; r < rows; r++)
#ifdef HV_LOAD_EO
                for (int j = 0; j < HV_SV; j += 2) {
                    nmx_index o = c0 + j * HVW;
                    HVF xv[2], v[2];
                    HV_LOAD_EO(x + r * xs + o, xv);
                    for (int q = 0; q < 2; q++)
                        v[q] = ((xv[q] - h[j + q]) - l[j + q]) * s[j + q] + t[j + q];
                    HV(put_eo)(y + r * ys + o, v, mode & NMX_HNT);
                }
#else
                for (int j = 0; j < HV_SV; j++) {
                    nmx_index o = c0 + j * HVW;
                    HVF xv;
                    HV_LOAD(x + r * xs + o, &xv);
                    HVF v = ((xv - h[j]) - l[j]) * s[j] + t[j];
                    HV(put)(y + r * ys + o, &v, mode);
                }
#endif
        }
    for (nmx_index r = 0; r < rows; r++) {
        const uint16_t *xr = x + r * xs;
        uint16_t *yr = y + r * ys;
        nmx_index c = c0;
#ifndef HV_LOAD_EO
        if (mode == NMX_HNT) { /* any row: its whole lines non-temporally, the rest plain */
            nmx_index i0, i1;
            HV(lines)(yr, n, &i0, &i1);
            HV(affine_cols)(xr, yr, 0, i0, mh, ml, sc, sh, NMX_HROWS);
            HV(affine_cols)(xr, yr, i0, i1, mh, ml, sc, sh, NMX_HNT);
            HV(affine_cols)(xr, yr, i1, n, mh, ml, sc, sh, NMX_HROWS);
            continue;
        }
#else
        /* NMX_HNT: rows that start on a line and hold whole lines (the paired constants of
         * nmx_bn_hleaves.eo do not allow a row to be cut at any other channel) */
        for (; c + 2 * HVW <= n; c += 2 * HVW)
            HV(affine_eo)(xr + c, yr + c, mh + c, ml + c, sc + c, sh + c, mode);
#endif
        HV(affine_cols)(xr, yr, c, n, mh, ml, sc, sh, mode);
    }
}

/* y[i] for i in [i0, i1), by whole vectors, then a partial one; with non-temporal stores if nt
 * (then y + i0 is on a line and i1 - i0 whole lines). */
HVI void HV(affine_span)(const uint16_t *x, uint16_t *y, nmx_index i0, nmx_index i1, HVF h,
                         HVF l, HVF s, HVF t, int nt) {
    nmx_index i = i0;
#ifdef HV_LOAD_EO
    for (; i + 2 * HVW <= i1; i += 2 * HVW) {
        HVF xv[2], v[2];
        HV_LOAD_EO(x + i, xv);
        for (int j = 0; j < 2; j++) v[j] = ((xv[j] - h) - l) * s + t;
        HV(put_eo)(y + i, v, nt);
    }
#endif
    for (; i + HVW <= i1; i += HVW) {
        HVF xv;
        HV_LOAD(x + i, &xv);
        HVF v = ((xv - h) - l) * s + t;
        HV(put)(y + i, &v, nt ? NMX_HNT : NMX_HROWS);
    }
    if (i < i1) {
        HVF xv;
        HV(ld)(x + i, (int)(i1 - i), &xv);
        HVF v = ((xv - h) - l) * s + t;
        HV(st)(y + i, (int)(i1 - i), &v);
    }
}

HVF_FN void HV(affine_run)(const uint16_t *restrict x, uint16_t *restrict y, nmx_index n,
                           float mh, float ml, float sc, float sh, int mode) {
    const HVF h = HV(splat)(mh), l = HV(splat)(ml), s = HV(splat)(sc), t = HV(splat)(sh);
    if (!(mode & NMX_HNT)) {
        HV(affine_span)(x, y, 0, n, h, l, s, t, 0);
        return;
    }
    nmx_index i0, i1;
    HV(lines)(y, n, &i0, &i1);
    HV(affine_span)(x, y, 0, i0, h, l, s, t, 0);
    HV(affine_span)(x, y, i0, i1, h, l, s, t, 1);
    HV(affine_span)(x, y, i1, n, h, l, s, t, 0);
}

/* ---- gradient sums ------------------------------------------------------------------------ */

/* grad_rows on HVW channels (m of them real) of four rows xs apart. */
HVI void HV(grad4)(const uint16_t *g, const uint16_t *x0, nmx_index xs, int m, const float *mh,
                   const float *ml, double *sdy, double *sdx) {
    HVF h, l, g0, g1, g2, g3, e0, e1, e2, e3;
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
    HVF a = (g0 + g1) + (g2 + g3);
    HVF b = (g0 * e0 + g1 * e1) + (g2 * e2 + g3 * e3);
    HV(addd)(sdy, m, &a);
    HV(addd)(sdx, m, &b);
}

/* grad_rows' leftover rows, in double, on HVW channels (m of them real) of one row. */
HVI void HV(grad1)(const uint16_t *g, const uint16_t *x0, int m, const double *mean, double *sdy,
                   double *sdx) {
    HVF gv, xv;
    HVD gd[2], xd[2];
    HV(ld)(g, m, &gv);
    HV(ld)(x0, m, &xv);
    HV_WIDE(&gv, gd);
    HV_WIDE(&xv, xd);
    if (m == HVW) {
        for (int k = 0; k < 2; k++) {
            nmx_index o = k * (HVW / 2);
            HVD a0 = gd[k], a = HV(ldd)(sdy + o), b = HV(ldd)(sdx + o);
            a += a0;
            b += a0 * (xd[k] - HV(ldd)(mean + o));
            HV(std)(sdy + o, a);
            HV(std)(sdx + o, b);
        }
        return;
    }
    double gw[HVW], xw[HVW];
    memcpy(gw, gd, sizeof gw);
    memcpy(xw, xd, sizeof xw);
    for (int j = 0; j < m; j++) {
        double a0 = gw[j];
        sdy[j] += a0;
        sdx[j] += a0 * (xw[j] - mean[j]);
    }
}

/* grad_rows' blocks of four whole rows of n <= HV_SHORT channels, as stats_short. */
HVI nmx_index HV(grad_short)(const uint16_t *restrict dy, const uint16_t *restrict x,
                             nmx_index full, nmx_index rows, nmx_index n,
                             const float *restrict mh, const float *restrict ml,
                             double *restrict sdy, double *restrict sdx, int k) {
    HVF h[HV_SHORT / HVW], l[HV_SHORT / HVW];
    HVD a[2 * HV_SHORT / HVW], b[2 * HV_SHORT / HVW];
    HV(consts_in)(mh, n, k, h);
    HV(consts_in)(ml, n, k, l);
    HV(sums_in)(sdy, n, k, a);
    HV(sums_in)(sdx, n, k, b);
    nmx_index r = 0;
    for (; r < full && (r + 3) * n + k * HVW <= rows * n; r += 4) {
        const uint16_t *g = dy + r * n, *x0 = x + r * n;
        for (int j = 0; j < k; j++) {
            HVF g0, g1, g2, g3, e0, e1, e2, e3;
            nmx_index o = j * HVW;
            HV_LOAD(g + o, &g0);
            HV_LOAD(g + n + o, &g1);
            HV_LOAD(g + 2 * n + o, &g2);
            HV_LOAD(g + 3 * n + o, &g3);
            HV_LOAD(x0 + o, &e0);
            HV_LOAD(x0 + n + o, &e1);
            HV_LOAD(x0 + 2 * n + o, &e2);
            HV_LOAD(x0 + 3 * n + o, &e3);
            e0 = (e0 - h[j]) - l[j], e1 = (e1 - h[j]) - l[j];
            e2 = (e2 - h[j]) - l[j], e3 = (e3 - h[j]) - l[j];
            HVF su = (g0 + g1) + (g2 + g3);
            HVF sv = (g0 * e0 + g1 * e1) + (g2 * e2 + g3 * e3);
            HV(addw)(a + 2 * j, su);
            HV(addw)(b + 2 * j, sv);
        }
    }
    HV(sums_out)(sdy, n, k, a);
    HV(sums_out)(sdx, n, k, b);
    return r;
}

HVF_FN void HV(grad_rows)(const uint16_t *restrict dy, const uint16_t *restrict x, nmx_index xs,
                          nmx_index rows, nmx_index n, const float *restrict mh,
                          const float *restrict ml, const double *restrict m,
                          double *restrict sdy, double *restrict sdx) {
    nmx_index r = 0, nv = n - n % HVW;
    int t = (int)(n - nv);
    if (xs == n && n <= HV_SHORT)
        r = HV_SHORT_CALL(n, HV(grad_short), dy, x, rows - rows % 4, rows, n, mh, ml, sdy,
                          sdx);
    for (; r + 4 <= rows; r += 4) {
        const uint16_t *g = dy + r * xs, *x0 = x + r * xs;
        for (nmx_index c = 0; c < nv; c += HVW)
            HV(grad4)(g + c, x0 + c, xs, HVW, mh + c, ml + c, sdy + c, sdx + c);
        if (t) HV(grad4)(g + nv, x0 + nv, xs, t, mh + nv, ml + nv, sdy + nv, sdx + nv);
    }
    for (; r < rows; r++) {
        const uint16_t *g = dy + r * xs, *x0 = x + r * xs;
        for (nmx_index c = 0; c < nv; c += HVW)
            HV(grad1)(g + c, x0 + c, HVW, m + c, sdy + c, sdx + c);
        if (t) HV(grad1)(g + nv, x0 + nv, t, m + nv, sdy + nv, sdx + nv);
    }
}

HVF_FN void HV(grad_run)(const uint16_t *restrict dy, const uint16_t *restrict x, nmx_index n,
                         double m, double *restrict sdy, double *restrict sdx) {
    double sa = 0, sb = 0;
    nmx_index i = 0;
    const HVD mv = HV(splatd)(m);
    /* u is dy and g is x: v = dy * (x - m) */
#define HV_GRAD_LOAD                                                                      \
    HV_LOADD(dy + i + j * (HVW / 2), &u_[j]), HV_LOADD(x + i + j * (HVW / 2), &g_[j])
#define HV_GRAD_TERM(u, v, g) (v = u * (g - mv))
    if (n >= 4 * NMX_LANES)
        HV_RUN_LANES(NMX_LANES, HV_GRAD_LOAD, HV_GRAD_TERM);
    else if (n >= 8)
        HV_RUN_LANES(8, HV_GRAD_LOAD, HV_GRAD_TERM);
#undef HV_GRAD_LOAD
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

HVI void HV(dx)(const uint16_t *g, const uint16_t *x, uint16_t *o, int m, const float *k,
                nmx_index C, int mode) {
    HVF gv, xv, mh, ml, gm, ga, gb;
    HV(ld)(g, m, &gv);
    HV(ld)(x, m, &xv);
    HV(lf)(k, m, &mh);
    HV(lf)(k + C, m, &ml);
    HV(lf)(k + 2 * C, m, &gm);
    HV(lf)(k + 3 * C, m, &ga);
    HV(lf)(k + 4 * C, m, &gb);
    HVF v = (gv - gm) * ga + ((xv - mh) - ml) * gb;
    if (m == HVW)
        HV(put)(o, &v, mode);
    else
        HV(st)(o, m, &v);
}

#ifdef HV_LOAD_EO
/* HV(dx) on a line of 2 * HVW halves, its constants paired. */
HVI void HV(dx_eo)(const uint16_t *g, const uint16_t *x, uint16_t *o, const float *k, nmx_index C,
                   int mode) {
    HVF gv[2], xv[2], v[2];
    HV_LOAD_EO(g, gv);
    HV_LOAD_EO(x, xv);
    for (int q = 0; q < 2; q++) {
        HVF mh, ml, gm, ga, gb;
        const float *kq = k + q * HVW;
        HV(lf)(kq, HVW, &mh);
        HV(lf)(kq + C, HVW, &ml);
        HV(lf)(kq + 2 * C, HVW, &gm);
        HV(lf)(kq + 3 * C, HVW, &ga);
        HV(lf)(kq + 4 * C, HVW, &gb);
        v[q] = (gv[q] - gm) * ga + ((xv[q] - mh) - ml) * gb;
    }
    HV(put_eo)(o, v, mode & NMX_HNT);
}
#endif

/* HV(dx) on channels [a, b) of one row, as affine_cols. */
HVI void HV(dx_cols)(const uint16_t *g, const uint16_t *xr, uint16_t *o, nmx_index a, nmx_index b,
                     const float *k, nmx_index C, int mode) {
    nmx_index c = a;
    for (; c + HVW <= b; c += HVW) HV(dx)(g + c, xr + c, o + c, HVW, k + c, C, mode);
    if (c < b) HV(dx)(g + c, xr + c, o + c, (int)(b - c), k + c, C, mode);
}

HVF_FN void HV(dx_rows)(const uint16_t *restrict dy, const uint16_t *restrict x, nmx_index xs,
                        uint16_t *restrict dx, nmx_index ys, nmx_index rows, nmx_index n,
                        const float *restrict k, nmx_index C, int mode) {
    nmx_index c0 = 0;
    /* By strips, as affine_rows (the float32 dx_strips). */
    if ((mode & NMX_HSTRIPS) && nmx_strips(rows, n, sizeof(uint16_t)))
        for (; c0 + HV_STRIP <= n; c0 += HV_STRIP) {
            HVF mh[HV_SV], ml[HV_SV], gm[HV_SV], ga[HV_SV], gb[HV_SV];
            for (int j = 0; j < HV_SV; j++) {
                nmx_index c = c0 + j * HVW;
                HV(lf)(k + c, HVW, &mh[j]);
                HV(lf)(k + C + c, HVW, &ml[j]);
                HV(lf)(k + 2 * C + c, HVW, &gm[j]);
                HV(lf)(k + 3 * C + c, HVW, &ga[j]);
                HV(lf)(k + 4 * C + c, HVW, &gb[j]);
            }
            for (nmx_index r = 0; r < rows; r++)
#ifdef HV_LOAD_EO
                for (int j = 0; j < HV_SV; j += 2) {
                    nmx_index o = c0 + j * HVW;
                    HVF gv[2], xv[2], v[2];
                    HV_LOAD_EO(dy + r * xs + o, gv);
                    HV_LOAD_EO(x + r * xs + o, xv);
                    for (int q = 0; q < 2; q++)
                        v[q] = (gv[q] - gm[j + q]) * ga[j + q] +
                               ((xv[q] - mh[j + q]) - ml[j + q]) * gb[j + q];
                    HV(put_eo)(dx + r * ys + o, v, mode & NMX_HNT);
                }
#else
                for (int j = 0; j < HV_SV; j++) {
                    nmx_index o = c0 + j * HVW;
                    HVF gv, xv;
                    HV_LOAD(dy + r * xs + o, &gv);
                    HV_LOAD(x + r * xs + o, &xv);
                    HVF v = (gv - gm[j]) * ga[j] + ((xv - mh[j]) - ml[j]) * gb[j];
                    HV(put)(dx + r * ys + o, &v, mode);
                }
#endif
        }
    for (nmx_index r = 0; r < rows; r++) {
        const uint16_t *g = dy + r * xs, *xr = x + r * xs;
        uint16_t *o = dx + r * ys;
        nmx_index c = c0;
#ifndef HV_LOAD_EO
        if (mode == NMX_HNT) { /* as in affine_rows */
            nmx_index i0, i1;
            HV(lines)(o, n, &i0, &i1);
            HV(dx_cols)(g, xr, o, 0, i0, k, C, NMX_HROWS);
            HV(dx_cols)(g, xr, o, i0, i1, k, C, NMX_HNT);
            HV(dx_cols)(g, xr, o, i1, n, k, C, NMX_HROWS);
            continue;
        }
#else
        for (; c + 2 * HVW <= n; c += 2 * HVW) HV(dx_eo)(g + c, xr + c, o + c, k + c, C, mode);
#endif
        HV(dx_cols)(g, xr, o, c, n, k, C, mode);
    }
}

/* dx[i] for i in [i0, i1), as affine_span. */
HVI void HV(dx_span)(const uint16_t *dy, const uint16_t *x, uint16_t *dx, nmx_index i0,
                     nmx_index i1, HVF h, HVF l, HVF gmv, HVF gav, HVF gbv, int nt) {
    nmx_index i = i0;
#ifdef HV_LOAD_EO
    for (; i + 2 * HVW <= i1; i += 2 * HVW) {
        HVF gv[2], xv[2], v[2];
        HV_LOAD_EO(dy + i, gv);
        HV_LOAD_EO(x + i, xv);
        for (int j = 0; j < 2; j++) v[j] = (gv[j] - gmv) * gav + ((xv[j] - h) - l) * gbv;
        HV(put_eo)(dx + i, v, nt);
    }
#endif
    for (; i + HVW <= i1; i += HVW) {
        HVF gv, xv;
        HV_LOAD(dy + i, &gv);
        HV_LOAD(x + i, &xv);
        HVF v = (gv - gmv) * gav + ((xv - h) - l) * gbv;
        HV(put)(dx + i, &v, nt ? NMX_HNT : NMX_HROWS);
    }
    if (i < i1) {
        HVF gv, xv;
        HV(ld)(dy + i, (int)(i1 - i), &gv);
        HV(ld)(x + i, (int)(i1 - i), &xv);
        HVF v = (gv - gmv) * gav + ((xv - h) - l) * gbv;
        HV(st)(dx + i, (int)(i1 - i), &v);
    }
}

HVF_FN void HV(dx_run)(const uint16_t *restrict dy, const uint16_t *restrict x,
                       uint16_t *restrict dx, nmx_index n, float mh, float ml, float gm, float ga,
                       float gb, int mode) {
    const HVF h = HV(splat)(mh), l = HV(splat)(ml), gmv = HV(splat)(gm), gav = HV(splat)(ga);
    const HVF gbv = HV(splat)(gb);
    if (!(mode & NMX_HNT)) {
        HV(dx_span)(dy, x, dx, 0, n, h, l, gmv, gav, gbv, 0);
        return;
    }
    nmx_index i0, i1;
    HV(lines)(dx, n, &i0, &i1);
    HV(dx_span)(dy, x, dx, 0, i0, h, l, gmv, gav, gbv, 0);
    HV(dx_span)(dy, x, dx, i0, i1, h, l, gmv, gav, gbv, 1);
    HV(dx_span)(dy, x, dx, i1, n, h, l, gmv, gav, gbv, 0);
}

/* How this instance writes the streamed tiles of wide rows (nmx_bn_hleaves.nt, bn_out_tiles_h):
 * by strips on 512-bit vectors, row by row on 256-bit ones. */
#if HVB == 512
#define HV_TILE_NT NMX_HSTRIPS_NT
#else
#define HV_TILE_NT NMX_HNT
#endif
#ifdef HV_LOAD_EO
#define HV_EO (2 * HVW)
#else
#define HV_EO 0
#endif
/* Which rows the row loops cut at their lines (nmx_bn_hleaves.cut): they can when their
 * constants are in channel order; with 256-bit vectors, rows that hold whole lines but start off
 * one come out faster through the buffer (bn_rows_direct). */
#if defined(HV_LOAD_EO)
#define HV_CUT NMX_CUT_NONE
#elif HVB == 512
#define HV_CUT NMX_CUT_ANY
#else
#define HV_CUT NMX_CUT_PART_LINES
#endif

/* The eight loops, for the drivers of batchnorm_half.h. */
static const nmx_bn_hleaves HV(nmx_bn_leaves) = {
    HV(stats_rows), HV(stats_run), HV(affine_rows), HV(affine_run),
    HV(grad_rows),  HV(grad_run),  HV(dx_rows),     HV(dx_run), HV_TILE_NT, HV_EO, HV_CUT,
};

#undef HV_TILE_NT
#undef HV_EO
#undef HV_CUT

#undef HV_RUN_LANES
#undef HV_STRIP
#undef HV_STORE
#undef HV_SV
#undef HV_SHORT_CALL
#undef HV_SHORT
#undef HVF_FN
#undef HVI
#undef HV
#undef HVCAT
#undef HVCAT2
