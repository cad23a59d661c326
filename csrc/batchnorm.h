/* Batch-normalization kernels on the (outer, C, inner) view of a C-contiguous array.
 *
 * Statistics run over outer and inner for each of the C channels. Every function returns 0, or
 * -1 when it could not allocate its scratch memory (nothing is written to any output then).
 *
 * Numerics: sums accumulate in double for both dtypes. The variance is one pass of sums shifted
 * by a per-channel pivot (the channel's first value): sum(d) and sum(d*d) with d = x - pivot. A
 * pivot taken from the data is at most sqrt(n) standard deviations from the mean, so the
 * subtraction var = E[d^2] - E[d]^2 loses no more than naive summation already does, and a
 * float32 channel with mean 1e4 and std 1 normalizes as well as a two-pass variance.
 */
#ifndef NORMAX_BATCHNORM_H
#define NORMAX_BATCHNORM_H

#include "normax.h"

/* Training forward: y = gamma * (x - mean) * invstd + beta with the biased batch variance.
 * mean and invstd (C doubles each) receive the batch statistics for the backward pass.
 * gamma, beta, running_mean, running_var may be NULL; the running buffers are updated in place
 * with the unbiased variance: running = (1 - momentum) * running + momentum * batch. */
int nmx_bn_train_f32(const float *x, nmx_index outer, nmx_index C, nmx_index inner,
                     const float *gamma, const float *beta, float *y, double *mean,
                     double *invstd, float *running_mean, float *running_var, double momentum,
                     double eps);
int nmx_bn_train_f64(const double *x, nmx_index outer, nmx_index C, nmx_index inner,
                     const double *gamma, const double *beta, double *y, double *mean,
                     double *invstd, double *running_mean, double *running_var, double momentum,
                     double eps);

/* Inference: y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta. */
int nmx_bn_infer_f32(const float *x, nmx_index outer, nmx_index C, nmx_index inner,
                     const float *gamma, const float *beta, const float *running_mean,
                     const float *running_var, double eps, float *y);
int nmx_bn_infer_f64(const double *x, nmx_index outer, nmx_index C, nmx_index inner,
                     const double *gamma, const double *beta, const double *running_mean,
                     const double *running_var, double eps, double *y);

/* Backward of the training forward through the batch statistics:
 * dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)), dgamma = sum(dy * xhat),
 * dbeta = sum(dy). gamma NULL means 1; dgamma and dbeta may be NULL (not computed). */
int nmx_bn_backward_f32(const float *dy, const float *x, nmx_index outer, nmx_index C,
                        nmx_index inner, const double *mean, const double *invstd,
                        const float *gamma, float *dx, float *dgamma, float *dbeta);
int nmx_bn_backward_f64(const double *dy, const double *x, nmx_index outer, nmx_index C,
                        nmx_index inner, const double *mean, const double *invstd,
                        const double *gamma, double *dx, double *dgamma, double *dbeta);

/* Half precision: x, y, dy and dx stored as float16 (kind NMX_F16) or bfloat16 (NMX_BF16) bit
 * patterns (half.h), the arithmetic of the float32 kernels on float32 tiles, every output
 * rounded once to nearest even. gamma, beta, the running statistics, dgamma and dbeta are
 * float32 (PyTorch's mixed-precision rule); mean and invstd double as above. */
int nmx_bn_train_h(int kind, const uint16_t *x, nmx_index outer, nmx_index C, nmx_index inner,
                   const float *gamma, const float *beta, uint16_t *y, double *mean,
                   double *invstd, float *running_mean, float *running_var, double momentum,
                   double eps);
int nmx_bn_infer_h(int kind, const uint16_t *x, nmx_index outer, nmx_index C, nmx_index inner,
                   const float *gamma, const float *beta, const float *running_mean,
                   const float *running_var, double eps, uint16_t *y);
int nmx_bn_backward_h(int kind, const uint16_t *dy, const uint16_t *x, nmx_index outer,
                      nmx_index C, nmx_index inner, const double *mean, const double *invstd,
                      const float *gamma, uint16_t *dx, float *dgamma, float *dbeta);

#endif
