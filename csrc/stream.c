/* The cache sizes, and the rule that decides when an output is streamed (see stream.h). */
#include "stream.h"

long nmx_cache_size(long *cached, int name, long dflt, long lo, long hi) {
    long size = __atomic_load_n(cached, __ATOMIC_RELAXED);
    if (size == 0) {
        size = -1;
#if NMX_HAVE_POSIX
        if (name >= 0) size = sysconf(name);
#else
        (void)name;
#endif
        size = size <= 0 ? dflt : size < lo ? lo : size > hi ? hi : size;
        __atomic_store_n(cached, size, __ATOMIC_RELAXED);
    }
    return size;
}

long nmx_llc_bytes(void) {
    static long cached = 0;
    return nmx_cache_size(&cached, NMX_SC_L3, NMX_LLC_CAP, 1, NMX_LLC_CAP);
}

/* `streamed` when the output is past the cache divided by `share` (and 4 MiB), else NMX_STORE. */
static int nmx_store_past(size_t bytes, long share, int streamed) {
#if NMX_HAVE_STREAM
    if (bytes < ((size_t)4 << 20)) return NMX_STORE;
    return bytes > (size_t)(nmx_llc_bytes() / share) ? streamed : NMX_STORE;
#else
    (void)bytes, (void)share, (void)streamed;
    return NMX_STORE;
#endif
}

int nmx_store_mode(size_t bytes, int streamed) { return nmx_store_past(bytes, 2, streamed); }

int nmx_store_mode_once(size_t bytes) { return nmx_store_past(bytes, 1, NMX_STREAM); }
