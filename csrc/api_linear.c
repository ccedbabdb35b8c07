/*
 * api_linear.c -- qc_linear(): prepares the activations once per call, splits
 * the output features across threads and calls the active linear kernels.
 *
 * Activations: float32 rows copied into zero-padded blocks of 32 (F32 mode, with
 * per-block sums), or quantized into Q8_0 blocks (I8 mode).  A row holding NaN or
 * Inf cannot be quantized; in either mode such a row is recomputed one weight row
 * at a time from dequantized values (exact_row), so it propagates as IEEE
 * arithmetic over x @ dequantize(W).T would and other rows are untouched.
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
#include "pool.h"

static void make_view(const qc_qweight *w, qc_wview *v) {
    v->w = w;
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
    if (!valid(w, mode))
        return 0;
    int gemm;
    pick(qc_active_linear(), w->kind, m, mode, &gemm);
    return gemm;
}

/* Copy row x into xf (zero padded to kp, in the 4-bit GEMV order with groups of
 * `span` blocks when span > 0) and sum its blocks. */
static void prep_f32_row(const float *x, int64_t k, int64_t kp, int span, float *xf, float *xs) {
    const int64_t nb = kp / QC_BLK;
    for (int64_t b = 0; b < nb; b++) {
        float s = 0.0f;
        for (int j = 0; j < QC_BLK; j++) {
            int64_t e = b * QC_BLK + j;
            float v = e < k ? x[e] : 0.0f;
            xf[span ? qc_act_pos4(span, nb, b, j) : e] = v;
            s += v;
        }
        xs[b] = s;
    }
}

/* y[j] = sum_k x[k] * W[j, k] for one row x, with each W[j, k] dequantized as
 * qc_dequantize does (one weight row at a time: O(k) scratch).  For rows holding
 * NaN or Inf (or whose block sums overflow): the kernels factor each group as
 * d * sum(x q) + c * sum(x), which turns inf * 0 into NaN where x @ W^T has +-inf;
 * this gives the class IEEE arithmetic gives x @ dequantize(W).T (NaN, +inf or
 * -inf do not depend on the summation order). */
static qc_status exact_row(const qc_wview *v, const float *x, const float *bias, float *y,
                           float *wrow) {
    const qc_qweight *w = v->w;
    const int64_t ssize = w->scale_dtype == QC_F16 ? 2 : 4;
    const int64_t zsize = QC_KINDS[w->kind].has_zero == 2 ? ssize : 1;
    qc_qdesc desc = {w->kind, w->group, w->per_tensor, w->scale_dtype};
    for (int64_t j = 0; j < w->n; j++) {
        const int64_t gi = j * v->srow;
        const void *zp = w->zeros ? (const uint8_t *)w->zeros + gi * zsize : NULL;
        qc_status st = qc_dequantize(&desc, w->data + j * v->row_bytes,
                                     (const uint8_t *)w->scales + gi * ssize, zp, 1, w->k,
                                     wrow, w->k, NULL);
        if (st != QC_OK)
            return st;
        float acc = 0.0f;
        for (int64_t e = 0; e < w->k; e++)
            acc += x[e] * wrow[e];
        y[j] = bias ? acc + bias[j] : acc;
    }
    return QC_OK;
}

/* Redo the rows flagged in bad[] with exact_row. */
static qc_status redo_exact(const qc_wview *v, const float *x, int64_t m, int64_t ldx,
                            const uint8_t *bad, const float *bias, float *y, int64_t ldy) {
    float *wrow = (float *)malloc((size_t)v->w->k * sizeof(float));
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
 * threads; a chunk adds the bias (when given) to the part of y it wrote. */
typedef struct {
    qc_linear_fn fn;
    const qc_wview *v;
    const qc_act *a;
    int64_t m0, m1;
    const float *bias;
    float *y;
    int64_t ldy, chunk;
} split_job;

static void split_chunk(void *ctx, int64_t c, int slot) {
    const split_job *j = (const split_job *)ctx;
    (void)slot;
    const int64_t n = j->v->w->n;
    int64_t n0 = c * j->chunk, n1 = n0 + j->chunk < n ? n0 + j->chunk : n;
    j->fn(j->v, j->a, j->m0, j->m1, n0, n1, j->y + n0, j->ldy);
    if (j->bias)
        for (int64_t r = 0; r < j->m1 - j->m0; r++) {
            float *yr = j->y + r * j->ldy;
            for (int64_t jn = n0; jn < n1; jn++)
                yr[jn] += j->bias[jn];
        }
}

/* Chunks: GEMV, about 32 per thread (a thread that starts late or stalls
 * costs at most a few of them), 16 features and 2^16 multiply-adds at least
 * (a claim costs a cache line moving between cores); GEMM, whole 64-feature
 * panels, about 4 per thread, at most 256 (the GEMM's N tile: each chunk packs
 * its activations again). */
static void run_split(qc_linear_fn fn, const qc_wview *v, const qc_act *a, int64_t m0, int64_t m1,
                      const float *bias, float *y, int64_t ldy, int nt, int gemm) {
    const int64_t n = v->w->n, row_work = (m1 - m0) * v->kp;
    const int64_t min_gemv = ((int64_t)1 << 16) / (row_work > 0 ? row_work : 1);
    int64_t chunk = gemm ? qc_pool_chunk_len(n, nt, 4, 64, 64)
                         : qc_pool_chunk_len(n, nt, 32, min_gemv > 16 ? min_gemv : 16, 16);
    if (gemm && chunk > 256)
        chunk = 256;
    if (nt <= 1)
        chunk = n; /* one thread: one call */
    split_job j = {fn, v, a, m0, m1, bias, y, ldy, chunk};
    qc_pool_run(nt, qc_pool_nchunks(n, chunk), split_chunk, &j);
}

qc_status qc_linear(const qc_qweight *w, const float *x, int64_t m, int64_t x_row_stride,
                    const float *bias, float *y, int64_t y_row_stride, qc_compute mode) {
    if (!valid(w, mode) || m < 0 || !x || !y || x_row_stride < w->k || y_row_stride < w->n)
        return QC_ERR_ARG;
    if (m == 0)
        return QC_OK;
    qc_wview v;
    make_view(w, &v);
    const qc_linear_kernels *l = qc_active_linear();
    int gemm;
    qc_linear_fn fn = pick(l, w->kind, m, mode, &gemm);
    const int deint = !gemm && QC_KINDS[w->kind].bits == 4 ? l->act_span4 : 0;
    const int64_t kp = v.kp, nb = v.nb, k = w->k;
    const int nt = qc_threads_for(m * w->n * k);

    qc_act a = {m, kp, nb, deint, NULL, NULL, NULL, NULL};
    float *xf = NULL, *xd = NULL, *xs = (float *)malloc((size_t)(m * nb) * sizeof(float));
    int8_t *xq = NULL;
    uint8_t *bad = NULL;
    qc_status st = QC_OK;
    if (!xs)
        return QC_ERR_NOMEM;
    if (mode == QC_COMPUTE_F32) {
        xf = (float *)malloc((size_t)(m * kp) * sizeof(float));
        if (!xf) {
            st = QC_ERR_NOMEM;
            goto done;
        }
        for (int64_t r = 0; r < m; r++)
            prep_f32_row(x + r * x_row_stride, k, kp, deint, xf + r * kp, xs + r * nb);
        a.xf = xf;
        a.xs = xs;
        run_split(fn, &v, &a, 0, m, bias, y, y_row_stride, nt, gemm);
        /* a non-finite block sum: NaN/Inf in the row (or an overflowing sum) */
        for (int64_t r = 0; r < m; r++) {
            for (int64_t b = 0; b < nb; b++) {
                if (!isfinite(xs[r * nb + b])) {
                    if (!bad && !(bad = (uint8_t *)calloc((size_t)m, 1))) {
                        st = QC_ERR_NOMEM;
                        goto done;
                    }
                    bad[r] = 1;
                    break;
                }
            }
        }
        if (bad && (st = redo_exact(&v, x, m, x_row_stride, bad, bias, y, y_row_stride)) != QC_OK)
            goto done;
    } else {
        xq = (int8_t *)malloc((size_t)(m * kp));
        xd = (float *)malloc((size_t)(m * nb) * sizeof(float));
        bad = (uint8_t *)calloc((size_t)m, 1);
        if (!xq || !xd || !bad) {
            st = QC_ERR_NOMEM;
            goto done;
        }
        int64_t nbad = 0;
        for (int64_t r = 0; r < m; r++) {
            if (l->act_quant(x + r * x_row_stride, k, deint, xq + r * kp, xd + r * nb, xs + r * nb)) {
                bad[r] = 1;
                nbad++;
                memset(xq + r * kp, 0, (size_t)kp); /* harmless values for the main pass */
                for (int64_t b = 0; b < nb; b++)
                    xd[r * nb + b] = xs[r * nb + b] = 0.0f;
            }
        }
        a.xq = xq;
        a.xd = xd;
        a.xs = xs;
        run_split(fn, &v, &a, 0, m, bias, y, y_row_stride, nt, gemm);
        if (nbad) { /* rows with NaN/Inf: redo them on the exact float32 path */
            if ((st = redo_exact(&v, x, m, x_row_stride, bad, bias, y, y_row_stride)) != QC_OK)
                goto done;
        }
    }
done:
    free(xf);
    free(xd);
    free(xs);
    free(xq);
    free(bad);
    return st;
}
