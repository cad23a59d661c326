/* A small test driver of the C kernels through their public headers only, for builds where
 * Python is not available (cross-compiled targets under an emulator, other compilers).
 *
 * Each check compares a kernel with a plain double-precision loop written here, on shapes that
 * take both inner loops (inner == 1 and inner > 1) and the multithreaded path (more than
 * NMX_PARALLEL_MIN_WORK elements). Exit status 0 when every check passes.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "batchnorm.h"
#include "half.h"
#include "normax.h"
#include "optim.h"
#include "softmax.h"

static int failures = 0;

static void check(const char *what, double err, double tol) {
    int ok = err <= tol; /* NaN fails */
    printf("%-44s max error %.3g (tolerance %.3g) %s\n", what, err, tol, ok ? "ok" : "FAILED");
    failures += !ok;
}

/* Deterministic pseudo-random values in [-scale, scale) with an offset. */
static double uniform(unsigned *state, double offset, double scale) {
    *state = *state * 1664525u + 1013904223u;
    return offset + scale * ((double)(*state >> 8) / (double)(1u << 24) * 2.0 - 1.0);
}

static void test_batchnorm(nmx_index outer, nmx_index C, nmx_index inner) {
    nmx_index n = outer * C * inner, m = outer * inner;
    double *x = malloc(sizeof(double) * n), *y = malloc(sizeof(double) * n);
    double *g = malloc(sizeof(double) * C), *b = malloc(sizeof(double) * C);
    double *mean = malloc(sizeof(double) * C), *invstd = malloc(sizeof(double) * C);
    double *rm = calloc(C, sizeof(double)), *rv = malloc(sizeof(double) * C);
    float *xf = malloc(sizeof(float) * n), *yf = malloc(sizeof(float) * n);
    float *gf = malloc(sizeof(float) * C), *bf = malloc(sizeof(float) * C);
    float *rmf = calloc(C, sizeof(float)), *rvf = malloc(sizeof(float) * C);
    unsigned s = 1;
    for (nmx_index c = 0; c < C; ++c) {
        g[c] = gf[c] = (float)(1.0 + 0.01 * c);
        b[c] = bf[c] = (float)(0.1 * c);
        rv[c] = rvf[c] = 1.0f;
    }
    for (nmx_index i = 0; i < n; ++i) /* channel means near 1e4: the variance must not cancel */
        x[i] = xf[i] = (float)uniform(&s, 1e4, 2.0);
    int rc = nmx_bn_train_f64(x, outer, C, inner, g, b, y, mean, invstd, rm, rv, 0.1, 1e-5);
    int rcf = nmx_bn_train_f32(xf, outer, C, inner, gf, bf, yf, mean + 0, invstd + 0, rmf, rvf,
                               0.1, 1e-5);
    double err = rc != 0 || rcf != 0 ? INFINITY : 0.0, errf = err;
    for (nmx_index c = 0; c < C; ++c) {
        double s1 = 0, s2 = 0;
        for (nmx_index o = 0; o < outer; ++o)
            for (nmx_index i = 0; i < inner; ++i) s1 += x[(o * C + c) * inner + i];
        double mu = s1 / m;
        for (nmx_index o = 0; o < outer; ++o)
            for (nmx_index i = 0; i < inner; ++i) {
                double d = x[(o * C + c) * inner + i] - mu;
                s2 += d * d;
            }
        double is = 1.0 / sqrt(s2 / m + 1e-5);
        for (nmx_index o = 0; o < outer; ++o)
            for (nmx_index i = 0; i < inner; ++i) {
                nmx_index k = (o * C + c) * inner + i;
                double want = (x[k] - mu) * is * g[c] + b[c];
                err = fmax(err, fabs(y[k] - want));
                errf = fmax(errf, fabs(yf[k] - want));
            }
        err = fmax(err, fabs(rv[c] - (0.9 + 0.1 * s2 / (m - 1))) + fabs(rm[c] - 0.1 * mu));
    }
    char what[64];
    snprintf(what, sizeof what, "bn_train_f64 (%lld, %lld, %lld)", (long long)outer,
             (long long)C, (long long)inner);
    check(what, err, 1e-9);
    snprintf(what, sizeof what, "bn_train_f32 (%lld, %lld, %lld)", (long long)outer,
             (long long)C, (long long)inner);
    check(what, errf, 5e-4);
    free(x), free(y), free(g), free(b), free(mean), free(invstd), free(rm), free(rv);
    free(xf), free(yf), free(gf), free(bf), free(rmf), free(rvf);
}

static void test_softmax(nmx_index outer, nmx_index K, nmx_index inner) {
    nmx_index n = outer * K * inner, rows = outer * inner;
    double *z = malloc(sizeof(double) * n), *p = malloc(sizeof(double) * n);
    double *lp = malloc(sizeof(double) * n), *dz = malloc(sizeof(double) * n);
    double *loss = malloc(sizeof(double) * rows);
    float *zf = malloc(sizeof(float) * n), *pf = malloc(sizeof(float) * n);
    int64_t *labels = malloc(sizeof(int64_t) * rows);
    unsigned s = 7;
    for (nmx_index i = 0; i < n; ++i) z[i] = zf[i] = (float)uniform(&s, 0.0, 8.0);
    for (nmx_index r = 0; r < rows; ++r) labels[r] = (r * 7 + 3) % K;
    nmx_softmax_f64(z, p, outer, K, inner, 0);
    nmx_softmax_f64(z, lp, outer, K, inner, 1);
    nmx_softmax_f32(zf, pf, outer, K, inner, 0);
    double wsum = 0;
    nmx_index bad = nmx_xent_check_labels(labels, 8, rows, K, 0, 0, NULL, &wsum);
    nmx_xent_args a = {outer, K, inner, labels, 8, NULL, NULL, 0, 0, 0.0, 1.0 / (double)rows,
                       loss};
    double total = nmx_xent_f64(z, dz, &a);
    double ep = bad != -1 || wsum != (double)rows ? INFINITY : 0.0, elp = ep, epf = ep, el = ep;
    double want_total = 0;
    for (nmx_index o = 0; o < outer; ++o)
        for (nmx_index i = 0; i < inner; ++i) {
            double mx = -INFINITY, sum = 0;
            for (nmx_index k = 0; k < K; ++k) mx = fmax(mx, z[(o * K + k) * inner + i]);
            for (nmx_index k = 0; k < K; ++k) sum += exp(z[(o * K + k) * inner + i] - mx);
            nmx_index r = o * inner + i;
            for (nmx_index k = 0; k < K; ++k) {
                nmx_index q = (o * K + k) * inner + i;
                double pk = exp(z[q] - mx) / sum, lpk = (z[q] - mx) - log(sum);
                ep = fmax(ep, fabs(p[q] - pk));
                epf = fmax(epf, fabs(pf[q] - pk));
                elp = fmax(elp, fabs(lp[q] - lpk));
                el = fmax(el, fabs(dz[q] - (pk - (k == labels[r])) / (double)rows));
                if (k == labels[r]) {
                    el = fmax(el, fabs(loss[r] + lpk));
                    want_total -= lpk;
                }
            }
        }
    el = fmax(el, fabs(total - want_total) / want_total);
    char what[64];
    snprintf(what, sizeof what, "softmax_f64 (%lld, %lld, %lld)", (long long)outer, (long long)K,
             (long long)inner);
    check(what, ep, 1e-14);
    snprintf(what, sizeof what, "log_softmax_f64 (%lld, %lld, %lld)", (long long)outer,
             (long long)K, (long long)inner);
    check(what, elp, 1e-13);
    snprintf(what, sizeof what, "softmax_f32 (%lld, %lld, %lld)", (long long)outer, (long long)K,
             (long long)inner);
    check(what, epf, 1e-6);
    snprintf(what, sizeof what, "xent_f64 + gradient (%lld, %lld, %lld)", (long long)outer,
             (long long)K, (long long)inner);
    check(what, el, 1e-12);
    free(z), free(p), free(lp), free(dz), free(loss), free(zf), free(pf), free(labels);
}

/* Half-precision softmax kernels against double loops on the upcast input: every result within
 * one half ulp relative plus one ulp of 1 absolute (the tolerance the Python tests state), NaN
 * where the reference is NaN. Covers grouped few-class rows, rows longer than a conversion
 * tile (heap scratch), column blocks and the parallel path. */
static double half_err(int kind, const uint16_t *got, const double *want, nmx_index n) {
    double ulp = kind == NMX_F16 ? 0x1p-10 : 0x1p-7, worst = 0.0;
    float g;
    for (nmx_index i = 0; i < n; i++) {
        nmx_half_to_float(kind, got + i, &g, 1);
        double e = fabs((double)g - want[i]) / (ulp * fabs(want[i]) + ulp);
        worst = e > worst || e != e ? e : worst;
    }
    return worst;
}

static void test_softmax_half(int kind, const char *name, nmx_index outer, nmx_index K,
                              nmx_index inner) {
    nmx_index n = outer * K * inner, rows = outer * inner;
    uint16_t *zh = malloc(sizeof(uint16_t) * n), *ph = malloc(sizeof(uint16_t) * n);
    uint16_t *lph = malloc(sizeof(uint16_t) * n), *dzh = malloc(sizeof(uint16_t) * n);
    uint16_t *bh = malloc(sizeof(uint16_t) * n), *lossh = malloc(sizeof(uint16_t) * rows);
    float *zf = malloc(sizeof(float) * n);
    double *p = malloc(sizeof(double) * n), *lp = malloc(sizeof(double) * n);
    double *dz = malloc(sizeof(double) * n), *bwd = malloc(sizeof(double) * n);
    double *loss = malloc(sizeof(double) * rows);
    int64_t *labels = malloc(sizeof(int64_t) * rows);
    unsigned s = 11;
    for (nmx_index i = 0; i < n; ++i) zf[i] = (float)uniform(&s, 0.0, 6.0);
    nmx_float_to_half(kind, zf, zh, n);
    nmx_half_to_float(kind, zh, zf, n); /* the exact values the kernels see */
    for (nmx_index r = 0; r < rows; ++r) labels[r] = (r * 5 + 1) % K;
    nmx_xent_args a = {outer, K, inner, labels, 8, NULL, NULL, 0, 0, 0.0, 1.0 / (double)rows,
                       lossh};
    double total = 0.0, want_total = 0.0;
    int rc = nmx_softmax_h(kind, zh, ph, outer, K, inner, 0);
    rc |= nmx_softmax_h(kind, zh, lph, outer, K, inner, 1);
    rc |= nmx_xent_h(kind, zh, dzh, &a, &total);
    rc |= nmx_softmax_backward_h(kind, zh, ph, bh, outer, K, inner, 0); /* g = z */
    for (nmx_index o = 0; o < outer; ++o)
        for (nmx_index i = 0; i < inner; ++i) {
            double mx = -INFINITY, sum = 0, gp = 0;
            float pf;
            for (nmx_index k = 0; k < K; ++k) mx = fmax(mx, zf[(o * K + k) * inner + i]);
            for (nmx_index k = 0; k < K; ++k) sum += exp(zf[(o * K + k) * inner + i] - mx);
            for (nmx_index k = 0; k < K; ++k) { /* the backward reads the half p */
                nmx_index q = (o * K + k) * inner + i;
                nmx_half_to_float(kind, ph + q, &pf, 1);
                gp += (double)zf[q] * pf;
            }
            nmx_index r = o * inner + i;
            for (nmx_index k = 0; k < K; ++k) {
                nmx_index q = (o * K + k) * inner + i;
                p[q] = exp(zf[q] - mx) / sum;
                lp[q] = (zf[q] - mx) - log(sum);
                dz[q] = (p[q] - (k == labels[r])) / (double)rows;
                nmx_half_to_float(kind, ph + q, &pf, 1);
                bwd[q] = pf * (zf[q] - gp);
                if (k == labels[r]) loss[r] = -lp[q], want_total -= lp[q];
            }
        }
    double err = rc ? INFINITY : half_err(kind, ph, p, n);
    err = fmax(err, half_err(kind, lph, lp, n));
    err = fmax(err, half_err(kind, dzh, dz, n));
    err = fmax(err, half_err(kind, bh, bwd, n));
    err = fmax(err, half_err(kind, lossh, loss, rows));
    err = fmax(err, fabs(total - want_total) / want_total * 1e5); /* float32 terms, float64 sum */
    char what[64];
    snprintf(what, sizeof what, "softmax family %s (%lld, %lld, %lld)", name, (long long)outer,
             (long long)K, (long long)inner);
    check(what, err, 1.0);
    free(zh), free(ph), free(lph), free(dzh), free(bh), free(lossh), free(zf);
    free(p), free(lp), free(dz), free(bwd), free(loss), free(labels);
}

static void test_sgd(nmx_index size) {
    double *p = malloc(sizeof(double) * size), *g = malloc(sizeof(double) * size);
    double *p0 = malloc(sizeof(double) * size);
    unsigned s = 3;
    for (nmx_index i = 0; i < size; ++i) {
        p[i] = p0[i] = uniform(&s, 0.0, 1.0);
        g[i] = uniform(&s, 0.0, 1.0);
    }
    void *ps[1] = {p};
    const void *gs[1] = {g};
    nmx_optim_call call = {NMX_OPT_SGD, 0, {0.5, 0.0, 0.0, 1.0}, 1, &size, ps, gs, {0}};
    nmx_optim_step_f64(&call);
    double err = 0;
    for (nmx_index i = 0; i < size; ++i) err = fmax(err, fabs(p[i] - (p0[i] - 0.5 * g[i])));
    check("optim_step_f64 (SGD)", err, 0.0);
    free(p), free(g), free(p0);
}

/* Every half bit pattern widens and narrows back to itself (NaN to a NaN); a float32 between two
 * neighbouring halves rounds to the nearer, and at the midpoint to the one with an even
 * encoding; values past the largest finite half become infinite. Counts the mismatches. */
static void test_half(int kind, const char *name) {
    static uint16_t all[65536], back[65536];
    static float wide[65536];
    long bad = 0;
    for (int i = 0; i < 65536; i++) all[i] = (uint16_t)i;
    nmx_half_to_float(kind, all, wide, 65536);
    nmx_float_to_half(kind, wide, back, 65536);
    for (int i = 0; i < 65536; i++) {
        uint16_t exp_mask = kind == NMX_F16 ? 0x7c00 : 0x7f80;
        int nan = (i & exp_mask) == exp_mask && (i & ~exp_mask & 0x7fff) != 0;
        if (nan ? (wide[i] == wide[i]) || (back[i] & exp_mask) != exp_mask : back[i] != i) bad++;
    }
    /* midpoints between consecutive positive finite halves, and a hair above them */
    uint16_t top = kind == NMX_F16 ? 0x7bff : 0x7f7f;
    for (uint16_t h = 0; h < top; h++) {
        float lo = wide[h], hi = wide[h + 1], mid = lo + (hi - lo) / 2, r[2];
        uint16_t got[2];
        r[0] = mid;
        r[1] = nextafterf(mid, hi);
        nmx_float_to_half(kind, r, got, 2);
        bad += got[0] != ((h & 1) ? h + 1 : h);
        bad += got[1] != h + 1;
    }
    float big[2] = {kind == NMX_F16 ? 65520.0f : 3.4e38f, -HUGE_VALF};
    uint16_t inf[2];
    nmx_float_to_half(kind, big, inf, 2);
    bad += inf[0] != (kind == NMX_F16 ? 0x7c00 : 0x7f80);
    bad += inf[1] != (kind == NMX_F16 ? 0xfc00 : 0xff80);
    char what[64];
    snprintf(what, sizeof what, "%s conversions (%s)", name,
             kind == NMX_F16 ? nmx_half_isa() : "integer rounding");
    check(what, (double)bad, 0.0);
}

int main(void) {
    printf("normax kernels: %s, OpenMP %d (%s), %d threads\n", nmx_simd_target(),
           nmx_openmp_version(), nmx_openmp_library(), nmx_get_num_threads());
    test_batchnorm(64, 10, 1);
    test_batchnorm(512, 96, 1); /* 49152 elements: the parallel path */
    test_batchnorm(8, 6, 1000);
    test_softmax(100, 10, 1);
    test_softmax(600, 100, 1);
    test_softmax(4, 20, 500);
    test_sgd(100000);
    test_half(NMX_F16, "float16");
    test_half(NMX_BF16, "bfloat16");
    for (int kind = NMX_F16; kind <= NMX_BF16; kind++) {
        const char *name = kind == NMX_F16 ? "float16" : "bfloat16";
        test_softmax_half(kind, name, 100, 10, 1);
        test_softmax_half(kind, name, 3, 1500, 1);
        test_softmax_half(kind, name, 4, 20, 500);
        test_softmax_half(kind, name, 2, 1200, 40);
    }
    printf(failures ? "%d check(s) FAILED\n" : "all checks passed\n", failures);
    return failures != 0;
}
