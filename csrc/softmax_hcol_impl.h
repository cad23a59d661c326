/* Half-precision column blocks (inner > 1) for one set of conversions; included by
 * softmax_hrow_impl.h with its macros (HN, HAI and the 16-lane conversions).
 *
 * Softmax and log-softmax of a block of columns in half storage, and their backwards (at the
 * end: the same passes over g and y). The first pass walks the class
 * rows of the block in order, widening each vector of 16 columns as it is loaded; the output
 * pass rounds each result once as it stores it into the half output. A block too large for L2
 * is streamed: every pass reads the half rows again (b->pk NULL). A smaller block is packed
 * by its first pass into float32 scratch (b->pk, classes x ps) that the later passes read
 * from L2 (softmax keeps its exponentials there in place of z), as the float32 kernels' packed
 * blocks do: strided class rows, one page apart for a long inner, would miss in L1 and the TLB
 * on every pass. Nothing is converted in a pass of its own.
 *
 * The arithmetic is softmax_stream.h's stream_softmax (and so block_max / block_sum /
 * softmax_block's), operation for operation: the same comparisons in class order, the same
 * vector exp on full vectors of columns (partial sums in float32 over NMX_CHUNK classes, then
 * float64), the scalar exp on the last nb % 16 columns, the same final scaling. Those last
 * columns are not computed one by one, though: widening and rounding a half at a time, with a
 * scalar exp each, cost five times a vector's work per column (a 44-column block took six times
 * as long as a 48-column one). They are one more, zero-padded vector that runs the scalar
 * arithmetic on 16 lanes (nmx_hexp_scalar, nmx_hsum_scalar), loaded and stored with masks
 * where AVX-512 BW has them, so no element outside the block is read or written.
 */

/* Fetch class row c + b->ahead of the block's input (in: reading it again from z; in == 2: from
 * z and y) and of its output (out: for writing; the output pass's strided stores would
 * otherwise wait for each line). A no-op when b->ahead is 0 (nmx_hblk_ahead). */
HAI void HN(hblk_fetch)(const nmx_hblk *b, nmx_index c, int in, int out) {
    if (!b->ahead || c + b->ahead >= b->n) return;
    nmx_index off = (c + b->ahead) * b->inner;
    for (nmx_index i = 0; i < b->nb; i += 32) {
        if (in) __builtin_prefetch(b->z + off + i);
        if (in == 2) __builtin_prefetch(b->y + off + i);
        if (out) __builtin_prefetch(b->out + off + i, 1);
    }
}

/* The last nt < 16 halves of a class row at p, widened into *x; lanes past them are 0. Only
 * the row's own elements are read: one masked load with AVX-512 BW, else a copy (element
 * stores and a vector load wait for each other, but only once a class row per pass). */
HAI void HN(htail_load)(int kind, const uint16_t *p, nmx_index nt, nmx_vf32 *x) {
    uint16_t t[16] = {0};
#if HMASK16
    __m256i v = _mm256_maskz_loadu_epi16((__mmask16)((1u << nt) - 1), p);
    memcpy(t, &v, sizeof t);
#else
    for (nmx_index i = 0; i < nt; i++) t[i] = p[i];
#endif
    HN(hload)(kind, t, x);
}

/* The first nt < 16 lanes of *x rounded into the halves at p; nothing else is written. */
HAI void HN(htail_store)(int kind, uint16_t *p, nmx_index nt, const nmx_vf32 *x) {
    uint16_t t[16];
    HN(hstore)(kind, t, x);
#if HMASK16
    __m256i v;
    memcpy(&v, t, sizeof v);
    _mm256_mask_storeu_epi16(p, (__mmask16)((1u << nt) - 1), v);
#else
    for (nmx_index i = 0; i < nt; i++) p[i] = t[i];
#endif
}

/* 16 columns from i of class row c of a block's half input src (z, or y), as float32: from its
 * packed copy pk when there is one, else widened. */
HAI void HN(hblk_get)(int kind, const nmx_hblk *b, const uint16_t *src, const float *pk,
                      nmx_index c, nmx_index i, nmx_vf32 *x) {
    if (pk)
        memcpy(x, pk + c * b->ps + i, sizeof *x);
    else
        HN(hload)(kind, src + c * b->inner + i, x);
}

/* The columns of class row c past the last full vector (from i = nb / 16 * 16), zero-padded. */
HAI void HN(hblk_tail)(int kind, const nmx_hblk *b, const uint16_t *src, const float *pk,
                       nmx_index c, nmx_index i, nmx_vf32 *x) {
    if (pk)
        memcpy(x, pk + c * b->ps + i, sizeof *x);
    else
        HN(htail_load)(kind, src + c * b->inner + i, b->nb - i, x);
}

/* Column maxima, as stream_max: the same comparison, classes in order; the widened rows are
 * packed into b->pk when it is set. The last nb % 16 columns (the float32 kernels' scalar
 * ones: the same comparison) are one more, zero-padded vector. */
HAI void HN(hblk_max)(int kind, const nmx_hblk *b, float *m) {
    enum { NV = NMX_BLOCK_MAX / 16 };
    nmx_index nb = b->nb, nv = nb / 16, nvl = nv * 16, nt = nb - nvl;
    nmx_vf32 mv[NV];
    for (nmx_index c = 0; c < b->n; c++) {
        const uint16_t *r = b->z + c * b->inner;
        float *p = b->pk ? b->pk + c * b->ps : NULL;
        HN(hblk_fetch)(b, c, 1, 0);
        for (nmx_index v = 0; v < nv; v++) {
            nmx_vf32 x;
            HN(hload)(kind, r + v * 16, &x);
            if (p) memcpy(p + v * 16, &x, sizeof x);
            mv[v] = c == 0 ? x : NMX_VMAX(nmx_vf32, nmx_vi32, x, mv[v]);
        }
        if (nt) { /* kept out of the loop above, whose code it would otherwise slow down */
            nmx_vf32 x;
            HN(htail_load)(kind, r + nvl, nt, &x);
            if (p) memcpy(p + nvl, &x, sizeof x);
            mv[nv] = c == 0 ? x : NMX_VMAX(nmx_vf32, nmx_vi32, x, mv[nv]);
        }
    }
    for (nmx_index v = 0; v < nv + (nt > 0); v++) memcpy(m + v * 16, &mv[v], sizeof mv[v]);
}

/* s per column, as stream_sum. The exponentials go to eb (classes x ps: the packed copy) when
 * it is not NULL, else to a one-row scratch in L1 (see exp_step_f32's store). The last
 * nb % 16 columns take the float32 kernels' scalar arithmetic (scalar exp, float64 sums per
 * class), 16 lanes at a time (nmx_hexp_scalar, nmx_hsum_scalar). */
HAI void HN(hblk_sum)(int kind, const nmx_hblk *b, const float *m, double *s, float *eb) {
    enum { NV = NMX_BLOCK_MAX / 16 };
    nmx_index n = b->n, nb = b->nb, nv = nb / 16, nvl = nv * 16;
    nmx_vf64 acc[2 * NV];
    nmx_vf32 part[NV], mv[NV], mt;
    nmx_vi32 cnt[NV];
    nmx_vf64x2 st = {0}, ct = {0};
    float e[NMX_BLOCK_MAX];
    for (nmx_index v = 0; v < nv; v++) {
        acc[2 * v] = acc[2 * v + 1] = (nmx_vf64){0};
        cnt[v] = (nmx_vi32){0};
        memcpy(&mv[v], m + v * 16, sizeof mv[v]);
    }
    memcpy(&mt, m + nvl, sizeof mt); /* the padded lanes of m (see hblk_max) */
    for (nmx_index c0 = 0; c0 < n; c0 += NMX_CHUNK) {
        nmx_index c1 = n - c0 > NMX_CHUNK ? c0 + NMX_CHUNK : n;
        for (nmx_index v = 0; v < nv; v++) part[v] = (nmx_vf32){0};
        for (nmx_index c = c0; c < c1; c++) {
            float *er = eb ? eb + c * b->ps : e;
            HN(hblk_fetch)(b, c, !b->pk, 0);
            for (nmx_index v = 0; v < nv; v++) {
                nmx_vf32 x;
                HN(hblk_get)(kind, b, b->z, b->pk, c, v * 16, &x);
                exp_stepv_f32((const float *)&x, &mv[v], er + v * 16, &part[v], &cnt[v], 1);
            }
            if (nvl < nb) {
                nmx_vf32 x, t;
                HN(hblk_tail)(kind, b, b->z, b->pk, c, nvl, &x);
                t = x - mt;
                nmx_hexp_scalar(&t, &x);
                memcpy(er + nvl, &x, sizeof x);
                nmx_hsum_scalar(&t, &x, &st, &ct);
            }
        }
        for (nmx_index v = 0; v < nv; v++) nmx_vacc_f32(&acc[2 * v], &part[v]);
    }
    for (nmx_index v = 0; v < nv; v++)
        for (int k = 0; k < 16; k++)
            s[v * 16 + k] =
                (k < 8 ? acc[2 * v][k] : acc[2 * v + 1][k - 8]) + (double)(cnt[v][k] - 1);
    if (nvl < nb) {
        st += ct - 1.0;
        memcpy(s + nvl, &st, sizeof st);
    }
}

/* The output pass of softmax: round(exp(z - m) * inv) per class row, as stream_softmax, with
 * the exponentials hblk_sum stored in eb, or (eb NULL) computed again from z. */
HAI void HN(hblk_scale)(int kind, const nmx_hblk *b, const float *m, const float *inv,
                        const float *eb) {
    nmx_index nb = b->nb, nvl = nb / 16 * 16;
    for (nmx_index c = 0; c < b->n; c++) {
        const float *er = eb ? eb + c * b->ps : NULL;
        const uint16_t *r = b->z + c * b->inner;
        uint16_t *o = b->out + c * b->inner;
        HN(hblk_fetch)(b, c, !er, 1);
        for (nmx_index i = 0; i < nvl; i += 16) {
            nmx_vf32 x, iv;
            memcpy(&iv, inv + i, sizeof iv);
            if (er) {
                memcpy(&x, er + i, sizeof x);
            } else {
                HN(hload)(kind, r + i, &x);
                nmx_hexp_sub(&x, m + i, &x);
            }
            nmx_hsoftmax_out(&x, &iv, &x);
            HN(hstore)(kind, o + i, &x);
        }
        if (nvl < nb) { /* the scalar columns' exp (see hblk_sum) */
            nmx_vf32 x, iv, t;
            memcpy(&iv, inv + nvl, sizeof iv);
            if (er) {
                memcpy(&x, er + nvl, sizeof x);
            } else {
                memcpy(&t, m + nvl, sizeof t);
                HN(htail_load)(kind, r + nvl, nb - nvl, &x);
                t = x - t;
                nmx_hexp_scalar(&t, &x);
            }
            nmx_hsoftmax_out(&x, &iv, &x);
            HN(htail_store)(kind, o + nvl, nb - nvl, &x);
        }
    }
}

/* The output pass of log-softmax: round((z - m) - lse) in float64, as stream_softmax. */
HAI void HN(hblk_logout)(int kind, const nmx_hblk *b, const float *m, const double *lse) {
    nmx_index nb = b->nb, nvl = nb / 16 * 16;
    for (nmx_index c = 0; c < b->n; c++) {
        uint16_t *o = b->out + c * b->inner;
        HN(hblk_fetch)(b, c, !b->pk, 1);
        for (nmx_index i = 0; i < nvl; i += 16) {
            nmx_vf32 x;
            HN(hblk_get)(kind, b, b->z, b->pk, c, i, &x);
            nmx_hlog_out(&x, m + i, lse + i, &x);
            HN(hstore)(kind, o + i, &x);
        }
        if (nvl < nb) {
            nmx_vf32 x;
            HN(hblk_tail)(kind, b, b->z, b->pk, c, nvl, &x);
            nmx_hlog_out(&x, m + nvl, lse + nvl, &x);
            HN(htail_store)(kind, o + nvl, nb - nvl, &x);
        }
    }
}

/* Softmax or log-softmax of one block; softmax's exponentials overwrite the packed copy. */
HAI void HN(hblk_softmax)(int kind, const nmx_hblk *b, int log_) {
    float m[NMX_BLOCK_MAX], inv[NMX_BLOCK_MAX];
    double s[NMX_BLOCK_MAX];
    float *eb = log_ ? NULL : b->pk;
    nmx_index nbp = nmx_hblk_stride(b->nb); /* the padded lanes of the last vector too */
    HN(hblk_max)(kind, b, m);
    HN(hblk_sum)(kind, b, m, s, eb);
    if (log_) {
        for (nmx_index i = 0; i < nbp; i++) s[i] = NMX_LOG1P(s[i]);
        HN(hblk_logout)(kind, b, m, s);
        return;
    }
    for (nmx_index i = 0; i < nbp; i++) inv[i] = (float)(1.0 / (1.0 + s[i]));
    HN(hblk_scale)(kind, b, m, inv, eb);
}

/* One vector of columns from i of class row c in the first pass of hblk_backward: g widened
 * (and y, when `both`), stored into the packed copies when the block has them, and the exact
 * products g y (g alone for log-softmax) added to acc[0] (lanes 0-7) and acc[1] (8-15) in
 * float64. nt: 0 for a full vector, else the columns left (the lanes past them are 0). */
HAI void HN(hbwd_sum)(int kind, const nmx_hblk *b, nmx_index c, nmx_index i, nmx_index nt,
                      int log_, int both, nmx_vf64 *acc) {
    nmx_index at = c * b->inner + i;
    nmx_vf32 gv, yv;
    nmx_vf64 g0, g1, y0, y1;
    if (nt)
        HN(htail_load)(kind, b->z + at, nt, &gv);
    else
        HN(hload)(kind, b->z + at, &gv);
    if (b->pk) memcpy(b->pk + c * b->ps + i, &gv, sizeof gv);
    HWIDEN(&gv, &g0, &g1);
    if (both) {
        if (nt)
            HN(htail_load)(kind, b->y + at, nt, &yv);
        else
            HN(hload)(kind, b->y + at, &yv);
        if (b->pk) memcpy(b->pk + (b->n + c) * b->ps + i, &yv, sizeof yv);
        if (!log_) {
            HWIDEN(&yv, &y0, &y1);
            g0 *= y0;
            g1 *= y1;
        }
    }
    acc[0] += g0;
    acc[1] += g1;
}

/* The backward of softmax (dz = y (g - d), d = sum_c g y) or of log-softmax (dz = g - exp(y) d,
 * d = sum_c g) of one block, with g at z, y at b->y and dz at out: backward_block_f32 on the
 * widened rows, operation for operation. Every product g y is exact in float64 and is added in
 * class order, so each column's sum is the float32 kernel's whatever the vector width; each
 * output is its float32 expression, rounded once. The first pass widens g and y in its vector
 * loads and, for a block with a packed copy (pk: g rows, then y rows n ps further on), stores
 * them there for the second pass to read from L2; a streamed block's second pass reads the half
 * rows again, widening them the same way. Nothing goes through a conversion pass of its own.
 * The log-softmax output runs the float32 kernel's own loop on an L1 row of widened values (as
 * hlog_backward_out does), for its exp and its contractions. */
HAI void HN(hblk_backward)(int kind, const nmx_hblk *b, int log_) {
    enum { NV = NMX_BLOCK_MAX / 16 };
    nmx_index n = b->n, nb = b->nb, nvl = nb / 16 * 16, nbp = nmx_hblk_stride(nb);
    const float *pg = b->pk, *py = b->pk ? b->pk + n * b->ps : NULL;
    int both = !log_ || b->pk; /* the first pass reads y too */
    nmx_vf64 acc[2 * NV];
    float d[NMX_BLOCK_MAX];
    for (nmx_index v = 0; v < nbp / 8; v++) acc[v] = (nmx_vf64){0};
    for (nmx_index c = 0; c < n; c++) {
        HN(hblk_fetch)(b, c, both ? 2 : 1, 0);
        for (nmx_index i = 0; i < nvl; i += 16)
            HN(hbwd_sum)(kind, b, c, i, 0, log_, both, acc + i / 8);
        if (nvl < nb) HN(hbwd_sum)(kind, b, c, nvl, nb - nvl, log_, both, acc + nvl / 8);
    }
    for (nmx_index i = 0; i < nbp; i++) d[i] = (float)acc[i / 8][i % 8];
    if (log_) {
        float gb[NMX_BLOCK_MAX], yb[NMX_BLOCK_MAX], ob[NMX_BLOCK_MAX];
        for (nmx_index c = 0; c < n; c++) {
            const float *gr = pg ? pg + c * b->ps : gb, *yr = py ? py + c * b->ps : yb;
            uint16_t *o = b->out + c * b->inner;
            HN(hblk_fetch)(b, c, pg ? 0 : 2, 1);
            if (!pg) {
                nmx_vf32 x;
                for (nmx_index i = 0; i < nvl; i += 16) {
                    HN(hload)(kind, b->z + c * b->inner + i, &x);
                    memcpy(gb + i, &x, sizeof x);
                    HN(hload)(kind, b->y + c * b->inner + i, &x);
                    memcpy(yb + i, &x, sizeof x);
                }
                if (nvl < nb) {
                    HN(htail_load)(kind, b->z + c * b->inner + nvl, nb - nvl, &x);
                    memcpy(gb + nvl, &x, sizeof x);
                    HN(htail_load)(kind, b->y + c * b->inner + nvl, nb - nvl, &x);
                    memcpy(yb + nvl, &x, sizeof x);
                }
            }
            for (nmx_index i = 0; i < nbp; i++) ob[i] = gr[i] - nmx_exp_f32(yr[i]) * d[i];
            for (nmx_index i = 0; i < nvl; i += 16) {
                nmx_vf32 x;
                memcpy(&x, ob + i, sizeof x);
                HN(hstore)(kind, o + i, &x);
            }
            if (nvl < nb) {
                nmx_vf32 x;
                memcpy(&x, ob + nvl, sizeof x);
                HN(htail_store)(kind, o + nvl, nb - nvl, &x);
            }
        }
        return;
    }
    for (nmx_index c = 0; c < n; c++) {
        uint16_t *o = b->out + c * b->inner;
        HN(hblk_fetch)(b, c, pg ? 0 : 2, 1);
        for (nmx_index i = 0; i < nvl; i += 16) {
            nmx_vf32 gv, yv, dv;
            HN(hblk_get)(kind, b, b->z, pg, c, i, &gv);
            HN(hblk_get)(kind, b, b->y, py, c, i, &yv);
            memcpy(&dv, d + i, sizeof dv);
            gv = yv * (gv - dv);
            HN(hstore)(kind, o + i, &gv);
        }
        if (nvl < nb) {
            nmx_vf32 gv, yv, dv;
            HN(hblk_tail)(kind, b, b->z, pg, c, nvl, &gv);
            HN(hblk_tail)(kind, b, b->y, py, c, nvl, &yv);
            memcpy(&dv, d + nvl, sizeof dv);
            gv = yv * (gv - dv);
            HN(htail_store)(kind, o + nvl, nb - nvl, &gv);
        }
    }
}

/* Column blocks [t0, t1) of a direct job with inner > 1 (block t: example row t / nblk, its
 * columns from nmx_hcol_start); e is the thread's scratch (nmx_hrow_scratch), the packed copy
 * of a block that is not streamed. */
HAI void HN(hcols)(int kind, const nmx_hjob *h, nmx_index t0, nmx_index t1, float *e) {
    nmx_index n = h->f.n, inner = h->f.inner;
    for (nmx_index t = t0; t < t1; t++) {
        nmx_index o = t / h->f.nblk, k = t % h->f.nblk;
        nmx_index i0 = nmx_hcol_start(h, k), nb = nmx_hcol_start(h, k + 1) - i0;
        nmx_index off = o * n * inner + i0;
        nmx_hblk b = {.z = h->x + off,
                      .y = h->y ? h->y + off : NULL,
                      .out = h->out + off,
                      .pk = h->f.stream ? NULL : e,
                      .n = n,
                      .inner = inner,
                      .nb = nb,
                      .ahead = nmx_hblk_ahead(nb, inner),
                      .ps = nmx_hblk_stride(nb)};
        if (h->f.kind == NMX_BWD || h->f.kind == NMX_BWD_LOG)
            HN(hblk_backward)(kind, &b, h->f.kind == NMX_BWD_LOG);
        else
            HN(hblk_softmax)(kind, &b, h->f.kind == NMX_LOG_SOFTMAX);
    }
}
