/* Softmax, log-softmax and fused softmax cross-entropy on (outer, classes, inner) blocks:
 * float32 and float64 (softmax_half.c: float16 and bfloat16).
 *
 * The exponentials use a branch-free range reduction exp(x) = 2^k * exp(r), |r| <= ln2 / 2, with
 * a Taylor polynomial (degree 7 in float32, 13 in float64: truncation error below 0.1 ulp, about
 * 1 ulp with rounding) so that GCC vectorizes the hot loops; libm's exp does not vectorize
 * without -ffast-math (softmax_common.h). The per-type kernels live in softmax_impl.h, included
 * once per dtype.
 */
#include "softmax.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "half.h"
#include "platform.h"
#include "softmax_common.h"
#include "stream.h"

nmx_index nmx_xent_check_labels(const void *labels, int label_bytes, nmx_index n,
                                nmx_index classes, int has_ignore, int64_t ignore,
                                const double *weight, double *wsum) {
    double total = 0.0;
    for (nmx_index i = 0; i < n; i++) {
        int64_t y = nmx_label_at(labels, label_bytes, i);
        if (has_ignore && y == ignore) continue;
        if (y < 0 || y >= classes) return i;
        total += weight ? weight[y] : 1.0;
    }
    *wsum = total;
    return -1;
}

#define NMX_CLONES NMX_CLONES_SIMD

#include "softmax_f32.h"

#define T double
#define SFX f64
#define EXP nmx_exp_f64
#define LANES 8
#define VT nmx_vf64
#define VI nmx_vi64
#define VH nmx_vf64h
#define VIH nmx_vi64h
#include "softmax_impl.h"
#undef T
#undef SFX
#undef EXP
#undef LANES
#undef VT
#undef VI
#undef VH
#undef VIH
