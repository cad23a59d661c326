/* Half-precision batch norm (float16 and bfloat16 storage, float32 arithmetic), included by
 * batchnorm.c after the float32 instance of batchnorm_impl.h, whose finishing steps it runs
 * unchanged:
 *   - bfloat16: the leaf loops are the float32 ones with the conversions fused into their
 *     loads and stores (batchnorm_half_leaf.h): the same float32 expressions on the exactly
 *     widened input, each result rounded once, and no pass stages float32 copies of its inputs
 *     or outputs (widening is a shift, rounding a few integer instructions per vector);
 *   - float16: each pass converts tiles of at most NMX_HALF_TILE elements with
 *     nmx_half_to_float into stack buffers and runs the float32 leaf loops on them (F16C);
 *   - the output pass computes pieces of at most NMX_HALF_TILE elements, written into the output
 *     or, for outputs larger than the cache, into a small buffer streamed out with non-temporal
 *     stores in the float32 kernel's block order;
 *   - sums and statistics are the float32 kernel's (double accumulation, shifted by a pivot);
 *     gamma, beta, the running statistics, dgamma and dbeta are float32 (PyTorch's mixed rule);
 *   - threads split the work exactly as in the float32 kernel, and the scratch memory is the
 *     same (the per-channel pivots live beside the constants k).
 */

/* The leaf loops on bfloat16 storage. */
#define HSUF bf16
#define HLD(h) nmx_bf16_to_f32(h)
#define HST(f) nmx_f32_to_bf16(f)
#include "batchnorm_half_leaf.h"
#undef HSUF
#undef HLD
#undef HST

/* Output elements per streamed block: the float32 kernel's block (NMX_PIECES_PER_BLOCK pieces
 * of NMX_PIECE elements). */
#define NMX_HALF_BLOCK ((nmx_index)NMX_PIECE * NMX_PIECES_PER_BLOCK)

static inline float nmx_half_value(int kind, uint16_t h) {
    return kind == NMX_BF16 ? nmx_bf16_to_f32(h) : nmx_f16_to_f32(h);
}

static inline nmx_index nmx_min(nmx_index a, nmx_index b) { return a < b ? a : b; }

/* The pivot of each channel (its first value, as in the float32 kernel) in float32. */
static void bn_pivots_h(int kind, const uint16_t *x, nmx_index C, nmx_index inner, float *piv) {
    if (inner == 1) {
        nmx_half_to_float(kind, x, piv, C);
        return;
    }
    for (nmx_index c = 0; c < C; c++) piv[c] = nmx_half_value(kind, x[c * inner]);
}

/* ---- float16: float32 tiles ------------------------------------------------------------
 * float16 runs the float32 leaf loops on tiles of at most NMX_HALF_TILE elements widened by
 * nmx_half_to_float (F16C / AVX-512 where the CPU has them) and rounds the output tiles with
 * nmx_float_to_half. The branch-free float16 conversions of half.h, fused into the leaf loops,
 * ran several times slower than the F16C tiles (the compiler does not turn them into vcvtph2ps),
 * and the float32 loops' two-product expressions (dx) may contract into an FMA differently once
 * the longer widening is fused in, moving the last bit of a dx that cancels. */

/* A tile row of the rows path (inner == 1) holds at most this many channels, so a tile takes
 * four rows or more and stats_rows / grad_rows keep summing blocks of four rows. */
#define NMX_HALF_COLS (NMX_HALF_TILE / 4)
/* Ask for [p, p + n) ahead of its conversion (into the L2 cache, a line per 32 halves). The
 * passes alternate between converting a tile, which reads memory, and float32 arithmetic on it,
 * which reads none: the hardware prefetcher follows demand loads, so without this the memory
 * would sit idle during the arithmetic, and the two would add up instead of overlapping. */
static inline void bn_prefetch_h(const uint16_t *p, nmx_index n) {
    for (nmx_index i = 0; i < n; i += 32) __builtin_prefetch(p + i, 0, 2);
}

/* Rows [r0, r1) x channels [a, a + w) of an (rows, C) half array as a dense float32 tile: one
 * conversion when the slice is whole rows (contiguous), else one per row. */
static void bn_load_rows_h(int kind, const uint16_t *x, nmx_index C, nmx_index r0, nmx_index r1,
                           nmx_index a, nmx_index w, float *t) {
    if (w == C) {
        nmx_half_to_float(kind, x + r0 * C, t, (r1 - r0) * C);
        return;
    }
    for (nmx_index r = r0; r < r1; r++) nmx_half_to_float(kind, x + r * C + a, t + (r - r0) * w, w);
}

/* bn_sums_h through float32 tiles: the float32 leaf loops on tiles converted with
 * nmx_half_to_float. Rows are taken in blocks of a multiple of four, sliced into at most
 * NMX_HALF_COLS channels when C is wider; runs are grouped whole into a tile when they fit,
 * else sliced. */
static void bn_sums_tiles_h(int kind, const uint16_t *dy, const uint16_t *x, nmx_index C,
                            nmx_index inner, nmx_index lo, nmx_index hi, const float *piv,
                            const float *k, const double *mean, double *s1, double *s2) {
    float xt[NMX_HALF_TILE], gt[NMX_HALF_TILE];
    if (inner == 1) {
        nmx_index w = nmx_min(C, NMX_HALF_COLS), rows = (NMX_HALF_TILE / w) & ~(nmx_index)3;
        for (nmx_index r0 = lo; r0 < hi; r0 += rows) {
            nmx_index r1 = nmx_min(hi, r0 + rows);
            nmx_index r2 = nmx_min(hi, r1 + rows); /* the next block, prefetched */
            for (nmx_index a = 0; a < C; a += w) {
                nmx_index wa = nmx_min(w, C - a);
                for (nmx_index r = r1; r < r2; r++) bn_prefetch_h(x + r * C + a, wa);
                bn_load_rows_h(kind, x, C, r0, r1, a, wa, xt);
                if (!dy) {
                    stats_rows_f32(xt, r1 - r0, wa, piv + a, s1 + a, s2 + a);
                    continue;
                }
                for (nmx_index r = r1; r < r2; r++) bn_prefetch_h(dy + r * C + a, wa);
                bn_load_rows_h(kind, dy, C, r0, r1, a, wa, gt);
                grad_rows_f32(gt, xt, r1 - r0, wa, k + a, k + C + a, mean + a, s1 + a, s2 + a);
            }
        }
        return;
    }
    nmx_index w = nmx_min(inner, NMX_HALF_TILE), per = NMX_HALF_TILE / w;
    for (nmx_index u0 = lo; u0 < hi; u0 += per) {
        nmx_index u1 = nmx_min(hi, u0 + per);
        for (nmx_index a = 0; a < inner; a += w) {
            nmx_index len = nmx_min(w, inner - a), cnt = (u1 - u0) * len;
            nmx_index next = u0 * inner + a + cnt, ahead = nmx_min(cnt, hi * inner - next);
            bn_prefetch_h(x + next, ahead);
            nmx_half_to_float(kind, x + u0 * inner + a, xt, cnt);
            if (dy) {
                bn_prefetch_h(dy + next, ahead);
                nmx_half_to_float(kind, dy + u0 * inner + a, gt, cnt);
            }
            for (nmx_index u = u0; u < u1; u++) {
                nmx_index c = u % C, q = (u - u0) * len;
                if (dy)
                    grad_run_f32(gt + q, xt + q, len, mean[c], s1 + c, s2 + c);
                else
                    stats_run_f32(xt + q, len, (double)piv[c], s1 + c, s2 + c);
            }
        }
    }
}

/* bn_piece_h through float32 tiles: x (and dy) widened into buffers by nmx_half_to_float, the
 * float32 leaf loop, the result rounded once by nmx_float_to_half; the `ahead` elements that
 * follow the piece are prefetched, one input before each conversion. */
static void bn_piece_tiles_h(int kind, const uint16_t *dy, const uint16_t *x, uint16_t *o,
                             nmx_index C, nmx_index inner, nmx_index u0, nmx_index u1,
                             nmx_index a, nmx_index w, const float *k, nmx_index ahead) {
    float xt[NMX_HALF_TILE], gt[NMX_HALF_TILE], ot[NMX_HALF_TILE];
    nmx_index off = u0 * (inner == 1 ? C : inner) + a, cnt = (u1 - u0) * w;
    bn_prefetch_h(x + off + cnt, ahead);
    nmx_half_to_float(kind, x + off, xt, cnt);
    if (dy) {
        bn_prefetch_h(dy + off + cnt, ahead);
        nmx_half_to_float(kind, dy + off, gt, cnt);
    }
    if (inner == 1) {
        if (dy)
            dx_rows_f32(gt, xt, w, ot, w, u1 - u0, w, k + a, C);
        else
            affine_rows_f32(xt, w, ot, w, u1 - u0, w, k + a, k + C + a, k + 2 * C + a,
                            k + 3 * C + a);
    } else {
        for (nmx_index u = u0; u < u1; u++) {
            nmx_index c = u % C, q = (u - u0) * w;
            if (dy)
                dx_run_f32(gt + q, xt + q, ot + q, w, k[c], k[C + c], k[2 * C + c], k[3 * C + c],
                           k[4 * C + c]);
            else
                affine_run_f32(xt + q, ot + q, w, k[c], k[C + c], k[2 * C + c], k[3 * C + c]);
        }
    }
    nmx_float_to_half(kind, ot, o, cnt);
}

/* ---- bfloat16 fused, and the shared drivers -------------------------------------------- */

/* Pass 1 over units [lo, hi) (rows when inner == 1, else runs): the sums of the statistics
 * (dy NULL: x - pivot) or of the gradient (dy * (x - mean)). Rows are summed in blocks of four
 * from lo, as the float32 kernel does; runs longer than NMX_HALF_TILE are summed in slices of
 * that length, each slice's lanes added to the channel's sums in turn (the order the tiled
 * conversion of earlier versions gave, kept so every result stays the same bits). */
static void bn_sums_h(int kind, const uint16_t *dy, const uint16_t *x, nmx_index C,
                      nmx_index inner, nmx_index lo, nmx_index hi, const float *piv,
                      const float *k, const double *mean, double *s1, double *s2) {
    if (kind == NMX_F16) {
        bn_sums_tiles_h(kind, dy, x, C, inner, lo, hi, piv, k, mean, s1, s2);
        return;
    }
    if (inner == 1) {
        if (dy)
            grad_rows_bf16(dy + lo * C, x + lo * C, C, hi - lo, C, k, k + C, mean, s1, s2);
        else
            stats_rows_bf16(x + lo * C, C, hi - lo, C, piv, s1, s2);
        return;
    }
    nmx_index w = nmx_min(inner, NMX_HALF_TILE);
    for (nmx_index u = lo; u < hi; u++) {
        nmx_index c = u % C;
        for (nmx_index a = 0; a < inner; a += w) {
            nmx_index len = nmx_min(w, inner - a), o = u * inner + a;
            if (dy)
                grad_run_bf16(dy + o, x + o, len, mean[c], s1 + c, s2 + c);
            else
                stats_run_bf16(x + o, len, (double)piv[c], s1 + c, s2 + c);
        }
    }
}

/* Fold the team's sums of channels [c0, c1) and redo in double, element by element, any
 * rows-path channel whose blocked float32 sums overflowed (bfloat16 reaches 3e38) or met Inf or
 * NaN, as gather_stats / gather_grad do for float32. */
static void bn_gather_h(int kind, nmx_index c0, nmx_index c1, double *acc, int team, nmx_index C,
                        const uint16_t *dy, const uint16_t *x, const double *mean,
                        nmx_index outer, nmx_index inner) {
    fold_parts_f32(c0, c1, acc, team, C);
    if (inner != 1) return;
    for (nmx_index c = c0; c < c1; c++) {
        if (isfinite(acc[c]) && isfinite(acc[C + c])) continue;
        double p = dy ? mean[c] : (double)nmx_half_value(kind, x[c]), a = 0, b = 0;
        for (nmx_index r = 0; r < outer; r++) {
            double d = (double)nmx_half_value(kind, x[r * C + c]) - p;
            double g = dy ? (double)nmx_half_value(kind, dy[r * C + c]) : d;
            a += g;
            b += g * d;
        }
        acc[c] = a;
        acc[C + c] = b;
    }
}

/* y (dy NULL) or dx of units [u0, u1), elements [a, a + w) of each (a contiguous piece of the
 * output: whole units, or a slice of one), computed in float32 and rounded once into o; for
 * float16, `ahead` elements after the piece are prefetched (bn_piece_tiles_h). */
static void bn_piece_h(int kind, const uint16_t *dy, const uint16_t *x, uint16_t *o, nmx_index C,
                       nmx_index inner, nmx_index u0, nmx_index u1, nmx_index a, nmx_index w,
                       const float *k, nmx_index ahead) {
    if (kind == NMX_F16) {
        bn_piece_tiles_h(kind, dy, x, o, C, inner, u0, u1, a, w, k, ahead);
        return;
    }
    if (inner == 1) {
        nmx_index off = u0 * C + a;
        if (dy)
            dx_rows_bf16(dy + off, x + off, C, o, w, u1 - u0, w, k + a, C);
        else
            affine_rows_bf16(x + off, C, o, w, u1 - u0, w, k + a, k + C + a,
                                    k + 2 * C + a, k + 3 * C + a);
        return;
    }
    for (nmx_index u = u0; u < u1; u++) {
        nmx_index c = u % C, off = u * inner + a;
        uint16_t *ou = o + (u - u0) * w;
        if (dy)
            dx_run_bf16(dy + off, x + off, ou, w, k[c], k[C + c], k[2 * C + c],
                               k[3 * C + c], k[4 * C + c]);
        else
            affine_run_bf16(x + off, ou, w, k[c], k[C + c], k[2 * C + c], k[3 * C + c]);
    }
}

/* Pass 2 over units [lo, hi), piece by piece: whole units grouped up to a tile, or tile-sized
 * slices of long units. Streamed like pass_out: blocks from the last to the first, pieces
 * ascending within a block, each piece rounded into a buffer and written non-temporally. */
static void bn_out_h(int kind, const uint16_t *dy, const uint16_t *x, uint16_t *out, nmx_index C,
                     nmx_index inner, nmx_index lo, nmx_index hi, const float *k, int stream) {
    nmx_index len = inner == 1 ? C : inner, w = nmx_min(len, NMX_HALF_TILE);
    nmx_index per = NMX_HALF_TILE / w, block = hi - lo, groups = NMX_HALF_BLOCK / (per * len);
    if (stream) block = per * (groups > 0 ? groups : 1);
    uint16_t ht[NMX_HALF_TILE];
    for (nmx_index end = hi; end > lo;) {
        nmx_index start = end - lo > block ? end - block : lo;
        for (nmx_index u0 = start; u0 < end; u0 += per) {
            nmx_index u1 = nmx_min(end, u0 + per);
            for (nmx_index a = 0; a < len; a += w) {
                nmx_index wa = nmx_min(w, len - a), off = u0 * len + a, cnt = (u1 - u0) * wa;
                nmx_index ahead = nmx_min(cnt, end * len - (off + cnt));
                bn_piece_h(kind, dy, x, stream ? ht : out + off, C, inner, u0, u1, a, wa, k,
                           ahead);
                if (stream) nmx_stream(out + off, ht, sizeof(uint16_t) * (size_t)cnt);
            }
        }
        end = start;
    }
    if (stream) nmx_stream_fence();
}

int nmx_bn_train_h(int kind, const uint16_t *x, nmx_index outer, nmx_index C, nmx_index inner,
                   const float *gamma, const float *beta, uint16_t *y, double *mean,
                   double *invstd, float *rmean, float *rvar, double momentum, double eps) {
    nmx_index n = outer * inner, units = inner == 1 ? outer : outer * C;
    if (n == 0 || C == 0) return 0;
    int nt = nmx_threads_for(n * C), stream = nmx_should_stream(sizeof(uint16_t) * n * C);
    NMX_SCRATCH(scratch, C, nt, 3); /* 4 * C floats of k, then C pivots: 2.5 doubles each */
    double *acc = scratch.acc;
    float *k = (float *)scratch.k, *piv = k + 4 * C;
    bn_pivots_h(kind, x, C, inner, piv);
    /* train_finish reads the pivot of channel c as x[c * inner]: the pivots with inner 1 */
    if (nt == 1) {
        memset(acc, 0, sizeof(double) * 2 * (size_t)C);
        bn_sums_h(kind, NULL, x, C, inner, 0, units, piv, NULL, NULL, acc, acc + C);
        bn_gather_h(kind, 0, C, acc, 1, C, NULL, x, NULL, outer, inner);
        train_finish_f32(0, C, acc, n, piv, C, 1, gamma, beta, mean, invstd, rmean, rvar,
                         momentum, eps, k);
        bn_out_h(kind, NULL, x, y, C, inner, 0, units, k, stream);
        nmx_scratch_free(&scratch);
        return 0;
    }
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), team = omp_get_num_threads();
        nmx_index lo = units * t / team, hi = units * (t + 1) / team;
        nmx_index c0 = C * t / team, c1 = C * (t + 1) / team;
        double *s1 = acc + (nmx_index)t * 2 * C, *s2 = s1 + C;
        memset(s1, 0, sizeof(double) * 2 * (size_t)C);
        bn_sums_h(kind, NULL, x, C, inner, lo, hi, piv, NULL, NULL, s1, s2);
#pragma omp barrier
        bn_gather_h(kind, c0, c1, acc, team, C, NULL, x, NULL, outer, inner);
        train_finish_f32(c0, c1, acc, n, piv, C, 1, gamma, beta, mean, invstd, rmean, rvar,
                         momentum, eps, k);
#pragma omp barrier
        bn_out_h(kind, NULL, x, y, C, inner, lo, hi, k, stream);
    }
    nmx_scratch_free(&scratch);
    return 0;
}

int nmx_bn_infer_h(int kind, const uint16_t *x, nmx_index outer, nmx_index C, nmx_index inner,
                   const float *gamma, const float *beta, const float *rmean, const float *rvar,
                   double eps, uint16_t *y) {
    nmx_index n = outer * inner, units = inner == 1 ? outer : outer * C;
    if (n == 0 || C == 0) return 0;
    NMX_SCRATCH(scratch, C, 0, 2); /* 4 * C floats of k */
    float *k = (float *)scratch.k;
    for (nmx_index c = 0; c < C; c++) {
        k[c] = rmean[c];
        k[C + c] = 0;
        k[2 * C + c] = (float)((gamma ? (double)gamma[c] : 1.0) / sqrt((double)rvar[c] + eps));
        k[3 * C + c] = beta ? beta[c] : 0.0f;
    }
    int nt = nmx_threads_for(n * C), stream = nmx_should_stream(sizeof(uint16_t) * n * C);
    if (nt == 1) {
        bn_out_h(kind, NULL, x, y, C, inner, 0, units, k, stream);
    } else {
#pragma omp parallel num_threads(nt)
        {
            int t = omp_get_thread_num(), team = omp_get_num_threads();
            bn_out_h(kind, NULL, x, y, C, inner, units * t / team, units * (t + 1) / team, k,
                     stream);
        }
    }
    nmx_scratch_free(&scratch);
    return 0;
}

int nmx_bn_backward_h(int kind, const uint16_t *dy, const uint16_t *x, nmx_index outer,
                      nmx_index C, nmx_index inner, const double *mean, const double *invstd,
                      const float *gamma, uint16_t *dx, float *dgamma, float *dbeta) {
    nmx_index n = outer * inner, units = inner == 1 ? outer : outer * C;
    if (n == 0 || C == 0) return 0;
    int nt = nmx_threads_for(n * C), stream = nmx_should_stream(sizeof(uint16_t) * n * C);
    NMX_SCRATCH(scratch, C, nt, 3); /* 5 * C floats of k */
    double *acc = scratch.acc;
    float *k = (float *)scratch.k;
    for (nmx_index c = 0; c < C; c++) split_mean_f32(mean[c], k + c, k + C + c);
    if (nt == 1) {
        memset(acc, 0, sizeof(double) * 2 * (size_t)C);
        bn_sums_h(kind, dy, x, C, inner, 0, units, NULL, k, mean, acc, acc + C);
        bn_gather_h(kind, 0, C, acc, 1, C, dy, x, mean, outer, inner);
        grad_finish_f32(0, C, acc, n, C, invstd, gamma, dgamma, dbeta, k);
        bn_out_h(kind, dy, x, dx, C, inner, 0, units, k, stream);
        nmx_scratch_free(&scratch);
        return 0;
    }
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), team = omp_get_num_threads();
        nmx_index lo = units * t / team, hi = units * (t + 1) / team;
        nmx_index c0 = C * t / team, c1 = C * (t + 1) / team;
        double *s1 = acc + (nmx_index)t * 2 * C, *s2 = s1 + C;
        memset(s1, 0, sizeof(double) * 2 * (size_t)C);
        bn_sums_h(kind, dy, x, C, inner, lo, hi, NULL, k, mean, s1, s2);
#pragma omp barrier
        bn_gather_h(kind, c0, c1, acc, team, C, dy, x, mean, outer, inner);
        grad_finish_f32(c0, c1, acc, n, C, invstd, gamma, dgamma, dbeta, k);
#pragma omp barrier
        bn_out_h(kind, dy, x, dx, C, inner, lo, hi, k, stream);
    }
    nmx_scratch_free(&scratch);
    return 0;
}
