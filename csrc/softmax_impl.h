/* Softmax kernels for one dtype; included by softmax.c with T, SFX, EXP and LANES defined.
 *
 * Two layouts of the (outer, classes, inner) block:
 *   inner == 1: each example is a contiguous row; loops run along the row in LANES-wide steps
 *     with LANES float64 partial sums (a row's tail is padded with -inf, which adds exp = 0).
 *   inner > 1: a block of up to NMX_BLOCK_MAX neighbouring columns is processed together; every
 *     pass walks the class axis and keeps one running max / sum per column, so loads stay
 *     contiguous and vectorize across columns.
 * Each pass is: max; s = sum of exp(z - max) except one maximum (ties count separately, exactly);
 * then the output. Inputs are read from memory once; the second and third passes hit cache.
 */
#define NM(x) NMX_CAT(x, SFX)

/* ------------------------------------------------------------------ rows (inner == 1) */

static inline __attribute__((always_inline)) VT NM(vload)(const T *p) {
    VT v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Max of a row. A NaN that loses the comparisons still turns s (row_sum) into NaN. */
static inline __attribute__((always_inline)) T NM(row_max)(const T *z, nmx_index n) {
    T m = z[0];
    if (n < LANES) {
        for (nmx_index j = 1; j < n; j++) m = z[j] > m ? z[j] : m;
        return m;
    }
    VT mv = NM(vload)(z);
    for (nmx_index j = LANES; j + LANES <= n; j += LANES) {
        VT v = NM(vload)(z + j);
        mv = NMX_VSEL(VT, VI, v > mv, v, mv);
    }
    VT v = NM(vload)(z + n - LANES); /* overlapping tail: max is idempotent */
    mv = NMX_VSEL(VT, VI, v > mv, v, mv);
    for (int k = 0; k < LANES; k++) m = mv[k] > m ? mv[k] : m;
    return m;
}

/* One vector: e = exp(z - m) (stored if `store`); ties with the maximum are counted, the other
 * exponentials summed in float64. */
static inline __attribute__((always_inline)) void NM(exp_step)(const T *z, T m, T *e,
                                                                nmx_vf64 *acc, VI *cnt,
                                                                int store) {
    const VT zero = {0};
    VT t = NM(vload)(z) - m;
    VT ev = NMX_CAT(nmx_vexp, SFX)(t);
    if (store) memcpy(e, &ev, sizeof ev);
    VI tie = t == 0;
    NMX_CAT(nmx_vacc, SFX)(acc, NMX_VSEL(VT, VI, tie, zero, ev));
    *cnt -= tie; /* a true comparison is -1 */
}

/* s = sum of exp(z_j - m) over every entry but one maximum; exp(z_j - m) stored in e if store.
 * The tail is padded with -inf, whose exponential is exactly 0. */
static inline __attribute__((always_inline)) double NM(row_sum)(const T *z, nmx_index n, T m, T *e,
                                                                 int store) {
    nmx_vf64 acc[2] = {{0}, {0}};
    VI cnt = {0};
    nmx_index j = 0;
    for (; j + LANES <= n; j += LANES)
        NM(exp_step)(z + j, m, store ? e + j : NULL, acc, &cnt, store);
    if (j < n) {
        T zb[LANES], eb[LANES];
        for (int k = 0; k < LANES; k++) zb[k] = -(T)INFINITY;
        memcpy(zb, z + j, (size_t)(n - j) * sizeof(T));
        NM(exp_step)(zb, m, eb, acc, &cnt, 1);
        if (store) memcpy(e + j, eb, (size_t)(n - j) * sizeof(T));
    }
    double s = 0.0;
    int64_t c = 0;
    for (int k = 0; k < 8; k++) s += acc[0][k] + acc[1][k];
    for (int k = 0; k < LANES; k++) c += cnt[k];
    return s + (double)(c - 1);
}

/* sum_j a_j * b_j (b == NULL: sum_j a_j) with float64 partial sums. */
static inline __attribute__((always_inline)) double NM(row_dot)(const T *a, const T *b, nmx_index n) {
    double acc[LANES] = {0};
    nmx_index j = 0;
    if (b)
        for (; j + LANES <= n; j += LANES)
            for (int k = 0; k < LANES; k++) acc[k] += (double)a[j + k] * (double)b[j + k];
    else
        for (; j + LANES <= n; j += LANES)
            for (int k = 0; k < LANES; k++) acc[k] += (double)a[j + k];
    for (; j < n; j++) acc[0] += (double)a[j] * (b ? (double)b[j] : 1.0);
    double s = 0.0;
    for (int k = 0; k < LANES; k++) s += acc[k];
    return s;
}

static inline __attribute__((always_inline)) void NM(softmax_row)(const T *z, T *out, nmx_index n,
                                                                  int log_) {
    T m = NM(row_max)(z, n);
    if (log_) {
        /* (z - max) - log1p(s), in that order: z - max is exact, so a tie near 3e29 keeps log 2. */
        double lse = log1p(NM(row_sum)(z, n, m, NULL, 0));
        for (nmx_index j = 0; j < n; j++) out[j] = (T)(((double)z[j] - (double)m) - lse);
    } else {
        T inv = (T)(1.0 / (1.0 + NM(row_sum)(z, n, m, out, 1)));
        for (nmx_index j = 0; j < n; j++) out[j] *= inv;
    }
}

static inline __attribute__((always_inline)) void NM(backward_row)(const T *g, const T *y, T *dz,
                                                                   nmx_index n, int log_) {
    if (log_) {
        T sg = (T)NM(row_dot)(g, NULL, n);
        for (nmx_index j = 0; j < n; j++) dz[j] = g[j] - EXP(y[j]) * sg;
    } else {
        T d = (T)NM(row_dot)(g, y, n);
        for (nmx_index j = 0; j < n; j++) dz[j] = y[j] * (g[j] - d);
    }
}

/* p_y - 1 for the label's shifted logit t = z_y - max, without cancellation: when y is a maximum
 * (t == 0, p_y = 1 / (1 + s)) it is exactly -s / (1 + s), so a class that dominates by 100 keeps
 * its gradient of about -exp(-100); otherwise p_y <= 1/2 and the subtraction is benign. */
static inline double NM(p_minus_one)(T t, double s) {
    return t == 0 ? -s / (1.0 + s) : (double)EXP(t) / (1.0 + s) - 1.0;
}

/* Loss of one example with integer label y; dz receives scale * d(loss)/dz.
 * loss = A * log1p(s) - sum_k a_k (z_k - max) with a_k = (1 - eps) w_y [k == y] + eps/C w_k. */
static inline __attribute__((always_inline)) double NM(xent_label_row)(const T *z, T *dz, int64_t y,
                                                                       const nmx_xent_args *a,
                                                                       double wall) {
    nmx_index n = a->classes;
    /* Labels are validated before the kernel; out-of-range ones are treated as ignored anyway
     * so that no input can make this read outside z. */
    if ((a->has_ignore && y == a->ignore) || y < 0 || y >= n) {
        memset(dz, 0, (size_t)n * sizeof(T));
        return 0.0;
    }
    T m = NM(row_max)(z, n);
    double s = NM(row_sum)(z, n, m, dz, 1), lse = log1p(s);
    double wy = a->weight ? a->weight[y] : 1.0, ty = (double)z[y] - (double)m, sc = a->scale;
    if (a->eps == 0.0) {
        T alpha = (T)(sc * wy / (1.0 + s));
        for (nmx_index j = 0; j < n; j++) dz[j] *= alpha;
        dz[y] = (T)(sc * wy * NM(p_minus_one)(z[y] - m, s));
        return wy * (lse - ty);
    }
    double ec = a->eps / (double)n, keep = 1.0 - a->eps, wt = 0.0;
    double big_a = keep * wy + ec * wall;
    T alpha = (T)(sc * big_a / (1.0 + s));
    for (nmx_index j = 0; j < n; j++) {
        double wj = a->weight ? a->weight[j] : 1.0;
        wt += wj * ((double)z[j] - (double)m);
        dz[j] = alpha * dz[j] - (T)(sc * ec * wj);
    }
    dz[y] -= (T)(sc * keep * wy);
    return big_a * lse - keep * wy * ty - ec * wt;
}

/* Same with probability targets q: a_k = w_k ((1 - eps) q_k + eps / C). */
static inline __attribute__((always_inline)) double NM(xent_prob_row)(const T *z, const T *q, T *dz,
                                                                      const nmx_xent_args *a) {
    nmx_index n = a->classes;
    T m = NM(row_max)(z, n);
    double s = NM(row_sum)(z, n, m, dz, 1), lse = log1p(s);
    double ec = a->eps / (double)n, keep = 1.0 - a->eps, sc = a->scale, big_a = 0.0, at = 0.0;
    for (nmx_index j = 0; j < n; j++) {
        double aj = (a->weight ? a->weight[j] : 1.0) * (keep * (double)q[j] + ec);
        big_a += aj;
        at += aj * ((double)z[j] - (double)m);
    }
    T alpha = (T)(sc * big_a / (1.0 + s));
    for (nmx_index j = 0; j < n; j++) {
        double aj = (a->weight ? a->weight[j] : 1.0) * (keep * (double)q[j] + ec);
        dz[j] = alpha * dz[j] - (T)(sc * aj);
    }
    return big_a * lse - at;
}

/* ------------------------------------------------------- column blocks (inner > 1) */
/* zb points at (o, 0, i0); class c of column i is zb[c * inner + i], for i < nb. */

static inline __attribute__((always_inline)) void NM(block_max)(const T *zb, nmx_index n,
                                                                nmx_index inner, nmx_index nb,
                                                                T *m) {
    for (nmx_index i = 0; i < nb; i++) m[i] = zb[i];
    for (nmx_index c = 1; c < n; c++) {
        const T *zr = zb + c * inner;
        for (nmx_index i = 0; i < nb; i++) m[i] = zr[i] > m[i] ? zr[i] : m[i];
    }
}

static inline __attribute__((always_inline)) void NM(block_sum)(const T *zb, T *eb, nmx_index n,
                                                                nmx_index inner, nmx_index nb,
                                                                const T *m, double *s, int store) {
    double cnt[NMX_BLOCK_MAX];
    for (nmx_index i = 0; i < nb; i++) s[i] = cnt[i] = 0.0;
    for (nmx_index c = 0; c < n; c++) {
        const T *zr = zb + c * inner;
        T *er = store ? eb + c * inner : NULL;
        for (nmx_index i = 0; i < nb; i++) {
            T t = zr[i] - m[i];
            T e = EXP(t);
            if (store) er[i] = e;
            s[i] += t == 0 ? 0.0 : (double)e;
            cnt[i] += t == 0 ? 1.0 : 0.0;
        }
    }
    for (nmx_index i = 0; i < nb; i++) s[i] += cnt[i] - 1.0;
}

static inline __attribute__((always_inline)) void NM(softmax_block)(const T *zb, T *ob, nmx_index n,
                                                                    nmx_index inner, nmx_index nb,
                                                                    int log_) {
    T m[NMX_BLOCK_MAX];
    double s[NMX_BLOCK_MAX];
    NM(block_max)(zb, n, inner, nb, m);
    NM(block_sum)(zb, ob, n, inner, nb, m, s, !log_);
    if (log_) {
        for (nmx_index i = 0; i < nb; i++) s[i] = log1p(s[i]);
        for (nmx_index c = 0; c < n; c++)
            for (nmx_index i = 0; i < nb; i++)
                ob[c * inner + i] = (T)(((double)zb[c * inner + i] - (double)m[i]) - s[i]);
    } else {
        T inv[NMX_BLOCK_MAX];
        for (nmx_index i = 0; i < nb; i++) inv[i] = (T)(1.0 / (1.0 + s[i]));
        for (nmx_index c = 0; c < n; c++)
            for (nmx_index i = 0; i < nb; i++) ob[c * inner + i] *= inv[i];
    }
}

static inline __attribute__((always_inline)) void NM(backward_block)(const T *g, const T *y, T *dz,
                                                                     nmx_index n, nmx_index inner,
                                                                     nmx_index nb, int log_) {
    double acc[NMX_BLOCK_MAX];
    T d[NMX_BLOCK_MAX];
    for (nmx_index i = 0; i < nb; i++) acc[i] = 0.0;
    for (nmx_index c = 0; c < n; c++)
        for (nmx_index i = 0; i < nb; i++)
            acc[i] += (double)g[c * inner + i] * (log_ ? 1.0 : (double)y[c * inner + i]);
    for (nmx_index i = 0; i < nb; i++) d[i] = (T)acc[i];
    for (nmx_index c = 0; c < n; c++)
        for (nmx_index i = 0; i < nb; i++) {
            nmx_index k = c * inner + i;
            dz[k] = log_ ? g[k] - EXP(y[k]) * d[i] : y[k] * (g[k] - d[i]);
        }
}

/* Zero column i of a block (an ignored example). */
static inline void NM(zero_column)(T *db, nmx_index n, nmx_index inner, nmx_index i) {
    for (nmx_index c = 0; c < n; c++) db[c * inner + i] = 0;
}

static inline __attribute__((always_inline)) double NM(xent_block)(const T *zb, T *db,
                                                                   const nmx_xent_args *a,
                                                                   nmx_index o, nmx_index i0,
                                                                   nmx_index nb) {
    nmx_index n = a->classes, inner = a->inner, col0 = o * inner + i0;
    T m[NMX_BLOCK_MAX], alpha[NMX_BLOCK_MAX];
    double s[NMX_BLOCK_MAX], big_a[NMX_BLOCK_MAX], at[NMX_BLOCK_MAX];
    NM(block_max)(zb, n, inner, nb, m);
    NM(block_sum)(zb, db, n, inner, nb, m, s, 1);
    double ec = a->eps / (double)n, keep = 1.0 - a->eps, sc = a->scale, total = 0.0;
    const T *qb = a->probs ? (const T *)a->probs + o * n * inner + i0 : NULL;
    /* at[i] = sum_c a_ci (z_ci - m_i) and big_a[i] = sum_c a_ci, without the label term. */
    for (nmx_index i = 0; i < nb; i++) big_a[i] = at[i] = 0.0;
    if (qb || a->eps != 0.0)
        for (nmx_index c = 0; c < n; c++) {
            double wc = a->weight ? a->weight[c] : 1.0;
            for (nmx_index i = 0; i < nb; i++) {
                double ac = wc * (qb ? keep * (double)qb[c * inner + i] + ec : ec);
                big_a[i] += ac;
                at[i] += ac * ((double)zb[c * inner + i] - (double)m[i]);
            }
        }
    for (nmx_index i = 0; i < nb; i++) {
        double loss = 0.0;
        if (qb) {
            loss = big_a[i] * log1p(s[i]) - at[i];
        } else {
            int64_t y = nmx_label_at(a->labels, a->label_bytes, col0 + i);
            if ((a->has_ignore && y == a->ignore) || y < 0 || y >= n) {
                alpha[i] = 0;
                if (a->loss) ((T *)a->loss)[col0 + i] = 0;
                continue;
            }
            double wy = a->weight ? a->weight[y] : 1.0;
            double ty = (double)zb[y * inner + i] - (double)m[i];
            big_a[i] += keep * wy;
            loss = big_a[i] * log1p(s[i]) - at[i] - keep * wy * ty;
        }
        alpha[i] = (T)(sc * big_a[i] / (1.0 + s[i]));
        if (a->loss) ((T *)a->loss)[col0 + i] = (T)loss;
        total += loss;
    }
    for (nmx_index c = 0; c < n; c++) {
        double wc = a->weight ? a->weight[c] : 1.0;
        T *dr = db + c * inner;
        if (qb)
            for (nmx_index i = 0; i < nb; i++)
                dr[i] = alpha[i] * dr[i] - (T)(sc * wc * (keep * (double)qb[c * inner + i] + ec));
        else if (a->eps != 0.0)
            for (nmx_index i = 0; i < nb; i++) dr[i] = alpha[i] * dr[i] - (T)(sc * wc * ec);
        else
            for (nmx_index i = 0; i < nb; i++) dr[i] *= alpha[i];
    }
    if (!qb)
        for (nmx_index i = 0; i < nb; i++) {
            int64_t y = nmx_label_at(a->labels, a->label_bytes, col0 + i);
            if ((a->has_ignore && y == a->ignore) || y < 0 || y >= n) {
                NM(zero_column)(db, n, inner, i);
                continue;
            }
            double wy = a->weight ? a->weight[y] : 1.0;
            T *dy = db + y * inner + i;
            if (a->eps == 0.0)
                *dy = (T)(sc * wy * NM(p_minus_one)(zb[y * inner + i] - m[i], s[i]));
            else
                *dy -= (T)(sc * keep * wy);
        }
    return total;
}

/* ------------------------------------------------------------------ drivers */

typedef struct {
    int kind;
    const T *x, *y; /* z (forward), or g and p / lp (backward) */
    T *out;
    const nmx_xent_args *a;
    nmx_index n, inner, cols, nblk;
    double wall;
} NM(job);

/* Run tasks [t0, t1): rows when inner == 1, else blocks of `cols` columns. The target clones
 * give AVX-512 / AVX2+FMA code on CPUs that have it without -march=native. */
NMX_CLONES static double NM(run_range)(const NM(job) * jb, nmx_index t0, nmx_index t1) {
    double total = 0.0;
    nmx_index n = jb->n, inner = jb->inner;
    const nmx_xent_args *a = jb->a;
    for (nmx_index t = t0; t < t1; t++) {
        nmx_index o = t / jb->nblk, i0 = (t % jb->nblk) * jb->cols;
        nmx_index nb = inner - i0 < jb->cols ? inner - i0 : jb->cols;
        nmx_index off = o * n * inner + i0;
        const T *x = jb->x + off;
        T *out = jb->out + off;
        if (jb->kind == NMX_XENT && inner == 1) {
            double loss = a->probs ? NM(xent_prob_row)(x, (const T *)a->probs + off, out, a)
                                   : NM(xent_label_row)(
                                         x, out, nmx_label_at(a->labels, a->label_bytes, o), a,
                                         jb->wall);
            if (a->loss) ((T *)a->loss)[o] = (T)loss;
            total += loss;
        } else if (jb->kind == NMX_XENT) {
            total += NM(xent_block)(x, out, a, o, i0, nb);
        } else if (jb->kind == NMX_BWD || jb->kind == NMX_BWD_LOG) {
            int lg = jb->kind == NMX_BWD_LOG;
            if (inner == 1)
                NM(backward_row)(x, jb->y + off, out, n, lg);
            else
                NM(backward_block)(x, jb->y + off, out, n, inner, nb, lg);
        } else if (inner == 1) {
            NM(softmax_row)(x, out, n, jb->kind == NMX_LOG_SOFTMAX);
        } else {
            NM(softmax_block)(x, out, n, inner, nb, jb->kind == NMX_LOG_SOFTMAX);
        }
    }
    return total;
}

static double NM(run)(NM(job) * jb, nmx_index outer) {
    jb->cols = jb->inner == 1 ? 1 : nmx_block_cols(jb->n, jb->inner, (nmx_index)sizeof(T));
    jb->nblk = (jb->inner + jb->cols - 1) / jb->cols;
    nmx_index ntasks = outer * jb->nblk;
    int nt = nmx_threads_for(outer * jb->n * jb->inner);
    if (nt <= 1 || ntasks < 2) return NM(run_range)(jb, 0, ntasks);
    double total = 0.0;
#pragma omp parallel num_threads(nt) reduction(+ : total)
    {
        nmx_index id = omp_get_thread_num(), k = omp_get_num_threads();
        total += NM(run_range)(jb, ntasks * id / k, ntasks * (id + 1) / k);
    }
    return total;
}

double NMX_CAT(nmx_xent, SFX)(const T *z, T *dz, const nmx_xent_args *a) {
    double wall = (double)a->classes;
    if (a->weight) {
        wall = 0.0;
        for (nmx_index c = 0; c < a->classes; c++) wall += a->weight[c];
    }
    NM(job) jb = {NMX_XENT, z, NULL, dz, a, a->classes, a->inner, 0, 0, wall};
    return NM(run)(&jb, a->outer);
}

void NMX_CAT(nmx_softmax, SFX)(const T *z, T *out, nmx_index outer, nmx_index classes,
                               nmx_index inner, int log_) {
    NM(job) jb = {log_ ? NMX_LOG_SOFTMAX : NMX_SOFTMAX, z, NULL, out, NULL, classes, inner,
                  0, 0, 0.0};
    NM(run)(&jb, outer);
}

void NMX_CAT(nmx_softmax_backward, SFX)(const T *g, const T *y, T *dz, nmx_index outer,
                                        nmx_index classes, nmx_index inner, int log_) {
    NM(job) jb = {log_ ? NMX_BWD_LOG : NMX_BWD, g, y, dz, NULL, classes, inner, 0, 0, 0.0};
    NM(run)(&jb, outer);
}

#undef NM
