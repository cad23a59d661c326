/* Batch-norm kernels for one element type, included by batchnorm.c once per dtype with
 *   T    the element type (float or double)
 *   SUF  the name suffix (f32 or f64)
 *
 * Two shapes of inner loop cover every layout of the (outer, C, inner) view:
 *   inner == 1  rows of C values: vectorize along C, each thread owns a range of rows and keeps
 *               per-channel partial sums that are added up once at the end;
 *   inner > 1   one contiguous run of `inner` values per (outer, channel) block: threads split the
 *               blocks, each run reduces into lane accumulators.
 * Sums accumulate in double (on the rows path, blocks of four rows are first summed in T). The
 * element-wise passes run in T with the mean split into a T head and tail (mh + ml), so x - mean
 * stays exact to T rounding even when |mean| >> std. Pass 2 of the forward and of the backward is
 * one driver (pass_out), streamed for outputs larger than the cache.
 */
#define NMX_CAT2(a, b) a##_##b
#define NMX_CAT(a, b) NMX_CAT2(a, b)
#define FN(name) NMX_CAT(name, SUF)
/* Channels per strip (see NMX_STRIP_BYTES in batchnorm.c): one 64-byte vector. */
#define NMX_STRIP (64 / (nmx_index)sizeof(T))
/* The widest whole rows whose sums stats_short and grad_short keep in registers: four vectors,
 * 256 B (the two double sums of four float32 vectors fill half of AVX-512's registers). */
#define NMX_SHORT (4 * NMX_STRIP)

/* ---- leaf loops (compiled once per SIMD level, see NMX_CLONES) ---------------------------- */

/* The largest row that stats_order and grad_order buffer (see nmx_in_order). */
#define NMX_ORDER_MAX (NMX_ORDER_MAX_BYTES / (nmx_index)sizeof(T))

/* stats_rows' blocks of four whole rows of n channels (n <= NMX_ORDER_MAX), read row by row
 * (nmx_in_order): row 0 leaves its differences in a, row 1 turns them into the block's first
 * halves a = d0 + d1 and q = d0 * d0 + d1 * d1, row 2 leaves its own in b, and row 3 completes
 * the sums. Each half is the same expression as in NMX_STATS_BLOCK, so it rounds (and, with FMA,
 * contracts) the same way: the bits of the block loop, which test_kernels.c checks. */
NMX_LEAF_INLINE void FN(stats_order)(const T *restrict x, nmx_index full, nmx_index n,
                                     const T *restrict pv, double *restrict s1,
                                     double *restrict s2) {
    T a[NMX_ORDER_MAX], q[NMX_ORDER_MAX], b[NMX_ORDER_MAX];
    for (nmx_index r = 0; r < full; r += 4) {
        const T *x0 = x + r * n, *x1 = x0 + n, *x2 = x1 + n, *x3 = x2 + n;
        for (nmx_index c = 0; c < n; c++) a[c] = x0[c] - pv[c];
        for (nmx_index c = 0; c < n; c++) {
            T d0 = a[c], d1 = x1[c] - pv[c];
            a[c] = d0 + d1;
            q[c] = d0 * d0 + d1 * d1;
        }
        for (nmx_index c = 0; c < n; c++) b[c] = x2[c] - pv[c];
        for (nmx_index c = 0; c < n; c++) {
            T d2 = b[c], d3 = x3[c] - pv[c];
            s1[c] += (double)(a[c] + (d2 + d3));
            s2[c] += (double)(q[c] + (d2 * d2 + d3 * d3));
        }
    }
}

/* stats_rows' blocks of four whole rows of n <= NMX_SHORT channels, each block as w lanes (a
 * constant, w >= n) loaded from every row's start: lanes [0, n) make the block sums of
 * NMX_STATS_BLOCK, the same expressions, and lanes past n, which read the next rows, are dropped.
 * The sums are kept in registers from block to block instead of in s1 and s2, which the block
 * loop reads and writes back for every block (a store-to-load chain per channel, scalar over
 * rows narrower than a line): the same additions in the same order, so the same bits. Blocks stop
 * where a lane would read past the `rows` rows at x; returns the row where they stopped (a
 * multiple of four, at most full). Rows of 128 to 256 B, which went by the block loop (and those
 * of 256 B by stats_order in the training forward), against those paths: NHWC float32 with 32
 * and 64 channels, float64 with 32, and (100000, 48) float32, 18-25 MiB, two threads, separate
 * processes in turn, five or six rounds: the training forward took 0.64-1.12 of the time
 * (medians 0.73-0.86), the backward 0.39-1.06 (medians 0.77-0.86); on the AVX2 clones, four
 * rounds, 0.47-0.94 and 0.56-1.08. */
NMX_LEAF_INLINE nmx_index FN(stats_short)(const T *restrict x, nmx_index full, nmx_index rows,
                                          nmx_index n, const T *restrict pv,
                                          double *restrict s1, double *restrict s2, int w) {
    T p[NMX_SHORT];
    double a[NMX_SHORT], b[NMX_SHORT];
    for (int j = 0; j < w; j++) {
        p[j] = j < n ? pv[j] : 0;
        a[j] = j < n ? s1[j] : 0;
        b[j] = j < n ? s2[j] : 0;
    }
    nmx_index r = 0;
    for (; r < full && (r + 3) * n + w <= rows * n; r += 4) {
        const T *x0 = x + r * n, *x1 = x0 + n, *x2 = x1 + n, *x3 = x2 + n;
        for (int j = 0; j < w; j++) {
            T d0 = x0[j] - p[j], d1 = x1[j] - p[j], d2 = x2[j] - p[j], d3 = x3[j] - p[j];
            a[j] += (double)((d0 + d1) + (d2 + d3));
            b[j] += (double)((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3));
        }
    }
    for (nmx_index j = 0; j < n; j++) {
        s1[j] = a[j];
        s2[j] = b[j];
    }
    return r;
}

/* The lane count of stats_short and grad_short for rows of n <= NMX_SHORT channels: a quarter,
 * half, one, two or four 64-byte vectors, the fewest that hold a row. */
#define NMX_SHORT_CALL(n, f, ...)                                                              \
    ((n) <= NMX_STRIP / 4   ? f(__VA_ARGS__, NMX_STRIP / 4)                                    \
     : (n) <= NMX_STRIP / 2 ? f(__VA_ARGS__, NMX_STRIP / 2)                                    \
     : (n) <= NMX_STRIP     ? f(__VA_ARGS__, NMX_STRIP)                                        \
     : (n) <= 2 * NMX_STRIP ? f(__VA_ARGS__, 2 * NMX_STRIP)                                    \
                            : f(__VA_ARGS__, NMX_SHORT))

/* s1[c] += sum_r (x[r,c] - pv[c]); s2[c] += sum_r (x[r,c] - pv[c])^2 over `rows` rows of n
 * channels, rows xs elements apart (xs == n: whole rows; xs > n: a strip of them). Blocks of four
 * rows are summed in T (a tree of four terms) and the block sums added in double: for float32
 * about half the vector work of converting every element, and the variance still carries only a
 * few float32 ulps of rounding whatever the batch size. A block sum that overflows T is caught by
 * stats_repair. A channel's sums depend only on its own column, in row order: calls over
 * consecutive blocks of rows (multiples of four but the last) give the bits of one call, and so
 * do the four ways through the blocks (short rows in registers, strips, row order, blocks side
 * by side). */
NMX_CLONES static void FN(stats_rows)(const T *restrict x, nmx_index rows, nmx_index xs,
                                      nmx_index n, const T *restrict pv, double *restrict s1,
                                      double *restrict s2) {
#define NMX_STATS_BLOCK(i, c)                                                                   \
    do {                                                                                       \
        T p = pv[c];                                                                           \
        T d0 = x0[i] - p, d1 = x0[xs + i] - p, d2 = x0[2 * xs + i] - p;                        \
        T d3 = x0[3 * xs + i] - p;                                                             \
        s1[c] += (double)((d0 + d1) + (d2 + d3));                                              \
        s2[c] += (double)((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3));                          \
    } while (0)
    nmx_index full = rows - rows % 4, c0 = 0, r = 0;
    if (xs == n && n <= NMX_SHORT) {
        r = NMX_SHORT_CALL(n, FN(stats_short), x, full, rows, n, pv, s1, s2);
    } else if (nmx_strips(full, n, sizeof(T))) {
        /* A small batch by strips, as the backward's grad_strips: same sums, same order. */
        for (; c0 + NMX_STRIP <= n; c0 += NMX_STRIP)
            for (r = 0; r < full; r += 4) {
                const T *x0 = x + r * xs + c0;
                for (nmx_index j = 0; j < NMX_STRIP; j++) NMX_STATS_BLOCK(j, c0 + j);
            }
        r = 0;
    } else if (nmx_in_order(xs, n, sizeof(T), NMX_STATS_ORDER_MIN_BYTES)) {
        FN(stats_order)(x, full, n, pv, s1, s2);
        r = full;
    }
    for (; r < full; r += 4) {
        const T *x0 = x + r * xs;
        for (nmx_index c = c0; c < n; c++) NMX_STATS_BLOCK(c, c);
    }
#undef NMX_STATS_BLOCK
    for (r = full; r < rows; r++) {
        const T *x0 = x + r * xs;
        for (nmx_index c = 0; c < n; c++) {
            double d = (double)x0[c] - (double)pv[c];
            s1[c] += d;
            s2[c] += d * d;
        }
    }
}

/* The sums of channel c over all rows in double, element by element: for the rare channel whose
 * blocked T sums came out infinite or NaN (huge values overflow float32 squares; Inf and NaN
 * inputs), so it gets exactly the result of double accumulation. */
static void FN(stats_repair)(const T *x, nmx_index rows, nmx_index C, nmx_index c, double *s1,
                             double *s2) {
    double p = (double)x[c], a = 0, b = 0;
    for (nmx_index r = 0; r < rows; r++) {
        double d = (double)x[r * C + c] - p;
        a += d;
        b += d * d;
    }
    *s1 = a;
    *s2 = b;
}

NMX_CLONES static void FN(stats_run)(const T *restrict x, nmx_index n, double p,
                                     double *restrict s1, double *restrict s2) {
    double sa = 0, sb = 0;
    nmx_index i = 0;
#define NMX_STATS_TERM(k, u, v) (u = (double)x[k] - p, v = u * u)
    NMX_RUN_SUMS(NMX_STATS_TERM);
#undef NMX_STATS_TERM
    *s1 += sa;
    *s2 += sb;
}

/* y = ((x - mh) - ml) * sc + sh per channel: `rows` rows of n values, x rows xs apart and y
 * rows ys apart (a slice of the C channels, or all of them); by strips only if `strips` allows
 * (see out_rows). */
NMX_CLONES static void FN(affine_rows)(const T *restrict x, nmx_index xs, T *restrict y,
                                       nmx_index ys, nmx_index rows, nmx_index n,
                                       const T *restrict mh, const T *restrict ml,
                                       const T *restrict sc, const T *restrict sh, int strips) {
    nmx_index c0 = 0;
    /* A small batch by strips, the strip's four constants in registers (see dx_strips). */
    if (strips && nmx_strips(rows, n, sizeof(T)))
        for (; c0 + NMX_STRIP <= n; c0 += NMX_STRIP)
            for (nmx_index r = 0; r < rows; r++) {
                const T *xr = x + r * xs;
                T *yr = y + r * ys;
                for (nmx_index c = c0; c < c0 + NMX_STRIP; c++)
                    yr[c] = ((xr[c] - mh[c]) - ml[c]) * sc[c] + sh[c];
            }
    for (nmx_index r = 0; r < rows; r++) {
        const T *xr = x + r * xs;
        T *yr = y + r * ys;
        for (nmx_index c = c0; c < n; c++) yr[c] = ((xr[c] - mh[c]) - ml[c]) * sc[c] + sh[c];
    }
}

NMX_CLONES static void FN(affine_run)(const T *restrict x, T *restrict y, nmx_index n, T mh,
                                      T ml, T sc, T sh) {
    for (nmx_index i = 0; i < n; i++) y[i] = ((x[i] - mh) - ml) * sc + sh;
}

/* A run's loop with its whole 64-byte lines of output computed in registers and written with
 * non-temporal stores (nmx_stream_line), the partial lines at its ends with plain ones: the
 * streamed runs need no buffer to copy through. Every element is the same expression either
 * way, so it rounds (and, with FMA, contracts) the same: the bits of the plain loop. */
#define NMX_RUN_NT(out, n, e, expr)                                                            \
    do {                                                                                       \
        enum { line_ = 64 / sizeof(T) };                                                       \
        nmx_index i0_ = nmx_line_head(out, sizeof(T), n), i1_ = i0_ + (n - i0_) / line_ * line_; \
        for (nmx_index e = 0; e < i0_; e++) out[e] = (expr);                                   \
        for (nmx_index l_ = i0_; l_ < i1_; l_ += line_) {                                      \
            T v_[line_];                                                                       \
            for (nmx_index e = l_; e < l_ + line_; e++) v_[e - l_] = (expr);                   \
            nmx_stream_line(out + l_, v_);                                                     \
        }                                                                                      \
        for (nmx_index e = i1_; e < n; e++) out[e] = (expr);                                   \
    } while (0)

NMX_CLONES static void FN(affine_run_nt)(const T *restrict x, T *restrict y, nmx_index n, T mh,
                                         T ml, T sc, T sh) {
    NMX_RUN_NT(y, n, i, ((x[i] - mh) - ml) * sc + sh);
}

/* affine_rows of `rows` whole rows of n channels (xs == ys == n), row order, each row through
 * NMX_RUN_NT: for rows that start on a line and fill whole lines (rows_nt), every store is
 * non-temporal. */
NMX_CLONES static void FN(affine_rows_nt)(const T *restrict x, T *restrict y, nmx_index rows,
                                          nmx_index n, const T *restrict mh,
                                          const T *restrict ml, const T *restrict sc,
                                          const T *restrict sh) {
    for (nmx_index r = 0; r < rows; r++) {
        const T *xr = x + r * n;
        T *yr = y + r * n;
        NMX_RUN_NT(yr, n, c, ((xr[c] - mh[c]) - ml[c]) * sc[c] + sh[c]);
    }
}

/* The sums of dy and dy * (x - mean) over four rows xs apart from g[i], x0[i] into u, v, with
 * x - mean as (x - h) - l in T. */
#define NMX_GRAD_BLOCK(i, u, v)                                                         \
    do {                                                                               \
        T g0 = g[i], g1 = g[xs + i], g2 = g[2 * xs + i], g3 = g[3 * xs + i];           \
        T e0 = (x0[i] - h) - l, e1 = (x0[xs + i] - h) - l;                             \
        T e2 = (x0[2 * xs + i] - h) - l, e3 = (x0[3 * xs + i] - h) - l;                \
        u = (g0 + g1) + (g2 + g3);                                                     \
        v = (g0 * e0 + g1 * e1) + (g2 * e2 + g3 * e3);                                 \
    } while (0)

/* grad_rows' blocks of four rows over rows [r0, r1) (a multiple of four) and channels [c0, n). */
NMX_LEAF_INLINE void FN(grad_blocks)(const T *restrict dy, const T *restrict x, nmx_index r0,
                                     nmx_index r1, nmx_index xs, nmx_index c0, nmx_index n,
                                     const T *restrict mh, const T *restrict ml,
                                     double *restrict sdy, double *restrict sdx) {
    for (nmx_index r = r0; r < r1; r += 4) {
        const T *g = dy + r * xs, *x0 = x + r * xs;
        for (nmx_index c = c0; c < n; c++) {
            T h = mh[c], l = ml[c], u, v;
            NMX_GRAD_BLOCK(c, u, v);
            sdy[c] += (double)u;
            sdx[c] += (double)v;
        }
    }
}

/* grad_blocks over whole rows of n <= NMX_SHORT channels as stats_short: each block as w lanes
 * from every row's start, the lanes past n dropped, the sums in registers; the blocks of rows
 * [0, returned row). */
NMX_LEAF_INLINE nmx_index FN(grad_short)(const T *restrict dy, const T *restrict x,
                                         nmx_index full, nmx_index rows, nmx_index n,
                                         const T *restrict mh, const T *restrict ml,
                                         double *restrict sdy, double *restrict sdx, int w) {
    T h[NMX_SHORT], l[NMX_SHORT];
    double a[NMX_SHORT], b[NMX_SHORT];
    for (int j = 0; j < w; j++) {
        h[j] = j < n ? mh[j] : 0;
        l[j] = j < n ? ml[j] : 0;
        a[j] = j < n ? sdy[j] : 0;
        b[j] = j < n ? sdx[j] : 0;
    }
    nmx_index r = 0;
    for (; r < full && (r + 3) * n + w <= rows * n; r += 4) {
        const T *g0 = dy + r * n, *g1 = g0 + n, *g2 = g1 + n, *g3 = g2 + n;
        const T *x0 = x + r * n, *x1 = x0 + n, *x2 = x1 + n, *x3 = x2 + n;
        for (int j = 0; j < w; j++) {
            T e0 = (x0[j] - h[j]) - l[j], e1 = (x1[j] - h[j]) - l[j];
            T e2 = (x2[j] - h[j]) - l[j], e3 = (x3[j] - h[j]) - l[j];
            a[j] += (double)((g0[j] + g1[j]) + (g2[j] + g3[j]));
            b[j] += (double)((g0[j] * e0 + g1[j] * e1) + (g2[j] * e2 + g3[j] * e3));
        }
    }
    for (nmx_index j = 0; j < n; j++) {
        sdy[j] = a[j];
        sdx[j] = b[j];
    }
    return r;
}

/* grad_blocks over rows [0, full) of whole rows of n channels (n <= NMX_ORDER_MAX), read row by
 * row as in stats_order: rows 0 and 1 leave the block's first halves u = g0 + g1 and
 * v = g0 * e0 + g1 * e1 in a and b, row 2 its own dy and x - mean in p and e, and row 3 completes
 * the sums, every half the same expression as in NMX_GRAD_BLOCK. */
NMX_LEAF_INLINE void FN(grad_order)(const T *restrict dy, const T *restrict x, nmx_index full,
                                    nmx_index n, const T *restrict mh, const T *restrict ml,
                                    double *restrict sdy, double *restrict sdx) {
    T a[NMX_ORDER_MAX], b[NMX_ORDER_MAX], p[NMX_ORDER_MAX], e[NMX_ORDER_MAX];
    for (nmx_index r = 0; r < full; r += 4) {
        const T *g = dy + r * n, *x0 = x + r * n;
        for (nmx_index c = 0; c < n; c++) {
            a[c] = g[c];
            b[c] = (x0[c] - mh[c]) - ml[c];
        }
        for (nmx_index c = 0; c < n; c++) {
            T g0 = a[c], e0 = b[c], g1 = g[n + c], e1 = (x0[n + c] - mh[c]) - ml[c];
            a[c] = g0 + g1;
            b[c] = g0 * e0 + g1 * e1;
        }
        for (nmx_index c = 0; c < n; c++) {
            p[c] = g[2 * n + c];
            e[c] = (x0[2 * n + c] - mh[c]) - ml[c];
        }
        for (nmx_index c = 0; c < n; c++) {
            T g2 = p[c], e2 = e[c], g3 = g[3 * n + c], e3 = (x0[3 * n + c] - mh[c]) - ml[c];
            sdy[c] += (double)(a[c] + (g2 + g3));
            sdx[c] += (double)(b[c] + (g2 * e2 + g3 * e3));
        }
    }
}

/* grad_blocks over rows [0, rows) (a multiple of four) of a small batch (nmx_strips), by strips
 * of NMX_STRIP channels down all rows, the strip's sums kept in registers: the same additions in
 * the same order as row by row, without reading and writing the double sums for every block.
 * Inlined into each clone of grad_rows (NMX_LEAF_INLINE). */
NMX_LEAF_INLINE void FN(grad_strips)(const T *restrict dy, const T *restrict x,
                                     nmx_index rows, nmx_index xs, nmx_index n,
                                     const T *restrict mh, const T *restrict ml,
                                     double *restrict sdy, double *restrict sdx) {
    nmx_index c0 = 0;
    for (; c0 + NMX_STRIP <= n; c0 += NMX_STRIP)
        for (nmx_index r = 0; r < rows; r += 4) {
            const T *g = dy + r * xs + c0, *x0 = x + r * xs + c0;
            for (nmx_index j = 0; j < NMX_STRIP; j++) {
                T h = mh[c0 + j], l = ml[c0 + j], u, v;
                NMX_GRAD_BLOCK(j, u, v);
                sdy[c0 + j] += (double)u;
                sdx[c0 + j] += (double)v;
            }
        }
    FN(grad_blocks)(dy, x, 0, rows, xs, c0, n, mh, ml, sdy, sdx);
}

/* sdy[c] += sum_r dy[r,c]; sdx[c] += sum_r dy[r,c] * (x[r,c] - mean[c]) over `rows` rows of n
 * channels xs apart (as in stats_rows), with x - mean as (x - mh) - ml in T and blocks of four
 * rows summed in T as in stats_rows; the leftover rows in double with m = mean. Overflow is
 * caught by grad_repair. */
NMX_CLONES static void FN(grad_rows)(const T *restrict dy, const T *restrict x, nmx_index rows,
                                     nmx_index xs, nmx_index n, const T *restrict mh,
                                     const T *restrict ml, const double *restrict m,
                                     double *restrict sdy, double *restrict sdx) {
    nmx_index r = rows - rows % 4;
    if (xs == n && n <= NMX_SHORT) {
        nmx_index r0 = NMX_SHORT_CALL(n, FN(grad_short), dy, x, r, rows, n, mh, ml, sdy, sdx);
        FN(grad_blocks)(dy, x, r0, r, xs, 0, n, mh, ml, sdy, sdx);
    } else if (nmx_strips(r, n, sizeof(T)))
        FN(grad_strips)(dy, x, r, xs, n, mh, ml, sdy, sdx);
    else if (nmx_in_order(xs, n, sizeof(T), NMX_GRAD_ORDER_MIN_BYTES))
        FN(grad_order)(dy, x, r, n, mh, ml, sdy, sdx);
    else
        FN(grad_blocks)(dy, x, 0, r, xs, 0, n, mh, ml, sdy, sdx);
    for (; r < rows; r++) {
        const T *g0 = dy + r * xs, *x0 = x + r * xs;
        for (nmx_index c = 0; c < n; c++) {
            double a0 = (double)g0[c];
            sdy[c] += a0;
            sdx[c] += a0 * ((double)x0[c] - m[c]);
        }
    }
}
#undef NMX_GRAD_BLOCK

/* grad_rows for one channel in double, for the rare channel whose blocked sums overflowed. */
static void FN(grad_repair)(const T *dy, const T *x, nmx_index rows, nmx_index C, nmx_index c,
                            double m, double *sdy, double *sdx) {
    double a = 0, b = 0;
    for (nmx_index r = 0; r < rows; r++) {
        double g = (double)dy[r * C + c];
        a += g;
        b += g * ((double)x[r * C + c] - m);
    }
    *sdy = a;
    *sdx = b;
}

/* sdy += sum dy[i]; sdx += sum dy[i] * (x[i] - m) over one run, lanes as in stats_run. */
NMX_CLONES static void FN(grad_run)(const T *restrict dy, const T *restrict x, nmx_index n,
                                    double m, double *restrict sdy, double *restrict sdx) {
    double sa = 0, sb = 0;
    nmx_index i = 0;
#define NMX_GRAD_TERM(k, u, v) (u = (double)dy[k], v = u * ((double)x[k] - m))
    NMX_RUN_SUMS(NMX_GRAD_TERM);
#undef NMX_GRAD_TERM
    *sdy += sa;
    *sdx += sb;
}

/* dx = (dy - gm) * ga + ((x - mh) - ml) * gb of row g, xr at i, with the channel's constants
 * in h, l, a, b, e: the mean of dy is subtracted before scaling so a constant dy cancels
 * exactly, as in the float64 formula. */
#define NMX_DX(i) (g[i] - a) * b + ((xr[i] - h) - l) * e

/* dx over rows [r0, r1) and channels [c0, n) in row order; k as in dx_rows. */
NMX_LEAF_INLINE void FN(dx_plain)(const T *restrict dy, const T *restrict x, nmx_index xs,
                                  T *restrict dx, nmx_index ys, nmx_index r0, nmx_index r1,
                                  nmx_index c0, nmx_index n, const T *restrict k, nmx_index C) {
    const T *restrict mh = k, *restrict ml = k + C, *restrict gm = k + 2 * C;
    const T *restrict ga = k + 3 * C, *restrict gb = k + 4 * C;
    for (nmx_index r = r0; r < r1; r++) {
        const T *g = dy + r * xs, *xr = x + r * xs;
        T *o = dx + r * ys;
        for (nmx_index c = c0; c < n; c++) {
            T h = mh[c], l = ml[c], a = gm[c], b = ga[c], e = gb[c];
            o[c] = NMX_DX(c);
        }
    }
}

/* dx of a small batch (nmx_strips) by strips of NMX_STRIP channels down all rows, the strip's
 * five constants held in registers: row by row, reloading them for every row bounds the loop,
 * not the arithmetic. Inlined into each clone of dx_rows (NMX_LEAF_INLINE). */
NMX_LEAF_INLINE void FN(dx_strips)(const T *restrict dy, const T *restrict x, nmx_index xs,
                                   T *restrict dx, nmx_index ys, nmx_index rows, nmx_index n,
                                   const T *restrict k, nmx_index C) {
    const T *restrict mh = k, *restrict ml = k + C, *restrict gm = k + 2 * C;
    const T *restrict ga = k + 3 * C, *restrict gb = k + 4 * C;
    nmx_index c0 = 0;
    for (; c0 + NMX_STRIP <= n; c0 += NMX_STRIP)
        for (nmx_index r = 0; r < rows; r++) {
            const T *g = dy + r * xs + c0, *xr = x + r * xs + c0;
            T *o = dx + r * ys + c0;
            for (nmx_index j = 0; j < NMX_STRIP; j++) {
                nmx_index c = c0 + j;
                T h = mh[c], l = ml[c], a = gm[c], b = ga[c], e = gb[c];
                o[j] = NMX_DX(j);
            }
        }
    FN(dx_plain)(dy, x, xs, dx, ys, 0, rows, c0, n, k, C);
}

/* dx over `rows` rows of n channels, rows and `strips` as in affine_rows; k points at the first
 * channel of the slice in five arrays C apart (mh, ml, gm, ga, gb). */
NMX_CLONES static void FN(dx_rows)(const T *restrict dy, const T *restrict x, nmx_index xs,
                                   T *restrict dx, nmx_index ys, nmx_index rows, nmx_index n,
                                   const T *restrict k, nmx_index C, int strips) {
    if (strips && nmx_strips(rows, n, sizeof(T)))
        FN(dx_strips)(dy, x, xs, dx, ys, rows, n, k, C);
    else
        FN(dx_plain)(dy, x, xs, dx, ys, 0, rows, 0, n, k, C);
}
#undef NMX_DX

NMX_CLONES static void FN(dx_run)(const T *restrict dy, const T *restrict x, T *restrict dx,
                                  nmx_index n, T mh, T ml, T gm, T ga, T gb) {
    for (nmx_index i = 0; i < n; i++) dx[i] = (dy[i] - gm) * ga + ((x[i] - mh) - ml) * gb;
}

/* dx_rows of `rows` whole rows of n channels in row order through NMX_RUN_NT, as
 * affine_rows_nt; k as in dx_rows with C == n. The expression is NMX_DX's, term for term. */
NMX_CLONES static void FN(dx_rows_nt)(const T *restrict dy, const T *restrict x,
                                      T *restrict dx, nmx_index rows, nmx_index n,
                                      const T *restrict k) {
    const T *restrict mh = k, *restrict ml = k + n, *restrict gm = k + 2 * n;
    const T *restrict ga = k + 3 * n, *restrict gb = k + 4 * n;
    for (nmx_index r = 0; r < rows; r++) {
        const T *g = dy + r * n, *xr = x + r * n;
        T *o = dx + r * n;
        NMX_RUN_NT(o, n, c, (g[c] - gm[c]) * ga[c] + ((xr[c] - mh[c]) - ml[c]) * gb[c]);
    }
}

NMX_CLONES static void FN(dx_run_nt)(const T *restrict dy, const T *restrict x, T *restrict dx,
                                     nmx_index n, T mh, T ml, T gm, T ga, T gb) {
    NMX_RUN_NT(dx, n, i, (dy[i] - gm) * ga + ((x[i] - mh) - ml) * gb);
}

/* ---- drivers ------------------------------------------------------------------------------ */

/* Split the mean into a T head and the T rounding of what is left. */
static inline void FN(split_mean)(double m, T *mh, T *ml) {
    *mh = (T)m;
    *ml = (T)(m - (double)*mh);
}

/* split_mean of every channel into k (heads) and k + C (tails), vectorized. */
NMX_CLONES static void FN(split_means)(const double *restrict mean, nmx_index C,
                                       T *restrict k) {
    for (nmx_index c = 0; c < C; c++) {
        T h = (T)mean[c];
        k[c] = h;
        k[C + c] = (T)(mean[c] - (double)h);
    }
}

/* Whether rows of C channels are wide (see NMX_TILE_C). */
static inline int FN(wide_rows)(nmx_index C) {
    return C > NMX_TILE_C && C * (nmx_index)sizeof(T) > NMX_WIDE_ROW_BYTES;
}

/* Pass 1 over this thread's share: rows [lo, hi) when inner == 1, else blocks [lo, hi). */
static void FN(pass_stats)(const T *x, nmx_index C, nmx_index inner, nmx_index lo, nmx_index hi,
                           double *s1, double *s2) {
    if (inner == 1 && !FN(wide_rows)(C)) {
        FN(stats_rows)(x + lo * C, hi - lo, C, C, x, s1, s2);
        return;
    }
    if (inner == 1) { /* tile by tile: each channel's blocks still in row order */
        for (nmx_index r0 = lo; r0 < hi; r0 += NMX_TILE_R)
            for (nmx_index a = 0, r1 = nmx_min(hi, r0 + NMX_TILE_R); a < C; a += NMX_TILE_C)
                FN(stats_rows)(x + r0 * C + a, r1 - r0, C, nmx_min(NMX_TILE_C, C - a), x + a,
                               s1 + a, s2 + a);
        return;
    }
    for (nmx_index b = lo; b < hi; b++) {
        nmx_index c = b % C;
        FN(stats_run)(x + b * inner, inner, (double)x[c * inner], s1 + c, s2 + c);
    }
}

static void FN(pass_grad)(const T *dy, const T *x, nmx_index C, nmx_index inner, nmx_index lo,
                          nmx_index hi, const double *mean, const T *k, double *s1, double *s2) {
    if (inner == 1 && !FN(wide_rows)(C)) {
        FN(grad_rows)(dy + lo * C, x + lo * C, hi - lo, C, C, k, k + C, mean, s1, s2);
        return;
    }
    if (inner == 1) { /* tile by tile, as pass_stats, with the backward's tiles */
        for (nmx_index r0 = lo; r0 < hi; r0 += NMX_BACK_TILE_R)
            for (nmx_index a = 0, r1 = nmx_min(hi, r0 + NMX_BACK_TILE_R); a < C;
                 a += NMX_BACK_TILE_C) {
                nmx_index o = r0 * C + a;
                FN(grad_rows)(dy + o, x + o, r1 - r0, C, nmx_min(NMX_BACK_TILE_C, C - a), k + a,
                              k + C + a, mean + a, s1 + a, s2 + a);
            }
        return;
    }
    for (nmx_index b = lo; b < hi; b++) {
        nmx_index c = b % C;
        FN(grad_run)(dy + b * inner, x + b * inner, inner, mean[c], s1 + c, s2 + c);
    }
}

/* y (dy NULL) or dx of rows [r0, r1) and channels [a, b) of rows of C, into o, rows ys apart;
 * a small batch by strips if `strips`. The outputs are the same either way: strips change the
 * order of the rows' loads, which matters when they come from memory. Narrow rows (a piece of a
 * streamed call of few channels) are then better read in row order: strips step through such a
 * piece one cache line of each row at a time, lines four or more apart, which the prefetchers
 * follow poorly (NHWC (128, 56, 56, 64) float32: inference 9.5 vs 7.3 ms, backward 22.3 vs
 * 17.2). The tiles of wide rows (out_tiles) are the other way round: each strip moves every row
 * of the tile on by one line (float32 (8192, 2048) inference by tiles: row order within them
 * took 1.27-1.81x the time of strips). */
static void FN(out_rows)(const T *dy, const T *x, T *o, nmx_index ys, nmx_index C, nmx_index r0,
                         nmx_index r1, nmx_index a, nmx_index b, const T *k, int strips) {
    nmx_index off = r0 * C + a;
    if (dy)
        FN(dx_rows)(dy + off, x + off, C, o, ys, r1 - r0, b - a, k + a, C, strips);
    else
        FN(affine_rows)(x + off, C, o, ys, r1 - r0, b - a, k + a, k + C + a, k + 2 * C + a,
                        k + 3 * C + a, strips);
}

/* y over units [u0, u1) (rows when inner == 1, else runs of `inner`), each unit restricted to
 * its elements [a, b), written densely to out. */
static void FN(affine_part)(const T *x, T *out, nmx_index C, nmx_index inner, nmx_index u0,
                            nmx_index u1, nmx_index a, nmx_index b, const T *k, int strips) {
    if (inner == 1) {
        FN(out_rows)(NULL, x, out, b - a, C, u0, u1, a, b, k, strips);
        return;
    }
    for (nmx_index u = u0; u < u1; u++) {
        nmx_index c = u % C;
        FN(affine_run)(x + u * inner + a, out + (u - u0) * (b - a), b - a, k[c], k[C + c],
                       k[2 * C + c], k[3 * C + c]);
    }
}

/* dx over units [u0, u1), each restricted to its elements [a, b), written densely to out. */
static void FN(dx_part)(const T *dy, const T *x, T *out, nmx_index C, nmx_index inner,
                        nmx_index u0, nmx_index u1, nmx_index a, nmx_index b, const T *k,
                        int strips) {
    if (inner == 1) {
        FN(out_rows)(dy, x, out, b - a, C, u0, u1, a, b, k, strips);
        return;
    }
    for (nmx_index u = u0; u < u1; u++) {
        nmx_index c = u % C, o = u * inner + a;
        FN(dx_run)(dy + o, x + o, out + (u - u0) * (b - a), b - a, k[c], k[C + c], k[2 * C + c],
                   k[3 * C + c], k[4 * C + c]);
    }
}

/* Pass 2 over units [lo, hi): y = affine(x) for the forward (dy NULL), dx for the backward.
 * Streamed (outputs larger than the cache), the output is written with non-temporal stores, so
 * it does not evict the inputs from the cache: runs and most rows straight from their loops
 * (run_nt, rows_out_nt: see rows_direct), other rows a piece at a time through a buffer.
 * NMX_STREAM_BACK takes blocks from the last to the first (ascending within a block, so the
 * prefetcher keeps up). */
static void FN(out_part)(const T *dy, const T *x, T *out, nmx_index C, nmx_index inner,
                         nmx_index u0, nmx_index u1, nmx_index a, nmx_index b, const T *k,
                         int strips) {
    if (dy)
        FN(dx_part)(dy, x, out, C, inner, u0, u1, a, b, k, strips);
    else
        FN(affine_part)(x, out, C, inner, u0, u1, a, b, k, strips);
}

/* y (dy NULL) or dx of run u (inner > 1), written in place with non-temporal stores. Against
 * computing a piece into a buffer and streaming that (as rows do), with the same blocks: NCHW
 * 56 x 56 and 28 x 28, 26-100 MiB, two threads, the buffered runs took 1.05-1.35x the time in
 * the training forward (float64 1.10-1.28x) and 0.94-1.37x the backward's; resident groups
 * 0.98-1.14x. The buffered backward had been slower than plain stores (1.00-1.37x their time);
 * run_nt is faster than them (0.83-0.90x). */
static void FN(run_nt)(const T *dy, const T *x, T *out, nmx_index C, nmx_index inner, nmx_index u,
                       const T *k) {
    nmx_index c = u % C, o = u * inner;
    if (dy)
        FN(dx_run_nt)(dy + o, x + o, out + o, inner, k[c], k[C + c], k[2 * C + c], k[3 * C + c],
                      k[4 * C + c]);
    else
        FN(affine_run_nt)(x + o, out + o, inner, k[c], k[C + c], k[2 * C + c], k[3 * C + c]);
}

/* pass_out, streamed, over wide rows [lo, hi) (wide_rows) that are not rows_nt, tile by tile
 * through the buffer (the backward's tiles for dx): with NMX_STREAM_BACK blocks of rows from the
 * last to the first, tiles ascending within a block. */
static void FN(out_tiles)(const T *dy, const T *x, T *out, nmx_index C, nmx_index lo,
                          nmx_index hi, const T *k, int stream) {
    T tmp[NMX_PIECE];
    nmx_index rows = dy ? NMX_BACK_TILE_R : NMX_TILE_R, cols = dy ? NMX_BACK_TILE_C : NMX_TILE_C;
    nmx_index block = stream == NMX_STREAM_BACK ? rows * NMX_PIECES_PER_BLOCK : hi - lo;
    for (nmx_index end = hi; end > lo;) {
        nmx_index start = end - lo > block ? end - block : lo;
        for (nmx_index r0 = start; r0 < end; r0 += rows) {
            nmx_index r1 = nmx_min(end, r0 + rows);
            for (nmx_index a = 0; a < C; a += cols) {
                nmx_index b = nmx_min(C, a + cols), w = b - a;
                FN(out_rows)(dy, x, tmp, w, C, r0, r1, a, b, k, 1);
                for (nmx_index r = r0; r < r1; r++)
                    nmx_stream(out + r * C + a, tmp + (r - r0) * w, sizeof(T) * (size_t)w);
            }
        }
        end = start;
    }
    nmx_stream_fence();
}

/* Whether every row of C at out starts on a 64-byte line and fills whole lines, so that every
 * store of rows_out_nt is non-temporal. The outputs the kernels allocate start on a line
 * (nmx_buf_malloc), so rows of a multiple of 16 float32 (8 float64) channels qualify. */
static inline int FN(rows_nt)(const T *out, nmx_index C) {
    return C * (nmx_index)sizeof(T) % 64 == 0 && nmx_line_head(out, sizeof(T), C) == 0;
}

/* Whether streamed rows of C (not wide) at out go straight from their loops (rows_out_nt): rows_nt
 * ones, and any of NMX_DIRECT_ROW_BYTES or more, whose lines shared with a neighbour are stored
 * plain. Narrower rows go through a buffer, which streams every whole line of a piece of several
 * rows: a row of 64 bytes off a line holds no whole line of its own. */
static inline int FN(rows_direct)(const T *out, nmx_index C) {
    return FN(rows_nt)(out, C) || C * (nmx_index)sizeof(T) >= NMX_DIRECT_ROW_BYTES;
}

/* y (dy NULL) or dx of rows [u0, u1) of C (rows_direct), each row's whole lines written in place
 * with non-temporal stores (all of them for rows_nt rows). For rows_nt rows against the buffer,
 * with the same blocks, 24-117 MiB, two threads, alternating in one process: the buffered rows
 * took 1.08-1.17x the time in the training forward (NHWC 56 x 56 x 64 and (100000, 256)
 * float32; NHWC, (200000, 32) and (30000, 512) float64: 1.07-1.22x) and 1.05-1.24x in the
 * backward (one round at 49 MiB: 0.96x). */
static void FN(rows_out_nt)(const T *dy, const T *x, T *out, nmx_index C, nmx_index u0,
                            nmx_index u1, const T *k) {
    nmx_index o = u0 * C, rows = u1 - u0;
    if (dy)
        FN(dx_rows_nt)(dy + o, x + o, out + o, rows, C, k);
    else
        FN(affine_rows_nt)(x + o, out + o, rows, C, k, k + C, k + 2 * C, k + 3 * C);
}

static void FN(pass_units)(const T *dy, const T *x, T *out, nmx_index C, nmx_index inner,
                           nmx_index lo, nmx_index hi, const T *k, int stream) {
    nmx_index len = inner == 1 ? C : inner;
    /* Wide rows go by tiles only to stream through the buffer: whole rows in row order, plain or
     * straight from their loops, took 0.59-0.76x the time of the tiles in float64 (1024 and
     * 8192 rows of 2048) and 0.78-0.95x in float32 (8192, 2048) in the training forward and the
     * inference, 0.80-1.08x in the backward (alternating in one process, two threads). */
    if (inner == 1 && stream && FN(wide_rows)(C) && !FN(rows_nt)(out, C)) {
        FN(out_tiles)(dy, x, out, C, lo, hi, k, stream);
        return;
    }
    if (!stream) {
        FN(out_part)(dy, x, out + lo * len, C, inner, lo, hi, 0, len, k, 1);
        return;
    }
    if (inner > 1) { /* runs: their loops store whole lines non-temporally (run_nt) */
        nmx_index per = NMX_STREAM_PIECE_BYTES * NMX_PIECES_PER_BLOCK;
        per /= len * (nmx_index)sizeof(T);
        nmx_index block = stream == NMX_STREAM_BACK ? (per > 1 ? per : 1) : hi - lo;
        for (nmx_index end = hi; end > lo;) {
            nmx_index start = end - lo > block ? end - block : lo;
            for (nmx_index u = start; u < end; u++) FN(run_nt)(dy, x, out, C, inner, u, k);
            end = start;
        }
        nmx_stream_fence();
        return;
    }
    /* Rows of C: from their own loops (rows_direct), else (rows of at most a piece: wide ones
     * went by tiles) a few to a piece through the buffer. */
    enum { piece = NMX_STREAM_PIECE_BYTES / sizeof(T) };
    T tmp[piece];
    nmx_index per = piece / C > 0 ? piece / C : 1; /* a wide row is a piece of its own */
    nmx_index block = stream == NMX_STREAM_BACK ? per * NMX_PIECES_PER_BLOCK : hi - lo;
    int direct = FN(rows_direct)(out, C);
    for (nmx_index end = hi; end > lo;) {
        nmx_index start = end - lo > block ? end - block : lo;
        if (direct)
            FN(rows_out_nt)(dy, x, out, C, start, end, k);
        else
            for (nmx_index u0 = start; u0 < end; u0 += per) {
                nmx_index u1 = end - u0 > per ? u0 + per : end;
                FN(out_part)(dy, x, tmp, C, inner, u0, u1, 0, C, k, 0);
                nmx_stream(out + u0 * C, tmp, sizeof(T) * (size_t)((u1 - u0) * C));
            }
        end = start;
    }
    nmx_stream_fence();
}

/* Rows narrower than a line (C * sizeof(T) < 64), q at a time, as rows of q * C channels: q
 * rows make a whole number of lines, so the row loops run whole vectors (a row of 3 float32
 * channels was one partial vector, and a call of the loops, each) and the rows fill whole lines.
 * The per-channel constants are repeated q times; every element's arithmetic is unchanged.
 * NHWC float32, 38 MiB, two threads, separate processes in turn, three rounds: with 3 channels
 * the training forward took 0.23-0.62 of the time, the inference 0.11-0.25; with 5, 0.57-0.65
 * and 0.22-0.25; with 15, 0.46-0.67, 0.31-0.39 and the backward 0.36-0.45. The backward with 3
 * and 5 channels spread over 9-124 ms in both builds (medians 10 against 28 ms and 20 against
 * 43 ms); its sums pass, which this does not change, is most of its time there. */
static void FN(pass_narrow)(const T *dy, const T *x, T *out, nmx_index C, nmx_index q,
                            nmx_index lo, nmx_index hi, const T *k, int stream) {
    T kq[5 * (64 / sizeof(T)) * (64 / sizeof(T))]; /* q <= 64 / sizeof(T), C < 64 / sizeof(T) */
    nmx_index cq = C * q, a, b;
    nmx_narrow_groups(k, kq, sizeof(T), dy ? 5 : 4, C, q, lo, hi, &a, &b);
    FN(pass_units)(dy, x, out, C, 1, lo, a, k, stream);
    FN(pass_units)(dy ? dy + a * C : NULL, x + a * C, out + a * C, cq, 1, 0, (b - a) / q, kq,
                   stream);
    FN(pass_units)(dy, x, out, C, 1, b, hi, k, stream);
}

/* Pass 2 over units [lo, hi), as pass_units; narrow rows by pass_narrow. */
static void FN(pass_out)(const T *dy, const T *x, T *out, nmx_index C, nmx_index inner,
                         nmx_index lo, nmx_index hi, const T *k, int stream) {
    nmx_index q = inner == 1 ? nmx_narrow_rows(C * (nmx_index)sizeof(T)) : 0;
    if (q && hi - lo >= 4 * q)
        FN(pass_narrow)(dy, x, out, C, q, lo, hi, k, stream);
    else
        FN(pass_units)(dy, x, out, C, inner, lo, hi, k, stream);
}

/* Add the partial sums of channels [c0, c1) of threads 1.. into thread 0's slice (slices of
 * 2 * C doubles), in thread order so the result does not depend on scheduling. */
static inline void FN(fold_parts)(nmx_index c0, nmx_index c1, double *restrict acc, int team,
                                  nmx_index C) {
    for (int t = 1; t < team; t++) {
        const double *restrict part = acc + (nmx_index)t * 2 * C;
        for (nmx_index c = c0; c < c1; c++) {
            acc[c] += part[c];
            acc[C + c] += part[C + c];
        }
    }
}

/* Whether a[0:n] and b[0:n] are all finite: one vectorized test, so that the common case costs
 * a few instructions instead of a branch per channel (a small batch's whole budget is ~1 us). */
NMX_CLONES static int FN(all_finite)(const double *restrict a, const double *restrict b,
                                     nmx_index n) {
    int bad = 0;
    for (nmx_index i = 0; i < n; i++) bad |= !(fabs(a[i]) <= DBL_MAX) | !(fabs(b[i]) <= DBL_MAX);
    return !bad;
}

/* Fold the team's partial sums of channels [c0, c1) into acc[c], acc[C + c], and recompute in
 * double any rows-path channel whose blocked sums are not finite. */
static void FN(gather_stats)(nmx_index c0, nmx_index c1, double *acc, int team, nmx_index C,
                             const T *x, nmx_index outer, nmx_index inner) {
    FN(fold_parts)(c0, c1, acc, team, C);
    if (inner != 1 || FN(all_finite)(acc + c0, acc + C + c0, c1 - c0)) return;
    for (nmx_index c = c0; c < c1; c++)
        if (!isfinite(acc[c]) || !isfinite(acc[C + c]))
            FN(stats_repair)(x, outer, C, c, acc + c, acc + C + c);
}

static void FN(gather_grad)(nmx_index c0, nmx_index c1, double *acc, int team, nmx_index C,
                            const T *dy, const T *x, const double *mean, nmx_index outer,
                            nmx_index inner) {
    FN(fold_parts)(c0, c1, acc, team, C);
    if (inner != 1 || FN(all_finite)(acc + c0, acc + C + c0, c1 - c0)) return;
    for (nmx_index c = c0; c < c1; c++)
        if (!isfinite(acc[c]) || !isfinite(acc[C + c]))
            FN(grad_repair)(dy, x, outer, C, c, mean[c], acc + c, acc + C + c);
}

/* Finish channels [c0, c1) of the training forward from the team's partial sums (team slices
 * of 2 * C doubles in acc): batch mean and invstd, running statistics, and the constants k of
 * the affine pass (mh, ml, sc, sh; C each). Branch-free loops over restrict pointers so the
 * divisions and square roots vectorize: they cost more than a small batch's arithmetic. The
 * variance of channel c is parked in acc[c], which only this call reads after the sums. */
NMX_CLONES static void FN(train_finish)(nmx_index c0, nmx_index c1, double *restrict acc,
                                        nmx_index n, const T *restrict x, nmx_index C,
                                        nmx_index inner, const T *restrict gamma,
                                        const T *restrict beta, double *restrict mean,
                                        double *restrict invstd, T *restrict rmean,
                                        T *restrict rvar, double momentum, double eps,
                                        T *restrict k) {
    double inv_n = 1.0 / (double)n, keep = 1.0 - momentum;
    double bessel = n > 1 ? (double)n / (double)(n - 1) : 1.0;
    T *restrict mh = k, *restrict ml = k + C, *restrict sc = k + 2 * C, *restrict sh = k + 3 * C;
    for (nmx_index c = c0; c < c1; c++) {
        double s1 = acc[c], s2 = acc[C + c];
        /* Squares that overflow (|x| near 1e300) give s2 = inf: the variance is inf on every
         * clone, not inf - inf = NaN where s1 * dm overflows too and no FMA is used. */
        double dm = s1 * inv_n;
        double var = isinf(s2) && isfinite(s1) ? s2 : (s2 - s1 * dm) * inv_n;
        var = var < 0 ? 0 : var; /* rounding only; NaN stays NaN */
        double m = (double)x[c * inner] + dm, is = 1.0 / sqrt(var + eps);
        acc[c] = var;
        mean[c] = m;
        invstd[c] = is;
        mh[c] = (T)m;
        ml[c] = (T)(m - (double)mh[c]);
        sc[c] = (T)is;
        sh[c] = 0;
    }
    if (rmean)
        for (nmx_index c = c0; c < c1; c++)
            rmean[c] = (T)(keep * (double)rmean[c] + momentum * mean[c]);
    if (rvar)
        for (nmx_index c = c0; c < c1; c++)
            rvar[c] = (T)(keep * (double)rvar[c] + momentum * (acc[c] * bessel));
    if (gamma)
        for (nmx_index c = c0; c < c1; c++) sc[c] = (T)((double)gamma[c] * invstd[c]);
    if (beta)
        for (nmx_index c = c0; c < c1; c++) sh[c] = beta[c];
}

/* ---- cache-resident channel groups ------------------------------------------------------- */
/* Past the cache, the two-pass drivers read every input twice from memory. When one channel's
 * runs (inner > 1: NCHW, the (C, m) layout) fit the per-core cache a few channels at a time, the
 * call runs group by group instead: pass 1 over a group's runs brings them into the cache and
 * pass 2 reads them back from there, so memory sees each input once (a forward moves 2 x bytes
 * instead of 3 x). One thread finishes a group, so the groups go to the threads as they come free
 * (no barrier between the passes), and a channel's sums are those of the one-thread two-pass
 * driver (its runs in batch order) whatever the thread count.
 * Rows of C values (inner == 1) keep the two-pass drivers: a group of channels there is a few
 * cache lines from every row, rows C apart, which the hardware prefetchers do not follow and which
 * a power-of-two C maps onto a few cache sets; measured, packing them was slower than two
 * passes. */

/* Pass 2 of a group: y (dy NULL) or dx of channels [c0, c1), streamed by run_nt. */
static void FN(group_out)(const T *dy, const T *x, T *out, nmx_index outer, nmx_index C,
                          nmx_index inner, nmx_index c0, nmx_index c1, const T *k) {
    for (nmx_index c = c0; c < c1; c++)
        for (nmx_index o = 0; o < outer; o++) FN(run_nt)(dy, x, out, C, inner, o * C + c, k);
    nmx_stream_fence();
}

/* Pass 1 of a group: the sums of channels [c0, c1) run by run through pass_stats (dy NULL) or
 * pass_grad, in the one-thread driver's order, into acc[c] and acc[C + c]. */
static void FN(group_sums)(const T *dy, const T *x, nmx_index outer, nmx_index C,
                           nmx_index inner, nmx_index c0, nmx_index c1, const double *mean,
                           const T *k, double *acc) {
    for (nmx_index c = c0; c < c1; c++) {
        acc[c] = acc[C + c] = 0;
        for (nmx_index u = c; u < outer * C; u += C)
            if (dy)
                FN(pass_grad)(dy, x, C, inner, u, u + 1, mean, k, acc, acc + C);
            else
                FN(pass_stats)(x, C, inner, u, u + 1, acc, acc + C);
    }
}

/* The training forward of channels [c0, c1) start to end; acc and k as in the two-pass driver
 * with a team of one. */
static void FN(train_group)(const T *x, nmx_index outer, nmx_index C, nmx_index inner,
                            nmx_index c0, nmx_index c1, const T *gamma, const T *beta, T *y,
                            double *mean, double *invstd, T *rmean, T *rvar, double momentum,
                            double eps, double *acc, T *k) {
    FN(group_sums)(NULL, x, outer, C, inner, c0, c1, NULL, NULL, acc);
    FN(train_finish)(c0, c1, acc, outer * inner, x, C, inner, gamma, beta, mean, invstd, rmean,
                     rvar, momentum, eps, k);
    FN(group_out)(NULL, x, y, outer, C, inner, c0, c1, k);
}

int FN(nmx_bn_train)(const T *x, nmx_index outer, nmx_index C, nmx_index inner, const T *gamma,
                     const T *beta, T *y, double *mean, double *invstd, T *rmean, T *rvar,
                     double momentum, double eps) {
    nmx_index n = outer * inner, units = inner == 1 ? outer : outer * C;
    if (n == 0 || C == 0) return 0;
    int nt = nmx_threads_for(n * C), stream = nmx_store_mode(sizeof(T) * n * C, NMX_STREAM_BACK);
    NMX_SCRATCH(scratch, C, nt, 4);
    double *acc = scratch.acc;
    T *k = (T *)scratch.k;
    nmx_index g = stream ? nmx_group_width(outer, C, inner, sizeof(T), 1, nt) : 0;
    if (g) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
        for (nmx_index c0 = 0; c0 < C; c0 += g)
            FN(train_group)(x, outer, C, inner, c0, nmx_min(C, c0 + g), gamma, beta, y,
                            mean, invstd, rmean, rvar, momentum, eps, acc, k);
        nmx_scratch_free(&scratch);
        return 0;
    }
    if (nt == 1) { /* no OpenMP runtime calls at all: they dominate a (32, 64) batch */
        memset(acc, 0, sizeof(double) * 2 * (size_t)C);
        FN(pass_stats)(x, C, inner, 0, units, acc, acc + C);
        FN(gather_stats)(0, C, acc, 1, C, x, outer, inner);
        FN(train_finish)(0, C, acc, n, x, C, inner, gamma, beta, mean, invstd, rmean, rvar,
                         momentum, eps, k);
        FN(pass_out)(NULL, x, y, C, inner, 0, units, k, stream);
        nmx_scratch_free(&scratch);
        return 0;
    }
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), team = omp_get_num_threads();
        nmx_index lo = units * t / team, hi = units * (t + 1) / team;
        double *s1 = acc + (nmx_index)t * 2 * C, *s2 = s1 + C;
        memset(s1, 0, sizeof(double) * 2 * (size_t)C);
        FN(pass_stats)(x, C, inner, lo, hi, s1, s2);
#pragma omp barrier
        FN(gather_stats)(C * t / team, C * (t + 1) / team, acc, team, C, x, outer, inner);
        FN(train_finish)(C * t / team, C * (t + 1) / team, acc, n, x, C, inner, gamma,
                         beta, mean, invstd, rmean, rvar, momentum, eps, k);
#pragma omp barrier
        FN(pass_out)(NULL, x, y, C, inner, lo, hi, k, stream);
    }
    nmx_scratch_free(&scratch);
    return 0;
}

int FN(nmx_bn_infer)(const T *x, nmx_index outer, nmx_index C, nmx_index inner, const T *gamma,
                     const T *beta, const T *rmean, const T *rvar, double eps, T *y) {
    nmx_index n = outer * inner, units = inner == 1 ? outer : outer * C;
    if (n == 0 || C == 0) return 0;
    NMX_SCRATCH(scratch, C, 0, 4);
    T *k = (T *)scratch.k;
    for (nmx_index c = 0; c < C; c++) {
        k[c] = rmean[c];
        k[C + c] = 0;
        k[2 * C + c] = (T)((gamma ? (double)gamma[c] : 1.0) / sqrt((double)rvar[c] + eps));
        k[3 * C + c] = beta ? beta[c] : (T)0;
    }
    /* Rows of whole lines, streamed from their own loops, gain from streaming once past half
     * the cache, as the two-pass kernels do (measured: nmx_store_mode_once). The other rows_direct
     * rows do not: streamed past half the cache against plain stores, NHWC float32 rows of 160,
     * 224 and 240 B took 0.93x, 1.07x and 1.23x the time, float64 of 224 B 0.98x (medians). */
    size_t bytes = sizeof(T) * (size_t)(n * C);
    int rows = inner == 1 && !FN(wide_rows)(C) && FN(rows_nt)(y, C);
    int nt = nmx_threads_for(n * C);
    int stream = rows ? nmx_store_mode(bytes, NMX_STREAM) : nmx_store_mode_once(bytes);
    if (nt == 1) {
        FN(pass_out)(NULL, x, y, C, inner, 0, units, k, stream);
    } else {
#pragma omp parallel num_threads(nt)
        {
            int t = omp_get_thread_num(), team = omp_get_num_threads();
            FN(pass_out)(NULL, x, y, C, inner, units * t / team, units * (t + 1) / team, k, stream);
        }
    }
    nmx_scratch_free(&scratch);
    return 0;
}

/* Finish channels [c0, c1) of the backward: dgamma, dbeta and the constants of the dx pass in k
 * (gm = mean of dy, ga, gb after mh and ml; C each), branch-free as in train_finish. */
NMX_CLONES static void FN(grad_finish)(nmx_index c0, nmx_index c1, double *restrict acc,
                                       nmx_index n, nmx_index C,
                                       const double *restrict invstd, const T *restrict gamma,
                                       T *restrict dgamma, T *restrict dbeta, T *restrict k) {
    double inv_n = 1.0 / (double)n;
    T *restrict gm = k + 2 * C, *restrict ga = k + 3 * C, *restrict gb = k + 4 * C;
    for (nmx_index c = c0; c < c1; c++) {
        double sdy = acc[c], sdx = acc[C + c];
        double is = invstd[c], g = gamma ? (double)gamma[c] : 1.0;
        if (dgamma) dgamma[c] = (T)(sdx * is);
        if (dbeta) dbeta[c] = (T)sdy;
        gm[c] = (T)(sdy * inv_n);
        ga[c] = (T)(g * is);
        gb[c] = (T)(-g * is * is * is * sdx * inv_n);
    }
}

/* The backward of channels [c0, c1) start to end, as train_group; k holds the split means. */
static void FN(back_group)(const T *dy, const T *x, nmx_index outer, nmx_index C,
                           nmx_index inner, nmx_index c0, nmx_index c1, const double *mean,
                           const double *invstd, const T *gamma, T *dx, T *dgamma, T *dbeta,
                           double *acc, T *k) {
    FN(group_sums)(dy, x, outer, C, inner, c0, c1, mean, k, acc);
    FN(grad_finish)(c0, c1, acc, outer * inner, C, invstd, gamma, dgamma, dbeta, k);
    FN(group_out)(dy, x, dx, outer, C, inner, c0, c1, k);
}

/* ---- the backward by team groups -------------------------------------------------------- */
/* Past the cache, when a channel's runs of dy and x (inner > 1) are too large for a resident
 * group of one thread, the backward goes group by group with the whole team on each group:
 * thread t takes its share of the batch rows (whole runs), sums its runs of the group (pass 1),
 * waits at a barrier for the others' sums, then writes dx of its runs (pass 2) while it prefetches
 * its runs of the next group. The next group's reads from memory then overlap this one's stream
 * of dx, and its pass 1 finds them in the caches (the last level keeps what L2 cannot). A run's
 * sums are kept apart and every thread adds them up in batch order, as the one-thread driver
 * does (group_sums): the same bits whatever the thread count. Against the two-pass drivers,
 * float32, two threads, separate processes in turn, medians of the rounds' ratios: (64, 64, 56,
 * 56) 0.85x and 0.92x the time (six and eight rounds), (16, 64, 112, 112) 0.88x, float64 (32, 64,
 * 56, 56) 0.83x (six rounds). Smaller inputs keep the two passes (nmx_team_width), and resident
 * groups stay where they fit: team groups there took 1.08x ((16, 128, 56, 56)) and 0.96x ((8,
 * 256, 56, 56)) their time. The rest of the distance to a single pass (about 0.7x) is pass 1's
 * arithmetic: its sums in double, of data already in the cache, wait for no memory, and no
 * memory traffic waits for them. */

/* Pass 1 of a team group: the sums of this thread's runs (rows [o0, o1) of channels [c0, c1)),
 * a pair per run, at part + 2 * ((c - c0) * outer + o). */
static void FN(team_sums)(const T *dy, const T *x, nmx_index outer, nmx_index C, nmx_index inner,
                          nmx_index c0, nmx_index c1, nmx_index o0, nmx_index o1,
                          const double *mean, double *part) {
    for (nmx_index c = c0; c < c1; c++)
        for (nmx_index o = o0; o < o1; o++) {
            nmx_index u = (o * C + c) * inner;
            double *p = part + 2 * ((c - c0) * outer + o);
            p[0] = p[1] = 0;
            FN(grad_run)(dy + u, x + u, inner, mean[c], p, p + 1);
        }
}

/* The sums of channels [c0, c1) from every run's pair, in batch order, into acc[c] and
 * acc[C + c]: group_sums' additions, one by one. */
static void FN(team_fold)(nmx_index outer, nmx_index C, nmx_index c0, nmx_index c1,
                          const double *part, double *acc) {
    for (nmx_index c = c0; c < c1; c++) {
        const double *p = part + 2 * (c - c0) * outer;
        acc[c] = acc[C + c] = 0;
        for (nmx_index o = 0; o < outer; o++) {
            acc[c] += p[2 * o];
            acc[C + c] += p[2 * o + 1];
        }
    }
}

/* Elements of dx a run is written in between two rounds of prefetch (1 KiB of float32). */
#define NMX_TEAM_PIECE (1024 / (nmx_index)sizeof(T))

/* dx of one run (dx_run_nt), piece by piece, each piece after the prefetch of the same elements
 * `ahead` further on in dy and x (0: none). Pieces after the first start on a line of dx. */
static void FN(team_run)(const T *dy, const T *x, T *dx, nmx_index n, nmx_index ahead,
                         const T *k, nmx_index C, nmx_index c) {
    enum { line = 64 / sizeof(T) };
    nmx_index a = 0, b = nmx_line_head(dx, sizeof(T), n);
    if (b == 0) b = nmx_min(n, NMX_TEAM_PIECE);
    while (a < n) {
        if (ahead)
            for (nmx_index i = a; i < b; i += line) {
                __builtin_prefetch(dy + ahead + i, 0, 2);
                __builtin_prefetch(x + ahead + i, 0, 2);
            }
        FN(dx_run_nt)(dy + a, x + a, dx + a, b - a, k[c], k[C + c], k[2 * C + c], k[3 * C + c],
                      k[4 * C + c]);
        a = b;
        b = nmx_min(n, b + NMX_TEAM_PIECE);
    }
}

/* Pass 2 of a team group: dx of this thread's runs of channels [c0, c1), with the prefetch of
 * its runs of channels [c1, c2), the next group (each run paired with the one c1 - c0 channels
 * on). */
static void FN(team_out)(const T *dy, const T *x, T *dx, nmx_index C, nmx_index inner,
                         nmx_index c0, nmx_index c1, nmx_index c2, nmx_index o0, nmx_index o1,
                         const T *k) {
    nmx_index g = c1 - c0;
    for (nmx_index c = c0; c < c1; c++)
        for (nmx_index o = o0; o < o1; o++) {
            nmx_index u = (o * C + c) * inner;
            FN(team_run)(dy + u, x + u, dx + u, inner, c + g < c2 ? g * inner : 0, k, C, c);
        }
    nmx_stream_fence();
}

#undef NMX_TEAM_PIECE

/* The backward by team groups of g channels. Per thread: its sums' copy acc (2 * C) and
 * constants k (5 * C); per group parity, the runs' pairs (2 * g * outer), so that a thread may
 * start the next group's pass 1 while another still adds up this one's. Returns -1, having
 * written nothing, when that scratch cannot be allocated. */
static int FN(back_team)(const T *dy, const T *x, nmx_index outer, nmx_index C, nmx_index inner,
                         nmx_index g, int nt, const double *mean, const double *invstd,
                         const T *gamma, T *dx, T *dgamma, T *dbeta) {
    size_t pairs = 2 * (size_t)g * (size_t)outer, sums = 2 * (size_t)C * (size_t)nt;
    size_t consts = 5 * (size_t)C;
    double *buf = malloc(sizeof(double) * (2 * pairs + sums + consts * (size_t)nt));
    if (!buf) return -1;
    nmx_index n = outer * inner;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int t = omp_get_thread_num(), team = omp_get_num_threads();
        nmx_index o0 = outer * t / team, o1 = outer * (t + 1) / team;
        double *acc = buf + 2 * pairs + 2 * (size_t)C * (size_t)t;
        T *k = (T *)(buf + 2 * pairs + sums + consts * (size_t)t);
        FN(split_means)(mean, C, k);
        for (nmx_index c0 = 0, i = 0; c0 < C; c0 += g, i++) {
            nmx_index c1 = nmx_min(C, c0 + g), c2 = nmx_min(C, c1 + g);
            double *part = buf + (i % 2) * pairs;
            FN(team_sums)(dy, x, outer, C, inner, c0, c1, o0, o1, mean, part);
#pragma omp barrier
            FN(team_fold)(outer, C, c0, c1, part, acc);
            FN(grad_finish)(c0, c1, acc, n, C, invstd, gamma, t == 0 ? dgamma : NULL,
                            t == 0 ? dbeta : NULL, k);
            FN(team_out)(dy, x, dx, C, inner, c0, c1, c2, o0, o1, k);
        }
    }
    free(buf);
    return 0;
}

int FN(nmx_bn_backward)(const T *dy, const T *x, nmx_index outer, nmx_index C, nmx_index inner,
                        const double *mean, const double *invstd, const T *gamma, T *dx,
                        T *dgamma, T *dbeta) {
    nmx_index n = outer * inner, units = inner == 1 ? outer : outer * C;
    if (n == 0 || C == 0) return 0;
    int nt = nmx_threads_for(n * C), stream = nmx_store_mode(sizeof(T) * n * C, NMX_STREAM_BACK);
    nmx_index g = stream ? nmx_group_width(outer, C, inner, sizeof(T), 2, nt) : 0;
    nmx_index tg = stream && !g ? nmx_team_width(outer, C, inner, sizeof(T), nt) : 0;
    if (tg)
        return FN(back_team)(dy, x, outer, C, inner, tg, nt, mean, invstd, gamma, dx, dgamma,
                             dbeta);
    NMX_SCRATCH(scratch, C, nt, 5);
    double *acc = scratch.acc;
    T *k = (T *)scratch.k;
    FN(split_means)(mean, C, k);
    if (g) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
        for (nmx_index c0 = 0; c0 < C; c0 += g)
            FN(back_group)(dy, x, outer, C, inner, c0, nmx_min(C, c0 + g), mean, invstd,
                           gamma, dx, dgamma, dbeta, acc, k);
        nmx_scratch_free(&scratch);
        return 0;
    }
    if (nt == 1) {
        memset(acc, 0, sizeof(double) * 2 * (size_t)C);
        FN(pass_grad)(dy, x, C, inner, 0, units, mean, k, acc, acc + C);
        FN(gather_grad)(0, C, acc, 1, C, dy, x, mean, outer, inner);
        FN(grad_finish)(0, C, acc, n, C, invstd, gamma, dgamma, dbeta, k);
        FN(pass_out)(dy, x, dx, C, inner, 0, units, k, stream);
        nmx_scratch_free(&scratch);
        return 0;
    }
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), team = omp_get_num_threads();
        nmx_index lo = units * t / team, hi = units * (t + 1) / team;
        double *s1 = acc + (nmx_index)t * 2 * C, *s2 = s1 + C;
        memset(s1, 0, sizeof(double) * 2 * (size_t)C);
        FN(pass_grad)(dy, x, C, inner, lo, hi, mean, k, s1, s2);
#pragma omp barrier
        FN(gather_grad)(C * t / team, C * (t + 1) / team, acc, team, C, dy, x, mean, outer, inner);
        FN(grad_finish)(C * t / team, C * (t + 1) / team, acc, n, C, invstd, gamma,
                        dgamma, dbeta, k);
#pragma omp barrier
        FN(pass_out)(dy, x, dx, C, inner, lo, hi, k, stream);
    }
    nmx_scratch_free(&scratch);
    return 0;
}

#undef NMX_RUN_NT
#undef NMX_SHORT_CALL
#undef NMX_SHORT
#undef NMX_STRIP
#undef FN
#undef NMX_CAT
#undef NMX_CAT2
