/* Softmax, log-softmax and fused softmax cross-entropy kernels (no Python.h here).
 *
 * Every array is a C-contiguous (outer, classes, inner) block; the class axis is the middle one.
 * All reductions are max-shifted and written as 1 + s, where s sums exp(z_j - max) over every
 * entry but one maximum, so that log-sum-exp is log1p(s) and a dominating class keeps its tiny
 * loss. float32 inputs accumulate in float64.
 */
#ifndef NORMAX_SOFTMAX_H
#define NORMAX_SOFTMAX_H

#include "normax.h"

/* Arguments of the fused cross-entropy kernel. Exactly one of labels / probs is non-NULL. */
typedef struct {
    nmx_index outer, classes, inner;
    const void *labels;     /* integer targets, (outer, inner), int32 or int64 */
    int label_bytes;        /* 4 or 8 */
    const void *probs;      /* probability targets in z's dtype, (outer, classes, inner) */
    const double *weight;   /* per-class weights (classes entries) or NULL */
    int has_ignore;         /* labels equal to `ignore` contribute nothing */
    int64_t ignore;
    double eps;             /* label smoothing */
    double scale;           /* gradient factor: 1 / (summed weight) for "mean", else 1 */
    void *loss;             /* per-example losses in z's dtype, (outer, inner), or NULL */
} nmx_xent_args;

/* Validate integer labels before any kernel runs. Returns the flat index of the first label
 * outside [0, classes) that is not `ignore`, or -1 when all are valid; then *wsum receives the
 * summed weight (count if weight is NULL) of the labels that are not ignored. */
nmx_index nmx_xent_check_labels(const void *labels, int label_bytes, nmx_index n,
                                nmx_index classes, int has_ignore, int64_t ignore,
                                const double *weight, double *wsum);

/* Loss summed over examples (each example's loss times a->scale is NOT applied: the caller
 * divides); dz receives scale * d(sum of losses)/dz. */
double nmx_xent_f32(const float *z, float *dz, const nmx_xent_args *a);
double nmx_xent_f64(const double *z, double *dz, const nmx_xent_args *a);

/* out = softmax(z) (log_ == 0) or log_softmax(z) (log_ != 0) along the class axis. */
void nmx_softmax_f32(const float *z, float *out, nmx_index outer, nmx_index classes,
                     nmx_index inner, int log_);
void nmx_softmax_f64(const double *z, double *out, nmx_index outer, nmx_index classes,
                     nmx_index inner, int log_);

/* Backward of softmax (y = p, log_ == 0): dz = p * (g - sum(g * p)); of log_softmax
 * (y = lp, log_ != 0): dz = g - exp(lp) * sum(g). */
void nmx_softmax_backward_f32(const float *g, const float *y, float *dz, nmx_index outer,
                              nmx_index classes, nmx_index inner, int log_);
void nmx_softmax_backward_f64(const double *g, const double *y, double *dz, nmx_index outer,
                              nmx_index classes, nmx_index inner, int log_);

/* float16 (kind NMX_F16) and bfloat16 (NMX_BF16) storage, see half.h: the same kernels in
 * float32 arithmetic on converted tiles, every output rounded once to the input's kind; the
 * probabilities and per-example losses of `a` are in that kind too. They return 0, or -1 (and
 * write nothing) when their float32 scratch cannot be allocated. */
int nmx_xent_h(int kind, const uint16_t *z, uint16_t *dz, const nmx_xent_args *a, double *total);
int nmx_softmax_h(int kind, const uint16_t *z, uint16_t *out, nmx_index outer, nmx_index classes,
                  nmx_index inner, int log_);
int nmx_softmax_backward_h(int kind, const uint16_t *g, const uint16_t *y, uint16_t *dz,
                           nmx_index outer, nmx_index classes, nmx_index inner, int log_);

#endif
