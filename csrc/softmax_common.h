/* What the softmax translation units share (softmax.c: float32 and float64; softmax_half.c:
 * float16 and bfloat16 on the float32 arithmetic): the exponentials, the 64-byte vector types
 * and their helpers, the block and chunk rules. Internal: included by those two files only.
 * The half kernels are a file of their own so that the build compiles them beside the float
 * kernels, on another core: together they were one compiler process of three minutes. */
#ifndef NMX_SOFTMAX_COMMON_H
#define NMX_SOFTMAX_COMMON_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "platform.h"
#include "softmax.h"

/* The vector helpers below are always inlined, so the vector-argument ABI note is moot. */
#pragma GCC diagnostic ignored "-Wpsabi"

/* exp for float32. x is clamped to [-104, 89]: below, the result rounds to 0 even as a
 * subnormal; above, it is +inf. 2^k is applied in two halves so subnormal results are right.
 * NaN passes the clamps (comparisons are false) and poisons r, so the result is NaN; the integer
 * bit games never convert a NaN to int (no UB): k comes from the 1.5 * 2^23 rounding trick. */
static inline float nmx_exp_f32(float x) {
    x = x < -104.0f ? -104.0f : x;
    x = x > 89.0f ? 89.0f : x;
    float kf = x * 1.44269504088896341f + 0x1.8p23f;
    float k = kf - 0x1.8p23f;
    uint32_t bits;
    memcpy(&bits, &kf, sizeof bits);
    int32_t ki = (int32_t)(bits - 0x4B400000u);
    float r = x - k * 0.693145751953125f; /* ln2 high part: k * hi is exact */
    r = r - k * 1.428606765330187045e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t k1 = ki >> 1, k2 = ki - k1;
    uint32_t b1 = (uint32_t)(k1 + 127) << 23, b2 = (uint32_t)(k2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    return p * s1 * s2;
}

/* exp for float64, same scheme: x clamped to [-746, 710], 1.5 * 2^52 rounding trick. */
static inline double nmx_exp_f64(double x) {
    x = x < -746.0 ? -746.0 : x;
    x = x > 710.0 ? 710.0 : x;
    double kf = x * 1.4426950408889634074 + 0x1.8p52;
    double k = kf - 0x1.8p52;
    uint64_t bits;
    memcpy(&bits, &kf, sizeof bits);
    int64_t ki = (int64_t)(bits - 0x4338000000000000ull);
    double r = x - k * 6.93147180369123816490e-01; /* ln2 high part (32 bits): k * hi exact */
    r = r - k * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    int64_t k1 = ki >> 1, k2 = ki - k1;
    uint64_t b1 = (uint64_t)(k1 + 1023) << 52, b2 = (uint64_t)(k2 + 1023) << 52;
    double s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    return p * s1 * s2;
}

/* Explicit 64-byte vectors (GCC/Clang vector extensions) for the row loops: the compiler lowers
 * them to one AVX-512, two AVX2 or four SSE2 registers in each target clone. Loads and stores go
 * through memcpy (unaligned moves). */
typedef float nmx_vf32 __attribute__((vector_size(64)));
typedef int32_t nmx_vi32 __attribute__((vector_size(64)));
typedef uint32_t nmx_vu32 __attribute__((vector_size(64)));
typedef float nmx_vf32h __attribute__((vector_size(32)));
typedef int32_t nmx_vi32h __attribute__((vector_size(32)));
typedef double nmx_vf64h __attribute__((vector_size(32)));
typedef int64_t nmx_vi64h __attribute__((vector_size(32)));
typedef uint32_t nmx_vu32h __attribute__((vector_size(32)));
typedef double nmx_vf64 __attribute__((vector_size(64)));
typedef int64_t nmx_vi64 __attribute__((vector_size(64)));
typedef uint64_t nmx_vu64 __attribute__((vector_size(64)));

#define NMX_VSEL(vt, it, mask, a, b) ((vt)(((mask) & (it)(a)) | (~(mask) & (it)(b))))

/* a > b lane by lane (-1 where true, else 0), compared in pieces of the width every clone of the
 * target compares natively: 32 bytes on x86-64 (AVX2 and AVX-512 clones; the SSE2 baseline
 * splits them further itself), 16 bytes elsewhere (NEON). GCC 12 lowers a comparison of 64-byte
 * vectors that the target cannot compare whole to a scalar compare, set and spill per lane (16
 * per float32 vector in the AVX2 clone, which made the row maxima slower than the exponentials),
 * whereas pieces stay vector code. The same IEEE comparison lane for lane: NaN compares false. */
#if defined(__x86_64__) || defined(__i386__)
#define NMX_PIECE 32
#else
#define NMX_PIECE 16
#endif
#define NMX_DEFINE_VGT(name, vt, it, t, ti)                                                       \
    static inline __attribute__((always_inline)) void name(it *r, const vt *a, const vt *b) {    \
        typedef t pt __attribute__((vector_size(NMX_PIECE)));                                    \
        typedef ti pi __attribute__((vector_size(NMX_PIECE)));                                   \
        for (int q = 0; q < (int)(sizeof(vt) / NMX_PIECE); q++) {                                \
            pt x, y;                                                                             \
            memcpy(&x, (const char *)a + q * NMX_PIECE, NMX_PIECE);                              \
            memcpy(&y, (const char *)b + q * NMX_PIECE, NMX_PIECE);                              \
            pi g = x > y;                                                                        \
            memcpy((char *)r + q * NMX_PIECE, &g, NMX_PIECE);                                    \
        }                                                                                        \
    }
NMX_DEFINE_VGT(nmx_vgt_f32, nmx_vf32, nmx_vi32, float, int32_t)
NMX_DEFINE_VGT(nmx_vgt_f64, nmx_vf64, nmx_vi64, double, int64_t)
#undef NMX_DEFINE_VGT
/* `v > m ? v : m` lane by lane (v and m lvalues): m is kept where v is not greater, or is NaN.
 * Vectors go by address, in and out: clang refuses 64-byte vector arguments and results in an
 * AVX2 function. */
#define NMX_VMAX(vt, it, v, m)                                                                 \
    ({                                                                                         \
        it gt_;                                                                                \
        _Generic((v), nmx_vf32: nmx_vgt_f32, nmx_vf64: nmx_vgt_f64)(&gt_, &(v), &(m));         \
        NMX_VSEL(vt, it, gt_, v, m);                                                           \
    })

/* Whether the row loops (inner == 1) go by 32-byte halves (row_max_halves, exp_steph): where
 * the CPU has AVX2 and the code was built for it. GCC 12 keeps a 64-byte vector carried from one
 * loop iteration to the next in memory when the target cannot hold it in one register, moving it
 * through general registers 8 bytes at a time, and replaces its comparisons: in the AVX2 clone
 * the four running maxima of a row, carried whole, took about a third of a 512 x 32000 float32
 * softmax, and the integer masks that stand in for exp_step's comparisons five or six
 * instructions each. Halves stay in registers and compare natively in the AVX2 and AVX-512
 * clones: softmax of 512 x 32000 rows took 0.78x the time in float32, 0.84x in float64 and 0.68x
 * in bfloat16. But GCC lowers halves through memory where the registers hold 16 bytes: its SSE2
 * code took 1.9x the time by halves. GCC's SSE2 clone runs only where the CPU lacks AVX2, and a
 * GCC build without clones (sanitizers) keeps whole vectors; Clang compiles halves well in its
 * SSE2 code too (0.85x the time), which its resolver can pick on any CPU. Both ways give the
 * same bits. */
#if defined(__x86_64__) &&                                                                      \
    (defined(__clang__) || (defined(__GNUC__) && (NMX_HAVE_CLONES || defined(__AVX2__))))
static inline int nmx_rows_halves(void) {
    return __builtin_cpu_supports("avx2");
}
#else
static inline int nmx_rows_halves(void) {
    return 0;
}
#endif

/* m = v > m ? v : m (NMX_VMAX) on a running maximum held as two 32-byte halves m[0], m[1] (of
 * type vh), for the halves lo and hi of v. */
#define NMX_HMAX(vh, lo, hi, m)                                                                \
    do {                                                                                       \
        vh lo_ = (lo), hi_ = (hi);                                                             \
        (m)[0] = NMX_VSEL(vh, __typeof__(lo_ > lo_), lo_ > (m)[0], lo_, (m)[0]);                \
        (m)[1] = NMX_VSEL(vh, __typeof__(hi_ > hi_), hi_ > (m)[1], hi_, (m)[1]);                \
    } while (0)

/* The low and high 32-byte halves of a 64-byte float32 / float64 vector in a register. */
#define NMX_LO16(v) __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7)
#define NMX_HI16(v) __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15)
#define NMX_LO8(v) __builtin_shufflevector(v, v, 0, 1, 2, 3)
#define NMX_HI8(v) __builtin_shufflevector(v, v, 4, 5, 6, 7)

/* Lane masks (-1 where true, else 0) of the exponential loops, computed with integer arithmetic
 * on the bits instead of a float comparison. GCC 12 lowers a comparison of 64-byte vectors that
 * the target cannot compare whole (the AVX2 and SSE2 clones) to one scalar compare and set per
 * lane, 16 of them per float32 vector, whereas it splits integer arithmetic into the target's
 * 32- or 16-byte registers. Each mask equals the IEEE comparison it replaces on every input,
 * NaN and infinities included, so the results do not change. Arithmetic on unsigned lanes
 * (no overflow); the final arithmetic shift copies the sign bit into the lane. */

/* x == 0 (either sign): the bits without the sign are 0, i.e. u = 2 * bits is 0, the only
 * value for which u | -u has a clear top bit. */
static inline __attribute__((always_inline)) nmx_vi32 nmx_vzero_f32(const nmx_vf32 *x) {
    nmx_vu32 u = (nmx_vu32)*x << 1;
    return ~((nmx_vi32)(u | (0u - u)) >> 31);
}

static inline __attribute__((always_inline)) nmx_vi64 nmx_vzero_f64(const nmx_vf64 *x) {
    nmx_vu64 u = (nmx_vu64)*x << 1;
    return ~((nmx_vi64)(u | (0u - u)) >> 63);
}

/* x < -c for a constant c > 0: x is negative (sign bit), its magnitude bits a exceed c's bits cb
 * (cb - a < 0) and it is not NaN (a - (inf + 1) < 0). */
static inline __attribute__((always_inline)) nmx_vi32 nmx_vbelow_f32(const nmx_vf32 *x, float c) {
    uint32_t cb;
    memcpy(&cb, &c, sizeof cb);
    nmx_vu32 b = (nmx_vu32)*x, a = b & 0x7fffffffu;
    return (nmx_vi32)(b & (cb - a) & (a - 0x7f800001u)) >> 31;
}

static inline __attribute__((always_inline)) nmx_vi64 nmx_vbelow_f64(const nmx_vf64 *x, double c) {
    uint64_t cb;
    memcpy(&cb, &c, sizeof cb);
    nmx_vu64 b = (nmx_vu64)*x, a = b & 0x7fffffffffffffffull;
    return (nmx_vi64)(b & (cb - a) & (a - 0x7ff0000000000001ull)) >> 63;
}

/* The reduction and polynomial of exp on 16 lanes, as in the scalar versions: x = k ln 2 + r
 * (ln 2 in two parts), e^r by its degree-7 Taylor polynomial; kf holds k + 1.5 * 2^23, so k sits
 * in its low bits. Each caller scales by 2^k its own way. */
static inline __attribute__((always_inline)) nmx_vf32 nmx_vexp_poly(nmx_vf32 x, nmx_vf32 *kfp) {
    const nmx_vf32 zero = {0};
    nmx_vf32 kf = x * 1.44269504088896341f + 0x1.8p23f;
    nmx_vf32 k = kf - 0x1.8p23f;
    nmx_vf32 r = x - k * 0.693145751953125f;
    r = r - k * 1.428606765330187045e-06f;
    nmx_vf32 p = zero + 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    *kfp = kf;
    return p * r + 1.0f;
}

/* a > c and a >= c on unsigned 32-bit lanes for lanes and constant both below 2^31 (magnitude
 * bits, the half-precision conversions): the sign of c - a or a - c, as above. */
#define NMX_VABOVE_U32(a, c) ((nmx_vi32)((c) - (a)) >> 31)
#define NMX_VATLEAST_U32(a, c) (~((nmx_vi32)((a) - (c)) >> 31))

/* Vector exp for the max-shifted row loops, where x = z - max is <= 0 or NaN. Same reduction and
 * polynomial as the scalar versions; results below the smallest normal number (x < -87.3 in
 * float32, -708.3 in float64) are flushed to 0 by one final select instead of clamping and
 * scaling twice, which saves a quarter of the instructions. Such terms are below 1e-38 of the
 * maximum's exp(0) = 1. Out-of-range x only produce garbage lanes that the select discards (the
 * integer arithmetic is unsigned, so it wraps without UB); NaN is not below the threshold (as it
 * fails the comparison x < -87.33f) and stays NaN. */
#define NMX_EXP_CUT_f32 87.33f
#define NMX_EXP_CUT_f64 708.39

/* nmx_vexp_f32 / _f64 before their select: p * 2^k in every lane, garbage below the cut
 * (exp_steph selects on halves itself). */
static inline __attribute__((always_inline)) nmx_vf32 nmx_vexp_raw_f32(const nmx_vf32 *xp) {
    nmx_vf32 kf, p = nmx_vexp_poly(*xp, &kf);
    /* kf's low bits hold k + 2^22 + 2^23; 127 - (2^22 + 2^23) re-biases it to the exponent. */
    nmx_vf32 scale = (nmx_vf32)(((nmx_vu32)kf + (127u - 0x4B400000u)) << 23);
    return p * scale;
}

static inline __attribute__((always_inline)) nmx_vf32 nmx_vexp_f32(const nmx_vf32 *xp) {
    const nmx_vf32 zero = {0};
    nmx_vf32 e = nmx_vexp_raw_f32(xp);
    return NMX_VSEL(nmx_vf32, nmx_vi32, nmx_vbelow_f32(xp, NMX_EXP_CUT_f32), zero, e);
}

static inline __attribute__((always_inline)) nmx_vf64 nmx_vexp_raw_f64(const nmx_vf64 *xp) {
    const nmx_vf64 zero = {0}, x = *xp;
    nmx_vf64 kf = x * 1.4426950408889634074 + 0x1.8p52;
    nmx_vf64 k = kf - 0x1.8p52;
    nmx_vf64 r = x - k * 6.93147180369123816490e-01;
    r = r - k * 1.90821492927058770002e-10;
    nmx_vf64 p = zero + 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    nmx_vf64 scale = (nmx_vf64)(((nmx_vu64)kf + (1023ull - 0x4338000000000000ull)) << 52);
    return p * scale;
}

static inline __attribute__((always_inline)) nmx_vf64 nmx_vexp_f64(const nmx_vf64 *xp) {
    const nmx_vf64 zero = {0};
    nmx_vf64 e = nmx_vexp_raw_f64(xp);
    return NMX_VSEL(nmx_vf64, nmx_vi64, nmx_vbelow_f64(xp, NMX_EXP_CUT_f64), zero, e);
}

/* Add a vector of exponentials to float64 accumulators (float32: two halves widened). */
static inline __attribute__((always_inline)) void nmx_vacc_f32(nmx_vf64 *acc, const nmx_vf32 *e) {
    nmx_vf32h lo, hi;
    memcpy(&lo, e, sizeof lo);
    memcpy(&hi, (const char *)e + sizeof lo, sizeof hi);
    acc[0] += __builtin_convertvector(lo, nmx_vf64);
    acc[1] += __builtin_convertvector(hi, nmx_vf64);
}

static inline __attribute__((always_inline)) void nmx_vacc_f64(nmx_vf64 *acc, const nmx_vf64 *e) {
    acc[0] += *e;
}

/* In-place transpose of a 16 x 16 float32 matrix held as 16 vectors, for the few-class row
 * groups: four butterfly stages, stage b swapping element (i, j) with (i ^ b, j ^ b) where bit b
 * of i and j differ; 64 two-vector shuffles instead of 256 scalar moves. Compilers without
 * __builtin_shufflevector (GCC < 12) keep the scalar transposes (NMX_HAVE_TR16 unset). */
#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define NMX_HAVE_TR16 1
#endif
#endif
#ifdef NMX_HAVE_TR16
#define NMX_TR_LO(b, j) (((j) & (b)) ? 16 + (j) - (b) : (j))
#define NMX_TR_HI(b, j) (((j) & (b)) ? 16 + (j) : (j) + (b))
#define NMX_TR_IDX(F, b)                                                                       \
    F(b, 0), F(b, 1), F(b, 2), F(b, 3), F(b, 4), F(b, 5), F(b, 6), F(b, 7), F(b, 8), F(b, 9),  \
        F(b, 10), F(b, 11), F(b, 12), F(b, 13), F(b, 14), F(b, 15)
#define NMX_TR_STAGE(v, b)                                                                     \
    for (int i = 0; i < 16; i++)                                                               \
        if (!(i & (b))) {                                                                      \
            nmx_vf32 lo = v[i], hi = v[i ^ (b)];                                               \
            v[i] = __builtin_shufflevector(lo, hi, NMX_TR_IDX(NMX_TR_LO, b));                  \
            v[i ^ (b)] = __builtin_shufflevector(lo, hi, NMX_TR_IDX(NMX_TR_HI, b));            \
        }
static inline __attribute__((always_inline)) void nmx_transpose16_f32(nmx_vf32 *v) {
    NMX_TR_STAGE(v, 8)
    NMX_TR_STAGE(v, 4)
    NMX_TR_STAGE(v, 2)
    NMX_TR_STAGE(v, 1)
}
#endif

/* log1p(s) for the s >= 0 of a softmax row: glibc's log1p is several times slower than its log,
 * and small batches compute one per row. With u = 1 + s rounded, log(u) * s / (u - 1) corrects
 * the rounding of u (Goldberg), within a few ulp; u == 1 means s is below half an ulp of 1 and
 * log1p(s) = s to double precision (a class that dominates by 100 keeps its exp(-100)). */
static inline double nmx_log1p(double s) {
    double u = 1.0 + s;
    return u == 1.0 ? s : log(u) * (s / (u - 1.0));
}
#define NMX_LOG1P nmx_log1p

static inline int64_t nmx_label_at(const void *labels, int bytes, nmx_index i) {
    return bytes == 4 ? (int64_t)((const int32_t *)labels)[i] : ((const int64_t *)labels)[i];
}

/* Block of columns processed together when inner > 1: its packed copy (classes * B elements)
 * should stay in L2 (1 MiB on the machines we measure) between the passes over the class axis. */
#define NMX_BLOCK_MAX 256
#ifndef NMX_BLOCK_BYTES
#define NMX_BLOCK_BYTES ((nmx_index)512 * 1024)
#endif
#define NMX_SMALL_C 16 /* rows with at most this many classes are processed in groups */
#ifndef NMX_PREFETCH
#define NMX_PREFETCH 8 /* classes ahead */
#endif

static inline nmx_index nmx_block_cols(nmx_index classes, nmx_index inner, nmx_index elem) {
    nmx_index b = NMX_BLOCK_BYTES / (classes * elem);
    b = b & ~(nmx_index)15;
    if (b < 16) b = 16;
    if (b > NMX_BLOCK_MAX) b = NMX_BLOCK_MAX;
    return b < inner ? b : inner;
}

/* The tasks of a call (rows, column blocks or half tiles) are dealt out to the threads in chunks
 * of neighbouring tasks. The chunks depend on the call's size only, never on the thread count:
 * each chunk sums its examples' losses in task order into a slot of its own and the slots are
 * added in chunk order, so the reduced loss has the same bits whatever the number of threads and
 * whichever thread finishes first. At most NMX_RUN_CHUNKS chunks (8 per thread on 8 threads, for
 * dynamic scheduling on a shared machine), each at least NMX_RUN_CHUNK_WORK elements so that
 * handing one out (well under a microsecond) stays far below its work. */
#define NMX_RUN_CHUNKS 64
#ifndef NMX_RUN_CHUNK_WORK
#define NMX_RUN_CHUNK_WORK ((nmx_index)1 << 14)
#endif

/* Tasks per chunk for ntasks tasks of `work` elements in all (ntasks >= 1), a multiple of
 * `align`: ceil(ntasks / chunk) <= NMX_RUN_CHUNKS. */
static inline nmx_index nmx_run_chunk(nmx_index ntasks, nmx_index work, nmx_index align) {
    nmx_index per_task = work / ntasks > 0 ? work / ntasks : 1;
    nmx_index chunk = (ntasks + NMX_RUN_CHUNKS - 1) / NMX_RUN_CHUNKS;
    nmx_index least = (NMX_RUN_CHUNK_WORK + per_task - 1) / per_task;
    if (chunk < least) chunk = least;
    return (chunk + align - 1) / align * align;
}

/* The end of chunk k. */
static inline nmx_index nmx_chunk_end(nmx_index k, nmx_index chunk, nmx_index ntasks) {
    return (k + 1) * chunk < ntasks ? (k + 1) * chunk : ntasks;
}

/* The chunks' partial sums, added in chunk order. */
static inline double nmx_sum_parts(const double *part, nmx_index nchunks) {
    double total = 0.0;
    for (nmx_index k = 0; k < nchunks; k++) total += part[k];
    return total;
}

/* Streamed blocks are as wide as the kernels allow: long contiguous runs per class row. A
 * multiple of 16 (as nmx_block_cols' blocks), so the scalar columns are the same ones. */
static inline nmx_index nmx_stream_cols(nmx_index inner) {
    return inner < NMX_BLOCK_MAX ? inner : NMX_BLOCK_MAX;
}

#define NMX_CAT2(a, b) a##_##b
#define NMX_CAT(a, b) NMX_CAT2(a, b)

enum { NMX_SOFTMAX, NMX_LOG_SOFTMAX, NMX_XENT, NMX_BWD, NMX_BWD_LOG };

/* Whether column blocks of `classes` elements of `elem` bytes are streamed (softmax_stream.h)
 * rather than packed: when the packed block that fits the budget would be narrower than the
 * kernel's minimum. A narrow packed block reads its class rows as short runs `inner` apart (16
 * float32 columns: one 64-byte line a row), which the hardware prefetcher does not follow, while
 * a streamed block reads 1 KiB runs even though it reads them from memory in every pass. Two
 * threads, float32 (float16 alike): at (8192, 2048), packed in 16 columns, the backward took
 * 19-21 ms and softmax 14 ms, streamed 7-8 ms and 7.3-7.5 ms; at (2048, 8192), packed in 64
 * columns, the backward 10 ms against 7.2-8.5 streamed, while softmax, which computes exp twice
 * when streamed and once when packed, gained less there and lost at 80 columns ((1536, 10923):
 * 7 ms packed, 11-14 streamed). So the backward streams below 128 columns, softmax and
 * log-softmax below 64. Cross-entropy keeps the 16-column minimum: its reduced loss is added
 * block by block, so moving its threshold would change that sum's rounding. */
#ifndef NMX_STREAM_MIN
#define NMX_STREAM_MIN 16
#endif
#ifndef NMX_STREAM_MIN_FWD
#define NMX_STREAM_MIN_FWD 64
#endif
#ifndef NMX_STREAM_MIN_BWD
#define NMX_STREAM_MIN_BWD 128
#endif
static inline int nmx_block_streams(nmx_index classes, nmx_index elem, int kind) {
    nmx_index least = kind == NMX_XENT ? NMX_STREAM_MIN
                      : kind == NMX_BWD || kind == NMX_BWD_LOG ? NMX_STREAM_MIN_BWD
                                                               : NMX_STREAM_MIN_FWD;
    return NMX_BLOCK_BYTES / (classes * elem) < least;
}

#endif
