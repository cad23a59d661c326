/* Half-precision column blocks (inner > 1) for one set of conversions; included by
 * softmax_hrow_impl.h with its macros (HN, HAI and the 16-lane conversions).
 *
 * Softmax and log-softmax of a block of columns in half storage. The first pass walks the class
 * rows of the block in order, widening each vector of 16 columns as it is loaded; the output
 * pass rounds each result once as it stores it into the half output. A block too large for L2
 * is streamed: every pass reads the half rows again (b->pk NULL). A smaller block is packed
 * by its first pass into float32 scratch (b->pk, classes x nb) that the later passes read
 * from L2 (softmax keeps its exponentials there in place of z), as the float32 kernels' packed
 * blocks do: strided class rows, one page apart for a long inner, would miss in L1 and the TLB
 * on every pass. Nothing is converted in a pass of its own.
 *
 * The arithmetic is softmax_stream.h's stream_softmax (and so block_max / block_sum /
 * softmax_block's), operation for operation: the same comparisons in class order, the same
 * vector exp on full vectors of columns (partial sums in float32 over NMX_CHUNK classes, then
 * float64), the scalar exp on the last nb % 16 columns, the same final scaling.
 */

/* Fetch class row c + b->ahead of the block's input (in: reading it again from z) and of its
 * output (out: for writing; the output pass's strided stores would otherwise wait for each
 * line). A no-op when b->ahead is 0 (nmx_hblk_ahead). */
HAI void HN(hblk_fetch)(const nmx_hblk *b, nmx_index c, int in, int out) {
    if (!b->ahead || c + b->ahead >= b->n) return;
    nmx_index off = (c + b->ahead) * b->inner;
    for (nmx_index i = 0; i < b->nb; i += 32) {
        if (in) __builtin_prefetch(b->z + off + i);
        if (out) __builtin_prefetch(b->out + off + i, 1);
    }
}

/* 16 columns from i of class row c, as float32: from the packed copy, else widened. */
HAI void HN(hblk_get)(int kind, const nmx_hblk *b, nmx_index c, nmx_index i, nmx_vf32 *x) {
    if (b->pk)
        memcpy(x, b->pk + c * b->nb + i, sizeof *x);
    else
        HN(hload)(kind, b->z + c * b->inner + i, x);
}

HAI float HN(hblk_at)(int kind, const nmx_hblk *b, nmx_index c, nmx_index i) {
    return b->pk ? b->pk[c * b->nb + i] : nmx_h2f(kind, b->z[c * b->inner + i]);
}

/* Column maxima, as stream_max: the same comparison, classes in order; the widened rows are
 * packed into b->pk when it is set. */
HAI void HN(hblk_max)(int kind, const nmx_hblk *b, float *m) {
    enum { NV = NMX_BLOCK_MAX / 16 };
    nmx_index nb = b->nb, nv = nb / 16, nvl = nv * 16;
    nmx_vf32 mv[NV];
    for (nmx_index c = 0; c < b->n; c++) {
        const uint16_t *r = b->z + c * b->inner;
        float *p = b->pk ? b->pk + c * nb : NULL;
        HN(hblk_fetch)(b, c, 1, 0);
        for (nmx_index v = 0; v < nv; v++) {
            nmx_vf32 x;
            HN(hload)(kind, r + v * 16, &x);
            if (p) memcpy(p + v * 16, &x, sizeof x);
            mv[v] = c == 0 ? x : NMX_VSEL(nmx_vf32, nmx_vi32, x > mv[v], x, mv[v]);
        }
        for (nmx_index i = nvl; i < nb; i++) {
            float x = nmx_h2f(kind, r[i]);
            if (p) p[i] = x;
            m[i] = c == 0 || x > m[i] ? x : m[i];
        }
    }
    for (nmx_index v = 0; v < nv; v++) memcpy(m + v * 16, &mv[v], sizeof mv[v]);
}

/* s per column, as stream_sum. The exponentials go to eb (classes x nb: the packed copy) when it
 * is not NULL, else to a one-row scratch in L1 (see nmx_hexp_step's store). */
HAI void HN(hblk_sum)(int kind, const nmx_hblk *b, const float *m, double *s, float *eb) {
    enum { NV = NMX_BLOCK_MAX / 16 };
    nmx_index n = b->n, nb = b->nb, nv = nb / 16, nvl = nv * 16;
    nmx_vf64 acc[2 * NV];
    nmx_vf32 part[NV], mv[NV];
    nmx_vi32 cnt[NV];
    float e[NMX_BLOCK_MAX];
    double cnts[16];
    for (nmx_index v = 0; v < nv; v++) {
        acc[2 * v] = acc[2 * v + 1] = (nmx_vf64){0};
        cnt[v] = (nmx_vi32){0};
        memcpy(&mv[v], m + v * 16, sizeof mv[v]);
    }
    for (nmx_index i = nvl; i < nb; i++) s[i] = cnts[i - nvl] = 0.0;
    for (nmx_index c0 = 0; c0 < n; c0 += NMX_CHUNK) {
        nmx_index c1 = n - c0 > NMX_CHUNK ? c0 + NMX_CHUNK : n;
        for (nmx_index v = 0; v < nv; v++) part[v] = (nmx_vf32){0};
        for (nmx_index c = c0; c < c1; c++) {
            float *er = eb ? eb + c * nb : e;
            HN(hblk_fetch)(b, c, !b->pk, 0);
            for (nmx_index v = 0; v < nv; v++) {
                nmx_vf32 x;
                HN(hblk_get)(kind, b, c, v * 16, &x);
                nmx_hexp_step(&x, &mv[v], er + v * 16, &part[v], &cnt[v], 1);
            }
            for (nmx_index i = nvl; i < nb; i++) {
                float t = HN(hblk_at)(kind, b, c, i) - m[i];
                float x = nmx_exp_f32(t);
                er[i] = x;
                s[i] += t == 0 ? 0.0 : (double)x;
                cnts[i - nvl] += t == 0 ? 1.0 : 0.0;
            }
        }
        for (nmx_index v = 0; v < nv; v++) nmx_vacc_f32(&acc[2 * v], &part[v]);
    }
    for (nmx_index v = 0; v < nv; v++)
        for (int k = 0; k < 16; k++)
            s[v * 16 + k] =
                (k < 8 ? acc[2 * v][k] : acc[2 * v + 1][k - 8]) + (double)(cnt[v][k] - 1);
    for (nmx_index i = nvl; i < nb; i++) s[i] += cnts[i - nvl] - 1.0;
}

/* The output pass of softmax: round(exp(z - m) * inv) per class row, as stream_softmax, with
 * the exponentials hblk_sum stored in eb, or (eb NULL) computed again from z. */
HAI void HN(hblk_scale)(int kind, const nmx_hblk *b, const float *m, const float *inv,
                        const float *eb) {
    nmx_index nb = b->nb, nvl = nb / 16 * 16;
    for (nmx_index c = 0; c < b->n; c++) {
        const float *er = eb ? eb + c * nb : NULL;
        uint16_t *o = b->out + c * b->inner;
        HN(hblk_fetch)(b, c, !er, 1);
        for (nmx_index i = 0; i < nvl; i += 16) {
            nmx_vf32 x, iv;
            memcpy(&iv, inv + i, sizeof iv);
            if (er) {
                memcpy(&x, er + i, sizeof x);
            } else {
                HN(hload)(kind, b->z + c * b->inner + i, &x);
                nmx_hexp_sub(&x, m + i, &x);
            }
            nmx_hsoftmax_out(&x, &iv, &x);
            HN(hstore)(kind, o + i, &x);
        }
        for (nmx_index i = nvl; i < nb; i++) {
            float e = er ? er[i] : nmx_exp_f32(HN(hblk_at)(kind, b, c, i) - m[i]);
            o[i] = nmx_f2h(kind, inv[i] != inv[i] ? inv[i] : e * inv[i]);
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
            HN(hblk_get)(kind, b, c, i, &x);
            nmx_hlog_out(&x, m + i, lse + i, &x);
            HN(hstore)(kind, o + i, &x);
        }
        for (nmx_index i = nvl; i < nb; i++)
            o[i] = nmx_f2h(kind,
                           (float)(((double)HN(hblk_at)(kind, b, c, i) - (double)m[i]) - lse[i]));
    }
}

/* Softmax or log-softmax of one block; softmax's exponentials overwrite the packed copy. */
HAI void HN(hblk_softmax)(int kind, const nmx_hblk *b, int log_) {
    float m[NMX_BLOCK_MAX], inv[NMX_BLOCK_MAX];
    double s[NMX_BLOCK_MAX];
    float *eb = log_ ? NULL : b->pk;
    HN(hblk_max)(kind, b, m);
    HN(hblk_sum)(kind, b, m, s, eb);
    if (log_) {
        for (nmx_index i = 0; i < b->nb; i++) s[i] = NMX_LOG1P(s[i]);
        HN(hblk_logout)(kind, b, m, s);
        return;
    }
    for (nmx_index i = 0; i < b->nb; i++) inv[i] = (float)(1.0 / (1.0 + s[i]));
    HN(hblk_scale)(kind, b, m, inv, eb);
}

/* Column blocks [t0, t1) of a direct job with inner > 1 (block t: example row t / nblk); e is
 * the thread's scratch (nmx_hrow_scratch), the packed copy of a block that is not streamed. */
HAI void HN(hcols)(int kind, const nmx_hjob *h, nmx_index t0, nmx_index t1, float *e) {
    nmx_index n = h->f.n, inner = h->f.inner, cols = h->f.cols;
    for (nmx_index t = t0; t < t1; t++) {
        nmx_index o = t / h->f.nblk, i0 = (t % h->f.nblk) * cols, off = o * n * inner + i0;
        nmx_index nb = inner - i0 < cols ? inner - i0 : cols;
        nmx_hblk b = {h->x + off, h->out + off, h->f.stream ? NULL : e, n, inner, nb,
                      nmx_hblk_ahead(nb, inner)};
        HN(hblk_softmax)(kind, &b, h->f.kind == NMX_LOG_SOFTMAX);
    }
}
