/* Batch-normalization kernels: the float32 and float64 instances of batchnorm_impl.h, and the
 * half-precision kernels built on the float32 one (batchnorm_half.h). */
#include "batchnorm.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "half.h"
#include "platform.h"
#include "stream.h"

/* The wheel is built for baseline x86-64; the hot loops are additionally compiled for AVX2 and
 * AVX-512 and picked at load time where platform.h allows it. */
#define NMX_CLONES NMX_CLONES_SIMD

/* Element-wise passes over arrays larger than the cache write with non-temporal stores: no
 * read-for-ownership of the destination (a 3 x bytes forward instead of 4 x), and the input the
 * pass reads back stays cached. Runs (inner > 1) issue them from their own loops (run_nt in
 * batchnorm_impl.h); rows go through a small buffer, NMX_PIECE elements per piece of a tile of
 * wide rows, NMX_STREAM_PIECE_BYTES per piece of the other rows, and blocks of
 * NMX_PIECES_PER_BLOCK such pieces for NMX_STREAM_BACK. The buffer, the inputs it is computed
 * from and the stores draining it share L1: streamed inference of NHWC (64, 56, 56, 64) float64
 * took 0.83-0.92x the time with 4 KiB pieces as with 16 KiB ones (2048 doubles), float32
 * 0.88-0.95x against 8 KiB, training and backward the same or faster. */
#define NMX_PIECE 2048
#define NMX_STREAM_PIECE_BYTES 4096
#define NMX_PIECES_PER_BLOCK 64


static inline nmx_index nmx_min(nmx_index a, nmx_index b) { return a < b ? a : b; }

/* Rows of more bytes than this go by tiles in the row passes (wide_rows in batchnorm_impl.h):
 * four such per-channel arrays fill a third of a 48 KiB L1. */
#define NMX_WIDE_ROW_BYTES 4096

/* Streamed rows that are not wide and hold at least this many bytes go straight from their loops
 * (rows_direct in batchnorm_impl.h) even where they do not fill whole lines from a line's start:
 * each row's whole lines non-temporally, the lines two rows share (and those of a row that starts
 * off a line) with plain stores. Against the buffer, alternating processes, two threads, 25-49
 * MiB, median time ratios (ranges) over 5-6 rounds: training forward NHWC float32 rows of 80 B
 * 0.72 (0.66-0.85), 96 B 0.99 (0.78-1.20), 160 B 0.68 (0.64-0.72), 224 B 0.86 (0.78-0.99),
 * 400 B 0.89 (0.68-1.09), float64 160 B 0.69 (0.56-0.78) and 224 B 0.84 (0.67-1.03), 256 B rows
 * into an out= 16 bytes off a line 0.95 (0.87-1.04); backward the same rows 0.80, 1.04 (0.88-1.27),
 * 0.86, 0.95, 0.99 (0.94-1.10), 0.85, 0.96 (0.87-1.43), 0.94; streamed inference 96 B 0.67, 224 B
 * 0.70, 400 B 0.77. Rows of 64 B 16 bytes off a line, which hold no whole line, took 1.36x
 * (1.22-1.79) in the forward and 1.25x in the backward; wide rows off a line keep their tiles
 * ((8192, 2048) float32 into an out=: forward 1.20x, inference 1.05x, backward 0.97x). */
#define NMX_DIRECT_ROW_BYTES 80

/* For rows of `bytes` narrower than a line, the fewest rows q that make a whole number of lines
 * (64 / gcd(bytes, 64)), which the output pass takes as one row of q times the channels (the
 * float32 pass_narrow, bn_out_narrow_h); 0 for rows of a line or more. */
static inline nmx_index nmx_narrow_rows(nmx_index bytes) {
    nmx_index q = 64;
    for (nmx_index b = bytes; b > 0 && b % 2 == 0 && q > 1; b /= 2) q /= 2;
    return bytes > 0 && bytes < 64 ? q : 0;
}

/* The set-up of the output pass over narrow rows [lo, hi) taken q at a time: `arrays` arrays of
 * C per-channel constants of `size` bytes at k, each repeated q times into kq (arrays of q * C),
 * and the rows' split at multiples of q into a head [lo, *a), whole groups [*a, *b) and a tail
 * [*b, hi). */
static void nmx_narrow_groups(const void *k, void *kq, size_t size, int arrays, nmx_index C,
                              nmx_index q, nmx_index lo, nmx_index hi, nmx_index *a,
                              nmx_index *b) {
    size_t row = size * (size_t)C;
    for (int j = 0; j < arrays; j++)
        for (nmx_index r = 0; r < q; r++)
            memcpy((char *)kq + ((size_t)j * (size_t)q + (size_t)r) * row,
                   (const char *)k + (size_t)j * row, row);
    *a = (lo + q - 1) / q * q;
    *b = hi / q * q;
}

/* Whether rows of C channels are wide: a row pass reads four or five per-channel arrays beside
 * the data (constants, sums), and across a wide row they do not stay in L1 (64 KiB for a float64
 * row of 2048 channels, where every element then waited on L2). Pass 1 goes over wide rows by
 * tiles of NMX_TILE_R rows and NMX_TILE_C channels, within which they do; the output pass only
 * when it streams through a buffer (pass_out: whole rows in row order were faster). */
#define NMX_TILE_C 256
#define NMX_TILE_R (NMX_PIECE / NMX_TILE_C) /* 8: whole blocks of four rows */

/* The backward's tiles of wide rows (both of its passes): as many elements, in half the rows.
 * It reads two arrays where the forward reads one, so a tile is eight row streams, as the
 * forward's is, instead of sixteen, which the prefetchers follow poorly. (8192, 2048), ten
 * alternating rounds, minimum and median: two threads, outputs 16 bytes off a cache line (as
 * NumPy's are), float32 0.75x and 0.81x the time of 8 x 256 tiles, float64 0.85x and 0.82x; on
 * lines, float32 0.92x and 0.83x, float64 1.02x and 0.91x; one thread 0.68-0.72x. The sums pass
 * alone went from 6.2 to 4.6 ms, against 4.3 ms for a plain read of both arrays. The forward's
 * passes lose with such tiles (float64 inference 1.4x) and keep theirs. Tiles of four rows
 * start where those of eight did, so the blocks of four rows summed are the same. */
#define NMX_BACK_TILE_R (NMX_TILE_R / 2)
#define NMX_BACK_TILE_C (2 * NMX_TILE_C)

/* The per-core cache that keeps a channel group between its two passes (batchnorm_impl.h,
 * resident groups): the L2 size the system reports, within [256 KiB, 2 MiB] (256 KiB when it
 * reports none). */
#define NMX_L2_MIN ((long)256 << 10)
#define NMX_L2_MAX ((long)2 << 20)
static long nmx_l2_bytes(void) {
    static long cached = 0;
    return nmx_cache_size(&cached, NMX_SC_L2, NMX_L2_MIN, NMX_L2_MIN, NMX_L2_MAX);
}

/* The inputs of one resident group may fill half of it: the other half holds the output
 * pieces, the constants and the group of a second hardware thread on the same core. */
static size_t nmx_group_budget(void) { return (size_t)nmx_l2_bytes() / 2; }

/* Runs shorter than this keep the two-pass drivers: read channel by channel, each run is a jump
 * of C runs from the last, and runs of a page or two end before the hardware prefetchers ramp
 * up (measured: float16 NCHW 56 x 56, 6 KiB runs, 8-15% slower by groups; float32, 12 KiB,
 * faster). */
#define NMX_GROUP_MIN_RUN_BYTES 8192

/* Where the inputs fit the last-level cache, runs shorter than this keep the two-pass drivers
 * too, when a channel is several of them (NCHW): the second pass reads the inputs back from that
 * cache in address order, and a group's jumps from run to run cost more than they save. The
 * training forward, two threads, each way in alternating processes: float32 NCHW 56 x 56
 * (12 KiB runs), 32 images (25 MiB) 0.79-0.87x the time in two passes, 40 images 0.76-0.81x,
 * 24 images the same; runs of 25 KiB (float64 56 x 56, 16 images) 0.96-1.07x, 50 KiB (float32
 * 112 x 112, 8 images) 1.04-1.09x, so those keep their groups; past the cache (float32 56 x 56,
 * 64 images) the groups' 0.97-1.03x. Half precision the same: float16 64 x 64 (8 KiB runs,
 * 48 images, 24 MiB) 0.74-0.96x, 80 x 80 (12 KiB runs, 32 images) 0.67-0.97x. */
#define NMX_GROUP_CACHED_MIN_RUN_BYTES 16384

/* Channels per resident group of a call (batchnorm_impl.h), or 0 when it keeps the two-pass
 * drivers: runs of at least NMX_GROUP_MIN_RUN_BYTES, the group's runs of its `inputs` arrays
 * (x; or dy and x) of `size`-byte elements fit nmx_group_budget(), and there are about four
 * groups per thread, for balance; runs of a channel of several (outer > 1) that fit the
 * last-level cache, at least NMX_GROUP_CACHED_MIN_RUN_BYTES. */
static nmx_index nmx_group_width(nmx_index outer, nmx_index C, nmx_index inner, size_t size,
                                 int inputs, int nt) {
    size_t run = (size_t)inner * size, channel = (size_t)outer * run * (size_t)inputs;
    if (inner == 1 || run < NMX_GROUP_MIN_RUN_BYTES) return 0;
    if (outer > 1 && run < NMX_GROUP_CACHED_MIN_RUN_BYTES &&
        channel * (size_t)C <= (size_t)nmx_llc_bytes())
        return 0;
    nmx_index fit = (nmx_index)(nmx_group_budget() / channel);
    nmx_index spread = (C + 4 * (nmx_index)nt - 1) / (4 * (nmx_index)nt);
    return fit < spread ? fit : spread;
}

/* The backward's team groups (batchnorm_impl.h) take as many channels as keep a thread's runs of
 * a group within this (one channel when its runs alone are more): fewer barriers where a channel
 * is small, and two groups of them (one prefetched) within half a 1 MiB L2 cache. */
#define NMX_TEAM_SHARE_BYTES ((size_t)256 << 10)

/* Channels per team group of a backward that has no resident groups (nmx_group_width 0), or 0
 * when it keeps the two-pass drivers: runs of at least NMX_GROUP_MIN_RUN_BYTES; dy and x at least
 * twice the last-level cache, so that the two-pass drivers' second pass, from the last block to
 * the first, finds less than half of them there (float32 (32, 64, 56, 56), 1.6 times a 32 MiB
 * cache, took 1.04x the two passes' time by team groups, median of eight rounds in turn, and
 * (64, 64, 56, 56) 0.92x); the batch rows shared between the threads evenly enough (the largest
 * share at most 1/8 above the mean: a thread's share is whole runs, so that the sums keep their
 * bits); and every thread's runs of two groups (one in pass 2, the next prefetched) within half
 * the last-level cache, which keeps what the L2 cache cannot hold. */
static nmx_index nmx_team_width(nmx_index outer, nmx_index C, nmx_index inner, size_t size,
                                int nt) {
    size_t run = (size_t)inner * size, inputs = 2;
    if (inner == 1 || run < NMX_GROUP_MIN_RUN_BYTES) return 0;
    if ((size_t)outer * run * inputs * (size_t)C < 2 * (size_t)nmx_llc_bytes()) return 0;
    nmx_index rows = (outer + nt - 1) / nt;
    if (8 * (size_t)nt * (size_t)rows > 9 * (size_t)outer) return 0;
    size_t share = (size_t)rows * run * inputs;
    if (2 * (size_t)nt * share > (size_t)nmx_llc_bytes() / 2) return 0;
    nmx_index g = (nmx_index)(NMX_TEAM_SHARE_BYTES / share);
    return g < 1 ? 1 : g < C ? g : C;
}

/* Small batches (at most NMX_STRIP_BYTES in all) go by strips in the row loops of
 * batchnorm_impl.h: one vector of channels down all rows, then the next, with that vector's
 * per-channel constants and sums in registers instead of reloaded for every row. Such a batch
 * stays in the L1 cache while the strips pass over it; larger batches keep row order, which
 * streams better (strips of tiles of rows ran a (4096, 100) float32 backward a quarter slower
 * than row order). */
#define NMX_STRIP_BYTES 16384

/* Whether `rows` rows of n elements of `size` bytes go by strips (a division: no product of
 * sizes can overflow). */
static inline int nmx_strips(nmx_index rows, nmx_index n, size_t size) {
    return n > 0 && rows <= NMX_STRIP_BYTES / ((nmx_index)size * n);
}

/* Rows of NMX_STATS_ORDER_MIN_BYTES (NMX_GRAD_ORDER_MIN_BYTES) to NMX_ORDER_MAX_BYTES are read
 * strictly in address order by the sums of pass 1 of the training forward (of the backward):
 * stats_rows, grad_rows in batchnorm_impl.h. A block of four such rows is read row by row, its
 * partial sums kept in L1 buffers of one row each, instead of the four rows side by side, which
 * are four streams a few hundred bytes apart within a page and read at about half the bandwidth
 * of one. Measured on 98 MiB of rows, two threads, training forward / backward: 512 B rows
 * 0.66-0.85x / 0.76-0.87x the time, 768 B and 1 KiB 0.81-0.94x / 0.87-1.05x; from 2 KiB slower
 * (0.95-1.11x / 1.02-1.16x, 4 KiB 1.11-1.36x), as each row is then a stream of its own that the
 * prefetchers follow. Rows of 256 B gained in the forward (float32 x 64: 0.78-0.95x on 49 MiB in
 * six rounds, 0.85-0.93x on 98 MiB; float64 x 32: 0.84-1.00x) but not in the backward, which
 * reads two arrays and buffers two sums a row (0.83-1.16x, most rounds slower); rows of 128 B
 * and less are a block that is read nearly in order anyway (float32 x 16: 1.01-1.28x). Whole
 * rows of up to 256 B now keep their sums in registers instead (stats_short, grad_short), which
 * is faster still, so the rows read in order are those over 256 B, up to 1 KiB. */
#define NMX_STATS_ORDER_MIN_BYTES 256
#define NMX_GRAD_ORDER_MIN_BYTES 512
#define NMX_ORDER_MAX_BYTES 1024

/* Whether whole rows (xs == n) of n elements of `size` bytes, at least `min_bytes` of them, go in
 * address order. */
static inline int nmx_in_order(nmx_index xs, nmx_index n, size_t size, nmx_index min_bytes) {
    return xs == n && n >= min_bytes / (nmx_index)size &&
           n <= NMX_ORDER_MAX_BYTES / (nmx_index)size;
}

/* Helpers of the cloned leaf loops: always inlined, so each clone runs them compiled for its own
 * SIMD level (and with its own FMA contractions, which the results' bits depend on). */
#define NMX_LEAF_INLINE static inline __attribute__((always_inline))

/* Independent accumulators per run reduction: four AVX-512 registers of doubles. */
#define NMX_LANES 32

/* The run reductions of the leaf loops (batchnorm_impl.h, batchnorm_half_leaf.h): the sums of
 * BODY's two terms over one run. Independent lane accumulators let the loop vectorize and hide
 * add latency without reassociation flags: NMX_LANES of them for long runs, eight for short ones
 * (7x7 maps), none below eight, so short runs pay no set-up. */
#define NMX_LANE_LOOP(L, BODY)                                                      \
    do {                                                                           \
        double a_[L] = {0}, b_[L] = {0};                                           \
        for (; i + (L) <= n; i += (L))                                             \
            for (int j = 0; j < (L); j++) {                                        \
                double u_, v_;                                                     \
                BODY(i + j, u_, v_);                                               \
                a_[j] += u_;                                                       \
                b_[j] += v_;                                                       \
            }                                                                      \
        for (int j = 0; j < (L); j++) {                                            \
            sa += a_[j];                                                           \
            sb += b_[j];                                                           \
        }                                                                          \
    } while (0)

#define NMX_RUN_SUMS(BODY)                                                         \
    do {                                                                           \
        if (n >= 4 * NMX_LANES)                                                    \
            NMX_LANE_LOOP(NMX_LANES, BODY);                                        \
        else if (n >= 8)                                                           \
            NMX_LANE_LOOP(8, BODY);                                                \
        for (; i < n; i++) {                                                       \
            double u_, v_;                                                         \
            BODY(i, u_, v_);                                                       \
            sa += u_;                                                              \
            sb += v_;                                                              \
        }                                                                          \
    } while (0)

/* Scratch of a call: 2 * C partial sums per thread (double) and `per` per-channel constants of
 * the element type (at most 8 bytes each). Small channel counts use the stack: a (32, 64) batch
 * then calls no allocator. On allocation failure the kernel returns -1 before writing. */
#define NMX_STACK_BYTES 8192
typedef struct {
    double *acc;
    void *k;
    void *heap;
} nmx_scratch;

static inline int nmx_scratch_init(nmx_scratch *s, double *stack, nmx_index C, int nt, int per) {
    size_t nacc = 2 * (size_t)C * (size_t)(nt > 0 ? nt : 0), bytes = (nacc + (size_t)per * C) * 8;
    s->heap = NULL;
    if (bytes <= NMX_STACK_BYTES) {
        s->acc = stack;
    } else {
        s->heap = malloc(bytes);
        if (!s->heap) return -1;
        s->acc = s->heap;
    }
    s->k = s->acc + nacc;
    return 0;
}

static inline void nmx_scratch_free(nmx_scratch *s) { free(s->heap); }

#define NMX_SCRATCH(name, C, nt, per)                                        \
    double name##_stack[NMX_STACK_BYTES / sizeof(double)];                   \
    nmx_scratch name;                                                        \
    if (nmx_scratch_init(&name, name##_stack, (C), (nt), (per)) < 0) return -1

#define T float
#define SUF f32
#include "batchnorm_impl.h"
#undef T
#undef SUF

#include "batchnorm_half.h"

#define T double
#define SUF f64
#include "batchnorm_impl.h"
#undef T
#undef SUF
