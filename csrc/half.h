/* Half-precision storage: IEEE binary16 (float16) and bfloat16, converted to and from float32.
 *
 * The kernels keep half-precision data in memory and compute in float32 (or wider): a half
 * kernel converts a tile of at most NMX_HALF_TILE elements into a float32 buffer on the stack,
 * runs the float32 arithmetic on it and rounds the results back once. Both formats are stored
 * as uint16_t bit patterns.
 *
 * Every conversion is exact from half to float32 and rounds to nearest even from float32 to
 * half; NaN stays NaN (quieted, sign kept), infinities stay infinite, subnormals are kept (never
 * flushed to zero), and float32 values beyond the half range round to infinity as IEEE 754
 * requires. The bulk converters pick the fastest exact path for the CPU once (see half.c).
 */
#ifndef NORMAX_HALF_H
#define NORMAX_HALF_H

#include <stdint.h>
#include <string.h>

#include "normax.h"

/* The two storage formats; the values are those of the kernels' `kind` arguments. */
enum { NMX_F16 = 1, NMX_BF16 = 2 };

/* Elements per conversion tile: 4 KiB of float32, so a kernel's few tiles stay in L1. */
#define NMX_HALF_TILE 1024

/* dst[i] = (float)src[i] for i < n. */
void nmx_half_to_float(int kind, const uint16_t *src, float *dst, nmx_index n);
/* dst[i] = src[i] rounded to the nearest half (ties to even), for i < n. */
void nmx_float_to_half(int kind, const float *src, uint16_t *dst, nmx_index n);
/* The float32 -> half conversion path in use for `kind`, e.g. "F16C" or "AVX-512 BF16"; for
 * show_config. */
const char *nmx_half_isa(int kind);

/* ---- scalar conversions (branch-free: loops over them vectorize) -------------------------- */

static inline uint32_t nmx_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float nmx_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* bfloat16 is the upper half of a float32: widening is a shift. */
static inline float nmx_bf16_to_f32(uint16_t h) { return nmx_bits_f32((uint32_t)h << 16); }

/* Round the lower 16 bits away, ties to even: adding 0x7fff plus the kept lowest bit carries
 * into the kept half exactly when the dropped half is above the midpoint, or at it with an odd
 * kept half. The carry also rounds the largest finite values to infinity. NaN is quieted
 * instead (the carry could turn a NaN with a small payload into infinity). */
static inline uint16_t nmx_f32_to_bf16(float f) {
    uint32_t u = nmx_f32_bits(f);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t quiet = (u >> 16) | 0x0040u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
}

/* binary16 has 5 exponent bits (bias 15) and 10 fraction bits; float32 has 8 (bias 127) and 23.
 * Shifting a normal half's magnitude left by 13 lines the fields up; adding 112 (= 127 - 15) to
 * the exponent rebiases it, and infinity / NaN (exponent 31) move to exponent 255 by adding 224.
 * A subnormal half is its fraction times 2^-24, which float32 holds exactly. */
static inline float nmx_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t mag = h & 0x7fffu, shifted = mag << 13;
    uint32_t normal = shifted + (112u << 23);
    uint32_t special = (shifted + (224u << 23)) | (mag > 0x7c00u ? 0x00400000u : 0u);
    uint32_t subnormal = nmx_f32_bits((float)mag * 0x1p-24f);
    uint32_t bits = mag >= 0x7c00u ? special : mag >= 0x0400u ? normal : subnormal;
    return nmx_bits_f32(sign | bits);
}

/* float32 -> binary16, ties to even.
 * - normal results (|f| >= 2^-14): rebias the exponent, then round the 13 dropped fraction
 *   bits as for bfloat16; a carry out of the fraction correctly bumps the exponent;
 * - |f| >= 65520 (the midpoint between the largest half, 65504, and 2^16) rounds to infinity;
 * - subnormal results: |f| + 0.5 has a unit in the last place of 2^-24, the half subnormal
 *   step, so the float32 addition itself rounds to the nearest multiple (ties to even), and the
 *   low bits of the sum are the half's encoding (2^-14 itself comes out as the smallest normal);
 * - NaN is quieted, keeping the upper payload bits. */
static inline uint16_t nmx_f32_to_f16(float f) {
    uint32_t u = nmx_f32_bits(f), a = u & 0x7fffffffu;
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t r = a - (112u << 23);
    uint32_t normal = (r + 0x0fffu + ((r >> 13) & 1u)) >> 13;
    uint32_t subnormal = nmx_f32_bits(nmx_bits_f32(a) + 0.5f) - nmx_f32_bits(0.5f);
    uint32_t nan = 0x7e00u | ((a >> 13) & 0x03ffu);
    uint32_t bits = a > 0x7f800000u   ? nan
                    : a >= 0x477ff000u ? 0x7c00u
                    : a >= 0x38800000u ? normal
                                       : subnormal;
    return (uint16_t)(sign | bits);
}

#endif
