/*
 * api_linear.c -- qc_linear(): prepares the activations once per call, splits
 * the output features across threads and calls the active linear kernels.
 *
 * Activations: float32 rows copied into zero-padded blocks of 32 (F32 mode, with
 * per-block sums), or quantized into Q8_0 blocks (I8 mode).  A row holding NaN or
 * Inf cannot be quantized; in I8 mode such a row is computed on the F32 path
 * instead, so it propagates as IEEE arithmetic would and other rows are untouched.
 * Threads: OpenMP over output features in chunks of 16; every thread runs all m
 * rows of its chunk, so the weights are read once per call (GEMV) or once per
 * M-tile (GEMM).  Memory: O(m * k) scratch, nothing proportional to the weights.
 */
#include <stdlib.h>

#include "kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

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
    qc_linear_fn g = m >= QC_GEMM_MIN_M
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

static int threads_for(int64_t work) {
    return work < (1 << 18) ? 1 : qc_get_num_threads();
}

/* Run fn over all of [0, n) output features, split across threads; each thread
 * adds the bias (when given) to the part of y it wrote. */
static void run_split(qc_linear_fn fn, const qc_wview *v, const qc_act *a, int64_t m0, int64_t m1,
                      const float *bias, float *y, int64_t ldy, int nt) {
    const int64_t n = v->w->n;
    int64_t chunk = (n + nt - 1) / nt;
    chunk = (chunk + 15) / 16 * 16;
    int64_t nchunks = (n + chunk - 1) / chunk;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t n0 = c * chunk, n1 = n0 + chunk < n ? n0 + chunk : n;
        fn(v, a, m0, m1, n0, n1, y + n0, ldy);
        if (bias)
            for (int64_t r = 0; r < m1 - m0; r++) {
                float *yr = y + r * ldy;
                for (int64_t j = n0; j < n1; j++)
                    yr[j] += bias[j];
            }
    }
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
    const int nt = threads_for(m * w->n * k);

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
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (m > 1)
#endif
        for (int64_t r = 0; r < m; r++)
            prep_f32_row(x + r * x_row_stride, k, kp, deint, xf + r * kp, xs + r * nb);
        a.xf = xf;
        a.xs = xs;
        run_split(fn, &v, &a, 0, m, bias, y, y_row_stride, nt);
    } else {
        xq = (int8_t *)malloc((size_t)(m * kp));
        xd = (float *)malloc((size_t)(m * nb) * sizeof(float));
        bad = (uint8_t *)calloc((size_t)m, 1);
        if (!xq || !xd || !bad) {
            st = QC_ERR_NOMEM;
            goto done;
        }
        int64_t nbad = 0;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (m > 1) reduction(+ : nbad)
#endif
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
        run_split(fn, &v, &a, 0, m, bias, y, y_row_stride, nt);
        if (nbad) { /* rows with NaN/Inf: redo them in float32, one at a time */
            float *rf = (float *)malloc((size_t)kp * sizeof(float));
            float *rs = (float *)malloc((size_t)nb * sizeof(float));
            if (!rf || !rs) {
                free(rf);
                free(rs);
                st = QC_ERR_NOMEM;
                goto done;
            }
            qc_act one = {1, kp, nb, QC_KINDS[w->kind].bits == 4 ? l->act_span4 : 0, rf, NULL, NULL, rs};
            for (int64_t r = 0; r < m; r++) {
                if (!bad[r])
                    continue;
                prep_f32_row(x + r * x_row_stride, k, kp, one.deinterleaved, rf, rs);
                run_split(l->gemv_f32[w->kind], &v, &one, 0, 1, bias, y + r * y_row_stride,
                          y_row_stride, nt);
            }
            free(rf);
            free(rs);
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
