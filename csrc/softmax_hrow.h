/* Half-precision rows (inner == 1) read and written in place; included by softmax_half.h.
 *
 * Softmax, log-softmax, the integer-label cross-entropy without smoothing and the backward of
 * softmax and log-softmax make their passes over the float16 / bfloat16 rows themselves: every
 * vector is widened to float32 as it is loaded, and the last pass rounds each result once into
 * the half output. Converting a long row into a float32 buffer first, as the tile path does,
 * adds two passes over twice the bytes (the float32 copy and the float32 result) and the
 * conversion calls, which cost more than the halved memory traffic saves. The float32 arithmetic
 * is that of the float32 row kernels, operation for operation (same exp, same chunked sums, same
 * order), so every result is bit for bit the float32 kernel's on the upcast row, rounded once.
 *
 * The conversions are exact and round to nearest even, keeping NaN, infinities and subnormals.
 * The portable set is half.h's scalar code written on whole vectors (GNU vector extensions: a
 * shift to widen bfloat16, integer rounding to narrow it, the exponent rebias for float16),
 * vectorized by each SIMD clone of the row runner. On x86-64, picked once on the CPU as half.c
 * does: float16 uses F16C (vcvtph2ps / vcvtps2ph, AVX2 or AVX-512 forms) and bfloat16 rounds
 * with AVX-512 BF16's vcvtneps2bf16. The row code is instantiated once per conversion set from
 * softmax_hrow_impl.h; each instance has the float32 kernel's FMA contractions (FMA in the
 * AVX2 / AVX-512 sets as in the float32 kernel's x86-64-v3 / v4 clones), hence its bits.
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

/* 16 bfloat16 at p, widened into *v. Vectors go in and out through pointers: clang rejects a
 * 64-byte vector passed by value in the AVX2 functions (it would change their ABI). */
NMX_HAI void nmx_bf16_vload(const uint16_t *p, nmx_vf32 *v) {
    nmx_vu16 h;
    memcpy(&h, p, sizeof h);
    *v = (nmx_vf32)(__builtin_convertvector(h, nmx_vu32) << 16);
}

/* *v rounded to 16 bfloat16 at p (nmx_f32_to_bf16 per lane). */
NMX_HAI void nmx_bf16_vstore(uint16_t *p, const nmx_vf32 *v) {
    nmx_vu32 u = (nmx_vu32)*v;
    nmx_vu32 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    nmx_vu32 bits = NMX_VSEL(nmx_vu32, nmx_vi32, NMX_VABOVE_U32(u & 0x7fffffffu, 0x7f800000u),
                             (u >> 16) | 0x0040u, rounded);
    nmx_vu16 h = __builtin_convertvector(bits, nmx_vu16);
    memcpy(p, &h, sizeof h);
}

/* 16 float16 at p, widened into *v without F16C (nmx_f16_to_f32 per lane). */
NMX_HAI void nmx_f16_vload(const uint16_t *p, nmx_vf32 *v) {
    nmx_vu16 h;
    memcpy(&h, p, sizeof h);
    nmx_vu32 u = __builtin_convertvector(h, nmx_vu32);
    nmx_vu32 sign = (u & 0x8000u) << 16, mag = u & 0x7fffu, shifted = mag << 13;
    nmx_vu32 normal = shifted + (112u << 23);
    nmx_vu32 special =
        (shifted + (224u << 23)) | ((nmx_vu32)NMX_VABOVE_U32(mag, 0x7c00u) & 0x00400000u);
    nmx_vu32 sub = (nmx_vu32)(__builtin_convertvector((nmx_vi32)mag, nmx_vf32) * 0x1p-24f);
    nmx_vu32 bits = NMX_VSEL(nmx_vu32, nmx_vi32, NMX_VATLEAST_U32(mag, 0x0400u), normal, sub);
    bits = NMX_VSEL(nmx_vu32, nmx_vi32, NMX_VATLEAST_U32(mag, 0x7c00u), special, bits);
    *v = (nmx_vf32)(sign | bits);
}

/* *v rounded to 16 float16 at p without F16C (nmx_f32_to_f16 per lane). */
NMX_HAI void nmx_f16_vstore(uint16_t *p, const nmx_vf32 *v) {
    const nmx_vu32 zero = {0};
    nmx_vu32 u = (nmx_vu32)*v, a = u & 0x7fffffffu, r = a - (112u << 23);
    nmx_vu32 normal = (r + 0x0fffu + ((r >> 13) & 1u)) >> 13;
    nmx_vu32 sub = (nmx_vu32)((nmx_vf32)a + 0.5f) - nmx_f32_bits(0.5f);
    nmx_vu32 bits = NMX_VSEL(nmx_vu32, nmx_vi32, NMX_VATLEAST_U32(a, 0x38800000u), normal, sub);
    bits = NMX_VSEL(nmx_vu32, nmx_vi32, NMX_VATLEAST_U32(a, 0x477ff000u), zero + 0x7c00u, bits);
    bits = NMX_VSEL(nmx_vu32, nmx_vi32, NMX_VABOVE_U32(a, 0x7f800000u),
                    0x7e00u | ((a >> 13) & 0x03ffu), bits);
    nmx_vu16 h = __builtin_convertvector(bits | ((u >> 16) & 0x8000u), nmx_vu16);
    memcpy(p, &h, sizeof h);
}

/* *e = exp(*x - m) for the 16 columns at m, as stream_exp (here, not in the conversion-specific
 * instances: clang refuses a call returning a 64-byte vector inside an AVX2 function). */
NMX_HAI void nmx_hexp_sub(const nmx_vf32 *x, const float *m, nmx_vf32 *e) {
    nmx_vf32 t;
    memcpy(&t, m, sizeof t);
    t = *x - t;
    *e = nmx_vexp_f32(&t);
}

/* The 16 lanes of *v in float64: lanes 0-7 into *lo, 8-15 into *hi (as nmx_vacc_f32). */
NMX_HAI void nmx_hwiden(const nmx_vf32 *v, nmx_vf64 *lo, nmx_vf64 *hi) {
    nmx_vf32h a, b;
    memcpy(&a, v, sizeof a);
    memcpy(&b, (const char *)v + sizeof a, sizeof b);
    *lo = __builtin_convertvector(a, nmx_vf64);
    *hi = __builtin_convertvector(b, nmx_vf64);
}

/* The output of softmax for one vector of a column block: e * inv. In a NaN column both
 * factors can be NaN; the select returns inv's, as stream_softmax and softmax_block do. */
NMX_HAI void nmx_hsoftmax_out(const nmx_vf32 *e, const nmx_vf32 *inv, nmx_vf32 *o) {
    nmx_vi32 nan = NMX_VABOVE_U32((nmx_vu32)*inv & 0x7fffffffu, 0x7f800000u); /* *inv != *inv */
    *o = NMX_VSEL(nmx_vf32, nmx_vi32, nan, *inv, *e * *inv);
}

/* The output of log-softmax for one vector of a column block: (x - m) - lse in float64 (lse
 * is float64; z - m is exact in float64, so only the last subtraction and the cast round, as in
 * the float32 kernels' scalar expression). */
typedef double nmx_vf64x2 __attribute__((vector_size(128)));
NMX_HAI void nmx_hlog_out(const nmx_vf32 *x, const float *m, const double *lse, nmx_vf32 *o) {
    /* One 16-lane float64 vector (two registers): assembling the result from two halves in
     * memory would stall every store forwarding. */
    nmx_vf32 mv;
    nmx_vf64x2 l;
    memcpy(&mv, m, sizeof mv);
    memcpy(&l, lse, sizeof l);
    nmx_vf64x2 d =
        __builtin_convertvector(*x, nmx_vf64x2) - __builtin_convertvector(mv, nmx_vf64x2);
    *o = __builtin_convertvector(d - l, nmx_vf32);
}

/* nmx_exp_f32 on 16 lanes, operation for operation (the same clamps, the same two-step
 * scaling that keeps subnormal results): the float32 kernels' scalar exp of the columns past a
 * block's last full vector, computed a vector at a time with the same bits. */
typedef int64_t nmx_vi64x2 __attribute__((vector_size(128)));
NMX_HAI void nmx_hexp_scalar(const nmx_vf32 *xp, nmx_vf32 *out) {
    const nmx_vf32 zero = {0};
    nmx_vf32 x = *xp;
    x = NMX_VSEL(nmx_vf32, nmx_vi32, x < -104.0f, zero - 104.0f, x);
    x = NMX_VSEL(nmx_vf32, nmx_vi32, x > 89.0f, zero + 89.0f, x);
    nmx_vf32 kf, p = nmx_vexp_poly(x, &kf);
    nmx_vi32 ki = (nmx_vi32)((nmx_vu32)kf - 0x4B400000u);
    nmx_vi32 k1 = ki >> 1, k2 = ki - k1;
    nmx_vf32 s1 = (nmx_vf32)((nmx_vu32)(k1 + 127) << 23);
    nmx_vf32 s2 = (nmx_vf32)((nmx_vu32)(k2 + 127) << 23);
    *out = p * s1 * s2;
}

/* One term of the scalar columns' sums (block_sum's scalar loop, 16 columns at a time):
 * s += t == 0 ? 0 : e and cnt += t == 0 ? 1 : 0, in float64. */
NMX_HAI void nmx_hsum_scalar(const nmx_vf32 *t, const nmx_vf32 *e, nmx_vf64x2 *s,
                             nmx_vf64x2 *cnt) {
    const nmx_vf64x2 zero = {0};
    nmx_vi64x2 tie = __builtin_convertvector(*t == (nmx_vf32){0}, nmx_vi64x2);
    *s += NMX_VSEL(nmx_vf64x2, nmx_vi64x2, tie, zero, __builtin_convertvector(*e, nmx_vf64x2));
    *cnt += NMX_VSEL(nmx_vf64x2, nmx_vi64x2, tie, zero + 1.0, zero);
}

/* A column block of a half job (inner > 1): class rows `inner` apart from z (input; g in a
 * backward, with y beside it) and out, nb columns, and NULL or float32 scratch pk for its packed
 * copy (softmax_hcol_impl.h), whose rows are ps = nb rounded up to 16 apart, so that the last
 * columns are a whole vector too; the passes that read z fetch the row `ahead` classes on (0:
 * none). */
typedef struct {
    const uint16_t *z;
    const uint16_t *y; /* the backward's second input (z is then g), else NULL */
    uint16_t *out;
    float *pk;
    nmx_index n, inner, nb, ahead, ps;
} nmx_hblk;

/* nb rounded up to a whole vector: a packed row's length (see nmx_hblk). */
static inline nmx_index nmx_hblk_stride(nmx_index nb) {
    return (nb + 15) & ~(nmx_index)15;
}

/* The first column of block k (0 <= k <= nblk) of an example row of a direct job with
 * inner > 1. The row's vectors of 16 columns are dealt out evenly over its nblk blocks (at most
 * cols wide): with the plain cuts of cols columns, 300 columns were blocks of 256 and 44, and
 * one of two threads did 85% of the work. Every block starts on a vector, so the columns past
 * the last full vector (computed with the scalar arithmetic) are the same as with any cut, and
 * so are the results. */
static inline nmx_index nmx_hcol_start(const nmx_hjob *h, nmx_index k) {
    nmx_index units = (h->f.inner + 15) / 16, i = 16 * (k * units / h->f.nblk);
    return i < h->f.inner ? i : h->f.inner;
}

/* Bytes of half input a block's passes keep in flight: as many as the float32 streamed
 * kernel's NMX_SPREFETCH rows of NMX_BLOCK_MAX columns, so that a half block, with half the
 * bytes per row, still covers the memory latency. */
#ifndef NMX_HAHEAD
#define NMX_HAHEAD (NMX_SPREFETCH * NMX_BLOCK_MAX * 4)
#endif

/* Classes ahead for a block of nb columns with class rows `inner` apart (at least a cache line
 * a row); none when the rows are contiguous lines, which the hardware prefetcher follows. */
static nmx_index nmx_hblk_ahead(nmx_index nb, nmx_index inner) {
    return inner >= 32 ? NMX_HAHEAD / (2 * (nb > 32 ? nb : 32)) : 0;
}

/* The padded last vector of a row (zb: float32, -inf past the row's end). Kept out of line:
 * inlined, GCC merges it with the main loop's identical step and then scalarizes the merged
 * comparisons. Cloned like the row runners, so its exp contracts to the same FMAs. */
NMX_CLONES static void nmx_hexp_tail(const float *zb, const nmx_vf32 *m, float *eb, nmx_vf32 *part,
                                     nmx_vi32 *cnt) {
    exp_stepv_f32(zb, m, eb, part, cnt, 1);
}

/* The next row's input and output, fetched (for writing, the output) during the sum pass: that
 * pass is bound by the exponentials, the first pass by reading the row and the last by writing
 * it; one row ahead overlaps the memory traffic with that arithmetic. A backward fetches its
 * second input y too, during its output pass (which reads this row from the cache). */
typedef struct {
    const uint16_t *z;
    uint16_t *out;
    const uint16_t *y; /* NULL but in a backward */
} nmx_hnext;

/* Fetch the lines of elements [k0, k1) of the next row (none after the last row). */
NMX_HAI void nmx_hnext_fetch(const nmx_hnext *next, nmx_index k0, nmx_index k1) {
    if (!next->z) return;
    for (nmx_index k = k0; k < k1; k += 32) {
        __builtin_prefetch(next->z + k);
        if (next->y) __builtin_prefetch(next->y + k);
        __builtin_prefetch(next->out + k, 1);
    }
}

/* Whether a half job runs on the half data directly: softmax, log-softmax and the backwards
 * with inner > 1 (column blocks, softmax_hcol_impl.h), or rows long enough for a kernel written
 * above. */
static int nmx_hrow_direct(const nmx_hjob *h) {
    const nmx_xent_args *a = h->f.a;
    int act = h->f.kind == NMX_SOFTMAX || h->f.kind == NMX_LOG_SOFTMAX;
    int bwd = h->f.kind == NMX_BWD || h->f.kind == NMX_BWD_LOG;
    if (h->f.inner > 1) return act || bwd;
    if (h->f.n < NMX_HROW_MIN) return 0;
    return act || bwd || (h->f.kind == NMX_XENT && a->labels && a->eps == 0.0);
}

/* float32 scratch per thread of the direct path: the exponentials of one row, or the packed
 * copy of a column block that is not streamed (a backward's: of g and of y); none for backward
 * rows. */
static nmx_index nmx_hrow_scratch(const nmx_hjob *h) {
    int bwd = h->f.kind == NMX_BWD || h->f.kind == NMX_BWD_LOG;
    if (h->f.inner == 1) return bwd ? 0 : h->f.n;
    return h->f.stream ? 0 : (bwd ? 2 : 1) * h->f.n * nmx_hblk_stride(h->f.cols);
}

#if defined(__x86_64__) && !defined(NMX_SANITIZED) && defined(NMX_HAVE_CLONES) && NMX_HAVE_CLONES
#include <cpuid.h>
#include <immintrin.h>
#define NMX_HROW_F16C 1
/* F16C conversions of 16 lanes, exact, rounding to nearest even (as half.c's F16C paths). */
#define NMX_HROW_AVX512 "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c"
#define NMX_HROW_AVX2 "avx2,fma,f16c"
#define NMX_HROW_AVX512BF16 NMX_HROW_AVX512 ",avx512bf16"

static inline __attribute__((always_inline, target(NMX_HROW_AVX512))) void
nmx_f16_vload_avx512(const uint16_t *p, nmx_vf32 *v) {
    __m512 w = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
    memcpy(v, &w, sizeof w);
}

static inline __attribute__((always_inline, target(NMX_HROW_AVX512))) void
nmx_f16_vstore_avx512(uint16_t *p, const nmx_vf32 *v) {
    __m512 w;
    memcpy(&w, v, sizeof w);
    _mm256_storeu_si256((__m256i *)p,
                        _mm512_cvtps_ph(w, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

static inline __attribute__((always_inline, target(NMX_HROW_AVX2))) void
nmx_f16_vload_avx2(const uint16_t *p, nmx_vf32 *v) {
    __m256 w[2] = {_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)),
                   _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8)))};
    memcpy(v, w, sizeof w);
}

static inline __attribute__((always_inline, target(NMX_HROW_AVX2))) void
nmx_f16_vstore_avx2(uint16_t *p, const nmx_vf32 *v) {
    __m256 w[2];
    memcpy(w, v, sizeof w);
    _mm_storeu_si128((__m128i *)p,
                     _mm256_cvtps_ph(w[0], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    _mm_storeu_si128((__m128i *)(p + 8),
                     _mm256_cvtps_ph(w[1], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
/* 16 bfloat16 at p, widened in one vpmovzxwd (GCC splits the generic 32 -> 64-byte conversion
 * into halves and shuffles). */
static inline __attribute__((always_inline, target(NMX_HROW_AVX512))) void
nmx_bf16_vload_avx512(const uint16_t *p, nmx_vf32 *v) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    w = _mm512_slli_epi32(w, 16);
    memcpy(v, &w, sizeof w);
}

/* nmx_hwiden in one vcvtps2pd per 8 lanes. GCC lowers the generic conversion of the 64-byte
 * vectors to 4-lane conversions joined by shuffles (nine instructions where two do); in a half
 * row's sum of products that was most of the time with the rows in L2. The same values. */
static inline __attribute__((always_inline, target(NMX_HROW_AVX512))) void
nmx_hwiden_avx512(const nmx_vf32 *v, nmx_vf64 *lo, nmx_vf64 *hi) {
    __m512 w;
    memcpy(&w, v, sizeof w);
    __m256 upper = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(w), 1));
    __m512d a = _mm512_cvtps_pd(_mm512_castps512_ps256(w)), b = _mm512_cvtps_pd(upper);
    memcpy(lo, &a, sizeof a);
    memcpy(hi, &b, sizeof b);
}

/* vcvtneps2bf16 rounds to nearest even but flushes subnormal inputs to zero: a vector holding a
 * subnormal takes the integer rounding instead (as half.c does), so the bits never differ. */
static inline __attribute__((always_inline, target(NMX_HROW_AVX512BF16))) void
nmx_bf16_vstore_avx512bf16(uint16_t *p, const nmx_vf32 *v) {
    __m512 w;
    memcpy(&w, v, sizeof w);
    if (_mm512_fpclass_ps_mask(w, 0x20)) { /* class bit 5: subnormal */
        nmx_bf16_vstore(p, v);
        return;
    }
    __m256bh h = _mm512_cvtneps_pbh(w);
    memcpy(p, &h, sizeof h);
}
#else
#define NMX_HROW_F16C 0
#endif

/* Portable conversions, every SIMD clone; the float16 runner is used without F16C only. */
#define HSFX p
#define HWIDEN nmx_hwiden
#define HAI NMX_HAI
#define HRUN NMX_CLONES
#define HF16_LOAD nmx_f16_vload
#define HF16_STORE nmx_f16_vstore
#define HBF16_LOAD nmx_bf16_vload
#define HBF16_STORE nmx_bf16_vstore
#define HF16 1
#define HBF16 1
#define HMASK16 0
#include "softmax_hrow_impl.h"

#if NMX_HROW_F16C
#define HSFX avx512
#define HWIDEN nmx_hwiden_avx512
#define HAI static inline __attribute__((always_inline, target(NMX_HROW_AVX512)))
#define HRUN __attribute__((target(NMX_HROW_AVX512)))
#define HF16_LOAD nmx_f16_vload_avx512
#define HF16_STORE nmx_f16_vstore_avx512
#define HBF16_LOAD nmx_bf16_vload
#define HBF16_STORE nmx_bf16_vstore
#define HF16 1
#define HBF16 0
#define HMASK16 1
#include "softmax_hrow_impl.h"

#define HSFX avx2
#define HWIDEN nmx_hwiden
#define HAI static inline __attribute__((always_inline, target(NMX_HROW_AVX2)))
#define HRUN __attribute__((target(NMX_HROW_AVX2)))
#define HF16_LOAD nmx_f16_vload_avx2
#define HF16_STORE nmx_f16_vstore_avx2
#define HBF16_LOAD nmx_bf16_vload
#define HBF16_STORE nmx_bf16_vstore
#define HF16 1
#define HBF16 0
#define HMASK16 0
#include "softmax_hrow_impl.h"

/* bfloat16 rounding with AVX-512 BF16 (vcvtneps2bf16), for CPUs that have it. */
#define HSFX avx512bf16
#define HWIDEN nmx_hwiden_avx512
#define HAI static inline __attribute__((always_inline, target(NMX_HROW_AVX512BF16)))
#define HRUN __attribute__((target(NMX_HROW_AVX512BF16)))
#define HF16_LOAD nmx_f16_vload_avx512
#define HF16_STORE nmx_f16_vstore_avx512
#define HBF16_LOAD nmx_bf16_vload_avx512
#define HBF16_STORE nmx_bf16_vstore_avx512bf16
#define HF16 0
#define HBF16 1
#define HMASK16 1
#include "softmax_hrow_impl.h"

/* CPUID leaf 1, ECX bit 29: F16C (not every compiler's __builtin_cpu_supports knows it). */
static int nmx_hrow_cpu_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
}

/* What the AVX2 row kernels need (AVX2, FMA, F16C), and what the AVX-512 ones add to it. */
static int nmx_hrow_cpu_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && nmx_hrow_cpu_f16c();
}

static int nmx_hrow_cpu_avx512(void) {
    return nmx_hrow_cpu_avx2() && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl");
}
#endif

typedef double (*nmx_hrows_fn)(const nmx_hjob *, nmx_index, nmx_index, float *);

/* The float16 row runner for this CPU, chosen on first use (a racy but atomic store of the same
 * value, as half.c does). */
static nmx_hrows_fn nmx_hrows_f16(void) {
    static int level = -1;
    int k = __atomic_load_n(&level, __ATOMIC_RELAXED);
    if (k < 0) {
        k = 0;
#if NMX_HROW_F16C
        k = nmx_hrow_cpu_avx512() ? 2 : nmx_hrow_cpu_avx2();
#endif
        __atomic_store_n(&level, k, __ATOMIC_RELAXED);
    }
#if NMX_HROW_F16C
    if (k == 2) return nmx_hrows_f16_avx512;
    if (k == 1) return nmx_hrows_f16_avx2;
#endif
    return nmx_hrows_f16_p;
}

/* The bfloat16 row runner for this CPU, chosen on first use. */
static nmx_hrows_fn nmx_hrows_bf16(void) {
    static int level = -1;
    int k = __atomic_load_n(&level, __ATOMIC_RELAXED);
    if (k < 0) {
        k = 0;
#if NMX_HROW_F16C
        k = nmx_hrow_cpu_avx512() && __builtin_cpu_supports("avx512bf16");
#endif
        __atomic_store_n(&level, k, __ATOMIC_RELAXED);
    }
#if NMX_HROW_F16C
    if (k == 1) return nmx_hrows_bf16_avx512bf16;
#endif
    return nmx_hrows_bf16_p;
}

/* Rows (or column blocks) [r0, r1) of a direct job; buf is the thread's float32 scratch.
 * Built with clang, the column blocks take the portable conversions, whose runner is cloned
 * exactly as the float32 kernels are: clang contracts the column sums of the target-attribute
 * instances differently from the float32 kernel's x86-64-v4 clone (1-ulp differences seen in
 * the C driver's streamed bits check), while GCC compiles both alike. */
static double nmx_hrows_run(const nmx_hjob *h, nmx_index r0, nmx_index r1, float *buf) {
#if defined(__clang__)
    if (h->f.inner > 1)
        return (h->kind == NMX_BF16 ? nmx_hrows_bf16_p : nmx_hrows_f16_p)(h, r0, r1, buf);
#endif
    return (h->kind == NMX_BF16 ? nmx_hrows_bf16() : nmx_hrows_f16())(h, r0, r1, buf);
}
