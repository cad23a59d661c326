/* Fused optimizer updates: one pass over every parameter of a group, in place.
 *
 * A call updates a list of parameter arrays (all of one dtype) from their gradients and
 * optimizer state. The arrays are treated as one virtual concatenation, cut into fixed-size
 * chunks that the OpenMP threads take in turn, so 100 small arrays and one large one cost the
 * same per element and no thread idles. Each element is read and written exactly once; no
 * temporaries are allocated.
 *
 * The scalar hyperparameters are derived in Python (in double precision, once per step) as one
 * named record per kind (normax.optim._kinds: SGDHyper, ...), whose fields are the `h` of each
 * kind below in that order; the float32 kernels round each to float once, so every backend
 * does the same arithmetic in the same order.
 */
#ifndef NORMAX_OPTIM_H
#define NORMAX_OPTIM_H

#include "normax.h"
#include "half.h"

enum nmx_optim_kind {
    /* h: lr, weight_decay, momentum, 1 - dampening.  s0: momentum buffer (momentum > 0).
     * flags: NMX_OPT_NESTEROV, NMX_OPT_FIRST (the buffer starts as the gradient). */
    NMX_OPT_SGD = 0,
    /* h: lr (times 1 / (1 - beta^t) with bias correction), beta, 1 - beta.  s0: velocity. */
    NMX_OPT_MOMENTUM = 1,
    /* h: lr, weight_decay, alpha, 1 - alpha, eps, momentum.  s0: square average,
     * s1: gradient average (NMX_OPT_CENTERED), s2: momentum buffer (momentum > 0). */
    NMX_OPT_RMSPROP = 2,
    /* h: lr / (1 - beta1^t), L2 weight_decay, decoupled decay factor 1 - lr * weight_decay,
     * 1 - beta1, beta2, 1 - beta2, eps, sqrt(1 - beta2^t).  s0: first moment, s1: second
     * moment, s2: running maximum of the second moment (NMX_OPT_AMSGRAD). */
    NMX_OPT_ADAM = 3,
};

enum nmx_optim_flag {
    NMX_OPT_NESTEROV = 1,
    NMX_OPT_FIRST = 2,
    NMX_OPT_CENTERED = 4,
    NMX_OPT_AMSGRAD = 8,
};

#define NMX_OPT_NHYPER 8

typedef struct {
    int kind;  /* enum nmx_optim_kind */
    int flags; /* enum nmx_optim_flag, or-ed */
    double h[NMX_OPT_NHYPER];
    nmx_index narrays;
    const nmx_index *sizes; /* elements of array k */
    void *const *p;         /* parameters, updated in place */
    const void *const *g;   /* gradients, read only */
    void *const *s[3];      /* state arrays; NULL lists where the kind does not use them */
} nmx_optim_call;

/* Apply one update. `c->p[k]`, `c->g[k]` and each used `c->s[j][k]` hold `c->sizes[k]`
 * contiguous elements of float (f32) or double (f64) and do not overlap one another. */
void nmx_optim_step_f32(const nmx_optim_call *c);
void nmx_optim_step_f64(const nmx_optim_call *c);

/* Mixed precision: float32 master weights and state, half-precision gradients and/or a half
 * copy of the updated weights. `c` is a float32 call except that, with `gkind` (NMX_F16 or
 * NMX_BF16), `c.g[k]` holds uint16_t halves, widened exactly to float32 as they are read; with
 * `hkind`, `half[k]` (uint16_t, `c.sizes[k]` elements, overlapping nothing) receives the
 * updated parameters rounded once to nearest even, in the same pass. Both work on tiles of
 * NMX_HALF_TILE elements converted by the bulk converters of half.h, so the element loops are
 * the float32 ones, unchanged: the result is bit-identical to nmx_optim_step_f32 on the
 * widened gradients, followed by nmx_float_to_half. */
typedef struct {
    nmx_optim_call c; /* first: the range functions get &c and recover the whole record */
    int gkind;        /* 0 (float32 gradients), NMX_F16 or NMX_BF16 */
    int hkind;        /* 0 (no copy), NMX_F16 or NMX_BF16 */
    uint16_t *const *half;
} nmx_optim_half_call;

void nmx_optim_step_half(const nmx_optim_half_call *hc);

#endif
