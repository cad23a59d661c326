/* A small pool of large output blocks whose pages stay mapped between calls (see outbuf.h). */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS, posix_memalign, madvise under a strict -std=c11 */
#include "outbuf.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define NMX_BUF_ALIGN 64
#define NMX_BUF_HUGE ((size_t)2 << 20)

/* Where a mapped block's data starts in its first page: half a page and a line in. A kernel
 * stores out[i] while it already loads x[i + d] a little ahead, and a load waits on an older
 * store whose address agrees with its own in the low 12 bits (4 KiB aliasing) until it knows
 * the two differ. So the data must not start a little past the page offset of the inputs:
 * large NumPy arrays start 16 bytes into a page (the C library's chunk header), page-aligned
 * ones at 0, and these blocks' own data, fed to the next kernel, at this offset (no lead then).
 * At 64, just past the header, the (8192, 2048) batch-norm inference on inputs 16 bytes into a
 * page took 1.39x the time in float32 and 1.73x in bfloat16, the backward 1.12x and 1.24x (C
 * program, three alternating rounds, minimum, against outputs at this offset). */
#define NMX_BUF_LEAD ((size_t)2048 + NMX_BUF_ALIGN)

/* Every block has this header, NMX_BUF_ALIGN bytes before the pointer handed out. */
typedef struct {
    size_t cap;    /* usable bytes after the header */
    size_t mapped; /* bytes of the mapping (0: the block came from malloc) */
} nmx_buf_head;

_Static_assert(sizeof(nmx_buf_head) <= NMX_BUF_ALIGN, "header must fit in the alignment gap");

static pthread_mutex_t nmx_buf_lock = PTHREAD_MUTEX_INITIALIZER;
static nmx_buf_head *nmx_buf_slot[NMX_BUF_SLOTS]; /* kept blocks, oldest first */
static int nmx_buf_count = 0;
static size_t nmx_buf_bytes = 0;
static pthread_once_t nmx_buf_once = PTHREAD_ONCE_INIT;

/* A child forked while another thread held the lock would deadlock on it; the kept blocks are
 * private copies in the child and remain valid. */
static void nmx_buf_child(void) { pthread_mutex_init(&nmx_buf_lock, NULL); }
static void nmx_buf_init(void) { pthread_atfork(NULL, NULL, nmx_buf_child); }

static void *nmx_buf_user(nmx_buf_head *h) { return (char *)h + NMX_BUF_ALIGN; }
static nmx_buf_head *nmx_buf_head_of(void *p) {
    return (nmx_buf_head *)((char *)p - NMX_BUF_ALIGN);
}

/* Unmap a kept block: its mapping starts NMX_BUF_LEAD bytes before its data. */
static void nmx_buf_unmap(nmx_buf_head *h) {
    munmap((char *)nmx_buf_user(h) - NMX_BUF_LEAD, h->mapped);
}

/* A new mapping of at least `bytes` usable bytes, 2 MiB aligned so that transparent huge pages
 * can back all of it (an unaligned mapping leaves its ends in 4 KiB pages). */
static nmx_buf_head *nmx_buf_map(size_t bytes) {
    if (bytes > SIZE_MAX - 3 * NMX_BUF_HUGE) return NULL; /* the sums below would wrap */
    size_t total = (bytes + NMX_BUF_LEAD + NMX_BUF_HUGE - 1) & ~(NMX_BUF_HUGE - 1);
    char *raw = mmap(NULL, total + NMX_BUF_HUGE, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return NULL;
    char *base = (char *)(((uintptr_t)raw + NMX_BUF_HUGE - 1) & ~(uintptr_t)(NMX_BUF_HUGE - 1));
    if (base > raw) munmap(raw, (size_t)(base - raw));
    size_t tail = (size_t)(raw + total + NMX_BUF_HUGE - (base + total));
    if (tail) munmap(base + total, tail);
#ifdef MADV_HUGEPAGE
    madvise(base, total, MADV_HUGEPAGE); /* advice only: failure just means 4 KiB pages */
#endif
    nmx_buf_head *h = (nmx_buf_head *)(base + NMX_BUF_LEAD - NMX_BUF_ALIGN);
    h->cap = total - NMX_BUF_LEAD;
    h->mapped = total;
    return h;
}

/* Take the smallest kept block that holds `bytes` without wasting more than a quarter of it. */
static nmx_buf_head *nmx_buf_take(size_t bytes) {
    pthread_mutex_lock(&nmx_buf_lock);
    int best = -1;
    for (int i = 0; i < nmx_buf_count; i++) {
        size_t cap = nmx_buf_slot[i]->cap;
        if (cap >= bytes && cap - bytes <= cap / 4 + NMX_BUF_HUGE &&
            (best < 0 || cap < nmx_buf_slot[best]->cap))
            best = i;
    }
    nmx_buf_head *h = NULL;
    if (best >= 0) {
        h = nmx_buf_slot[best];
        nmx_buf_bytes -= h->mapped;
        memmove(nmx_buf_slot + best, nmx_buf_slot + best + 1,
                sizeof(*nmx_buf_slot) * (size_t)(nmx_buf_count - best - 1));
        nmx_buf_count--;
    }
    pthread_mutex_unlock(&nmx_buf_lock);
    return h;
}

/* Keep a freed mapped block, dropping the oldest kept ones to stay within the limits. */
static void nmx_buf_keep(nmx_buf_head *h) {
    nmx_buf_head *drop[NMX_BUF_SLOTS + 1];
    int ndrop = 0;
    pthread_mutex_lock(&nmx_buf_lock);
    if (h->mapped > NMX_BUF_KEEP_BYTES) {
        drop[ndrop++] = h;
    } else {
        while (nmx_buf_count > 0 &&
               (nmx_buf_count == NMX_BUF_SLOTS || nmx_buf_bytes + h->mapped > NMX_BUF_KEEP_BYTES)) {
            drop[ndrop++] = nmx_buf_slot[0];
            nmx_buf_bytes -= nmx_buf_slot[0]->mapped;
            nmx_buf_count--;
            memmove(nmx_buf_slot, nmx_buf_slot + 1, sizeof(*nmx_buf_slot) * (size_t)nmx_buf_count);
        }
        nmx_buf_slot[nmx_buf_count++] = h;
        nmx_buf_bytes += h->mapped;
    }
    pthread_mutex_unlock(&nmx_buf_lock);
    for (int i = 0; i < ndrop; i++) nmx_buf_unmap(drop[i]); /* outside the lock */
}

static void *nmx_buf_small(size_t bytes) {
    void *raw = NULL;
    if (bytes > SIZE_MAX - NMX_BUF_ALIGN ||
        posix_memalign(&raw, NMX_BUF_ALIGN, bytes + NMX_BUF_ALIGN) != 0)
        return NULL;
    nmx_buf_head *h = raw;
    h->cap = bytes;
    h->mapped = 0;
    return nmx_buf_user(h);
}

void *nmx_buf_malloc(size_t bytes) {
    if (bytes < NMX_BUF_MIN_BYTES) return nmx_buf_small(bytes);
    pthread_once(&nmx_buf_once, nmx_buf_init);
    nmx_buf_head *h = nmx_buf_take(bytes);
    if (!h) h = nmx_buf_map(bytes);
    return h ? nmx_buf_user(h) : NULL;
}

/* A kept block would have to be cleared by a full write; a new mapping is zero already. */
void *nmx_buf_calloc(size_t count, size_t size) {
    if (size != 0 && count > SIZE_MAX / size) return NULL; /* count * size would wrap */
    size_t bytes = count * size;
    if (bytes < NMX_BUF_MIN_BYTES) {
        void *p = nmx_buf_small(bytes);
        if (p) memset(p, 0, bytes);
        return p;
    }
    nmx_buf_head *h = nmx_buf_map(bytes);
    return h ? nmx_buf_user(h) : NULL;
}

void nmx_buf_free(void *p) {
    if (!p) return;
    nmx_buf_head *h = nmx_buf_head_of(p);
    if (h->mapped == 0) {
        free(h);
        return;
    }
    pthread_once(&nmx_buf_once, nmx_buf_init);
    nmx_buf_keep(h);
}

void *nmx_buf_realloc(void *p, size_t bytes) {
    if (!p) return nmx_buf_malloc(bytes);
    nmx_buf_head *h = nmx_buf_head_of(p);
    if (bytes <= h->cap && bytes >= h->cap / 2) return p;
    void *q = nmx_buf_malloc(bytes);
    if (!q) return NULL; /* p stays valid, as with realloc */
    memcpy(q, p, bytes < h->cap ? bytes : h->cap);
    nmx_buf_free(p);
    return q;
}

size_t nmx_buf_trim(void) {
    nmx_buf_head *drop[NMX_BUF_SLOTS];
    pthread_mutex_lock(&nmx_buf_lock);
    int n = nmx_buf_count;
    size_t bytes = nmx_buf_bytes;
    memcpy(drop, nmx_buf_slot, sizeof(*drop) * (size_t)n);
    nmx_buf_count = 0;
    nmx_buf_bytes = 0;
    pthread_mutex_unlock(&nmx_buf_lock);
    for (int i = 0; i < n; i++) nmx_buf_unmap(drop[i]);
    return bytes;
}

size_t nmx_buf_kept_bytes(void) {
    pthread_mutex_lock(&nmx_buf_lock);
    size_t n = nmx_buf_bytes;
    pthread_mutex_unlock(&nmx_buf_lock);
    return n;
}
