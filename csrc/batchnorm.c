/* Batch-normalization kernels: the float32 and float64 instances of batchnorm_impl.h. */
#include "batchnorm.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* The wheel is built for baseline x86-64; the hot loops are additionally compiled for AVX2 and
 * AVX-512 and picked at load time (GNU ifunc). Sanitizer builds keep one version. */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && \
    !defined(__SANITIZE_ADDRESS__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define NMX_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
#endif
#ifndef NMX_CLONES
#define NMX_CLONES
#endif

/* Independent accumulators per run reduction: four AVX-512 registers of doubles. */
#define NMX_LANES 32

/* Scratch of a call: 2 * C partial sums per thread (double) and `per` per-channel constants of
 * the element type (at most 8 bytes each). Small channel counts use the stack: a (32, 64) batch
 * then calls no allocator. On allocation failure the kernel returns -1 before writing. */
#define NMX_STACK_BYTES 8192
typedef struct {
    double *acc;
    void *k;
    void *heap;
} nmx_scratch;

static inline int nmx_scratch_init(nmx_scratch *s, double *stack, nmx_index C, int nt, int per) {
    size_t nacc = 2 * (size_t)C * (size_t)(nt > 0 ? nt : 0), bytes = (nacc + (size_t)per * C) * 8;
    s->heap = NULL;
    if (bytes <= NMX_STACK_BYTES) {
        s->acc = stack;
    } else {
        s->heap = malloc(bytes);
        if (!s->heap) return -1;
        s->acc = s->heap;
    }
    s->k = s->acc + nacc;
    return 0;
}

static inline void nmx_scratch_free(nmx_scratch *s) { free(s->heap); }

#define NMX_SCRATCH(name, C, nt, per)                                        \
    double name##_stack[NMX_STACK_BYTES / sizeof(double)];                   \
    nmx_scratch name;                                                        \
    if (nmx_scratch_init(&name, name##_stack, (C), (nt), (per)) < 0) return -1

#define T float
#define SUF f32
#include "batchnorm_impl.h"
#undef T
#undef SUF

#define T double
#define SUF f64
#include "batchnorm_impl.h"
#undef T
#undef SUF
