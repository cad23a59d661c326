/* Half-precision batch norm (float16 and bfloat16 storage, float32 arithmetic), included by
 * batchnorm.c after the float32 instance of batchnorm_impl.h, whose finishing steps it runs
 * unchanged:
 *   - the leaf loops are the float32 ones with the conversions fused into their loads and
 *     stores: the same float32 expressions on the exactly widened input, each result rounded
 *     once, and no pass stages float32 copies of its inputs or outputs. On x86-64 with F16C
 *     the loops are written on vectors (batchnorm_half_vec.h), in the instance whose FMA
 *     contractions are those of the float32 loops as they run on this CPU: float16 converts
 *     with F16C, bfloat16 with a shift and a few integer instructions per vector. Elsewhere
 *     bfloat16 runs the scalar loops of batchnorm_half_leaf.h, in every SIMD clone;
 *   - float16 without F16C: each pass converts tiles of at most
 *     NMX_HALF_TILE elements with nmx_half_to_float into stack buffers and runs the float32 leaf
 *     loops on them;
 *   - the output pass computes pieces of at most NMX_HALF_TILE elements (wide rows: tiles) in
 *     the float32 kernel's block order. The vector loops write them into the output themselves;
 *     where the output is larger than the cache (streamed), with non-temporal stores of whole
 *     lines: of rows that start on a line and hold whole lines, and of the whole lines of each
 *     run (its ends with ordinary stores). Elsewhere (the float16 tiles, the scalar bfloat16
 *     loops, rows off the lines) a piece is rounded into a buffer and copied out, non-temporally
 *     when streamed;
 *   - sums and statistics are the float32 kernel's (double accumulation, shifted by a pivot);
 *     gamma, beta, the running statistics, dgamma and dbeta are float32 (PyTorch's mixed rule);
 *   - threads split the work exactly as in the float32 kernel, and the scratch memory is the
 *     same (the per-channel pivots live beside the constants k).
 */

/* How the row loops (affine_rows, dx_rows) go through their rows: row by row, or by strips of
 * one line of halves down every row (NMX_HSTRIPS: a small batch, nmx_strips, as the float32
 * loops' strips); and with ordinary or non-temporal stores (NMX_HNT: the vector loops only,
 * nmx_bn_hleaves.nt: each row's whole lines non-temporally, the rest plain, bn_rows_direct; the
 * run loops, affine_run and dx_run, take it too, and store each run's whole lines so). */
enum { NMX_HROWS = 0, NMX_HSTRIPS = 1, NMX_HNT = 2, NMX_HSTRIPS_NT = 3 };

/* The eight fused leaf loops of one storage format and instruction set (signatures as in
 * batchnorm_half_leaf.h), for the drivers below, and whether they can store non-temporally: 0
 * if not, else the mode in which they write the streamed tiles of wide rows (NMX_HNT or
 * NMX_HSTRIPS_NT, bn_out_tiles_h). */
typedef struct {
    void (*stats_rows)(const uint16_t *, nmx_index, nmx_index, nmx_index, const float *,
                       double *, double *);
    void (*stats_run)(const uint16_t *, nmx_index, double, double *, double *);
    void (*affine_rows)(const uint16_t *, nmx_index, uint16_t *, nmx_index, nmx_index, nmx_index,
                        const float *, const float *, const float *, const float *, int);
    void (*affine_run)(const uint16_t *, uint16_t *, nmx_index, float, float, float, float, int);
    void (*grad_rows)(const uint16_t *, const uint16_t *, nmx_index, nmx_index, nmx_index,
                      const float *, const float *, const double *, double *, double *);
    void (*grad_run)(const uint16_t *, const uint16_t *, nmx_index, double, double *, double *);
    void (*dx_rows)(const uint16_t *, const uint16_t *, nmx_index, uint16_t *, nmx_index,
                    nmx_index, nmx_index, const float *, nmx_index, int);
    void (*dx_run)(const uint16_t *, const uint16_t *, uint16_t *, nmx_index, float, float, float,
                   float, float, int);
    int nt;
    /* 0 if the row loops take the per-channel constants in channel order, else the width of
     * the groups whose constants they take paired (bn_pair_constants_h) */
    int eo;
    /* which rows off a line the row loops take straight, cut at their lines (bn_rows_direct):
     * an nmx_bn_cut */
    int cut;
} nmx_bn_hleaves;

/* nmx_bn_hleaves.cut: none (the slices at the cuts would be slow), rows that do not hold whole
 * lines, or any row */
enum { NMX_CUT_NONE = 0, NMX_CUT_PART_LINES = 1, NMX_CUT_ANY = 2 };

/* The leaf loops on bfloat16 storage. */
#define HSUF bf16
#define HLD(h) nmx_bf16_to_f32(h)
#define HST(f) nmx_f32_to_bf16(f)
#include "batchnorm_half_leaf.h"
#undef HSUF
#undef HLD
#undef HST

static const nmx_bn_hleaves nmx_bn_leaves_bf16 = {
    stats_rows_bf16, stats_run_bf16, affine_rows_bf16, affine_run_bf16,
    grad_rows_bf16,  grad_run_bf16,  dx_rows_bf16,     dx_run_bf16, 0, 0, 0,
};

/* ---- vector loops: float16 with F16C, bfloat16 with integer lanes or AVX-512 BF16 ---------
 * The fused vector loops must fuse the same products into FMAs as the float32 loops they stand
 * for, as those run on this CPU: which clone of them the loader picked, and whether that clone
 * contracts at all, depends on the CPU and on the compiler (Clang 14's resolver of the
 * x86-64-v4 / v3 clones picks the SSE2 one on every Intel and AMD CPU). So the float32 loop is
 * asked (nmx_bn_f32_fma) and the matching instance is run: AVX-512 or AVX2 with FMA, or AVX
 * without FMA (the SSE2 clone's arithmetic, on wider vectors), bfloat16 on AVX-512 rounding with
 * vcvtneps2bf16 where the CPU has AVX-512 BF16 (the same arithmetic: only the store differs);
 * float16 takes the tiles and bfloat16 the scalar loops above on CPUs without F16C (every AVX2
 * CPU has it). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(NMX_SANITIZED)
#include <cpuid.h>
#include <immintrin.h>
#define NMX_BN_VEC 1

/* One register of float32 lanes and one of double lanes: AVX-512 and AVX (GCC splits wider
 * generic vectors through the stack when only AVX is enabled). */
typedef float nmx_hv16f __attribute__((vector_size(64)));
typedef double nmx_hv8d __attribute__((vector_size(64)));
typedef float nmx_hv8f __attribute__((vector_size(32)));
typedef double nmx_hv4d __attribute__((vector_size(32)));

/* The conversions, exact one way and rounding to nearest even the other; NaN (quieted, payload
 * kept), infinities and subnormals as half.h's scalar conversions (and half.c's F16C paths). */
#define NMX_BN_AVX512 "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c"
#define NMX_BN_AVX2 "avx2,fma,f16c"
#define NMX_BN_AVX "avx,f16c"
#define NMX_BN_RNE (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define NMX_BN_512 static inline __attribute__((always_inline, target(NMX_BN_AVX512)))
#define NMX_BN_256 static inline __attribute__((always_inline, target(NMX_BN_AVX)))

NMX_BN_256 float nmx_bn_ld1_f16(uint16_t h) { return _cvtsh_ss(h); }
#define nmx_bn_ld1_bf16 nmx_bf16_to_f32

NMX_BN_512 void nmx_bn_load_f16_512(const uint16_t *p, nmx_hv16f *v) {
    *v = (nmx_hv16f)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

NMX_BN_512 __m256i nmx_bn_round_f16_512(const nmx_hv16f *v) {
    return _mm512_cvtps_ph((__m512)*v, NMX_BN_RNE);
}

/* Slices of m < 16 lanes, with masked moves: rows whose channels are not a multiple of 16 end
 * in one (streamed, cut at their lines, most rows have two). Through a zero-padded copy (two
 * calls of memcpy), the (128, 56, 56, 40) bfloat16 NHWC training forward, inference and backward
 * took 2.5-2.8x the time they take so. */
#define nmx_bn_mask16(m) ((__mmask16)((1u << (m)) - 1))

NMX_BN_512 void nmx_bn_loadm_f16_512(const uint16_t *p, int m, nmx_hv16f *v) {
    *v = (nmx_hv16f)_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(nmx_bn_mask16(m), p));
}

NMX_BN_512 void nmx_bn_loadm_bf16_512(const uint16_t *p, int m, nmx_hv16f *v) {
    __m512i u = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(nmx_bn_mask16(m), p));
    *v = (nmx_hv16f)_mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}

NMX_BN_512 void nmx_bn_putm_512(uint16_t *p, int m, __m256i q) {
    _mm256_mask_storeu_epi16(p, nmx_bn_mask16(m), q);
}

NMX_BN_512 void nmx_bn_lfm_512(const float *p, int m, nmx_hv16f *v) {
    *v = (nmx_hv16f)_mm512_maskz_loadu_ps(nmx_bn_mask16(m), p);
}

NMX_BN_512 void nmx_bn_loadd_f16_512(const uint16_t *p, nmx_hv8d *d) {
    *d = (nmx_hv8d)_mm512_cvtps_pd(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)));
}

NMX_BN_512 void nmx_bn_wide_512(const nmx_hv16f *v, nmx_hv8d *d) {
    __m512d w = _mm512_castps_pd((__m512)*v);
    d[0] = (nmx_hv8d)_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_castpd512_pd256(w)));
    d[1] = (nmx_hv8d)_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(w, 1)));
}

/* bfloat16 on AVX-512: widening shifts each zero-extended lane up by 16 bits; rounding is
 * nmx_f32_to_bf16 on every lane (add 0x7fff plus the kept lowest bit, shift down; a NaN lane
 * takes its upper half with the quiet bit set) and vpmovdw keeps the low halves. */
NMX_BN_512 void nmx_bn_load_bf16_512(const uint16_t *p, nmx_hv16f *v) {
    __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    *v = (nmx_hv16f)_mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}

NMX_BN_512 __m256i nmx_bn_round_bf16_512(const nmx_hv16f *v) {
    __m512i u = _mm512_castps_si512((__m512)*v), hi = _mm512_srli_epi32(u, 16);
    __m512i odd = _mm512_and_si512(hi, _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                            _mm512_set1_epi32(0x7f800000));
    r = _mm512_mask_or_epi32(_mm512_srli_epi32(r, 16), nan, hi, _mm512_set1_epi32(0x0040));
    return _mm512_cvtepi32_epi16(r);
}

/* bfloat16 rounding on CPUs with AVX-512 BF16: vcvtneps2bf16 rounds to nearest even and
 * quiets a NaN the way nmx_f32_to_bf16 does, but flushes subnormal inputs to zero; a vector
 * with a subnormal lane (fpclass bit 5, rare) takes the integer rule above. */
#define NMX_BN_AVX512_BF16 NMX_BN_AVX512 ",avx512bf16"
static inline __attribute__((always_inline, target(NMX_BN_AVX512_BF16))) __m256i
nmx_bn_round_bf16_512b(const nmx_hv16f *v) {
    __m512 f = (__m512)*v;
    if (_mm512_fpclass_ps_mask(f, 0x20)) return nmx_bn_round_bf16_512(v);
    __m256bh h = _mm512_cvtneps_pbh(f);
    __m256i u;
    memcpy(&u, &h, sizeof u);
    return u;
}

NMX_BN_512 void nmx_bn_loadd_bf16_512(const uint16_t *p, nmx_hv8d *d) {
    __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    *d = (nmx_hv8d)_mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_slli_epi32(u, 16)));
}

/* Slices of m < 8 lanes on AVX2 and AVX, which have no 16-bit masked moves: the halves move by
 * pieces of four, two and one (each a single scalar move; the branches take the same way
 * through a whole row loop), the vector is assembled in registers, and only the slice's own
 * halves are read or written. The floats load with vmaskmovps. Against the zero-padded copy
 * they replace (two calls of memcpy, then a vector load waiting on a failed store forwarding),
 * NHWC with the AVX2 instances, separate processes in turn, two or three rounds: (40, 56, 56,
 * 100), four lanes left in every row, training forward, inference and backward took 0.58-0.64,
 * 0.60-0.64 and 0.58-0.80 of the time; (64, 224, 224, 3) bfloat16 0.15-0.16, 0.13 and
 * 0.20-0.36. */
#define NMX_BN_PIECES static inline __attribute__((always_inline))

/* r < 4 halves at p, in the low 16 * r bits */
NMX_BN_PIECES uint64_t nmx_bn_ld3(const uint16_t *p, int r) {
    uint64_t w = 0;
    if (r & 2) {
        uint32_t t;
        memcpy(&t, p, sizeof t);
        w = t;
    }
    if (r & 1) w |= (uint64_t)p[r - 1] << (16 * (r - 1));
    return w;
}

NMX_BN_PIECES void nmx_bn_st3(uint16_t *p, int r, uint64_t w) {
    if (r & 2) {
        uint32_t t = (uint32_t)w;
        memcpy(p, &t, sizeof t);
        w >>= 32;
        p += 2;
    }
    if (r & 1) *p = (uint16_t)w;
}

/* m < 8 halves at p in the low lanes, the others zero */
NMX_BN_PIECES __m128i nmx_bn_part_128(const uint16_t *p, int m) {
    if (m < 4) return _mm_cvtsi64_si128((long long)nmx_bn_ld3(p, m));
    uint64_t lo;
    memcpy(&lo, p, sizeof lo);
    return _mm_set_epi64x((long long)nmx_bn_ld3(p + 4, m - 4), (long long)lo);
}

/* the first m < 8 halves of q stored at p */
NMX_BN_PIECES void nmx_bn_putm_256(uint16_t *p, int m, __m128i q) {
    uint64_t lo = (uint64_t)_mm_cvtsi128_si64(q);
    if (m < 4) {
        nmx_bn_st3(p, m, lo);
        return;
    }
    memcpy(p, &lo, sizeof lo);
    nmx_bn_st3(p + 4, m - 4, (uint64_t)_mm_cvtsi128_si64(_mm_unpackhi_epi64(q, q)));
}

/* m < 8 floats at p, the other lanes zero (vmaskmovps reads none of the masked-out ones) */
NMX_BN_256 void nmx_bn_lfm_256(const float *p, int m, nmx_hv8f *v) {
    static const int32_t ones_then_zeros[16] = {-1, -1, -1, -1, -1, -1, -1, -1};
    __m256i mask = _mm256_loadu_si256((const __m256i *)(ones_then_zeros + 8 - m));
    *v = (nmx_hv8f)_mm256_maskload_ps(p, mask);
}

NMX_BN_256 void nmx_bn_load_f16_256(const uint16_t *p, nmx_hv8f *v) {
    *v = (nmx_hv8f)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

NMX_BN_256 void nmx_bn_loadm_f16_256(const uint16_t *p, int m, nmx_hv8f *v) {
    *v = (nmx_hv8f)_mm256_cvtph_ps(nmx_bn_part_128(p, m));
}

NMX_BN_256 __m128i nmx_bn_round_f16_256(const nmx_hv8f *v) {
    return _mm256_cvtps_ph((__m256)*v, NMX_BN_RNE);
}

NMX_BN_256 void nmx_bn_loadd_f16_256(const uint16_t *p, nmx_hv4d *d) {
    *d = (nmx_hv4d)_mm256_cvtps_pd(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)p)));
}

NMX_BN_256 void nmx_bn_wide_256(const nmx_hv8f *v, nmx_hv4d *d) {
    __m256 w = (__m256)*v;
    d[0] = (nmx_hv4d)_mm256_cvtps_pd(_mm256_castps256_ps128(w));
    d[1] = (nmx_hv4d)_mm256_cvtps_pd(_mm256_extractf128_ps(w, 1));
}

/* bfloat16 on AVX2, as on AVX-512 (one zero-extension and one shift widen, the integer rule
 * rounds); one vpshufb gathers each 128-bit lane's high halves, and a vpermq puts the two lanes'
 * side by side. The inference's inner loop, from the load to the rounded vector, was 15
 * instructions per eight elements with a NaN test in the rounding, 27 with the AVX instance's
 * below; against those, in alternating processes at (8192, 2048) and NCHW (64, 64, 56, 56)
 * (medians of eight pairs): inference 0.80-0.82x the time, training 0.92-0.96x, backward
 * 0.79-1.00x.
 *
 * The rounding has no NaN test: it is nmx_f32_to_bf16 for every float32 value but a NaN with a
 * nonzero low half, whose rounding carry can reach its high half (0x7fffffff would come out as
 * -0). The vector loops round only results of float32 arithmetic on bfloat16 inputs (low halves
 * zero) and on the per-channel constants, which bn_quiet_nans_h clears of such NaNs before the
 * loops run. Every NaN operand then has a zero low half, and the hardware's result is one of
 * them or its default NaN (0xffc00000), quiet, low half zero: it rounds to its own high half,
 * quiet, as nmx_f32_to_bf16 rounds it. Leaving out the test (three instructions of the
 * loop's 22 with the per-channel constants' loads) and packing by vpshufb, (8192, 2048)
 * inference in eight alternating rounds (minimum, median): two threads 0.84x, 0.80x the time,
 * now 1.73x, 1.82x faster than float32 (1.45x before); one thread 0.84x, 0.93x. The training
 * forward's rounds were too spread to tell (minimum 1.13x, median 0.93x). */
#define NMX_BN_AVX2I static inline __attribute__((always_inline, target(NMX_BN_AVX2)))

NMX_BN_AVX2I nmx_hv8f nmx_bn_widen_bf16_avx2(__m128i h) {
    return (nmx_hv8f)_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

NMX_BN_AVX2I void nmx_bn_load_bf16_avx2(const uint16_t *p, nmx_hv8f *v) {
    *v = nmx_bn_widen_bf16_avx2(_mm_loadu_si128((const __m128i *)p));
}

NMX_BN_AVX2I void nmx_bn_loadm_bf16_avx2(const uint16_t *p, int m, nmx_hv8f *v) {
    *v = nmx_bn_widen_bf16_avx2(nmx_bn_part_128(p, m));
}

/* nmx_f32_to_bf16's carry on eight lanes: each result in the high half of its lane. */
NMX_BN_AVX2I __m256i nmx_bn_carry_bf16_avx2(__m256i u) {
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    return _mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff)));
}

NMX_BN_AVX2I __m128i nmx_bn_round_bf16_avx2(const nmx_hv8f *v) {
    __m256i r = nmx_bn_carry_bf16_avx2(_mm256_castps_si256((__m256)*v));
    const __m256i high = _mm256_setr_epi8(2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1,
                                          -1, 2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1,
                                          -1, -1);
    r = _mm256_shuffle_epi8(r, high);
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(r, 0x08));
}

/* A line of sixteen bfloat16 values on AVX2 as its even- and odd-indexed halves (HV_LOAD_EO,
 * HV_ROUND_EO). Read as eight 32-bit lanes, each holds an even-indexed half in its low 16 bits
 * and the next one in its high 16 bits, so a shift widens the even ones and a mask the odd
 * ones, in place. Rounding, the carry on both vectors, then the even results shifted down and
 * the odd ones masked interleave them back with one OR. No shuffle at all, against two per
 * eight values in each direction above, which share two of the four vector pipes with the
 * shifts on AMD's Zen 3. The run loops take it as it is (their lanes share one constant), the
 * row loops with their constants paired (bn_pair_constants_h). Two threads, five to eight
 * alternating rounds, minimum: (2048, 8192) (C, m) inference 0.81x the time (one thread 0.70x),
 * as fast as float16; (8192, 2048) inference 0.78x, training and backward 0.92-0.94x. */
NMX_BN_AVX2I void nmx_bn_load_eo_bf16_avx2(const uint16_t *p, nmx_hv8f *v) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    v[0] = (nmx_hv8f)_mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
    v[1] = (nmx_hv8f)_mm256_castsi256_ps(_mm256_and_si256(h, _mm256_set1_epi32(-65536)));
}

NMX_BN_AVX2I __m256i nmx_bn_round_eo_bf16_avx2(const nmx_hv8f *v) {
    __m256i even = nmx_bn_carry_bf16_avx2(_mm256_castps_si256((__m256)v[0]));
    __m256i odd = nmx_bn_carry_bf16_avx2(_mm256_castps_si256((__m256)v[1]));
    return _mm256_or_si256(_mm256_srli_epi32(even, 16),
                           _mm256_and_si256(odd, _mm256_set1_epi32(-65536)));
}

/* bfloat16 on AVX: the integer lanes in two 128-bit halves (AVX has no 256-bit integer
 * arithmetic). Interleaving zeros below each half widens it. */
NMX_BN_256 nmx_hv8f nmx_bn_widen_bf16_256(__m128i h) {
    __m128i z = _mm_setzero_si128();
    __m256 lo = _mm256_castps128_ps256(_mm_castsi128_ps(_mm_unpacklo_epi16(z, h)));
    return (nmx_hv8f)_mm256_insertf128_ps(lo, _mm_castsi128_ps(_mm_unpackhi_epi16(z, h)), 1);
}

NMX_BN_256 void nmx_bn_load_bf16_256(const uint16_t *p, nmx_hv8f *v) {
    *v = nmx_bn_widen_bf16_256(_mm_loadu_si128((const __m128i *)p));
}

NMX_BN_256 void nmx_bn_loadm_bf16_256(const uint16_t *p, int m, nmx_hv8f *v) {
    *v = nmx_bn_widen_bf16_256(nmx_bn_part_128(p, m));
}

/* nmx_f32_to_bf16 on four lanes, each result in the low half of its lane. */
NMX_BN_256 __m128i nmx_bn_round4_bf16(__m128i u) {
    __m128i hi = _mm_srli_epi32(u, 16), odd = _mm_and_si128(hi, _mm_set1_epi32(1));
    __m128i r = _mm_add_epi32(u, _mm_add_epi32(odd, _mm_set1_epi32(0x7fff)));
    /* both sides are below 2^31, so the signed comparison is the unsigned one */
    __m128i nan = _mm_cmpgt_epi32(_mm_and_si128(u, _mm_set1_epi32(0x7fffffff)),
                                  _mm_set1_epi32(0x7f800000));
    __m128i quiet = _mm_or_si128(hi, _mm_set1_epi32(0x0040));
    return _mm_blendv_epi8(_mm_srli_epi32(r, 16), quiet, nan);
}

NMX_BN_256 __m128i nmx_bn_round_bf16_256(const nmx_hv8f *v) {
    __m256i u = _mm256_castps_si256((__m256)*v);
    __m128i lo = nmx_bn_round4_bf16(_mm256_castsi256_si128(u));
    __m128i hi = nmx_bn_round4_bf16(_mm256_extractf128_si256(u, 1));
    return _mm_packus_epi32(lo, hi); /* lanes are below 2^16 */
}

NMX_BN_256 void nmx_bn_loadd_bf16_256(const uint16_t *p, nmx_hv4d *d) {
    __m128i h = _mm_loadl_epi64((const __m128i *)p);
    *d = (nmx_hv4d)_mm256_cvtps_pd(_mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), h)));
}

/* The six instances: HVH names the storage format, HVB the register width of the conversions. */
#define HV_CONV(op) HVCATX(HVCATX(nmx_bn_##op, HVH), HVB)
#define HVCATX(a, b) HVCATY(a, b)
#define HVCATY(a, b) a##_##b
#define HV_LOAD HV_CONV(load)
#define HV_ROUND HV_CONV(round)
#define HV_LOADD HV_CONV(loadd)
#define HV_LD1 HVCATX(nmx_bn_ld1, HVH)
#define HV_WIDE HVCATX(nmx_bn_wide, HVB)

#define HVB 512
#define HVW 16
#define HVF nmx_hv16f
#define HVD nmx_hv8d
#define HV_LOAD_PART HV_CONV(loadm)
#define HV_PUT_PART nmx_bn_putm_512
#define HV_LF_PART nmx_bn_lfm_512
#define HV_PUT(p, q) _mm256_storeu_si256((__m256i *)(p), q)
#define HV_PUT_NT(p, q) _mm256_stream_si256((__m256i *)(p), q)
#define HVT NMX_BN_AVX512
#define HVH f16
#define HVSUF f16v4
#include "batchnorm_half_vec.h"
#undef HVH
#undef HVSUF
#define HVH bf16
#define HVSUF bf16v4
#include "batchnorm_half_vec.h"
#undef HVSUF
#undef HVT
#undef HV_ROUND
#define HVSUF bf16v4b /* the AVX-512 instance, rounding with AVX-512 BF16 */
#define HVT NMX_BN_AVX512_BF16
#define HV_ROUND nmx_bn_round_bf16_512b
#include "batchnorm_half_vec.h"
#undef HV_ROUND
#define HV_ROUND HV_CONV(round)
#undef HVH
#undef HVSUF
#undef HVB
#undef HVW
#undef HVF
#undef HVD
#undef HVT
#undef HV_PUT
#undef HV_PUT_NT
#undef HV_LOAD_PART
#undef HV_PUT_PART
#undef HV_LF_PART

#define HVB 256
#define HVW 8
#define HVF nmx_hv8f
#define HVD nmx_hv4d
#define HV_LOAD_PART HV_CONV(loadm)
#define HV_PUT_PART nmx_bn_putm_256
#define HV_LF_PART nmx_bn_lfm_256
#define HV_PUT(p, q) _mm_storeu_si128((__m128i *)(p), q)
#define HV_PUT_NT(p, q) _mm_stream_si128((__m128i *)(p), q)
#define HVT NMX_BN_AVX2
#define HVH f16
#define HVSUF f16v3
#include "batchnorm_half_vec.h"
#undef HVSUF
#define HVSUF f16avx /* the AVX2 instance's vectors, no FMA */
#undef HVT
#define HVT NMX_BN_AVX
#include "batchnorm_half_vec.h"
#undef HVH
#undef HVSUF
#undef HVT
#define HVH bf16
#define HVT NMX_BN_AVX2
#define HVSUF bf16v3
#undef HV_LOAD
#undef HV_LOAD_PART
#undef HV_ROUND
#define HV_LOAD nmx_bn_load_bf16_avx2
#define HV_LOAD_PART nmx_bn_loadm_bf16_avx2
#define HV_ROUND nmx_bn_round_bf16_avx2
#define HV_LOAD_EO nmx_bn_load_eo_bf16_avx2
#define HV_ROUND_EO nmx_bn_round_eo_bf16_avx2
#define HV_PUT2(p, q) _mm256_storeu_si256((__m256i *)(p), q)
#define HV_PUT2_NT(p, q) _mm256_stream_si256((__m256i *)(p), q)
#include "batchnorm_half_vec.h"
#undef HV_LOAD_EO
#undef HV_ROUND_EO
#undef HV_PUT2
#undef HV_PUT2_NT
#undef HV_LOAD
#undef HV_LOAD_PART
#undef HV_ROUND
#define HV_LOAD HV_CONV(load)
#define HV_LOAD_PART HV_CONV(loadm)
#define HV_ROUND HV_CONV(round)
#undef HVSUF
#define HVSUF bf16avx
#undef HVT
#define HVT NMX_BN_AVX
#include "batchnorm_half_vec.h"
#undef HVH
#undef HVSUF
#undef HVT
#undef HVB
#undef HVW
#undef HVF
#undef HVD
#undef HV_PUT
#undef HV_PUT_NT
#undef HV_LOAD_PART
#undef HV_PUT_PART
#undef HV_LF_PART
#undef HV_LOAD
#undef HV_ROUND
#undef HV_LOADD
#undef HV_LD1
#undef HV_WIDE
#undef HV_CONV
#undef HVCATX
#undef HVCATY

/* Whether the float32 leaf loops, in the clone this CPU runs, fuse a product and a sum into one
 * FMA: ((x - 0) - 0) * x + -1 with x = 1 + 2^-12 is 2^-11 + 2^-24 rounded once, 2^-11 rounded
 * twice. 1: every element fused, 0: none, -1: some (then no fused vector instance matches). The
 * 41 elements take the vector loop and its scalar end. */
static int nmx_bn_f32_fma(void) {
    volatile float one = 1.0f;
    float x[41], y[41];
    int fused = 0;
    for (int i = 0; i < 41; i++) x[i] = one + 0x1p-12f;
    affine_run_f32(x, y, 41, 0.0f, 0.0f, x[0], -one);
    for (int i = 0; i < 41; i++) fused += y[i] != 0x1p-11f;
    return fused == 41 ? 1 : fused == 0 ? 0 : -1;
}

/* The vector instance for this CPU and this build: 4 AVX-512 with BF16 (bfloat16 rounds with
 * it; float16 takes the AVX-512 instance), 3 AVX-512, 2 AVX2, 1 AVX without FMA, 0 none. F16C
 * is CPUID leaf 1, ECX bit 29 (not every compiler's builtin knows it); the "avx" test beside it
 * covers the OS saving the YMM registers. */
static int nmx_bn_vec_level(void) {
    unsigned a, b, c, d;
    int fma = nmx_bn_f32_fma();
    __builtin_cpu_init();
    if (!(__get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)) && __builtin_cpu_supports("avx")))
        return 0;
    if (fma <= 0) return fma == 0;
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) return 0;
    if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")))
        return 2;
    return __builtin_cpu_supports("avx512bf16") ? 4 : 3;
}
#else
#define NMX_BN_VEC 0
#endif

/* The fused leaf loops for `kind` on this CPU, or NULL: float16 then runs through tiles. Chosen
 * on first use (concurrent first calls store the same value, atomically, as half.c does). */
static const nmx_bn_hleaves *nmx_bn_leaves(int kind) {
#if NMX_BN_VEC
    static const nmx_bn_hleaves *const vec[2][5] = {
        {NULL, &nmx_bn_leaves_f16avx, &nmx_bn_leaves_f16v3, &nmx_bn_leaves_f16v4,
         &nmx_bn_leaves_f16v4},
        {&nmx_bn_leaves_bf16, &nmx_bn_leaves_bf16avx, &nmx_bn_leaves_bf16v3,
         &nmx_bn_leaves_bf16v4, &nmx_bn_leaves_bf16v4b},
    };
    static int level = -1;
    int k = __atomic_load_n(&level, __ATOMIC_RELAXED);
    if (k < 0) {
        k = nmx_bn_vec_level();
        __atomic_store_n(&level, k, __ATOMIC_RELAXED);
    }
    return vec[kind == NMX_BF16][k];
#else
    return kind == NMX_BF16 ? &nmx_bn_leaves_bf16 : NULL;
#endif
}

/* Output elements per streamed block: the float32 kernel's block (NMX_PIECES_PER_BLOCK pieces
 * of NMX_PIECE elements). */
#define NMX_HALF_BLOCK ((nmx_index)NMX_PIECE * NMX_PIECES_PER_BLOCK)

/* For bfloat16, every NaN among the `rows` rows of C per-channel constants at k, channels
 * [c0, c1), quieted and its low half cleared (its sign and high half kept): the precondition of
 * the AVX2 instance's rounding (nmx_bn_round_bf16_avx2). The outputs keep their bits: a NaN
 * result rounds to its high half, quiet, whichever way it was made. Called once the constants
 * are final, after the statistics and the float32 outputs. */
static void bn_quiet_nans_h(int kind, float *k, int rows, nmx_index C, nmx_index c0,
                            nmx_index c1) {
    if (kind != NMX_BF16) return;
    for (int j = 0; j < rows; j++)
        for (nmx_index c = c0; c < c1; c++) {
            float *f = k + (nmx_index)j * C + c;
            uint32_t u;
            memcpy(&u, f, sizeof u);
            if ((u & 0x7fffffffu) <= 0x7f800000u) continue; /* not a NaN */
            u = (u | 0x00400000u) & 0xffff0000u;
            memcpy(f, &u, sizeof u);
        }
}

/* The `rows` rows of C per-channel constants at k reordered for row loops that take them paired
 * by groups of w channels: in each whole group (channels [i * w, (i + 1) * w) for i < C / w),
 * the even channels' constants first, then the odd channels'; the channels after the last whole
 * group keep their order. With undo, the channel order back. */
static void bn_pairs_h(float *k, int rows, nmx_index C, int w, int undo) {
    float t[64]; /* w is 16 in the AVX2 instance */
    for (int j = 0; j < rows; j++)
        for (nmx_index c = 0; c + w <= C; c += w) {
            float *f = k + (nmx_index)j * C + c;
            memcpy(t, f, sizeof(float) * (size_t)w);
            for (int i = 0; i < w / 2; i++) {
                if (undo) {
                    f[2 * i] = t[i];
                    f[2 * i + 1] = t[w / 2 + i];
                } else {
                    f[i] = t[2 * i];
                    f[w / 2 + i] = t[2 * i + 1];
                }
            }
        }
}

/* The constants paired (bn_pairs_h) for leaves whose row loops take them so (nmx_bn_hleaves.eo,
 * the width of a group), for rows of C channels (inner 1). The row loops are only ever given
 * slices that start on a group (bn_out_tiles_h's tiles, bn_out_h's pieces) and end on one or at
 * C. Called once the constants are final, as the last step before the output pass. */
static void bn_pair_constants_h(int kind, float *k, int rows, nmx_index C, nmx_index inner) {
    const nmx_bn_hleaves *L = nmx_bn_leaves(kind);
    if (inner == 1 && L && L->eo) bn_pairs_h(k, rows, C, L->eo, 0);
}

static inline float nmx_half_value(int kind, uint16_t h) {
    return kind == NMX_BF16 ? nmx_bf16_to_f32(h) : nmx_f16_to_f32(h);
}

/* The pivot of each channel (its first value, as in the float32 kernel) in float32. */
static void bn_pivots_h(int kind, const uint16_t *x, nmx_index C, nmx_index inner, float *piv) {
    if (inner == 1) {
        nmx_half_to_float(kind, x, piv, C);
        return;
    }
    for (nmx_index c = 0; c < C; c++) piv[c] = nmx_half_value(kind, x[c * inner]);
}

/* ---- float16 without the F16C loops: float32 tiles ------------------------------------
 * float16 runs the float32 leaf loops on tiles of at most NMX_HALF_TILE elements widened by
 * nmx_half_to_float and rounds the output tiles with nmx_float_to_half. The branch-free float16
 * conversions of half.h, fused into the scalar leaf loops, ran several times slower than these
 * tiles (the compiler does not turn them into vcvtph2ps), and the float32 loops' two-product
 * expressions (dx) may contract into an FMA differently once the longer widening is fused in,
 * moving the last bit of a dx that cancels. */

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
                    stats_rows_f32(xt, r1 - r0, wa, wa, piv + a, s1 + a, s2 + a);
                    continue;
                }
                for (nmx_index r = r1; r < r2; r++) bn_prefetch_h(dy + r * C + a, wa);
                bn_load_rows_h(kind, dy, C, r0, r1, a, wa, gt);
                grad_rows_f32(gt, xt, r1 - r0, wa, wa, k + a, k + C + a, mean + a, s1 + a,
                              s2 + a);
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
    if (inner == 1 && w != C) { /* a tile of wide rows (bn_out_tiles_h) */
        bn_load_rows_h(kind, x, C, u0, u1, a, w, xt);
        if (dy) bn_load_rows_h(kind, dy, C, u0, u1, a, w, gt);
    } else {
        bn_prefetch_h(x + off + cnt, ahead);
        nmx_half_to_float(kind, x + off, xt, cnt);
        if (dy) {
            bn_prefetch_h(dy + off + cnt, ahead);
            nmx_half_to_float(kind, dy + off, gt, cnt);
        }
    }
    if (inner == 1) {
        if (dy)
            dx_rows_f32(gt, xt, w, ot, w, u1 - u0, w, k + a, C, 1);
        else
            affine_rows_f32(xt, w, ot, w, u1 - u0, w, k + a, k + C + a, k + 2 * C + a,
                            k + 3 * C + a, 1);
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

/* ---- the fused loops, and the shared drivers ------------------------------------------- */

/* Rows of a tile of wide rows that the vector loops write by strips (bn_out_tiles_h): of the
 * forward's y, and of the backward's dx, which reads two arrays, so that about eight rows are
 * read side by side either way. At (8192, 2048), two threads, each against the next choice in
 * one process: y by 8 rows took 0.78-0.87x the time of 4 (training 0.87-0.93x), 16 rows
 * 1.4x that of 8; dx by 8 rows 1.06-1.15x the time of 4, 2 rows 1.2x. */
#define NMX_HTILE_R 8
#define NMX_HTILE_RB 4

/* Pass 1 over units [lo, hi) (rows when inner == 1, else runs): the sums of the statistics
 * (dy NULL: x - pivot) or of the gradient (dy * (x - mean)). Rows are summed in blocks of four
 * from lo, as the float32 kernel does; runs longer than NMX_HALF_TILE are summed in slices of
 * that length, each slice's lanes added to the channel's sums in turn (the order the float16
 * tiles give, so every path gives the same bits). */
static void bn_sums_h(int kind, const uint16_t *dy, const uint16_t *x, nmx_index C,
                      nmx_index inner, nmx_index lo, nmx_index hi, const float *piv,
                      const float *k, const double *mean, double *s1, double *s2) {
    const nmx_bn_hleaves *L = nmx_bn_leaves(kind);
    if (!L) {
        bn_sums_tiles_h(kind, dy, x, C, inner, lo, hi, piv, k, mean, s1, s2);
        return;
    }
    if (inner == 1) {
        /* The statistics of wide rows by tiles, as pass_stats (each channel's blocks of four
         * rows are still summed in row order): 0.95-0.97x the training forward's time at
         * (8192, 2048). The gradient sums read two arrays, and in tiles of 4 or 8 rows took
         * 1.02-1.06x the time of whole rows. */
        int tiles = !dy && wide_rows_f32(C);
        nmx_index rows = tiles ? NMX_TILE_R : hi - lo, w = tiles ? NMX_TILE_C : C;
        for (nmx_index r0 = lo; r0 < hi; r0 += rows)
            for (nmx_index a = 0, r1 = nmx_min(hi, r0 + rows); a < C; a += w) {
                nmx_index o = r0 * C + a, n = nmx_min(w, C - a);
                if (dy)
                    L->grad_rows(dy + o, x + o, C, r1 - r0, n, k + a, k + C + a, mean + a,
                                 s1 + a, s2 + a);
                else
                    L->stats_rows(x + o, C, r1 - r0, n, piv + a, s1 + a, s2 + a);
            }
        return;
    }
    nmx_index w = nmx_min(inner, NMX_HALF_TILE);
    for (nmx_index u = lo; u < hi; u++) {
        nmx_index c = u % C;
        for (nmx_index a = 0; a < inner; a += w) {
            nmx_index len = nmx_min(w, inner - a), o = u * inner + a;
            if (dy)
                L->grad_run(dy + o, x + o, len, mean[c], s1 + c, s2 + c);
            else
                L->stats_run(x + o, len, (double)piv[c], s1 + c, s2 + c);
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

/* Whether the loops for `kind` store into out non-temporally themselves: they are vector loops
 * and out starts on a line (the runs then store each run's whole lines so). */
static int bn_nt_out(int kind, const uint16_t *out) {
    const nmx_bn_hleaves *L = nmx_bn_leaves(kind);
    return L && L->nt && (uintptr_t)out % 64 == 0;
}

/* The same for rows of C channels, which must each start on a line and hold whole lines. */
static int bn_nt_rows(int kind, const uint16_t *out, nmx_index C) {
    return bn_nt_out(kind, out) && C * (nmx_index)sizeof(uint16_t) % 64 == 0;
}

/* Whether streamed rows of C (not wide) at out go straight from the row loops (NMX_HNT: each
 * row's whole lines non-temporally, the rest plain), as the float32 rows_direct: rows that
 * start on a line and hold whole lines, or rows of NMX_DIRECT_ROW_BYTES or more that the loops
 * cut at their lines (nmx_bn_hleaves.cut); other rows go through a buffer. Against the buffer,
 * median time ratios (ranges) in separate processes in turn, two threads, 25-32 MiB:
 * - AVX-512, (N, 56, 56, C) bfloat16 NHWC, three rounds: training forward, inference and
 *   backward with rows of 80 B 0.80 (0.45-0.89), 0.57 (0.38-0.64), 0.62 (0.58-0.98); 96 B
 *   0.70 (0.61-0.98), 0.56 (0.49-0.72), 0.96 (0.83-1.04); 200 B 0.88, 0.51, 0.87; (16000, 1000)
 *   rows of 2000 B 0.82, 0.62, 0.83; 128 B rows into an out= 16 bytes off a line 0.81, 0.97,
 *   1.04 (0.74-1.13);
 * - AVX2 (the float16 instance; bfloat16's pairs its constants), three rounds, training
 *   forward, inference, backward: rows of 80 B 0.64 (0.60-0.72), 0.44 (0.38-0.47), 0.68
 *   (0.52-1.05); 200 B 0.87, 0.70, 0.91; 2000 B 0.67, 0.46, 0.78; into an out= 16 bytes off a
 *   line, inference: 80 B 0.41, 200 B 0.77, 2000 B 0.47, but rows of whole lines 128 B 1.40
 *   (1.39-1.54), 512 B 1.03: those go through the buffer there. */
static int bn_rows_direct(int kind, const uint16_t *out, nmx_index C) {
    const nmx_bn_hleaves *L = nmx_bn_leaves(kind);
    nmx_index bytes = C * (nmx_index)sizeof(uint16_t);
    if (bn_nt_rows(kind, out, C)) return 1;
    if (!L || bytes < NMX_DIRECT_ROW_BYTES) return 0;
    return L->cut == NMX_CUT_ANY || (L->cut == NMX_CUT_PART_LINES && bytes % 64);
}

/* y (dy NULL) or dx of rows [r0, r1), channels [a, a + w) of rows of C, into o, rows ys apart,
 * by L's row loops in `mode` (NMX_HROWS, NMX_HSTRIPS, NMX_HNT or NMX_HSTRIPS_NT). */
static void bn_rows_h(const nmx_bn_hleaves *L, const uint16_t *dy, const uint16_t *x, uint16_t *o,
                      nmx_index ys, nmx_index C, nmx_index r0, nmx_index r1, nmx_index a,
                      nmx_index w, const float *k, int mode) {
    nmx_index off = r0 * C + a;
    if (dy)
        L->dx_rows(dy + off, x + off, C, o, ys, r1 - r0, w, k + a, C, mode);
    else
        L->affine_rows(x + off, C, o, ys, r1 - r0, w, k + a, k + C + a, k + 2 * C + a,
                       k + 3 * C + a, mode);
}

/* y (dy NULL) or dx of units [u0, u1), elements [a, a + w) of each (a contiguous piece of the
 * output: whole units, or a slice of one), computed in float32 and rounded once into o; for
 * the float16 tiles, `ahead` elements after the piece are prefetched (bn_piece_tiles_h). `mode`
 * is the row and run loops' (NMX_HROWS, ...; the tiles ignore it). */
static void bn_piece_h(int kind, const uint16_t *dy, const uint16_t *x, uint16_t *o, nmx_index C,
                       nmx_index inner, nmx_index u0, nmx_index u1, nmx_index a, nmx_index w,
                       const float *k, nmx_index ahead, int mode) {
    const nmx_bn_hleaves *L = nmx_bn_leaves(kind);
    if (!L) {
        bn_piece_tiles_h(kind, dy, x, o, C, inner, u0, u1, a, w, k, ahead);
        return;
    }
    if (inner == 1) {
        bn_rows_h(L, dy, x, o, w, C, u0, u1, a, w, k, mode);
        return;
    }
    for (nmx_index u = u0; u < u1; u++) {
        nmx_index c = u % C, off = u * inner + a;
        uint16_t *ou = o + (u - u0) * w;
        if (dy)
            L->dx_run(dy + off, x + off, ou, w, k[c], k[C + c], k[2 * C + c], k[3 * C + c],
                      k[4 * C + c], mode);
        else
            L->affine_run(x + off, ou, w, k[c], k[C + c], k[2 * C + c], k[3 * C + c], mode);
    }
}

/* Ask for the tile of bn_out_tiles_h that follows rows [r0, r1) x channels [a, a + NMX_TILE_C)
 * in a block ending at row `end`: the next channels of the same rows, or the first channels of
 * the next `rows` rows. A tile reads a few lines from each of a few rows, a page or more apart,
 * and the hardware prefetchers do not run ahead across those jumps (streamed rows only; rows in
 * the cache need no asking). (8192, 2048) inference, two threads, AVX2, the vector loops
 * storing non-temporally: 0.63-0.95x the time in twelve alternating pairs, float16 and
 * bfloat16. */
static inline void bn_prefetch_tile_h(const uint16_t *dy, const uint16_t *x, nmx_index C,
                                      nmx_index end, nmx_index rows, nmx_index r0, nmx_index r1,
                                      nmx_index a) {
    a += NMX_TILE_C;
    if (a >= C) {
        a = 0;
        r0 = r1;
        r1 = nmx_min(end, r1 + rows);
    }
    nmx_index w = nmx_min(NMX_TILE_C, C - a);
    for (nmx_index r = r0; r < r1; r++) {
        bn_prefetch_h(x + r * C + a, w);
        if (dy) bn_prefetch_h(dy + r * C + a, w);
    }
}

/* bn_out_h over wide rows [lo, hi), by tiles of rows and NMX_TILE_C channels, within which the
 * constants' slice stays in L1 (as out_tiles in batchnorm_impl.h): row by row across all C
 * channels, every element waited on the cache behind L1 for its four or five constants, and
 * (8192, 2048) float16 inference ran at half the bandwidth of float32. The vector loops write
 * each tile into the output themselves:
 *   - in the cache, tiles of NMX_HTILE_R (NMX_HTILE_RB) rows by strips (NMX_HSTRIPS);
 *   - streamed, with rows that start on lines, non-temporally in the instance's mode (L->nt).
 *     The 512-bit instances go by strips (NMX_HSTRIPS_NT): against the buffer below, with tiles
 *     of four rows, they took 0.77-0.94x the time of the (8192, 2048) inference and 0.81-0.86x
 *     of the backward. On an AVX2 CPU (AMD, without AVX-512) the strips' non-temporal stores
 *     took 1.7-4.8x the buffer's time wherever the rows are a multiple of 4 KiB apart ((8192,
 *     2048), (4096, 4096); (12288, 1344): 0.88-0.99x), each strip storing lines 4 KiB apart
 *     in turn, so the 256-bit instances store row by row (NMX_HNT), in tiles of NMX_HALF_TILE /
 *     NMX_TILE_C rows: there 0.87-0.97x the buffer's time on all three shapes.
 * Otherwise a tile of NMX_HALF_TILE / NMX_TILE_C rows is rounded into a buffer and its rows
 * copied out, non-temporally when streamed. Every way gives the same bits. Tiles go in
 * bn_out_h's order. */
static void bn_out_tiles_h(int kind, const uint16_t *dy, const uint16_t *x, uint16_t *out,
                           nmx_index C, nmx_index lo, nmx_index hi, const float *k, int stream) {
    const nmx_bn_hleaves *L = nmx_bn_leaves(kind);
    int mode = !L ? -1 : !stream ? NMX_HSTRIPS : bn_nt_rows(kind, out, C) ? L->nt : -1;
    int strips = mode == NMX_HSTRIPS || mode == NMX_HSTRIPS_NT;
    nmx_index rows = !strips ? NMX_HALF_TILE / NMX_TILE_C : dy ? NMX_HTILE_RB : NMX_HTILE_R;
    uint16_t ht[NMX_HALF_TILE];
    nmx_index block = stream == NMX_STREAM_BACK ? rows * NMX_PIECES_PER_BLOCK : hi - lo;
    for (nmx_index end = hi; end > lo;) {
        nmx_index start = end - lo > block ? end - block : lo;
        for (nmx_index r0 = start; r0 < end; r0 += rows) {
            nmx_index r1 = nmx_min(end, r0 + rows);
            for (nmx_index a = 0; a < C; a += NMX_TILE_C) {
                nmx_index w = nmx_min(NMX_TILE_C, C - a);
                if (mode >= 0) {
                    if (stream) bn_prefetch_tile_h(dy, x, C, end, rows, r0, r1, a);
                    bn_rows_h(L, dy, x, out + r0 * C + a, C, C, r0, r1, a, w, k, mode);
                    continue;
                }
                bn_piece_h(kind, dy, x, ht, C, 1, r0, r1, a, w, k, 0, NMX_HSTRIPS);
                for (nmx_index r = r0; r < r1; r++) {
                    uint16_t *o = out + r * C + a;
                    const uint16_t *t = ht + (r - r0) * w;
                    if (stream)
                        nmx_stream(o, t, sizeof(uint16_t) * (size_t)w);
                    else
                        memcpy(o, t, sizeof(uint16_t) * (size_t)w);
                }
            }
        }
        end = start;
    }
    if (stream) nmx_stream_fence();
}

/* Pass 2 over units [lo, hi), piece by piece: whole units grouped up to a tile, or tile-sized
 * slices of long units; wide rows by tiles (bn_out_tiles_h). Streamed like pass_out (in blocks
 * from the last to the first with NMX_STREAM_BACK, pieces ascending within a block), each piece
 * rounded into a buffer and written non-temporally. */
static void bn_out_units_h(int kind, const uint16_t *dy, const uint16_t *x, uint16_t *out,
                           nmx_index C, nmx_index inner, nmx_index lo, nmx_index hi,
                           const float *k, int stream) {
    if (inner == 1 && wide_rows_f32(C)) { /* float32 constants: the float32 kernel's rule */
        bn_out_tiles_h(kind, dy, x, out, C, lo, hi, k, stream);
        return;
    }
    nmx_index len = inner == 1 ? C : inner, w = nmx_min(len, NMX_HALF_TILE);
    nmx_index per = NMX_HALF_TILE / w, block = hi - lo, groups = NMX_HALF_BLOCK / (per * len);
    if (stream == NMX_STREAM_BACK) block = per * (groups > 0 ? groups : 1);
    /* streamed rows (bn_rows_direct) and streamed runs: the vector loops store them
     * non-temporally themselves (each row's or run's whole lines) */
    int nt = stream && (inner == 1 ? bn_rows_direct(kind, out, C) : bn_nt_out(kind, out));
    uint16_t ht[NMX_HALF_TILE];
    for (nmx_index end = hi; end > lo;) {
        nmx_index start = end - lo > block ? end - block : lo;
        for (nmx_index u0 = start; u0 < end; u0 += per) {
            nmx_index u1 = nmx_min(end, u0 + per);
            for (nmx_index a = 0; a < len; a += w) {
                nmx_index wa = nmx_min(w, len - a), off = u0 * len + a, cnt = (u1 - u0) * wa;
                nmx_index ahead = nmx_min(cnt, end * len - (off + cnt));
                int buffered = stream && !nt;
                bn_piece_h(kind, dy, x, buffered ? ht : out + off, C, inner, u0, u1, a, wa, k,
                           ahead, nt ? NMX_HNT : NMX_HROWS);
                if (buffered) nmx_stream(out + off, ht, sizeof(uint16_t) * (size_t)cnt);
            }
        }
        end = start;
    }
    if (stream) nmx_stream_fence();
}

/* Rows narrower than a line, q at a time as rows of q * C channels, as the float32 pass_narrow:
 * the constants (4 arrays, 5 with dy) in channel order (unpaired first where rows of C hold a
 * whole group of the leaves' pairs), repeated q times, then paired for rows of q * C where the
 * leaves take them so. NHWC on AVX-512, 19-29 MiB, two threads, separate processes in turn,
 * three rounds: inference with 3 channels took 0.08-0.11 of the time (float16 and bfloat16),
 * with 20 channels 0.23-0.28; the training forward 0.48-0.76 and 0.29-0.86. bfloat16 on AVX2
 * (pairs of 16), 20 and 24 channels, 29-39 MiB: inference 0.17-0.50. */
static void bn_out_narrow_h(int kind, const uint16_t *dy, const uint16_t *x, uint16_t *out,
                            nmx_index C, nmx_index q, nmx_index lo, nmx_index hi, const float *k,
                            int stream) {
    float kq[5 * 32 * 31], k1[5 * 31]; /* q <= 32 and C <= 31 for rows of halves under 64 B */
    const nmx_bn_hleaves *L = nmx_bn_leaves(kind);
    int arrays = dy ? 5 : 4;
    const float *kc = k;
    nmx_index cq = C * q, a, b;
    if (L && L->eo && C >= L->eo) {
        memcpy(k1, k, sizeof(float) * (size_t)(arrays * C));
        bn_pairs_h(k1, arrays, C, L->eo, 1);
        kc = k1;
    }
    nmx_narrow_groups(kc, kq, sizeof(float), arrays, C, q, lo, hi, &a, &b);
    bn_pair_constants_h(kind, kq, arrays, cq, 1);
    bn_out_units_h(kind, dy, x, out, C, 1, lo, a, k, stream);
    bn_out_units_h(kind, dy ? dy + a * C : NULL, x + a * C, out + a * C, cq, 1, 0, (b - a) / q,
                   kq, stream);
    bn_out_units_h(kind, dy, x, out, C, 1, b, hi, k, stream);
}

/* The output pass over units [lo, hi) (y with dy NULL, else dx), from the final constants k
 * (bn_pair_constants_h done). */
static void bn_out_h(int kind, const uint16_t *dy, const uint16_t *x, uint16_t *out, nmx_index C,
                     nmx_index inner, nmx_index lo, nmx_index hi, const float *k, int stream) {
    nmx_index q = inner == 1 ? nmx_narrow_rows(C * (nmx_index)sizeof(uint16_t)) : 0;
    if (q && hi - lo >= 4 * q)
        bn_out_narrow_h(kind, dy, x, out, C, q, lo, hi, k, stream);
    else
        bn_out_units_h(kind, dy, x, out, C, inner, lo, hi, k, stream);
}

/* Resident groups (see batchnorm_impl.h): the sums of channels [c0, c1) run by run, in the order
 * of the one-thread driver, into acc[c] and acc[C + c]. */
static void bn_group_sums_h(int kind, const uint16_t *dy, const uint16_t *x, nmx_index outer,
                            nmx_index C, nmx_index inner, nmx_index c0, nmx_index c1,
                            const float *piv, const float *k, const double *mean, double *acc) {
    for (nmx_index c = c0; c < c1; c++) {
        acc[c] = acc[C + c] = 0;
        for (nmx_index u = c; u < outer * C; u += C)
            bn_sums_h(kind, dy, x, C, inner, u, u + 1, piv, k, mean, acc, acc + C);
    }
}

/* y (dy NULL) or dx of channels [c0, c1), run by run from the cache, streamed. */
static void bn_group_out_h(int kind, const uint16_t *dy, const uint16_t *x, uint16_t *out,
                           nmx_index outer, nmx_index C, nmx_index inner, nmx_index c0,
                           nmx_index c1, const float *k) {
    nmx_index w = nmx_min(inner, NMX_HALF_TILE);
    int nt = bn_nt_out(kind, out); /* as bn_out_h's runs */
    uint16_t ht[NMX_HALF_TILE];
    for (nmx_index c = c0; c < c1; c++)
        for (nmx_index u = c; u < outer * C; u += C)
            for (nmx_index a = 0; a < inner; a += w) {
                nmx_index wa = nmx_min(w, inner - a);
                uint16_t *o = out + u * inner + a;
                bn_piece_h(kind, dy, x, nt ? o : ht, C, inner, u, u + 1, a, wa, k, 0,
                           nt ? NMX_HNT : NMX_HROWS);
                if (!nt) nmx_stream(o, ht, sizeof(uint16_t) * (size_t)wa);
            }
    nmx_stream_fence();
}

int nmx_bn_train_h(int kind, const uint16_t *x, nmx_index outer, nmx_index C, nmx_index inner,
                   const float *gamma, const float *beta, uint16_t *y, double *mean,
                   double *invstd, float *rmean, float *rvar, double momentum, double eps) {
    nmx_index n = outer * inner, units = inner == 1 ? outer : outer * C;
    if (n == 0 || C == 0) return 0;
    int nt = nmx_threads_for(n * C);
    int stream = nmx_store_mode(sizeof(uint16_t) * n * C, NMX_STREAM_BACK);
    NMX_SCRATCH(scratch, C, nt, 3); /* 4 * C floats of k, then C pivots: 2.5 doubles each */
    double *acc = scratch.acc;
    float *k = (float *)scratch.k, *piv = k + 4 * C;
    bn_pivots_h(kind, x, C, inner, piv);
    /* train_finish reads the pivot of channel c as x[c * inner]: the pivots with inner 1 */
    nmx_index g = stream ? nmx_group_width(outer, C, inner, sizeof(uint16_t), 1, nt) : 0;
    if (g) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
        for (nmx_index c0 = 0; c0 < C; c0 += g) {
            nmx_index c1 = nmx_min(C, c0 + g);
            bn_group_sums_h(kind, NULL, x, outer, C, inner, c0, c1, piv, NULL, NULL, acc);
            train_finish_f32(c0, c1, acc, n, piv, C, 1, gamma, beta, mean, invstd, rmean, rvar,
                             momentum, eps, k);
            bn_quiet_nans_h(kind, k, 4, C, c0, c1);
            bn_group_out_h(kind, NULL, x, y, outer, C, inner, c0, c1, k);
        }
        nmx_scratch_free(&scratch);
        return 0;
    }
    if (nt == 1) {
        memset(acc, 0, sizeof(double) * 2 * (size_t)C);
        bn_sums_h(kind, NULL, x, C, inner, 0, units, piv, NULL, NULL, acc, acc + C);
        bn_gather_h(kind, 0, C, acc, 1, C, NULL, x, NULL, outer, inner);
        train_finish_f32(0, C, acc, n, piv, C, 1, gamma, beta, mean, invstd, rmean, rvar,
                         momentum, eps, k);
        bn_quiet_nans_h(kind, k, 4, C, 0, C);
        bn_pair_constants_h(kind, k, 4, C, inner);
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
        bn_quiet_nans_h(kind, k, 4, C, c0, c1);
#pragma omp barrier
#pragma omp single
        bn_pair_constants_h(kind, k, 4, C, inner);
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
    bn_quiet_nans_h(kind, k, 4, C, 0, C);
    bn_pair_constants_h(kind, k, 4, C, inner);
    int nt = nmx_threads_for(n * C);
    int stream = nmx_store_mode(sizeof(uint16_t) * n * C, NMX_STREAM);
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
    int nt = nmx_threads_for(n * C);
    int stream = nmx_store_mode(sizeof(uint16_t) * n * C, NMX_STREAM_BACK);
    NMX_SCRATCH(scratch, C, nt, 3); /* 5 * C floats of k */
    double *acc = scratch.acc;
    float *k = (float *)scratch.k;
    for (nmx_index c = 0; c < C; c++) split_mean_f32(mean[c], k + c, k + C + c);
    nmx_index g = stream ? nmx_group_width(outer, C, inner, sizeof(uint16_t), 2, nt) : 0;
    if (g) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
        for (nmx_index c0 = 0; c0 < C; c0 += g) {
            nmx_index c1 = nmx_min(C, c0 + g);
            bn_group_sums_h(kind, dy, x, outer, C, inner, c0, c1, NULL, k, mean, acc);
            grad_finish_f32(c0, c1, acc, n, C, invstd, gamma, dgamma, dbeta, k);
            bn_quiet_nans_h(kind, k, 5, C, c0, c1);
            bn_group_out_h(kind, dy, x, dx, outer, C, inner, c0, c1, k);
        }
        nmx_scratch_free(&scratch);
        return 0;
    }
    if (nt == 1) {
        memset(acc, 0, sizeof(double) * 2 * (size_t)C);
        bn_sums_h(kind, dy, x, C, inner, 0, units, NULL, k, mean, acc, acc + C);
        bn_gather_h(kind, 0, C, acc, 1, C, dy, x, mean, outer, inner);
        grad_finish_f32(0, C, acc, n, C, invstd, gamma, dgamma, dbeta, k);
        bn_quiet_nans_h(kind, k, 5, C, 0, C);
        bn_pair_constants_h(kind, k, 5, C, inner);
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
        bn_quiet_nans_h(kind, k, 5, C, c0, c1);
#pragma omp barrier
#pragma omp single
        bn_pair_constants_h(kind, k, 5, C, inner);
        bn_out_h(kind, dy, x, dx, C, inner, lo, hi, k, stream);
    }
    nmx_scratch_free(&scratch);
    return 0;
}
