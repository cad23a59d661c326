/* Bulk half <-> float32 conversions, dispatched once on the CPU's capabilities.
 *
 * float16 on x86-64: the F16C instructions (vcvtph2ps / vcvtps2ph, 8 lanes) or their AVX-512
 * forms (16 lanes) where the CPU has them; both are exact and round to nearest even, like the
 * portable loop. bfloat16: widening is a shift (the portable loop, compiled per SIMD level by
 * NMX_CLONES_SIMD); rounding uses AVX-512 BF16's vcvtneps2bf16 where the CPU has it, else the
 * portable integer rounding. That instruction rounds to nearest even but flushes subnormal
 * inputs to zero (whatever MXCSR says), so a vector holding a subnormal is redone by the
 * portable code: the results are the same bits on every path.
 */
#include "half.h"

#include "platform.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(NMX_SANITIZED)
#include <cpuid.h>
#include <immintrin.h>
#define NMX_HAVE_F16C 1
#else
#define NMX_HAVE_F16C 0
#endif

/* ---- portable loops (vectorized by the compiler for each SIMD level) ---------------------- */

NMX_CLONES_SIMD static void f16_to_float_portable(const uint16_t *restrict src,
                                                  float *restrict dst, nmx_index n) {
    for (nmx_index i = 0; i < n; i++) dst[i] = nmx_f16_to_f32(src[i]);
}

NMX_CLONES_SIMD static void float_to_f16_portable(const float *restrict src,
                                                  uint16_t *restrict dst, nmx_index n) {
    for (nmx_index i = 0; i < n; i++) dst[i] = nmx_f32_to_f16(src[i]);
}

NMX_CLONES_SIMD static void bf16_to_float(const uint16_t *restrict src, float *restrict dst,
                                          nmx_index n) {
    for (nmx_index i = 0; i < n; i++) dst[i] = nmx_bf16_to_f32(src[i]);
}

NMX_CLONES_SIMD static void float_to_bf16(const float *restrict src, uint16_t *restrict dst,
                                          nmx_index n) {
    for (nmx_index i = 0; i < n; i++) dst[i] = nmx_f32_to_bf16(src[i]);
}

/* ---- F16C and AVX-512 float16 ------------------------------------------------------------- */

#if NMX_HAVE_F16C
#define NMX_RNE (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

__attribute__((target("avx,f16c"))) static void f16_to_float_f16c(const uint16_t *src,
                                                                   float *dst, nmx_index n) {
    nmx_index i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = nmx_f16_to_f32(src[i]);
}

__attribute__((target("avx,f16c"))) static void float_to_f16_f16c(const float *src,
                                                                   uint16_t *dst, nmx_index n) {
    nmx_index i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), NMX_RNE));
    for (; i < n; i++) dst[i] = nmx_f32_to_f16(src[i]);
}

__attribute__((target("avx512f"))) static void f16_to_float_avx512(const uint16_t *src,
                                                                   float *dst, nmx_index n) {
    nmx_index i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i,
                         _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
    for (; i < n; i++) dst[i] = nmx_f16_to_f32(src[i]);
}

__attribute__((target("avx512f"))) static void float_to_f16_avx512(const float *src,
                                                                   uint16_t *dst, nmx_index n) {
    nmx_index i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(src + i), NMX_RNE));
    for (; i < n; i++) dst[i] = nmx_f32_to_f16(src[i]);
}

__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16"))) static void
float_to_bf16_avx512(const float *src, uint16_t *dst, nmx_index n) {
    nmx_index i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(src + i);
        if (_mm512_fpclass_ps_mask(v, 0x20)) { /* a subnormal lane (class bit 5) */
            for (int k = 0; k < 16; k++) dst[i + k] = nmx_f32_to_bf16(src[i + k]);
            continue;
        }
        __m256bh h = _mm512_cvtneps_pbh(v);
        memcpy(dst + i, &h, sizeof h);
    }
    for (; i < n; i++) dst[i] = nmx_f32_to_bf16(src[i]);
}
#endif

/* ---- dispatch ---------------------------------------------------------------------------- */

typedef void (*nmx_up_fn)(const uint16_t *, float *, nmx_index);
typedef void (*nmx_down_fn)(const float *, uint16_t *, nmx_index);

typedef struct {
    nmx_up_fn f16_up;
    nmx_down_fn f16_down;
    const char *isa;
} nmx_f16_path;

typedef struct {
    nmx_down_fn bf16_down;
    const char *isa;
} nmx_bf16_path;

/* Chosen on first use. Concurrent first calls (the GIL is released) each compute the same
 * choice, so a plain racy-but-atomic store of the index is enough. */
static int nmx_f16_choice = -1;

static const nmx_f16_path nmx_f16_paths[] = {
    {f16_to_float_portable, float_to_f16_portable, "portable"},
#if NMX_HAVE_F16C
    {f16_to_float_f16c, float_to_f16_f16c, "F16C"},
    {f16_to_float_avx512, float_to_f16_avx512, "AVX-512F"},
#endif
};

#if NMX_HAVE_F16C
/* CPUID leaf 1, ECX bit 29 (not every compiler's __builtin_cpu_supports knows "f16c"); the
 * "avx" test beside it covers the OS saving the YMM registers. */
static int nmx_cpu_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
}
#endif

static int nmx_bf16_choice = -1;

static const nmx_bf16_path nmx_bf16_paths[] = {
    {float_to_bf16, "integer rounding"},
#if NMX_HAVE_F16C
    {float_to_bf16_avx512, "AVX-512 BF16"},
#endif
};

static const nmx_bf16_path *nmx_bf16(void) {
    int k = __atomic_load_n(&nmx_bf16_choice, __ATOMIC_RELAXED);
    if (k < 0) {
        k = 0;
#if NMX_HAVE_F16C
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512dq") &&
            __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
            k = 1;
#endif
#ifdef NMX_HALF_PATH /* tests: 0 forces the portable rounding */
        k = NMX_HALF_PATH < k ? NMX_HALF_PATH : k;
#endif
        __atomic_store_n(&nmx_bf16_choice, k, __ATOMIC_RELAXED);
    }
    return &nmx_bf16_paths[k];
}

static const nmx_f16_path *nmx_f16(void) {
    int k = __atomic_load_n(&nmx_f16_choice, __ATOMIC_RELAXED);
    if (k < 0) {
        k = 0;
#if NMX_HAVE_F16C
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f"))
            k = 2;
        else if (__builtin_cpu_supports("avx") && nmx_cpu_f16c())
            k = 1;
#endif
#ifdef NMX_HALF_PATH /* tests: force a path (0 portable, 1 F16C, 2 AVX-512F) */
        k = NMX_HALF_PATH < k ? NMX_HALF_PATH : k;
#endif
        __atomic_store_n(&nmx_f16_choice, k, __ATOMIC_RELAXED);
    }
    return &nmx_f16_paths[k];
}

void nmx_half_to_float(int kind, const uint16_t *src, float *dst, nmx_index n) {
    if (kind == NMX_BF16)
        bf16_to_float(src, dst, n);
    else
        nmx_f16()->f16_up(src, dst, n);
}

void nmx_float_to_half(int kind, const float *src, uint16_t *dst, nmx_index n) {
    if (kind == NMX_BF16)
        nmx_bf16()->bf16_down(src, dst, n);
    else
        nmx_f16()->f16_down(src, dst, n);
}

const char *nmx_half_isa(int kind) {
    return kind == NMX_BF16 ? nmx_bf16()->isa : nmx_f16()->isa;
}
