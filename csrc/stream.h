/* How the kernels write outputs larger than the cache: non-temporal stores, through a small
 * buffer or a line at a time from the loops that compute them, so that the destination is not
 * read for ownership (one memory access per output byte instead of two) and the inputs a later
 * pass reads back stay cached. Shared by the batch-norm output passes and the streamed softmax
 * column blocks. */
#ifndef NORMAX_STREAM_H
#define NORMAX_STREAM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
#define NMX_HAVE_STREAM 1
#else
#define NMX_HAVE_STREAM 0
#endif

/* The cache-size names of sysconf where the system has them, else -1. */
#include "platform.h" /* unistd.h where there is POSIX */
#if NMX_HAVE_POSIX && defined(_SC_LEVEL3_CACHE_SIZE)
#define NMX_SC_L3 _SC_LEVEL3_CACHE_SIZE
#else
#define NMX_SC_L3 (-1)
#endif
#if NMX_HAVE_POSIX && defined(_SC_LEVEL2_CACHE_SIZE)
#define NMX_SC_L2 _SC_LEVEL2_CACHE_SIZE
#else
#define NMX_SC_L2 (-1)
#endif

/* A cache size the system reports (sysconf `name`, or -1 where there is no such name), `dflt`
 * when it reports none, clamped to [lo, hi]; read once into *cached. Callers may race here (the
 * GIL is released): every one stores the same value, atomically. */
long nmx_cache_size(long *cached, int name, long dflt, long lo, long hi);

/* The last-level cache a call can count on: what the system reports, at most NMX_LLC_CAP
 * (platform.h, where the reason is given). */
long nmx_llc_bytes(void);

/* How a pass writes its output (the `stream` argument of the output passes): plain stores, or
 * non-temporal ones in one of two orders. After a first pass over the same inputs (training,
 * backward), blocks go from the last to the first, so the end of the inputs that pass 1 read
 * last is still in the cache when pass 2 starts; with nothing read before (inference) first to
 * last, which the prefetchers follow best (a streamed inference of (128, 64, 56, 56) float32,
 * 8.5 ms in reverse, 7.4 in order). */
enum { NMX_STORE = 0, NMX_STREAM, NMX_STREAM_BACK };

/* How an output of `bytes` is written: `streamed` (NMX_STREAM or NMX_STREAM_BACK) when input and
 * output together overflow the cache (the output alone fills more than half of the last-level
 * cache a call can count on: NMX_LLC_CAP, platform.h), else NMX_STORE. Always NMX_STORE where
 * there are no non-temporal stores. */
int nmx_store_mode(size_t bytes, int streamed);

/* nmx_store_mode for a one-pass kernel: the float32 and float64 batch-norm inference. Its stores
 * protect no input that a later pass reads back, and plain stores leave the output cached for
 * whatever reads it next; so the output is streamed (NMX_STREAM) only when it alone overflows
 * the cache. Inference of 20-32 MiB, two threads, the same input every call, plain stores
 * against streamed through a buffer (nmx_stream): float32 0.73-0.86x the time for NCHW, NHWC and
 * (C, m), 0.74-0.98x for (N, C); float64 0.64-0.78x and 1.00-1.04x. Each call's output the next
 * one's input (layers in a network), 24 MiB float32: 0.57-0.68x, (N, C) 0.96x.
 * Streamed straight from their loops, without the buffer, runs still gain nothing at 20 MiB
 * (float32 NCHW and (C, m), chained: streamed 1.07-1.46x the plain time; the same input:
 * 0.85-1.09x), nor do the wide rows that keep the buffer (float64 (4096, 640), 20 MiB:
 * 1.00-1.30x). Rows of whole lines do: float32 NHWC 56 x 56 x 64 and (40000, 128), 20 MiB,
 * 0.78-0.87x (chained 0.88-1.05x); NHWC 31 MiB, float32 and float64, 0.56-0.89x (chained
 * 0.78-0.95x). The batch-norm inference streams those past half the cache (nmx_store_mode). */
int nmx_store_mode_once(size_t bytes);

/* The 64 bytes at src to the 16-byte aligned dst (a whole cache line when dst is 64-byte
 * aligned) with non-temporal stores; a plain copy where there are none. Inline, for loops that
 * compute a line's worth of output in registers and store it straight to memory. */
static inline __attribute__((always_inline)) void nmx_stream_line(void *dst, const void *src) {
#if NMX_HAVE_STREAM
    const __m128i *s = src;
    __m128i *d = dst;
    __m128i a = _mm_loadu_si128(s), b = _mm_loadu_si128(s + 1);
    __m128i c = _mm_loadu_si128(s + 2), e = _mm_loadu_si128(s + 3);
    _mm_stream_si128(d, a);
    _mm_stream_si128(d + 1, b);
    _mm_stream_si128(d + 2, c);
    _mm_stream_si128(d + 3, e);
#else
    memcpy(dst, src, 64);
#endif
}

/* memcpy of n bytes with non-temporal stores (SSE2, baseline x86-64) for the 16-byte aligned
 * middle; plain memcpy where there are none. Inline: the output passes call it for every piece
 * of a few hundred bytes upwards. */
static inline void nmx_stream(void *dst, const void *src, size_t n) {
#if NMX_HAVE_STREAM
    char *d = dst;
    const char *s = src;
    size_t head = (16 - ((uintptr_t)d & 15)) & 15;
    if (head > n) head = n;
    memcpy(d, s, head);
    d += head, s += head, n -= head;
    for (; n >= 64; n -= 64, d += 64, s += 64) nmx_stream_line(d, s);
    memcpy(d, s, n);
#else
    memcpy(dst, src, n);
#endif
}

/* How many of the n elements of `size` bytes at p come before the first 64-byte line they
 * fill (n when they start no line: too few, or p not a multiple of size). */
static inline ptrdiff_t nmx_line_head(const void *p, size_t size, ptrdiff_t n) {
    ptrdiff_t head = (ptrdiff_t)(((64 - ((uintptr_t)p & 63)) & 63) / size);
    return (uintptr_t)p % size != 0 || head >= n ? n : head;
}

/* Order the non-temporal stores before the caller's next synchronization. */
static inline void nmx_stream_fence(void) {
#if NMX_HAVE_STREAM
    _mm_sfence();
#endif
}

#endif
