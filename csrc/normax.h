/* Shared definitions for the normax C kernels (no Python.h here).
 *
 * Every kernel sees its input as a C-contiguous (outer, C, inner) block: C is the channel or
 * class axis, statistics or reductions run over outer and inner. Sizes are int64_t so arrays
 * whose element or byte counts overflow 32 bits index correctly.
 */
#ifndef NORMAX_H
#define NORMAX_H

#include <stdint.h>

typedef int64_t nmx_index;

/* Below this many elements a kernel runs on one thread: waking the OpenMP team costs more than
 * the work (a (32, 64) batch is 2048 elements, a few hundred nanoseconds of arithmetic). */
#define NMX_PARALLEL_MIN_WORK ((nmx_index)1 << 15)

/* Number of threads a kernel may use for `work` elements. Honours normax.set_num_threads,
 * then OMP_NUM_THREADS / threadpoolctl (via omp_get_max_threads), and runs serially in a child
 * process forked after the OpenMP pool started (libgomp's pool does not survive fork). */
int nmx_threads_for(nmx_index work);

/* 0 restores the OpenMP default. */
void nmx_set_num_threads(int n);
int nmx_get_num_threads(void);

/* The build: the _OPENMP date it was compiled with (0 without OpenMP), the file of the OpenMP
 * runtime in use ("" if unknown), and the SIMD version of the kernels this CPU runs, in words. */
int nmx_openmp_version(void);
const char *nmx_openmp_library(void);
const char *nmx_simd_target(void);

/* The largest last-level cache, in bytes, that the kernels count on (NMX_LLC_CAP). */
long nmx_llc_cap(void);

#endif
