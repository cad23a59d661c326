/* Half-precision storage (float16 / bfloat16) for the softmax kernels; included by
 * softmax_half.c after the float32 kernels' inline pieces, whose arithmetic it reuses unchanged.
 *
 * Softmax, log-softmax and both backwards with inner > 1 (column blocks, softmax_hcol_impl.h)
 * and rows of at least NMX_HROW_MIN classes (the same kernels and the integer-label
 * cross-entropy without smoothing) are read and written in half storage directly, widened in
 * the vector loads and rounded in the stores (softmax_hrow.h). Otherwise a task converts a tile of
 * its input into float32 buffers with nmx_half_to_float, runs the float32 task runner on them
 * and rounds the results back once with nmx_float_to_half:
 *   inner == 1: a tile is R whole rows (contiguous), R * classes <= NMX_HALF_TILE when a row
 *     fits, so few-class rows are still grouped as in float32; longer rows are one row a tile.
 *   inner > 1: a tile is a block of columns, gathered class by class into a contiguous
 *     (classes, nb) float32 block (this replaces the float32 kernel's packed copy) that the
 *     float32 block kernel runs on as a problem of inner = nb, then scattered back.
 *     Cross-entropy blocks too large for L2 are streamed instead (softmax_stream.h,
 *     stream_xent_h): one class row at a time is widened into an L1 buffer, so no block is
 *     gathered.
 * Losses are summed in float64 as in float32; the per-example losses are rounded to half from
 * the float32 kernel's value. Tiles that do not fit the stack buffer come from one allocation
 * per call, made before any output is written.
 */

/* float32 elements per thread on the stack: rows of up to NMX_HALF_TILE classes, three
 * arrays (z, out, probabilities or y) and the tile's losses. Larger tiles use the heap. */
#define NMX_HSTACK (4 * NMX_HALF_TILE)
/* Class rows a column block's gather and scatter prefetch ahead: a half row of a block is
 * half the bytes of a float32 one, so twice as many are kept in flight. */
#ifndef NMX_HPREFETCH
#define NMX_HPREFETCH (2 * NMX_PREFETCH)
#endif
/* Column blocks are sized as for float32 elements (the float32 kernel's packed block): a
 * block's strided class rows stay runs of several cache lines (128 columns of 1000 classes:
 * 256 bytes), and the conversion calls per class row stay few. The two or three float32 tiles
 * take two or three times the float32 kernel's packed copy in L2 (1 to 1.5 MiB). */
#ifndef NMX_HCOL_BYTES
#define NMX_HCOL_BYTES 4
#endif

typedef struct {
    int kind; /* NMX_F16 or NMX_BF16 */
    job_f32 f; /* the float32 job; its x, y, out are replaced by each tile's buffers */
    const uint16_t *x, *y;
    uint16_t *out;
    nmx_index outer;
    nmx_index rows; /* rows per tile (inner == 1) */
    nmx_index per_thread; /* float32 elements of scratch per thread */
    int direct; /* rows read and written in half storage (softmax_hrow.h), one task a row */
} nmx_hjob;

#include "softmax_hrow.h"

/* The half input read beside z: probability targets or the backward's y, else NULL. */
static const uint16_t *nmx_half_second(const nmx_hjob *h) {
    return h->f.a && h->f.a->probs ? (const uint16_t *)h->f.a->probs : h->y;
}

/* Scratch of one tile, laid out as z, out (tile elements each), the losses of the tile's
 * examples, then the second input's tile when there is one. */
static nmx_index nmx_half_tile(const nmx_hjob *h) {
    return h->f.inner == 1 ? h->rows * h->f.n : h->f.n * h->f.cols;
}

static nmx_index nmx_half_examples(const nmx_hjob *h) {
    return h->f.inner == 1 ? h->rows : h->f.cols;
}

static nmx_index nmx_half_scratch(const nmx_hjob *h) {
    nmx_index tile = nmx_half_tile(h);
    return 2 * tile + nmx_half_examples(h) + (nmx_half_second(h) ? tile : 0);
}

/* The sub-problem of one tile for the float32 kernels: its labels, probabilities and losses. */
static void nmx_half_args(const nmx_hjob *h, nmx_xent_args *b, nmx_index first, nmx_index count,
                          float *q, float *loss) {
    const nmx_xent_args *a = h->f.a;
    *b = *a;
    b->outer = h->f.inner == 1 ? count : 1;
    b->inner = h->f.inner == 1 ? 1 : count;
    if (a->labels) b->labels = (const char *)a->labels + first * a->label_bytes;
    b->probs = a->probs ? q : NULL;
    b->loss = a->loss ? loss : NULL;
}

/* Fetch the next tile's input (and its output lines, for writing) while the float32 kernel
 * computes on this one: the arithmetic between two tiles' conversions is long enough that
 * the hardware prefetcher alone leaves the next conversion waiting for memory. */
static inline void nmx_half_prefetch(const nmx_hjob *h, nmx_index off, nmx_index cnt) {
    nmx_index end = h->outer * h->f.n;
    if (off + cnt > end) cnt = end - off;
    for (nmx_index i = 0; i < cnt; i += 32) {
        __builtin_prefetch(h->x + off + i);
        __builtin_prefetch(h->out + off + i, 1);
    }
}

/* Rows [r0, r0 + nr) of an inner == 1 problem, through float32 tiles zf / of / qf / lf. */
static double nmx_half_rows(const nmx_hjob *h, nmx_index r0, nmx_index nr, float *buf) {
    nmx_index n = h->f.n, cnt = nr * n, tile = nmx_half_tile(h), off = r0 * n;
    float *zf = buf, *of = buf + tile, *lf = buf + 2 * tile, *qf = lf + nmx_half_examples(h);
    const nmx_xent_args *a = h->f.a;
    const uint16_t *q = nmx_half_second(h);
    nmx_half_to_float(h->kind, h->x + off, zf, cnt);
    if (q) nmx_half_to_float(h->kind, q + off, qf, cnt);
    nmx_half_prefetch(h, off + cnt, cnt);
    nmx_xent_args b;
    job_f32 f = h->f;
    f.x = zf;
    f.y = qf;
    f.out = of;
    if (a) {
        nmx_half_args(h, &b, r0, nr, qf, lf);
        f.a = &b;
    }
    double total = nmx_softmax_tasks_f32(&f, 0, nr, NULL);
    nmx_float_to_half(h->kind, of, h->out + off, cnt);
    if (a && a->loss) nmx_float_to_half(h->kind, lf, (uint16_t *)a->loss + r0, nr);
    return total;
}

/* Gather nb columns of `classes` rows `inner` apart into a contiguous (classes, nb) tile; the
 * rows a few classes ahead are prefetched, as the float32 kernel's packing does. */
static void nmx_half_gather(int kind, const uint16_t *src, float *dst, nmx_index classes,
                            nmx_index inner, nmx_index nb) {
    for (nmx_index c = 0; c < classes; c++) {
        if (c + NMX_HPREFETCH < classes)
            for (nmx_index i = 0; i < nb; i += 32)
                __builtin_prefetch(src + (c + NMX_HPREFETCH) * inner + i);
        nmx_half_to_float(kind, src + c * inner, dst + c * nb, nb);
    }
}

/* The strided output rows are fetched for writing ahead too, as in the float32 kernel. */
static void nmx_half_scatter(int kind, const float *src, uint16_t *dst, nmx_index classes,
                             nmx_index inner, nmx_index nb) {
    for (nmx_index c = 0; c < classes; c++) {
        if (c + NMX_HPREFETCH < classes)
            for (nmx_index i = 0; i < nb; i += 32)
                __builtin_prefetch(dst + (c + NMX_HPREFETCH) * inner + i, 1);
        nmx_float_to_half(kind, src + c * nb, dst + c * inner, nb);
    }
}

/* Columns [i0, i0 + nb) of example row o of an inner > 1 problem, through float32 tiles in buf
 * (2 * classes * nb + nb floats, and classes * nb more for a second input). */
static double nmx_half_cols(const nmx_hjob *h, nmx_index o, nmx_index i0, nmx_index nb,
                            float *buf) {
    nmx_index n = h->f.n, inner = h->f.inner, tile = n * nb, off = o * n * inner + i0;
    float *zf = buf, *of = buf + tile, *lf = buf + 2 * tile, *qf = lf + nb;
    const nmx_xent_args *a = h->f.a;
    const uint16_t *q = nmx_half_second(h);
    nmx_half_gather(h->kind, h->x + off, zf, n, inner, nb);
    if (q) nmx_half_gather(h->kind, q + off, qf, n, inner, nb);
    nmx_xent_args b;
    job_f32 f = h->f;
    f.x = zf;
    f.y = qf;
    f.out = of;
    f.inner = f.cols = nb;
    f.nblk = 1;
    f.stream = 0;
    if (a) {
        nmx_half_args(h, &b, o * inner + i0, nb, qf, lf);
        f.a = &b;
    }
    double total = nmx_softmax_tasks_f32(&f, 0, 1, NULL);
    nmx_half_scatter(h->kind, of, h->out + off, n, inner, nb);
    if (a && a->loss) nmx_float_to_half(h->kind, lf, (uint16_t *)a->loss + o * inner + i0, nb);
    return total;
}

/* Column block t (example row t / nblk) of an inner > 1 problem. */
static double nmx_half_block(const nmx_hjob *h, nmx_index t, float *buf) {
    nmx_index inner = h->f.inner, cols = h->f.cols;
    nmx_index o = t / h->f.nblk, i0 = (t % h->f.nblk) * cols;
    return nmx_half_cols(h, o, i0, inner - i0 < cols ? inner - i0 : cols, buf);
}

/* The width of the gathered column tiles a streamed cross-entropy sums its losses by. */
static nmx_index nmx_half_group(const nmx_hjob *h) {
    return nmx_block_cols(h->f.n, h->f.inner, NMX_HCOL_BYTES);
}

/* Whether the last column of each example row is a tile of its own: the float32 kernel ran it
 * as a row (inner == 1), whose loss agrees with the block's once rounded but not in float64. */
static int nmx_half_lone_col(const nmx_hjob *h) {
    nmx_index g = nmx_half_group(h);
    return g > 1 && h->f.inner % g == 1;
}

/* Column block t of a streamed cross-entropy (stream_xent_h), with the losses added to
 * *total in groups of the gathered tiles' width (see stream_xent_h), so that a range of blocks
 * sums them exactly as the tiles did; a lone last column still goes through a tile (buf). */
static void nmx_half_xent_stream(const nmx_hjob *h, nmx_index t, double *total, float *buf) {
    nmx_index n = h->f.n, inner = h->f.inner, cols = h->f.cols;
    nmx_index o = t / h->f.nblk, i0 = (t % h->f.nblk) * cols, off = o * n * inner + i0;
    nmx_index nb = inner - i0 < cols ? inner - i0 : cols;
    int lone = i0 + nb == inner && nmx_half_lone_col(h);
    const nmx_xent_args *a = h->f.a;
    sblk_f32 b = {.n = n,
                  .inner = inner,
                  .nb = nb - lone,
                  .h = h->x + off,
                  .ho = h->out + off,
                  .kind = h->kind};
    const uint16_t *q = a->probs ? (const uint16_t *)a->probs + off : NULL;
    if (b.nb > 0) stream_xent_h_f32(&b, q, a, o * inner + i0, nmx_half_group(h), total);
    if (lone) *total += nmx_half_cols(h, o, inner - 1, 1, buf);
}

static double nmx_half_range(const nmx_hjob *h, nmx_index t0, nmx_index t1, float *heap) {
    float stack[NMX_HSTACK];
    float *buf = h->per_thread <= NMX_HSTACK ? stack : heap;
    double total = 0.0;
    if (h->direct)
        return nmx_hrows_run(h, t0, t1, buf);
    if (h->f.stream) {
        for (nmx_index t = t0; t < t1; t++) nmx_half_xent_stream(h, t, &total, buf);
        return total;
    }
    for (nmx_index t = t0; t < t1; t++) {
        if (h->f.inner == 1) {
            nmx_index r0 = t * h->rows, nr = h->outer - r0;
            total += nmx_half_rows(h, r0, nr < h->rows ? nr : h->rows, buf);
        } else {
            total += nmx_half_block(h, t, buf);
        }
    }
    return total;
}

/* Run the job: tiles of rows or column blocks, split across threads like the float32 kernels
 * (chunks that depend on the size only, see nmx_run_chunk). Returns -1 without writing
 * anything when the scratch cannot be allocated. */
static int nmx_half_run(nmx_hjob *h, double *total_out) {
    nmx_index n = h->f.n, inner = h->f.inner;
    if (total_out) *total_out = 0.0;
    if (h->outer <= 0 || n <= 0 || inner <= 0) return 0; /* empty: nothing to compute */
    h->direct = nmx_hrow_direct(h);
    if (h->direct && inner == 1) {
        h->rows = h->f.cols = h->f.nblk = 1;
    } else if (inner == 1) {
        /* Whole rows per tile; a multiple of NMX_GROUP so few-class rows group as in float32. */
        h->rows = n >= NMX_HALF_TILE ? 1 : NMX_HALF_TILE / n;
        if (h->rows > NMX_GROUP) h->rows -= h->rows % NMX_GROUP;
        h->f.cols = h->f.nblk = 1;
    } else {
        /* Blocks too large for L2 are streamed, as in float32: softmax, log-softmax and the
         * backwards (softmax_hcol_impl.h) and cross-entropy (stream_xent_h). */
        h->f.stream = nmx_block_streams(n, NMX_HCOL_BYTES, h->f.kind);
        h->f.cols = h->f.stream ? nmx_stream_cols(inner) : nmx_block_cols(n, inner, NMX_HCOL_BYTES);
        h->f.nblk = (inner + h->f.cols - 1) / h->f.cols;
    }
    nmx_index ntasks = inner == 1 ? (h->outer + h->rows - 1) / h->rows : h->outer * h->f.nblk;
    nmx_index work = h->outer * n * inner, chunk = nmx_run_chunk(ntasks, work, 1);
    nmx_index nchunks = (ntasks + chunk - 1) / chunk;
    h->per_thread = h->direct ? nmx_hrow_scratch(h) : h->f.stream ? 0 : nmx_half_scratch(h);
    if (h->f.stream && h->f.kind == NMX_XENT && nmx_half_lone_col(h))
        h->per_thread = (nmx_half_second(h) ? 3 : 2) * n + 1; /* nmx_half_cols, one column */
    int nt = nchunks > 1 ? nmx_threads_for(work) : 1;
    float *heap = NULL;
    if (h->per_thread > NMX_HSTACK) {
        heap = malloc((size_t)nt * (size_t)h->per_thread * sizeof(float));
        if (!heap) return -1;
    }
    /* One slot per chunk, added in chunk order: the float32 kernels' deterministic sum. */
    double total = 0.0, part[NMX_RUN_CHUNKS];
    if (nchunks <= 1) {
        total = nmx_half_range(h, 0, ntasks, heap);
    } else if (nt <= 1) {
        for (nmx_index k = 0; k < nchunks; k++)
            part[k] = nmx_half_range(h, k * chunk, nmx_chunk_end(k, chunk, ntasks), heap);
        total = nmx_sum_parts(part, nchunks);
    } else {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (nmx_index k = 0; k < nchunks; k++) {
            float *mine = heap ? heap + (nmx_index)omp_get_thread_num() * h->per_thread : NULL;
            part[k] = nmx_half_range(h, k * chunk, nmx_chunk_end(k, chunk, ntasks), mine);
        }
        total = nmx_sum_parts(part, nchunks);
    }
    free(heap);
    if (total_out) *total_out = total;
    return 0;
}

int nmx_xent_h(int kind, const uint16_t *z, uint16_t *dz, const nmx_xent_args *a,
               double *total) {
    double wall = (double)a->classes;
    if (a->weight) {
        wall = 0.0;
        for (nmx_index c = 0; c < a->classes; c++) wall += a->weight[c];
    }
    nmx_hjob h = {kind, {NMX_XENT, NULL, NULL, NULL, a, a->classes, a->inner, 0, 0, wall, 0, 0},
                  z, NULL, dz, a->outer, 0, 0, 0};
    return nmx_half_run(&h, total);
}

int nmx_softmax_h(int kind, const uint16_t *z, uint16_t *out, nmx_index outer, nmx_index classes,
                  nmx_index inner, int log_) {
    nmx_hjob h = {kind,
                  {log_ ? NMX_LOG_SOFTMAX : NMX_SOFTMAX, NULL, NULL, NULL, NULL, classes, inner,
                   0, 0, 0.0, 0, 0},
                  z, NULL, out, outer, 0, 0, 0};
    return nmx_half_run(&h, NULL);
}

int nmx_softmax_backward_h(int kind, const uint16_t *g, const uint16_t *y, uint16_t *dz,
                           nmx_index outer, nmx_index classes, nmx_index inner, int log_) {
    nmx_hjob h = {kind,
                  {log_ ? NMX_BWD_LOG : NMX_BWD, NULL, NULL, NULL, NULL, classes, inner, 0, 0,
                   0.0, 0, 0},
                  g, y, dz, outer, 0, 0, 0};
    return nmx_half_run(&h, NULL);
}
