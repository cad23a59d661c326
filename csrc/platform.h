/* Compiler, CPU and OS differences of the normax kernels, in one place (not a public header).
 *
 * - OpenMP is optional: built without it, the pragmas are ignored and the stand-ins below make
 *   every kernel run on one thread with the same results.
 * - Function multi-versioning (target_clones, resolved once at load time by a GNU ifunc) exists
 *   only for x86-64 ELF targets with GCC or Clang; elsewhere the kernels are compiled once for
 *   the target's baseline (SSE2 on x86-64, NEON on aarch64), which the vector code below uses.
 * - The kernels need GCC/Clang vector extensions (`vector_size`) and `__attribute__`s: any GCC or
 *   Clang target (including clang-cl on Windows) has them; plain MSVC does not.
 */
#ifndef NORMAX_PLATFORM_H
#define NORMAX_PLATFORM_H

#if !defined(__GNUC__) && !defined(__clang__)
#error "normax's kernels need GCC or Clang (GNU vector extensions); on Windows build with clang-cl"
#endif

#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_num_threads(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
#endif

/* POSIX: fork handlers (threads.c) and sysconf cache sizes (stream.c). */
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#include <unistd.h>
#define NMX_HAVE_POSIX 1
#else
#define NMX_HAVE_POSIX 0
#endif

/* The last-level cache a kernel (and `normax bench`, through build_info) can count on is what the
 * system reports, at most NMX_LLC_CAP. Large servers and virtual machines report the whole
 * socket's cache (480 MiB on the 2-core machine we measure), shared with every other core and
 * tenant; there the copy bandwidth already falls to memory speed for 32 MiB arrays, and a 64 MiB
 * forward ran faster streamed (20 vs 31 ms, same run). A cache that really is this large loses
 * little: an output past 16 MiB is streamed. */
#define NMX_LLC_CAP ((long)32 << 20)

/* Sanitizer builds keep one version of each function (ifunc resolvers run before ASan starts). */
#if defined(__SANITIZE_ADDRESS__)
#define NMX_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NMX_SANITIZED 1
#endif
#endif

#if defined(__x86_64__) && defined(__linux__) && !defined(NMX_SANITIZED) && \
    !defined(NMX_NO_CLONES) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define NMX_HAVE_CLONES 1
#endif
#endif

#ifdef NMX_HAVE_CLONES
/* Vector loops: AVX-512 (x86-64-v4), AVX2+FMA (x86-64-v3) and the SSE2 baseline. */
#define NMX_CLONES_SIMD \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
/* Element loops that must stay bit-identical to the baseline: AVX2 without FMA. */
#define NMX_CLONES_AVX2 __attribute__((target_clones("avx2", "default")))
#else
#define NMX_HAVE_CLONES 0
#define NMX_CLONES_SIMD
#define NMX_CLONES_AVX2
#endif

/* For a cloned function that must keep a frame of its own rather than be inlined into a caller
 * of the same target (GCC does that). clang never inlines a multiversioned function, and
 * refuses noinline beside target_clones. */
#if defined(__clang__) && NMX_HAVE_CLONES
#define NMX_NOINLINE_CLONED
#else
#define NMX_NOINLINE_CLONED __attribute__((noinline))
#endif

#endif
