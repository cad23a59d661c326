/* What this build of the kernels is: reported by normax.show_config(). */
#define _GNU_SOURCE /* dladdr */
#include "normax.h"
#include "platform.h"

#if defined(_OPENMP) && NMX_HAVE_POSIX
#include <dlfcn.h>
#endif

int nmx_openmp_version(void) {
#ifdef _OPENMP
    return _OPENMP;
#else
    return 0;
#endif
}

/* The file of the OpenMP runtime these kernels call (a wheel bundles its own copy), or "" when
 * unknown or built without OpenMP. */
const char *nmx_openmp_library(void) {
#if defined(_OPENMP) && NMX_HAVE_POSIX
    Dl_info info;
    if (dladdr((void *)&omp_get_max_threads, &info) && info.dli_fname) return info.dli_fname;
#endif
    return "";
}

/* The SIMD version of the kernels the CPU runs. With target_clones, the load-time resolver picks
 * the first listed target the CPU supports; the same feature tests are repeated here (the
 * x86-64-v3 and -v4 levels as defined by the x86-64 psABI, minus features the kernels never use
 * and every such CPU has: f16c, movbe, xsave, lzcnt). */
const char *nmx_simd_target(void) {
#if NMX_HAVE_CLONES
    __builtin_cpu_init();
    int v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("bmi2");
    int v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vl");
    return v4 ? "x86-64-v4 (AVX-512)" : v3 ? "x86-64-v3 (AVX2, FMA)" : "x86-64 baseline (SSE2)";
#elif defined(__x86_64__) || defined(_M_X64)
    return "x86-64 baseline (SSE2), single version";
#elif defined(__aarch64__) || defined(_M_ARM64)
    return "aarch64 baseline (NEON), single version";
#else
    return "target baseline, single version";
#endif
}

long nmx_llc_cap(void) { return NMX_LLC_CAP; }
