/* Fused optimizer updates (see optim.h).
 *
 * The element loops are written once below for a generic element type T and instantiated for
 * float and double by including this file into itself twice (NMX_OPTIM_TEMPLATE). Options that
 * do not change per element (weight decay on or off, centered, amsgrad, which lerp form) are
 * turned into compile-time constants through always-inline helpers, so each combination gets
 * its own branch-free, vectorizable loop.
 *
 * Every formula follows the order of operations of the reference update (and of torch.optim):
 * lerp(a, b, w) is a + w (b - a) for |w| < 0.5 and b - (b - a)(1 - w) otherwise, and
 * `p - s * x` equals the reference's `p + (-s) * x` exactly.
 */
#ifndef NMX_OPTIM_TEMPLATE

#include "optim.h"

#include <math.h>
#include <stddef.h>

#include "platform.h"

typedef void (*nmx_range_fn)(const nmx_optim_call *c, nmx_index k, nmx_index lo, nmx_index n);

/* Work is handed out in chunks of this many elements of the virtual concatenation, dynamically:
 * on a shared machine a descheduled thread then delays only its current chunk instead of half
 * the update (a static split made 2-thread runs slower than 1-thread ones under load). 2**16
 * float32 elements are 256 KiB per array, far above the cost of taking a chunk. */
#define NMX_OPT_CHUNK ((nmx_index)1 << 16)

/* Run `fn` over the virtual concatenation of the arrays, chunk by chunk. */
static void run_ranges(const nmx_optim_call *c, nmx_range_fn fn) {
    nmx_index total = 0;
    for (nmx_index k = 0; k < c->narrays; k++) total += c->sizes[k];
    nmx_index nchunks = (total + NMX_OPT_CHUNK - 1) / NMX_OPT_CHUNK;
    int nt = nmx_threads_for(total);
    if (nchunks < nt) nt = (int)(nchunks > 0 ? nchunks : 1);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        /* each thread receives increasing chunk numbers, so its cursor only moves forward */
        nmx_index k = 0, off = 0; /* array k starts at virtual offset off */
#pragma omp for schedule(dynamic, 1)
        for (nmx_index ch = 0; ch < nchunks; ch++) {
            nmx_index lo = ch * NMX_OPT_CHUNK;
            nmx_index hi = total - lo < NMX_OPT_CHUNK ? total : lo + NMX_OPT_CHUNK;
            while (k < c->narrays && off + c->sizes[k] <= lo) off += c->sizes[k++];
            for (nmx_index j = k, o = off; j < c->narrays && o < hi; o += c->sizes[j++]) {
                nmx_index a = lo > o ? lo - o : 0;
                nmx_index b = hi - o < c->sizes[j] ? hi - o : c->sizes[j];
                if (a < b) fn(c, j, a, b - a);
            }
        }
    }
}

#define NMX_ALWAYS_INLINE static inline __attribute__((always_inline))

/* The element loops are compute-bound when the arrays sit in cache (small networks): build an
 * AVX2 version next to the baseline one and pick it at load time. AVX2 without FMA keeps every
 * result bit-identical to the baseline build and to the NumPy reference. */
#define NMX_CLONES NMX_CLONES_AVX2

/* Instantiate the element loops for float and double. */
#define NMX_OPTIM_TEMPLATE
#define T float
#define SUF(name) name##_f32
#define SQRT sqrtf
#define NMX_OPTIM_HALF /* the mixed-precision entries exist for float32 master weights only */
#include "optim.c"
#undef NMX_OPTIM_HALF
#undef T
#undef SUF
#undef SQRT
#define T double
#define SUF(name) name##_f64
#define SQRT sqrt
#include "optim.c"
#undef T
#undef SUF
#undef SQRT
#undef NMX_OPTIM_TEMPLATE

#else /* NMX_OPTIM_TEMPLATE: the element loops for one element type T */

/* ---- SGD: d = g + wd p; buf = mu buf + (1 - dampening) d (buf = d on the first step);
 *      d = d + mu buf (nesterov) or buf; p -= lr d ---- */
NMX_ALWAYS_INLINE void SUF(sgd_loop)(T *restrict p, const T *restrict g, T *restrict buf,
                                     nmx_index n, const double *h, const int l2, const int mom,
                                     const int nesterov, const int first) {
    const T lr = (T)h[0], wd = (T)h[1], mu = (T)h[2], damp1 = (T)h[3];
    for (nmx_index i = 0; i < n; i++) {
        T d = l2 ? g[i] + wd * p[i] : g[i];
        if (mom) {
            T b = first ? d : mu * buf[i] + damp1 * d;
            buf[i] = b;
            d = nesterov ? d + mu * b : b;
        }
        p[i] = p[i] - lr * d;
    }
}

NMX_CLONES
static void SUF(sgd_span)(const nmx_optim_call *c, nmx_index k, nmx_index lo, nmx_index n,
                          const T *g) {
    T *p = (T *)c->p[k] + lo;
    const double *h = c->h;
    const int l2 = h[1] != 0.0, nest = (c->flags & NMX_OPT_NESTEROV) != 0;
    if (c->s[0] == NULL) {
        if (l2) SUF(sgd_loop)(p, g, NULL, n, h, 1, 0, 0, 0);
        else SUF(sgd_loop)(p, g, NULL, n, h, 0, 0, 0, 0);
        return;
    }
    T *buf = (T *)c->s[0][k] + lo;
    switch (l2 | nest << 1 | ((c->flags & NMX_OPT_FIRST) != 0) << 2) {
    case 0: SUF(sgd_loop)(p, g, buf, n, h, 0, 1, 0, 0); break;
    case 1: SUF(sgd_loop)(p, g, buf, n, h, 1, 1, 0, 0); break;
    case 2: SUF(sgd_loop)(p, g, buf, n, h, 0, 1, 1, 0); break;
    case 3: SUF(sgd_loop)(p, g, buf, n, h, 1, 1, 1, 0); break;
    case 4: SUF(sgd_loop)(p, g, buf, n, h, 0, 1, 0, 1); break;
    case 5: SUF(sgd_loop)(p, g, buf, n, h, 1, 1, 0, 1); break;
    case 6: SUF(sgd_loop)(p, g, buf, n, h, 0, 1, 1, 1); break;
    default: SUF(sgd_loop)(p, g, buf, n, h, 1, 1, 1, 1); break;
    }
}

/* ---- Momentum (exponentially weighted): v = beta v + (1 - beta) g; p -= lr v ---- */
NMX_CLONES
static void SUF(momentum_span)(const nmx_optim_call *c, nmx_index k, nmx_index lo, nmx_index n,
                               const T *restrict g) {
    T *restrict p = (T *)c->p[k] + lo;
    T *restrict v = (T *)c->s[0][k] + lo;
    const T lr = (T)c->h[0], beta = (T)c->h[1], omb = (T)c->h[2];
    for (nmx_index i = 0; i < n; i++) {
        T vi = beta * v[i] + omb * g[i];
        v[i] = vi;
        p[i] = p[i] - lr * vi;
    }
}

/* ---- RMSprop: sq = alpha sq + (1 - alpha) d d; avg = sqrt(sq [- ga ga]) + eps;
 *      p -= lr buf with buf = mu buf + d / avg, or p -= lr (d / avg) ---- */
NMX_ALWAYS_INLINE void SUF(rmsprop_loop)(T *restrict p, const T *restrict g, T *restrict sq,
                                         T *restrict ga, T *restrict buf, nmx_index n,
                                         const double *h, const int l2, const int centered,
                                         const int mom, const int small_w) {
    const T lr = (T)h[0], wd = (T)h[1], alpha = (T)h[2], w = (T)h[3], eps = (T)h[4];
    const T mu = (T)h[5], wc = (T)1 - w;
    for (nmx_index i = 0; i < n; i++) {
        T d = l2 ? g[i] + wd * p[i] : g[i];
        T s = sq[i] * alpha + w * d * d;
        sq[i] = s;
        if (centered) {
            T a = small_w ? ga[i] + w * (d - ga[i]) : d - (d - ga[i]) * wc;
            ga[i] = a;
            s = s - a * a;
        }
        T avg = SQRT(s) + eps;
        if (mom) {
            T b = mu * buf[i] + d / avg;
            buf[i] = b;
            p[i] = p[i] - lr * b;
        } else {
            p[i] = p[i] - lr * (d / avg);
        }
    }
}

NMX_CLONES
static void SUF(rmsprop_span)(const nmx_optim_call *c, nmx_index k, nmx_index lo, nmx_index n,
                              const T *g) {
    T *p = (T *)c->p[k] + lo;
    T *sq = (T *)c->s[0][k] + lo;
    T *ga = c->s[1] ? (T *)c->s[1][k] + lo : NULL;
    T *buf = c->s[2] ? (T *)c->s[2][k] + lo : NULL;
    const double *h = c->h;
    const int l2 = h[1] != 0.0, small = fabs(h[3]) < 0.5;
    switch (l2 | (ga != NULL) << 1 | (buf != NULL) << 2 | small << 3) {
    case 0: SUF(rmsprop_loop)(p, g, sq, ga, buf, n, h, 0, 0, 0, 0); break;
    case 1: SUF(rmsprop_loop)(p, g, sq, ga, buf, n, h, 1, 0, 0, 0); break;
    case 2: SUF(rmsprop_loop)(p, g, sq, ga, buf, n, h, 0, 1, 0, 0); break;
    case 3: SUF(rmsprop_loop)(p, g, sq, ga, buf, n, h, 1, 1, 0, 0); break;
    case 4: SUF(rmsprop_loop)(p, g, sq, ga, buf, n, h, 0, 0, 1, 0); break;
    case 5: SUF(rmsprop_loop)(p, g, sq, ga, buf, n, h, 1, 0, 1, 0); break;
    case 6: SUF(rmsprop_loop)(p, g, sq, ga, buf, n, h, 0, 1, 1, 0); break;
    case 7: SUF(rmsprop_loop)(p, g, sq, ga, buf, n, h, 1, 1, 1, 0); break;
    case 8: SUF(rmsprop_loop)(p, g, sq, ga, buf, n, h, 0, 0, 0, 1); break;
    case 9: SUF(rmsprop_loop)(p, g, sq, ga, buf, n, h, 1, 0, 0, 1); break;
    case 10: SUF(rmsprop_loop)(p, g, sq, ga, buf, n, h, 0, 1, 0, 1); break;
    case 11: SUF(rmsprop_loop)(p, g, sq, ga, buf, n, h, 1, 1, 0, 1); break;
    case 12: SUF(rmsprop_loop)(p, g, sq, ga, buf, n, h, 0, 0, 1, 1); break;
    case 13: SUF(rmsprop_loop)(p, g, sq, ga, buf, n, h, 1, 0, 1, 1); break;
    case 14: SUF(rmsprop_loop)(p, g, sq, ga, buf, n, h, 0, 1, 1, 1); break;
    default: SUF(rmsprop_loop)(p, g, sq, ga, buf, n, h, 1, 1, 1, 1); break;
    }
}

/* ---- Adam / AdamW: p *= decay (AdamW); d = g + wd p (Adam's L2); m = lerp(m, d, 1 - beta1);
 *      v = beta2 v + (1 - beta2) d d; denom = sqrt(v or max(vmax, v)) / sqrt(bc2) + eps;
 *      p -= step_size (m / denom) ---- */
NMX_ALWAYS_INLINE void SUF(adam_loop)(T *restrict p, const T *restrict g, T *restrict m,
                                      T *restrict v, T *restrict vmax, nmx_index n,
                                      const double *h, const int l2, const int amsgrad,
                                      const int small_w) {
    const T step = (T)h[0], wd = (T)h[1], decay = (T)h[2], w = (T)h[3], b2 = (T)h[4];
    const T omb2 = (T)h[5], eps = (T)h[6], bc2s = (T)h[7], wc = (T)1 - w;
    for (nmx_index i = 0; i < n; i++) {
        T pi = p[i] * decay; /* decay is exactly 1 unless decoupled weight decay is on */
        T d = l2 ? g[i] + wd * pi : g[i];
        T mi = small_w ? m[i] + w * (d - m[i]) : d - (d - m[i]) * wc;
        T vi = v[i] * b2 + omb2 * d * d;
        m[i] = mi;
        v[i] = vi;
        if (amsgrad) {
            /* NaN-propagating maximum: a NaN v stays NaN, so vmax >= v picks it up */
            vi = vmax[i] >= vi ? vmax[i] : vi;
            vmax[i] = vi;
        }
        T denom = SQRT(vi) / bc2s + eps;
        p[i] = pi - step * (mi / denom);
    }
}

NMX_CLONES
static void SUF(adam_span)(const nmx_optim_call *c, nmx_index k, nmx_index lo, nmx_index n,
                           const T *g) {
    T *p = (T *)c->p[k] + lo;
    T *m = (T *)c->s[0][k] + lo, *v = (T *)c->s[1][k] + lo;
    T *vmax = c->s[2] ? (T *)c->s[2][k] + lo : NULL;
    const double *h = c->h;
    const int l2 = h[1] != 0.0, small = fabs(h[3]) < 0.5;
    switch (l2 | (vmax != NULL) << 1 | small << 2) {
    case 0: SUF(adam_loop)(p, g, m, v, vmax, n, h, 0, 0, 0); break;
    case 1: SUF(adam_loop)(p, g, m, v, vmax, n, h, 1, 0, 0); break;
    case 2: SUF(adam_loop)(p, g, m, v, vmax, n, h, 0, 1, 0); break;
    case 3: SUF(adam_loop)(p, g, m, v, vmax, n, h, 1, 1, 0); break;
    case 4: SUF(adam_loop)(p, g, m, v, vmax, n, h, 0, 0, 1); break;
    case 5: SUF(adam_loop)(p, g, m, v, vmax, n, h, 1, 0, 1); break;
    case 6: SUF(adam_loop)(p, g, m, v, vmax, n, h, 0, 1, 1); break;
    default: SUF(adam_loop)(p, g, m, v, vmax, n, h, 1, 1, 1); break;
    }
}

/* The range functions of run_ranges: the kind's span on the gradient as it is stored. */
#define NMX_RANGE(kind)                                                                       \
    static void SUF(kind##_range)(const nmx_optim_call *c, nmx_index k, nmx_index lo,          \
                                  nmx_index n) {                                               \
        SUF(kind##_span)(c, k, lo, n, (const T *)c->g[k] + lo);                                \
    }
NMX_RANGE(sgd)
NMX_RANGE(momentum)
NMX_RANGE(rmsprop)
NMX_RANGE(adam)
#undef NMX_RANGE

void SUF(nmx_optim_step)(const nmx_optim_call *c) {
    switch (c->kind) {
    case NMX_OPT_SGD: run_ranges(c, SUF(sgd_range)); break;
    case NMX_OPT_MOMENTUM: run_ranges(c, SUF(momentum_range)); break;
    case NMX_OPT_RMSPROP: run_ranges(c, SUF(rmsprop_range)); break;
    case NMX_OPT_ADAM: run_ranges(c, SUF(adam_range)); break;
    default: break; /* the binding rejects unknown kinds */
    }
}

#ifdef NMX_OPTIM_HALF
/* Mixed precision, float32 only: tile by tile, widen the half gradient into a stack buffer,
 * run the float32 span on it, and round the tile's updated parameters (still in L1) into the
 * half copy. The bulk converters are exact and dispatched on the CPU once (half.c). Measured
 * against the scalar converters of half.h inlined into the Adam loop (AVX2 clone, 16M
 * elements, 1 and 2 threads, a loaded machine): with a float16 copy the tiles take 1.3-1.7x
 * less time, since the portable scalar code does not become F16C instructions; for bfloat16
 * the inline form ranged from 5% slower to 30% faster (with a copy), within the noise of
 * those runs, so one form serves both formats for now. */
typedef void (*nmx_span_fn)(const nmx_optim_call *c, nmx_index k, nmx_index lo, nmx_index n,
                            const float *g);

static void half_tiles(const nmx_optim_call *c, nmx_index k, nmx_index lo, nmx_index n,
                       nmx_span_fn span) {
    /* c is the first member of the mixed-precision record (see nmx_optim_step_half) */
    const nmx_optim_half_call *hc = (const nmx_optim_half_call *)c;
    float buf[NMX_HALF_TILE];
    for (nmx_index t = lo; t < lo + n; t += NMX_HALF_TILE) {
        nmx_index m = lo + n - t < NMX_HALF_TILE ? lo + n - t : NMX_HALF_TILE;
        const float *g = buf;
        if (hc->gkind) nmx_half_to_float(hc->gkind, (const uint16_t *)c->g[k] + t, buf, m);
        else g = (const float *)c->g[k] + t;
        span(c, k, t, m, g);
        if (hc->hkind)
            nmx_float_to_half(hc->hkind, (const float *)c->p[k] + t, hc->half[k] + t, m);
    }
}

#define NMX_HALF_RANGE(kind)                                                                  \
    static void kind##_half_range(const nmx_optim_call *c, nmx_index k, nmx_index lo,          \
                                  nmx_index n) {                                               \
        half_tiles(c, k, lo, n, kind##_span_f32);                                              \
    }
NMX_HALF_RANGE(sgd)
NMX_HALF_RANGE(momentum)
NMX_HALF_RANGE(rmsprop)
NMX_HALF_RANGE(adam)
#undef NMX_HALF_RANGE

void nmx_optim_step_half(const nmx_optim_half_call *hc) {
    const nmx_optim_call *c = &hc->c;
    if (!hc->gkind && !hc->hkind) {
        nmx_optim_step_f32(c);
        return;
    }
    switch (c->kind) {
    case NMX_OPT_SGD: run_ranges(c, sgd_half_range); break;
    case NMX_OPT_MOMENTUM: run_ranges(c, momentum_half_range); break;
    case NMX_OPT_RMSPROP: run_ranges(c, rmsprop_half_range); break;
    case NMX_OPT_ADAM: run_ranges(c, adam_half_range); break;
    default: break; /* the binding rejects unknown kinds */
    }
}
#endif

#endif /* NMX_OPTIM_TEMPLATE */
