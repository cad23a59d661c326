/* Memory for large kernel outputs that keeps its pages between calls.
 *
 * A fresh 64 MiB output costs its page faults: the operating system zeroes every page the first
 * time it is written, one more full write of the array inside the kernel's timed call (a third
 * of a batch-norm forward's memory traffic). The C library returns such large blocks to the
 * system on free, so every call pays it again. These functions keep a few freed large blocks
 * (pages already mapped and zeroed once) and hand them back to the next request of about the
 * same size: a training loop that allocates its outputs afresh each step then touches warm pages.
 *
 * Contract:
 *   - nmx_buf_malloc / nmx_buf_calloc / nmx_buf_realloc / nmx_buf_free behave like the C
 *     library's functions of the same names (NULL on failure; calloc zeroes; free(NULL) is a
 *     no-op), with 64-byte aligned results. Pointers from these functions must be released with
 *     nmx_buf_free (or resized with nmx_buf_realloc), never with free(), and the reverse.
 *   - Requests below NMX_BUF_MIN_BYTES go to malloc; larger ones are mapped with transparent
 *     huge pages requested (2 MiB pages: 512 times fewer faults when a block is new), their
 *     data 2112 bytes into a page (half a page and a line: see NMX_BUF_LEAD in outbuf.c).
 *   - At most NMX_BUF_SLOTS freed blocks, NMX_BUF_KEEP_BYTES together, are kept; nmx_buf_trim
 *     returns them all to the system. Thread-safe; a forked child starts with a usable pool.
 *   - The signatures match NumPy's PyDataMem_Handler once a context argument is added, so a
 *     binding can install them as the allocator of the output arrays it creates.
 */
#ifndef NORMAX_OUTBUF_H
#define NORMAX_OUTBUF_H

#include <stddef.h>

#define NMX_BUF_MIN_BYTES ((size_t)4 << 20)
#define NMX_BUF_SLOTS 4
#define NMX_BUF_KEEP_BYTES ((size_t)1 << 30)

void *nmx_buf_malloc(size_t bytes);
void *nmx_buf_calloc(size_t count, size_t size);
void *nmx_buf_realloc(void *p, size_t bytes);
void nmx_buf_free(void *p);

/* Unmap every kept block; returns the bytes given back to the system. */
size_t nmx_buf_trim(void);

/* Bytes currently kept for reuse (for tests and diagnostics). */
size_t nmx_buf_kept_bytes(void);

#endif
