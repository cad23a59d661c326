/* Softmax, log-softmax and cross-entropy on float16 / bfloat16 storage: the float32 arithmetic
 * on half rows directly (softmax_hrow.h) or on converted tiles (softmax_half.h). The float32
 * instance of softmax_impl.h is included for its inline pieces; its task runner, which the
 * tiles call, is compiled once, in softmax.c (NMX_SOFTMAX_HALF_TU leaves it out here). */
#include "softmax.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "half.h"
#include "platform.h"
#include "softmax_common.h"
#include "stream.h"

#define NMX_SOFTMAX_HALF_TU 1
#define NMX_CLONES NMX_CLONES_SIMD

#include "softmax_f32.h"

#include "softmax_half.h"
