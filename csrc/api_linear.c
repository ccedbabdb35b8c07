/*
 * api_linear.c -- qc_linear(): prepares the activations once per call, splits
 * the output features across threads and calls the active linear kernels.
 *
 * Activations: float32 rows copied into zero-padded blocks of 32 (F32 mode, with
 * per-block sums), or quantized into Q8_0 blocks (I8 mode).  A row holding NaN or
 * Inf cannot be quantized; in either mode such a row is recomputed one weight row
 * at a time from dequantized values summed in double (exact_row), so it
 * propagates as IEEE arithmetic over x @ dequantize(W).T would and other rows are
 * untouched.  Large and tiny rows: a row is computed as 2^s * f(x * 2^-s) (s = 0
 * for ordinary rows; tiny rows scaled up; finite rows whose kernel outputs
 * overflow redone on the batch's path with every intermediate below 2^126).
 * y may overlap x (x is copied first).
 * Prepacked weights (packed.h, kind QC_KIND_PACKED + base; int8 compute): one
 * packed kernel for every m, over whole panels; the tail rows are packed as one
 * more panel per call; the activations get their integer block sums and row
 * offsets too.  NaN/Inf rows read their weight rows back in the row layout.
 * Threads: the pool (pool.h) over chunks of output features, multiples of 16;
 * every thread runs all m rows of a chunk it claims, so the weights are read once
 * per call (GEMV) or once per M-tile (GEMM).  The activations are prepared on the
 * calling thread (O(m * k) against the kernels' O(m * k * n)).  Memory: O(m * k)
 * scratch, nothing proportional to the weights.
 */
#include <math.h>
#include <stdlib.h>

#include "internal.h"
#include "kernels.h"
#include "packed.h"
#include "pool.h"

/* K-quant weights: kind QC_KIND_Q4_K + ktype; -1 for the other kinds. */
static int ktype_of(qc_kind kind) {
    return kind >= QC_KIND_Q4_K && kind <= QC_KIND_Q6_K ? (int)(kind - QC_KIND_Q4_K) : -1;
}

static void make_view(const qc_qweight *w, qc_wview *v) {
    v->w = w;
    v->panels = 0;
    if (ktype_of(w->kind) >= 0) { /* super-blocks: 32-blocks in natural order, no groups */
        v->row_bytes = qc_kquant_row_bytes((qc_ktype)ktype_of(w->kind), w->k);
        v->ngroups = v->srow = v->bpg = 0;
        v->gshift = -1;
        v->kp = w->k;
        v->nb = w->k / QC_BLK;
        return;
    }
    v->row_bytes = qc_row_bytes(w->kind, w->k);
    v->ngroups = w->per_tensor ? 1 : qc_num_groups(w->k, w->group);
    v->srow = w->per_tensor ? 0 : v->ngroups;
    v->kp = (w->k + QC_BLK - 1) / QC_BLK * QC_BLK;
    v->nb = v->kp / QC_BLK;
    int whole = w->per_tensor || w->group <= 0 || w->group >= w->k;
    v->bpg = whole ? v->nb : w->group / QC_BLK;
    v->gshift = -1;
    if (!whole)
        for (v->gshift = 0; ((int64_t)1 << v->gshift) < v->bpg; v->gshift++)
            ;
}

static int valid(const qc_qweight *w, qc_compute mode) {
    if (w && qc_is_packed_kind(w->kind)) { /* packed.h: int8 compute only */
        const qc_qweight base = qc_packed_twin(w);
        return mode == QC_COMPUTE_I8 && qc_packed_bytes(&base) > 0;
    }
    if (w && ktype_of(w->kind) >= 0)
        return w->n >= 1 && qc_kquant_row_bytes((qc_ktype)ktype_of(w->kind), w->k) > 0 &&
               w->data && (mode == QC_COMPUTE_F32 || mode == QC_COMPUTE_I8);
    if (!w || (unsigned)w->kind >= QC_NUM_KINDS || w->n < 1 || w->k < 1 || !w->data ||
        !w->scales || (QC_KINDS[w->kind].has_zero && !w->zeros))
        return 0;
    if (w->scale_dtype != QC_F32 && w->scale_dtype != QC_F16)
        return 0;
    int whole = w->per_tensor || w->group <= 0 || w->group >= w->k;
    /* the kernels walk 32-blocks: a group must be a power of two of whole blocks */
    if (!whole && (w->group % QC_BLK || (w->group & (w->group - 1))))
        return 0;
    return mode == QC_COMPUTE_F32 || mode == QC_COMPUTE_I8;
}

static qc_linear_fn pick(const qc_linear_kernels *l, qc_kind kind, int64_t m, qc_compute mode,
                         int *gemm) {
    const int t = ktype_of(kind);
    if (t >= 0) {
        const qc_kq_linear_kernels *q = &l->kq;
        int kmin = q->gemm_min_m[mode == QC_COMPUTE_I8];
        qc_linear_fn g = m >= (kmin > 0 ? kmin : QC_GEMM_MIN_M)
                             ? (mode == QC_COMPUTE_I8 ? q->gemm_i8[t] : q->gemm_f32[t])
                             : NULL;
        *gemm = g != NULL;
        return g ? g : mode == QC_COMPUTE_I8 ? q->gemv_i8[t] : q->gemv_f32[t];
    }
    int min_m = l->gemm_min_m[mode == QC_COMPUTE_I8][QC_KINDS[kind].bits == 4];
    if (min_m <= 0 || min_m > QC_GEMM_MIN_M)
        min_m = QC_GEMM_MIN_M;
    qc_linear_fn g = m >= min_m
                         ? (mode == QC_COMPUTE_I8 ? l->gemm_i8[kind] : l->gemm_f32[kind])
                         : NULL;
    *gemm = g != NULL;
    if (g)
        return g;
    return mode == QC_COMPUTE_I8 ? l->gemv_i8[kind] : l->gemv_f32[kind];
}

int qc_linear_uses_gemm(const qc_qweight *w, int64_t m, qc_compute mode) {
    if (!valid(w, mode) || qc_is_packed_kind(w->kind))
        return 0; /* packed weights: one kernel for every m */
    int gemm;
    pick(qc_active_linear(), w->kind, m, mode, &gemm);
    return gemm;
}

/* ---- row scaling ------------------------------------------------------------
 * A row is computed as y = 2^s * f(x * 2^-s), with s = 0 for ordinary rows (bit
 * for bit the plain computation).  Scaling by a power of two is exact as long as
 * nothing under- or overflows, so s changes only what would otherwise be lost:
 *   tiny rows (largest |x| below 2^ROW_TINY_EXP) are scaled up to [0.5, 1),
 *     where int8 activations would get no representable block scale and the
 *     float steps would underflow;
 *   rows whose outputs overflow (inf/NaN from finite x) are recomputed with the
 *     s that keeps every intermediate of every kernel below 2^ROW_SAFE_EXP:
 *     each is bounded by kp * max|x'| * max(Wq, Q), with Q the code bound and
 *     Wq = max over groups of Q |d| + |c| (see weight_bound).  Products of
 *     weights alone (d times an integer block dot, 128 d) do not scale with x:
 *     they stay finite for |d| up to ~3e32 (QuantizedLinear takes up to 1e30). */
#define ROW_TINY_EXP (-40)
#define ROW_SAFE_EXP 126

/* Largest |code| any kernel multiplies by (8-bit: 255 for ASYM8's codes as
 * stored, |q - 128| and SYM8's q + 128 included; 4-bit: 15, with q - 8), and the
 * offset shifts they fold into c (128 d, 8 d), rounded up. */
static double code_bound(qc_kind kind) {
    if (ktype_of(kind) >= 0)
        return 64.0; /* K-quants: codes 0..63 (Q6_K: |q - 32| <= 32) */
    return QC_KINDS[kind].bits == 8 ? 384.0 : 32.0;
}

/* K-quant weights: max over the sub-blocks of Q |d sc| + |dmin m| (inf if a
 * float16 scale is not finite), from the decoded parameters. */
static double weight_bound_kq(const qc_wview *v) {
    const qc_qweight *w = v->w;
    const int t = ktype_of(w->kind);
    const int64_t ns = qc_kquant_sub_blocks((qc_ktype)t, w->k);
    const double q = code_bound(w->kind);
    float *sc = (float *)malloc((size_t)(2 * ns) * sizeof(float));
    if (!sc)
        return INFINITY; /* no redo: the row keeps its overflowed output */
    double best = 0.0;
    for (int64_t r = 0; r < w->n; r++) {
        if (qc_kquant_params((qc_ktype)t, w->data + r * v->row_bytes, 1, w->k, sc,
                             t == QC_KTYPE_Q6_K ? NULL : sc + ns, NULL) != QC_OK) {
            best = INFINITY;
            break;
        }
        for (int64_t s = 0; s < ns; s++) {
            double b = q * fabs((double)sc[s]) + (t == QC_KTYPE_Q6_K ? 0.0 : fabs((double)sc[ns + s]));
            if (!(b <= best))
                best = b;
        }
    }
    free(sc);
    return best;
}

/* max over the scale groups of Q |d| + |c| (inf if a scale is not finite). */
static double weight_bound(const qc_wview *v) {
    const qc_qweight *w = v->w;
    if (ktype_of(w->kind) >= 0)
        return weight_bound_kq(v);
    const double q = code_bound(w->kind);
    const int64_t ng = w->per_tensor ? 1 : w->n * v->ngroups;
    double best = 0.0;
    for (int64_t gi = 0; gi < ng; gi++) {
        float d, c;
        qc_group_dc(v, gi, &d, &c);
        double t = q * fabs((double)d) + fabs((double)c);
        if (!(t <= best))
            best = t; /* NaN propagates */
    }
    return best;
}

/* Largest |x| of a finite row. */
static float row_amax(const float *x, int64_t k) {
    float a = 0.0f;
    for (int64_t e = 0; e < k; e++) {
        float v = fabsf(x[e]);
        a = v > a ? v : a;
    }
    return a;
}

/* The s for a finite row whose largest |x| is amax: nonzero for tiny rows only. */
static int tiny_shift(float amax) {
    if (!(amax > 0.0f) || amax >= ldexpf(1.0f, ROW_TINY_EXP))
        return 0;
    int e;
    frexpf(amax, &e);
    return e;
}

/* dst = x * 2^-s, rounded once (the product is exact in double). */
static void scale_row(const float *x, int64_t k, int s, float *dst) {
    const double f = ldexp(1.0, -s);
    for (int64_t e = 0; e < k; e++)
        dst[e] = (float)((double)x[e] * f);
}

/* Copy row x * 2^-s into xf (zero padded to kp, in the 4-bit GEMV order with
 * groups of `span` blocks when span > 0) and sum its blocks; returns the row's
 * largest |x| (before scaling), or -1 if it holds NaN or Inf. */
static float prep_f32_row(const float *x, int64_t k, int64_t kp, int span, int s, float *xf,
                          float *xs) {
    const int64_t nb = kp / QC_BLK;
    const double f = ldexp(1.0, -s);
    float amax = 0.0f;
    int bad = 0;
    for (int64_t b = 0; b < nb; b++) {
        float sum = 0.0f;
        for (int j = 0; j < QC_BLK; j++) {
            int64_t e = b * QC_BLK + j;
            float v = e < k ? x[e] : 0.0f;
            float a = fabsf(v);
            bad |= !(a < INFINITY);
            amax = a > amax ? a : amax;
            if (s)
                v = (float)((double)v * f);
            xf[span ? qc_act_pos4(span, nb, b, j) : e] = v;
            sum += v;
        }
        xs[b] = sum;
    }
    return bad ? -1.0f : amax;
}

/* y[j] = sum_k x[k] * W[j, k] (+ bias[j]) for one row x holding NaN or Inf, with
 * each W[j, k] dequantized as qc_dequantize does (one weight row at a time: O(k)
 * scratch).  The kernels factor each group as d * sum(x q) + c * sum(x), which
 * turns inf * 0 into NaN where x @ W^T has +-inf; this sums the products in
 * double, where finite ones cannot overflow, so the result is NaN, +inf or -inf
 * exactly as IEEE arithmetic over x @ dequantize(W).T in float64 gives it (the
 * class does not depend on the summation order). */
static qc_status exact_row(const qc_wview *v, const float *x, const float *bias, float *y,
                           float *wrow) {
    const qc_qweight *w = v->w;
    if (ktype_of(w->kind) >= 0) {
        for (int64_t j = 0; j < w->n; j++) {
            qc_kq_dequantize_row(ktype_of(w->kind), w->data + j * v->row_bytes, w->k, wrow);
            double acc = 0.0;
            for (int64_t e = 0; e < w->k; e++)
                acc += (double)x[e] * (double)wrow[e];
            y[j] = bias ? (float)(acc + (double)bias[j]) : (float)acc;
        }
        return QC_OK;
    }
    const int64_t ssize = w->scale_dtype == QC_F16 ? 2 : 4;
    const int64_t zsize = QC_KINDS[w->kind].has_zero == 2 ? ssize : 1;
    qc_qdesc desc = {w->kind, w->group, w->per_tensor, w->scale_dtype};
    /* packed weights: each row rebuilt in the row layout first (room after wrow) */
    uint8_t *prow = (uint8_t *)(wrow + w->k);
    uint8_t *psc = prow + v->row_bytes + 8, *pzp = psc + v->ngroups * 4 + 8;
    const qc_qweight pw = qc_packed_twin(w);
    for (int64_t j = 0; j < w->n; j++) {
        const int64_t gi = j * v->srow;
        const uint8_t *row = w->data + j * v->row_bytes, *sc = (const uint8_t *)w->scales + gi * ssize;
        const void *zp = w->zeros ? (const uint8_t *)w->zeros + gi * zsize : NULL;
        if (v->panels) {
            qc_status su = qc_unpack_rows(&pw, j, j + 1, prow, psc, pzp);
            if (su != QC_OK)
                return su;
            row = prow, sc = psc, zp = w->zeros ? pzp : NULL;
        }
        qc_status st = qc_dequantize(&desc, row, sc, zp, 1, w->k, wrow, w->k, NULL);
        if (st != QC_OK)
            return st;
        double acc = 0.0;
        for (int64_t e = 0; e < w->k; e++)
            acc += (double)x[e] * (double)wrow[e];
        y[j] = bias ? (float)(acc + (double)bias[j]) : (float)acc;
    }
    return QC_OK;
}

/* Redo the rows flagged in bad[] with exact_row. */
static qc_status redo_exact(const qc_wview *v, const float *x, int64_t m, int64_t ldx,
                            const uint8_t *bad, const float *bias, float *y, int64_t ldy) {
    /* k floats, and for packed weights one row-layout row (exact_row) */
    float *wrow = (float *)malloc((size_t)v->w->k * sizeof(float) + (size_t)v->row_bytes +
                                  (size_t)v->ngroups * 8 + 64);
    if (!wrow)
        return QC_ERR_NOMEM;
    qc_status st = QC_OK;
    for (int64_t r = 0; r < m && st == QC_OK; r++)
        if (bad[r])
            st = exact_row(v, x + r * ldx, bias, y + r * ldy, wrow);
    free(wrow);
    return st;
}

/* fn over all of [0, n) output features, in chunks claimed by the pool's
 * threads.  A chunk flags in flags[c * (m1 - m0) + r] the rows whose part it
 * wrote holds inf or NaN, then scales that part back by 2^rs[r] (rs may be
 * NULL: all 0) and adds the bias (when given). */
typedef struct {
    qc_linear_fn fn;
    const qc_wview *v;
    const qc_act *a;
    int64_t m0, m1;
    const int *rs;
    const float *bias;
    float *y;
    int64_t ldy, chunk;
    uint8_t *flags;
    /* packed weights: fn covers the panels' features [0, npk) in chunks
     * [0, pchunks); the last chunk runs it over the tail rows packed as one
     * panel (view tv) into ytail (32 floats per row of x), then copies them */
    const qc_wview *tv;
    float *ytail;
    int64_t npk, pchunks;
} split_job;

static void split_chunk(void *ctx, int64_t c, int slot) {
    const split_job *j = (const split_job *)ctx;
    (void)slot;
    const int64_t n = j->v->w->n, mr = j->m1 - j->m0;
    const int64_t end = j->tv ? j->npk : n;
    int64_t n0 = c * j->chunk, n1 = n0 + j->chunk < end ? n0 + j->chunk : end;
    if (j->tv && c >= j->pchunks) {
        n0 = j->npk, n1 = n;
        j->fn(j->tv, j->a, j->m0, j->m1, 0, QC_PANEL, j->ytail, QC_PANEL);
        for (int64_t r = 0; r < mr; r++)
            memcpy(j->y + r * j->ldy + n0, j->ytail + r * QC_PANEL, (size_t)(n1 - n0) * sizeof(float));
    } else {
        j->fn(j->v, j->a, j->m0, j->m1, n0, n1, j->y + n0, j->ldy);
    }
    for (int64_t r = 0; r < mr; r++) {
        float *yr = j->y + r * j->ldy;
        const int s = j->rs ? j->rs[j->m0 + r] : 0;
        int bad = 0;
        for (int64_t jn = n0; jn < n1; jn++)
            bad |= !(fabsf(yr[jn]) < INFINITY);
        j->flags[c * mr + r] = (uint8_t)bad;
        if (s) {
            const double f = ldexp(1.0, s);
            for (int64_t jn = n0; jn < n1; jn++)
                yr[jn] = (float)((double)yr[jn] * f);
        }
        if (j->bias)
            for (int64_t jn = n0; jn < n1; jn++)
                yr[jn] += j->bias[jn];
    }
}

/* Chunks: GEMV, about 32 per thread (a thread that starts late or stalls
 * costs at most a few of them), 16 features and 2^16 multiply-adds at least
 * (a claim costs a cache line moving between cores); GEMM, whole 64-feature
 * panels, about 4 per thread, at most 256 (the GEMM's N tile: each chunk packs
 * its activations again).  ovf[r] (m1 - m0 entries): some chunk's part of row r
 * held inf or NaN before the scaling back. */
static qc_status run_split(qc_linear_fn fn, const qc_wview *v, const qc_act *a, int64_t m0,
                           int64_t m1, const int *rs, const float *bias, float *y, int64_t ldy,
                           int nt, int gemm, uint8_t *ovf, const qc_wview *tv) {
    const int64_t n = v->w->n, mr = m1 - m0, row_work = mr * v->kp;
    const int64_t min_gemv = ((int64_t)1 << 16) / (row_work > 0 ? row_work : 1);
    int64_t chunk = gemm ? qc_pool_chunk_len(n, nt, 4, 64, 64)
                         : qc_pool_chunk_len(n, nt, 32, min_gemv > 16 ? min_gemv : 16, 16);
    if (gemm && chunk > 256)
        chunk = 256;
    int64_t npk = 0, nchunks;
    if (v->panels) { /* whole panels, about 16 chunks per thread; the tail: one more */
        npk = v->panels * QC_PANEL;
        chunk = qc_pool_chunk_len(npk, nt, 16, min_gemv, QC_PANEL);
        if (nt <= 1)
            chunk = npk;
        nchunks = qc_pool_nchunks(npk, chunk) + (n > npk);
    } else {
        if (nt <= 1)
            chunk = n; /* one thread: one call */
        nchunks = qc_pool_nchunks(n, chunk);
    }
    uint8_t *flags = (uint8_t *)calloc((size_t)(nchunks * mr), 1);
    const int tail = v->panels && n > npk;
    float *ytail = tail ? (float *)malloc((size_t)(mr * QC_PANEL) * sizeof(float)) : NULL;
    if (!flags || (tail && !ytail)) {
        free(flags);
        return QC_ERR_NOMEM;
    }
    split_job j = {fn, v, a, m0, m1, rs, bias, y, ldy, chunk, flags, tail ? tv : NULL, ytail,
                   npk, v->panels ? qc_pool_nchunks(npk, chunk) : 0};
    qc_pool_run(nt, nchunks, split_chunk, &j);
    for (int64_t r = 0; r < mr; r++) {
        ovf[r] = 0;
        for (int64_t c = 0; c < nchunks; c++)
            ovf[r] |= flags[c * mr + r];
    }
    free(flags);
    free(ytail);
    return QC_OK;
}

/* int8 compute: the activations of rows [c * rows, ...) of x, each on its own:
 * quantized (Q8_0 blocks, in the order `deint`), NaN/Inf rows flagged in bad[]
 * (codes zero), tiny rows (rs[r] = s != 0, unless force gives rs) quantized again
 * as x * 2^-s; for packed weights the integer block sums and the row offsets. */
typedef struct {
    const qc_linear_kernels *l;
    const float *x;
    int64_t ldx, k, kp, nb;
    int deint;
    const int *force;
    int8_t *xq;
    float *xd, *xs;
    int32_t *xsum;
    float *sx;
    uint8_t *bad;
    int *rs;
    float *tmp; /* k floats per pool slot */
    int64_t rows, m;
} prep_job;

static void prep_i8_chunk(void *ctx, int64_t c, int slot) {
    const prep_job *j = (const prep_job *)ctx;
    const int64_t kp = j->kp, nb = j->nb, k = j->k;
    float *tmp = j->tmp + (int64_t)slot * k;
    const int64_t r0 = c * j->rows, r1 = r0 + j->rows < j->m ? r0 + j->rows : j->m;
    for (int64_t r = r0; r < r1; r++) {
        const float *xr = j->x + r * j->ldx;
        int8_t *q = j->xq + r * kp;
        float *d = j->xd + r * nb, *sm = j->xs + r * nb;
        int s = j->force ? j->force[r] : 0;
        j->bad[r] = 0;
        if (j->l->act_quant(xr, k, j->deint, q, d, sm)) {
            j->bad[r] = 1;
            memset(q, 0, (size_t)kp); /* harmless values for the main pass */
            for (int64_t b = 0; b < nb; b++)
                d[b] = sm[b] = 0.0f;
        } else if (!j->force) {
            /* the block scales are max|x_b| / 127 (0 when that is below ~2^-121):
             * only a row whose scales are all small can be tiny */
            float dmax = 0.0f;
            for (int64_t b = 0; b < nb; b++)
                dmax = d[b] > dmax ? d[b] : dmax;
            if (dmax < ldexpf(1.0f, ROW_TINY_EXP - 6))
                s = tiny_shift(row_amax(xr, k));
            if (s) { /* tiny: quantize x * 2^-s instead */
                scale_row(xr, k, s, tmp);
                j->l->act_quant(tmp, k, j->deint, q, d, sm);
            }
        }
        j->rs[r] = s;
        if (j->xsum) {
            float t = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                int32_t sum = 0;
                for (int e = 0; e < QC_BLK; e++)
                    sum += q[b * QC_BLK + e];
                j->xsum[r * nb + b] = sum;
                t += sm[b];
            }
            j->sx[r] = t;
        }
    }
}

/* One pass of the kernels over rows [0, m) of x; y = 2^rs[r] * f(x'), plus bias.
 * force == NULL: x' = x * 2^-rs[r], with each row's rs[r] chosen here
 * (tiny_shift); else x holds x' already and rs[r] = force[r].  Rows holding NaN
 * or Inf are flagged in bad[] (their y is left unspecified), rows whose f(x')
 * holds inf or NaN in ovf[].  The kernels are those qc_linear picks for mpath
 * rows (so that rows redone in a smaller batch take the same path). */
static qc_status linear_pass(const qc_wview *v, const qc_linear_kernels *l, qc_compute mode,
                             int64_t mpath, const float *x, int64_t m, int64_t ldx,
                             const int *force, int *rs, uint8_t *bad, uint8_t *ovf,
                             const float *bias, float *y, int64_t ldy) {
    const qc_qweight *w = v->w;
    int gemm;
    qc_linear_fn fn = pick(l, w->kind, mpath, mode, &gemm);
    /* packed weights (int8 compute): the packed kernel over the panels, and over
     * the tail rows packed as one more panel for this call (O(32 k) bytes) */
    qc_qweight tail, tailbase;
    qc_wview tv = {0};
    uint8_t *tailbuf = NULL;
    if (v->panels) {
        fn = l->packed_i8[w->kind];
        gemm = 0;
        if (w->n > v->panels * QC_PANEL) {
            const qc_qweight pw = qc_packed_twin(w);
            tailbuf = (uint8_t *)malloc((size_t)qc_packed_tail_bytes(&pw));
            if (!tailbuf)
                return QC_ERR_NOMEM;
            qc_pack_tail(&pw, tailbuf, &tail);
            tailbase = qc_packed_twin(&tail);
            make_view(&tailbase, &tv);
            tv.panels = 1;
        }
    }
    const int deint = !gemm && !v->panels && ktype_of(w->kind) < 0 && QC_KINDS[w->kind].bits == 4
                          ? l->act_span4 : 0;
    const int64_t kp = v->kp, nb = v->nb, k = w->k;
    const int nt = qc_threads_for(m * w->n * k);

    qc_act a = {m, kp, nb, deint, NULL, NULL, NULL, NULL, NULL, NULL};
    int32_t *xsum = NULL;
    float *sx = NULL;
    float *xf = NULL, *xd = NULL, *xs = (float *)malloc((size_t)(m * nb) * sizeof(float));
    int8_t *xq = NULL;
    int scaled = 0;
    qc_status st = QC_OK;
    if (!xs) {
        st = QC_ERR_NOMEM;
        goto done;
    }
    if (mode == QC_COMPUTE_F32) {
        xf = (float *)malloc((size_t)(m * kp) * sizeof(float));
        if (!xf) {
            st = QC_ERR_NOMEM;
            goto done;
        }
        for (int64_t r = 0; r < m; r++) {
            const float *xr = x + r * ldx;
            int s = force ? force[r] : 0;
            float amax = prep_f32_row(xr, k, kp, deint, 0, xf + r * kp, xs + r * nb);
            bad[r] = amax < 0.0f;
            if (!force && !bad[r] && (s = tiny_shift(amax)) != 0)
                prep_f32_row(xr, k, kp, deint, s, xf + r * kp, xs + r * nb);
            rs[r] = s;
            scaled |= s != 0;
        }
        a.xf = xf;
    } else {
        xq = (int8_t *)malloc((size_t)(m * kp));
        xd = (float *)malloc((size_t)(m * nb) * sizeof(float));
        if (!xq || !xd) {
            st = QC_ERR_NOMEM;
            goto done;
        }
        if (v->panels) { /* the packed kernels' integer block sums and row offsets */
            xsum = (int32_t *)malloc((size_t)(m * nb) * sizeof(int32_t));
            sx = (float *)malloc((size_t)m * sizeof(float));
            if (!xsum || !sx) {
                st = QC_ERR_NOMEM;
                goto done;
            }
        }
        /* rows on the pool's threads when there is enough of them (each row on its
         * own: the same bits whichever thread prepares it) */
        const int pnt = m > 1 ? qc_threads_for(m * k) : 1;
        prep_job pj = {l, x, ldx, k, kp, nb, deint, force, xq, xd, xs, xsum, sx, bad, rs,
                       NULL, 0, m};
        pj.rows = qc_pool_chunk_len(m, pnt, 4, 1, 1);
        pj.tmp = (float *)malloc((size_t)pnt * (size_t)k * sizeof(float));
        if (!pj.tmp) {
            st = QC_ERR_NOMEM;
            goto done;
        }
        qc_pool_run(pnt, qc_pool_nchunks(m, pj.rows), prep_i8_chunk, &pj);
        free(pj.tmp);
        for (int64_t r = 0; r < m; r++)
            scaled |= rs[r] != 0;
        a.xq = xq;
        a.xd = xd;
        a.xsum = xsum;
        a.sx = sx;
    }
    a.xs = xs;
    st = run_split(fn, v, &a, 0, m, scaled ? rs : NULL, bias, y, ldy, nt, gemm, ovf, &tv);
done:
    free(tailbuf);
    free(xsum);
    free(sx);
    free(xf);
    free(xd);
    free(xs);
    free(xq);
    return st;
}

/* Do the memory ranges of x and y overlap? */
static int overlaps(const float *x, int64_t m, int64_t ldx, int64_t k, const float *y,
                    int64_t ldy, int64_t n) {
    uintptr_t x0 = (uintptr_t)x, x1 = (uintptr_t)(x + (m - 1) * ldx + k);
    uintptr_t y0 = (uintptr_t)y, y1 = (uintptr_t)(y + (m - 1) * ldy + n);
    return x0 < y1 && y0 < x1;
}

qc_status qc_linear(const qc_qweight *w, const float *x, int64_t m, int64_t x_row_stride,
                    const float *bias, float *y, int64_t y_row_stride, qc_compute mode) {
    if (!valid(w, mode) || m < 0 || !x || !y || x_row_stride < w->k || y_row_stride < w->n)
        return QC_ERR_ARG;
    if (m == 0)
        return QC_OK;
    qc_wview v;
    qc_qweight base;
    if (qc_is_packed_kind(w->kind)) { /* the kernels see the base kind; v.panels marks it */
        base = qc_packed_twin(w);
        w = &base;
        make_view(w, &v);
        v.panels = w->n / QC_PANEL;
    } else {
        make_view(w, &v);
    }
    const qc_linear_kernels *l = qc_active_linear();
    const int64_t k = w->k, n = w->n;
    float *xc = NULL, *xb = NULL, *yb = NULL;
    int *rs = (int *)malloc((size_t)m * sizeof(int)), *force = NULL;
    uint8_t *bad = (uint8_t *)malloc((size_t)m), *ovf = (uint8_t *)malloc((size_t)m), *redo = NULL;
    int64_t nbad = 0, nredo = 0;
    double wq = -1.0;
    qc_status st = QC_OK;
    if (!rs || !bad || !ovf) {
        st = QC_ERR_NOMEM;
        goto done;
    }
    /* y may overlap x (out=x): read x in full first */
    if (overlaps(x, m, x_row_stride, k, y, y_row_stride, n)) {
        if (!(xc = (float *)malloc((size_t)(m * k) * sizeof(float)))) {
            st = QC_ERR_NOMEM;
            goto done;
        }
        for (int64_t r = 0; r < m; r++)
            memcpy(xc + r * k, x + r * x_row_stride, (size_t)k * sizeof(float));
        x = xc;
        x_row_stride = k;
    }
    st = linear_pass(&v, l, mode, m, x, m, x_row_stride, NULL, rs, bad, ovf, bias, y, y_row_stride);
    if (st != QC_OK)
        goto done;
    /* rows with NaN/Inf: the exact float64 path */
    for (int64_t r = 0; r < m; r++)
        nbad += bad[r];
    if (nbad && (st = redo_exact(&v, x, m, x_row_stride, bad, bias, y, y_row_stride)) != QC_OK)
        goto done;
    /* finite rows whose kernel outputs overflowed: redo with a larger s */
    for (int64_t r = 0; r < m; r++) {
        if (bad[r] || !ovf[r])
            continue;
        if (wq < 0.0)
            wq = weight_bound(&v);
        double q = code_bound(w->kind);
        double bound = (double)row_amax(x + r * x_row_stride, k) * (double)v.kp * (wq > q ? wq : q);
        if (!isfinite(bound))
            continue;
        int e;
        frexp(bound, &e); /* bound < 2^e */
        if (e - ROW_SAFE_EXP <= rs[r])
            continue; /* the bound held already: the output itself overflows */
        if (!redo && !(redo = (uint8_t *)calloc((size_t)m, 1))) {
            st = QC_ERR_NOMEM;
            goto done;
        }
        redo[r] = 1;
        rs[r] = e - ROW_SAFE_EXP;
        nredo++;
    }
    if (nredo) { /* those rows again, as a compact batch of x * 2^-s */
        xb = (float *)malloc((size_t)(nredo * k) * sizeof(float));
        yb = (float *)malloc((size_t)(nredo * n) * sizeof(float));
        force = (int *)malloc((size_t)nredo * sizeof(int));
        int *rsb = (int *)malloc((size_t)nredo * sizeof(int));
        uint8_t *badb = (uint8_t *)malloc((size_t)(2 * nredo));
        if (!xb || !yb || !force || !rsb || !badb) {
            free(rsb);
            free(badb);
            st = QC_ERR_NOMEM;
            goto done;
        }
        int64_t i = 0;
        for (int64_t r = 0; r < m; r++)
            if (redo[r]) {
                scale_row(x + r * x_row_stride, k, rs[r], xb + i * k);
                force[i++] = rs[r];
            }
        st = linear_pass(&v, l, mode, m, xb, nredo, k, force, rsb, badb, badb + nredo, bias, yb, n);
        free(rsb);
        free(badb);
        if (st != QC_OK)
            goto done;
        i = 0;
        for (int64_t r = 0; r < m; r++)
            if (redo[r])
                memcpy(y + r * y_row_stride, yb + (i++) * n, (size_t)n * sizeof(float));
    }
done:
    free(xc);
    free(xb);
    free(yb);
    free(rs);
    free(force);
    free(bad);
    free(ovf);
    free(redo);
    return st;
}
