/*
 * api.c -- the public entry points of quantcore.h: row loops, threads, dtype and
 * stride handling, parameter storage.  No arithmetic on values lives here; it
 * calls the active kernel table for that (kernels.h).
 *
 * Threads: OpenMP over rows, static schedule, only when the work is large enough
 * to pay for waking the pool.  A row's result never depends on the thread count.
 */
#include <stdlib.h>

#include "quantize_mse.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define QC_PAR_MIN_ELEMS (1 << 18) /* below this (1 MiB of float32), one thread */

int qc_kind_bits(qc_kind kind) { return (kind >= 0 && kind < QC_NUM_KINDS) ? QC_KINDS[kind].bits : 0; }

int64_t qc_row_bytes(qc_kind kind, int64_t cols) {
    return qc_kind_bits(kind) == 4 ? (cols + 1) / 2 : cols;
}

int64_t qc_num_groups(int64_t cols, int64_t group) {
    return (group <= 0 || group >= cols) ? 1 : (cols + group - 1) / group;
}

static int threads_for(int64_t elems) {
    int nt = qc_get_num_threads();
    return elems < QC_PAR_MIN_ELEMS ? 1 : nt;
}

#ifndef _OPENMP
#define QC_UNUSED_NT(nt) (void)(nt)
#else
#define QC_UNUSED_NT(nt)
#endif

static qc_status check_desc(const qc_qdesc *d, int64_t rows, int64_t cols) {
    if (!d || d->kind < 0 || d->kind >= QC_NUM_KINDS || rows < 0 || cols < 1 || d->group < 0)
        return QC_ERR_ARG;
    if (d->scale_dtype != QC_F32 && d->scale_dtype != QC_F16)
        return QC_ERR_ARG;
    /* 4-bit groups must start on a byte: an even group length, or one group a row */
    if (QC_KINDS[d->kind].bits == 4 && d->group > 0 && d->group < cols && (d->group & 1))
        return QC_ERR_ARG;
    return QC_OK;
}

static void store_scale(void *base, int64_t idx, qc_dtype dt, float v) {
    if (dt == QC_F16)
        ((uint16_t *)base)[idx] = qc_fp32_to_fp16(v);
    else
        ((float *)base)[idx] = v;
}

static float load_scale(const void *base, int64_t idx, qc_dtype dt) {
    return dt == QC_F16 ? qc_fp16_to_fp32(((const uint16_t *)base)[idx]) : ((const float *)base)[idx];
}

/* The scale (and Q4_1 minimum) fit the storage dtype; a range wider than float32
 * holds (max - min overflowing) gives an infinite scale and fails too. */
static int params_fit(const qc_qparams *p, qc_dtype dt) {
    float lim = dt == QC_F16 ? 65504.0f : 3.40282347e38f;
    return fabsf(p->d) <= lim && fabsf(p->m) <= lim;
}

/* Load row r of a strided float16/32/64 matrix as contiguous float32, into buf
 * when a copy is needed; returns the row. */
static const float *load_row(const qc_kernels *k, const char *src, qc_dtype dt, int64_t r,
                             int64_t cols, int64_t rs, int64_t cs, float *buf) {
    const char *row = src + r * rs;
    if (dt == QC_F32 && cs == 4)
        return (const float *)row;
    if (dt == QC_F16 && cs == 2) {
        k->load_f16((const uint16_t *)row, cols, buf);
    } else if (dt == QC_F64 && cs == 8) {
        k->load_f64((const double *)row, cols, buf);
    } else {
        for (int64_t c = 0; c < cols; c++) {
            const char *p = row + c * cs;
            if (dt == QC_F32)
                buf[c] = *(const float *)p;
            else if (dt == QC_F16)
                buf[c] = qc_fp16_to_fp32(*(const uint16_t *)p);
            else
                buf[c] = (float)*(const double *)p;
        }
    }
    return buf;
}

/* First non-finite element of x, for the error report. */
static int64_t first_bad(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!(fabsf(x[i]) < INFINITY))
            return i;
    return 0;
}

/* Keep the error with the smallest (row, col), whatever the thread order. */
static void record_error(qc_status *st, qc_error *err, qc_status s, int64_t row, int64_t col) {
#ifdef _OPENMP
#pragma omp critical(qc_error_record)
#endif
    {
        if (*st == QC_OK || row < err->row || (row == err->row && col < err->col)) {
            *st = s;
            err->row = row;
            err->col = col;
        }
    }
}

/* Statistics of the whole tensor (per-tensor granularity). */
static qc_status tensor_stats(const qc_kernels *k, const char *src, qc_dtype dt, int64_t rows,
                              int64_t cols, int64_t rs, int64_t cs, qc_stats *out, qc_error *err) {
    qc_status st = QC_OK;
    int nt = threads_for(rows * cols);
    QC_UNUSED_NT(nt);
    int have = 0;
    qc_stats total = {0, 0, 0};
    int64_t first_row_amax = -1; /* row holding the first element of largest magnitude */
    float amax = -1.0f;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        float *buf = (float *)malloc((size_t)cols * sizeof(float));
        if (!buf)
            record_error(&st, err, QC_ERR_NOMEM, -1, -1);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t r = 0; r < rows; r++) {
            if (!buf)
                continue; /* no early exit on errors: the smallest (row, col) must win */
            const float *x = load_row(k, src, dt, r, cols, rs, cs, buf);
            qc_stats s;
            if (k->stats(x, cols, &s)) {
                record_error(&st, err, QC_ERR_NONFINITE, r, first_bad(x, cols));
                continue;
            }
#ifdef _OPENMP
#pragma omp critical(qc_tensor_stats)
#endif
            {
                float a = fabsf(s.amax_signed);
                if (!have) {
                    total = s;
                    have = 1;
                } else {
                    if (s.min < total.min)
                        total.min = s.min;
                    if (s.max > total.max)
                        total.max = s.max;
                }
                if (a > amax || (a == amax && r < first_row_amax)) {
                    amax = a;
                    first_row_amax = r;
                    total.amax_signed = s.amax_signed;
                }
            }
        }
        free(buf);
    }
    *out = total;
    return st;
}

/* ---- method="mse" per tensor: the search of quantize_mse.inc, its sums over
 * every row (each candidate a pass over the tensor, threads over rows). */
typedef struct {
    int64_t n; /* elements */
    const qc_kernels *k;
    const char *src;
    qc_dtype dt;
    int64_t rows, cols, rs, cs;
    qc_status st;
    double *rowsums; /* 3 per row */
    const float *w;  /* cols weights scaled to max 1; NULL: unweighted */
} tensor_ctx;

/* mode 0: t = {sum(x l), sum(l l), -}; 1: {sum(q), sum(q q), sum(x q)};
 * 2: {sum(x), sum(x x), sum(1)}, each term weighted when c->w is set.  Rows in
 * parallel, their sums added in row order (the result does not depend on the
 * thread count). */
static void tensor_sums(tensor_ctx *c, float id, float lo, float hi, float m, int mode,
                        double t[3]) {
    int failed = 0;
    int nt = threads_for(c->n);
    QC_UNUSED_NT(nt);
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) reduction(| : failed)
#endif
    {
        float *buf = (float *)malloc((size_t)c->cols * sizeof(float));
        failed |= !buf;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t r = 0; r < c->rows; r++) {
            if (!buf)
                continue;
            const float *x = load_row(c->k, c->src, c->dt, r, c->cols, c->rs, c->cs, buf);
            double *u = c->rowsums + 3 * r;
            u[0] = u[1] = u[2] = 0.0;
            if (mode == 2)
                qc_mse_moments(x, c->w, c->cols, &u[2], &u[0], &u[1]);
            else
                qc_mse_row_sums(x, c->w, c->cols, id, lo, hi, m, mode, u);
        }
        free(buf);
    }
    if (failed)
        c->st = QC_ERR_NOMEM;
    t[0] = t[1] = t[2] = 0.0;
    for (int64_t r = 0; r < c->rows && !failed; r++) {
        t[0] += c->rowsums[3 * r];
        t[1] += c->rowsums[3 * r + 1];
        t[2] += c->rowsums[3 * r + 2];
    }
}

static void tensor_eval_sym(tensor_ctx *c, float id, float lo, float hi, qc_mse_sums *s) {
    double t[3];
    tensor_sums(c, id, lo, hi, 0.0f, 0, t);
    s->sxl = t[0];
    s->sll = t[1];
}

static void tensor_eval_min(tensor_ctx *c, float id, float m, float hi, qc_mse_sums *s) {
    double t[3];
    tensor_sums(c, id, 0.0f, hi, m, 1, t);
    s->sq = t[0];
    s->sqq = t[1];
    s->sxq = t[2];
}

static void tensor_moments(tensor_ctx *c, double *sw, double *sx, double *sxx) {
    double t[3];
    tensor_sums(c, 0.0f, 0.0f, 0.0f, 0.0f, 2, t);
    *sx = t[0];
    *sxx = t[1];
    *sw = t[2];
}

#define QC_MSE_SUFFIX tensor
#define QC_MSE_ATTR
#define QC_MSE_CTX tensor_ctx
#define QC_MSE_EVAL_SYM(c, id, lo, hi, s) tensor_eval_sym(c, id, lo, hi, s)
#define QC_MSE_EVAL_MIN(c, id, m, hi, s) tensor_eval_min(c, id, m, hi, s)
#define QC_MSE_MOMENTS(c, sw, sx, sxx) tensor_moments(c, sw, sx, sxx)
#include "quantize_mse.inc"

/* *p: the absmax parameters on entry; on return the search's where their exact
 * error over the tensor (weighted by imp, per column, unless NULL or all equal)
 * is lower (*use_search = 1: codes by qc_mse_codes). */
static qc_status tensor_mse(const qc_kernels *k, qc_kind kind, const char *src, qc_dtype dt,
                            int64_t rows, int64_t cols, int64_t rs, int64_t cs, int f16,
                            const float *imp, const qc_stats *s, qc_qparams *p,
                            int *use_search) {
    *use_search = 0;
    tensor_ctx ctx = {rows * cols, k, src, dt, rows, cols, rs, cs, QC_OK, NULL, NULL};
    float *wn = imp ? (float *)malloc((size_t)cols * sizeof(float)) : NULL;
    if (imp && !wn)
        return QC_ERR_NOMEM;
    if (imp && qc_mse_weights(imp, cols, wn))
        ctx.w = wn;
    else
        imp = NULL; /* all weights equal (or zero): the unweighted search */
    ctx.rowsums = (double *)malloc((size_t)rows * 3 * sizeof(double));
    if (!ctx.rowsums) {
        free(wn);
        return QC_ERR_NOMEM;
    }
    qc_qparams c = {0.0f, 0.0f, 0.0f, 0};
    int found;
    if (kind == QC_SYM8 || kind == QC_SYM4)
        found = search_sym_tensor(kind, &ctx, s, f16, &c);
    else if (kind == QC_MIN4)
        found = search_min_tensor(&ctx, s, f16, &c);
    else
        found = search_asym_tensor(kind, &ctx, s, f16, &c);
    free(wn);
    if (ctx.st != QC_OK || !found) {
        free(ctx.rowsums);
        return ctx.st;
    }
    qc_qparams ps = *p; /* absmax, as stored */
    ps.d = qc_mse_stored(p->d, f16);
    ps.m = qc_mse_stored(p->m, f16);
    const int64_t rb = qc_row_bytes(kind, cols);
    double e0 = 0.0, e1 = 0.0, *re = ctx.rowsums;
    int failed = 0;
    int nt = threads_for(rows * cols);
    QC_UNUSED_NT(nt);
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) reduction(| : failed)
#endif
    {
        float *buf = (float *)malloc((size_t)cols * sizeof(float));
        uint8_t *codes = (uint8_t *)malloc((size_t)rb);
        failed |= !buf || !codes;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t r = 0; r < rows; r++) {
            if (!buf || !codes)
                continue;
            const float *x = load_row(k, src, dt, r, cols, rs, cs, buf);
            k->quantize[kind](x, cols, p, codes);
            re[2 * r] = qc_mse_group_error(kind, x, cols, codes, &ps, imp);
            qc_mse_codes(kind, x, cols, &c, codes);
            re[2 * r + 1] = qc_mse_group_error(kind, x, cols, codes, &c, imp);
        }
        free(buf);
        free(codes);
    }
    for (int64_t r = 0; r < rows && !failed; r++) {
        e0 += re[2 * r];
        e1 += re[2 * r + 1];
    }
    free(ctx.rowsums);
    if (failed)
        return QC_ERR_NOMEM;
    if (e1 < e0) {
        *p = c;
        *use_search = 1;
    }
    return QC_OK;
}

/* The first negative (QC_ERR_RANGE) or non-finite (QC_ERR_NONFINITE) weight. */
static qc_status check_importance(const float *imp, int64_t cols, qc_error *err) {
    for (int64_t j = 0; j < cols; j++) {
        if (!(fabsf(imp[j]) < INFINITY) || imp[j] < 0.0f) {
            err->row = -1;
            err->col = j;
            return imp[j] < 0.0f ? QC_ERR_RANGE : QC_ERR_NONFINITE;
        }
    }
    return QC_OK;
}

/* mse with imp (cols weights, NULL: unweighted): the weighted search. */
static qc_status quantize_impl(const qc_qdesc *desc, int mse, const float *imp, const void *src,
                               qc_dtype src_dtype, int64_t rows, int64_t cols, int64_t row_stride,
                               int64_t col_stride, uint8_t *data, void *scales, void *zeros,
                               qc_error *err) {
    qc_error dummy;
    if (!err)
        err = &dummy;
    err->row = err->col = -1;
    qc_status st = check_desc(desc, rows, cols);
    if (st != QC_OK || !src || !data || !scales || (src_dtype != QC_F32 && src_dtype != QC_F16 && src_dtype != QC_F64))
        return QC_ERR_ARG;
    const qc_kind kind = desc->kind;
    if ((unsigned)kind >= QC_NUM_KINDS)
        return QC_ERR_ARG;
    const int zkind = QC_KINDS[kind].has_zero;
    if (zkind && !zeros)
        return QC_ERR_ARG;
    if (imp && (st = check_importance(imp, cols, err)) != QC_OK)
        return st;
    if (rows == 0)
        return QC_OK;
    const qc_kernels *k = qc_active();
    const int64_t group = desc->per_tensor || desc->group <= 0 || desc->group > cols ? cols : desc->group;
    const int64_t ngroups = desc->per_tensor ? 1 : qc_num_groups(cols, group);
    const int64_t rbytes = qc_row_bytes(kind, cols);
    const char *base = (const char *)src;

    qc_qparams tensor_p;
    int tensor_search = 0; /* per tensor, method="mse": codes by qc_mse_codes */
    if (desc->per_tensor) {
        qc_stats s;
        st = tensor_stats(k, base, src_dtype, rows, cols, row_stride, col_stride, &s, err);
        if (st != QC_OK)
            return st;
        if (kind == QC_MIN4 && s.min == 0.0f)
            s.min = 0.0f; /* per tensor, a zero minimum is stored as +0.0 */
        tensor_p = qc_params_from_stats(kind, &s);
        if (mse) {
            st = tensor_mse(k, kind, base, src_dtype, rows, cols, row_stride, col_stride,
                            desc->scale_dtype == QC_F16, imp, &s, &tensor_p, &tensor_search);
            if (st != QC_OK)
                return st;
        }
        if (!params_fit(&tensor_p, desc->scale_dtype)) {
            err->row = 0;
            err->col = 0;
            return QC_ERR_OVERFLOW;
        }
        store_scale(scales, 0, desc->scale_dtype, tensor_p.d);
        if (zkind == 1)
            ((uint8_t *)zeros)[0] = (uint8_t)tensor_p.z;
        else if (zkind == 2)
            store_scale(zeros, 0, desc->scale_dtype, tensor_p.m);
    }

    /* the group search costs ~20x absmax per element: threads pay off sooner */
    int nt = threads_for(mse && !desc->per_tensor ? rows * cols * 16 : rows * cols);
    QC_UNUSED_NT(nt);
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        /* per thread: a float32 row, and the parameters of one row's groups */
        float *buf = (float *)malloc((size_t)cols * sizeof(float));
        float *pd = (float *)malloc((size_t)ngroups * 2 * sizeof(float));
        uint8_t *pz = (uint8_t *)malloc((size_t)ngroups);
        if (!buf || !pd || !pz)
            record_error(&st, err, QC_ERR_NOMEM, -1, -1);
        float *pm = pd ? pd + ngroups : NULL;
        uint8_t *scratch = mse ? (uint8_t *)malloc((size_t)qc_row_bytes(kind, group)) : NULL;
        float *wscratch = mse && imp ? (float *)malloc((size_t)group * sizeof(float)) : NULL;
        if ((mse && !scratch) || (mse && imp && !wscratch))
            record_error(&st, err, QC_ERR_NOMEM, -1, -1);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t r = 0; r < rows; r++) {
            if (!buf || !pd || !pz || (mse && !scratch) || (mse && imp && !wscratch))
                continue; /* no early exit on errors: the smallest (row, col) must win */
            const float *x = load_row(k, base, src_dtype, r, cols, row_stride, col_stride, buf);
            uint8_t *out = data + r * rbytes;
            if (desc->per_tensor) {
                if (tensor_search)
                    qc_mse_codes(kind, x, cols, &tensor_p, out);
                else
                    k->quantize[kind](x, cols, &tensor_p, out);
                continue;
            }
            int64_t bad = mse ? k->quantize_row_mse[kind](x, cols, group, desc->scale_dtype == QC_F16,
                                                          imp, out, pd, pm, pz, scratch, wscratch)
                              : k->quantize_row[kind](x, cols, group, out, pd, pm, pz);
            int64_t ndone = bad < 0 ? ngroups : bad / group; /* groups with parameters */
            for (int64_t g = 0; g < ndone; g++) {
                qc_qparams p = {pd[g], 0.0f, pm[g], 0};
                if (!params_fit(&p, desc->scale_dtype)) {
                    record_error(&st, err, QC_ERR_OVERFLOW, r, g * group);
                    bad = -1;
                    ndone = 0;
                    break;
                }
            }
            if (bad >= 0) {
                int64_t n = cols - bad < group ? cols - bad : group;
                record_error(&st, err, QC_ERR_NONFINITE, r, bad + first_bad(x + bad, n));
            }
            if (ndone < ngroups)
                continue; /* the row failed: nothing to store */
            const int64_t gi = r * ngroups;
            if (desc->scale_dtype == QC_F16) {
                k->store_f16(pd, ngroups, (uint16_t *)scales + gi);
                if (zkind == 2)
                    k->store_f16(pm, ngroups, (uint16_t *)zeros + gi);
            } else {
                memcpy((float *)scales + gi, pd, (size_t)ngroups * sizeof(float));
                if (zkind == 2)
                    memcpy((float *)zeros + gi, pm, (size_t)ngroups * sizeof(float));
            }
            if (zkind == 1)
                memcpy((uint8_t *)zeros + gi, pz, (size_t)ngroups);
        }
        free(buf);
        free(pd);
        free(pz);
        free(scratch);
        free(wscratch);
    }
    return st;
}

qc_status qc_quantize(const qc_qdesc *desc, const void *src, qc_dtype src_dtype, int64_t rows,
                      int64_t cols, int64_t row_stride, int64_t col_stride, uint8_t *data,
                      void *scales, void *zeros, qc_error *err) {
    return quantize_impl(desc, 0, NULL, src, src_dtype, rows, cols, row_stride, col_stride, data,
                         scales, zeros, err);
}

qc_status qc_quantize_mse(const qc_qdesc *desc, const void *src, qc_dtype src_dtype,
                          int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride,
                          uint8_t *data, void *scales, void *zeros, qc_error *err) {
    return quantize_impl(desc, 1, NULL, src, src_dtype, rows, cols, row_stride, col_stride, data,
                         scales, zeros, err);
}

qc_status qc_quantize_mse_weighted(const qc_qdesc *desc, const void *src, qc_dtype src_dtype,
                                   int64_t rows, int64_t cols, int64_t row_stride,
                                   int64_t col_stride, const float *importance, uint8_t *data,
                                   void *scales, void *zeros, qc_error *err) {
    return quantize_impl(desc, 1, importance, src, src_dtype, rows, cols, row_stride, col_stride,
                         data, scales, zeros, err);
}

qc_status qc_dequantize(const qc_qdesc *desc, const uint8_t *data, const void *scales,
                        const void *zeros, int64_t rows, int64_t cols, float *dst,
                        int64_t dst_row_stride, qc_error *err) {
    if (err)
        err->row = err->col = -1;
    qc_status st = check_desc(desc, rows, cols);
    if (st != QC_OK || !data || !scales || !dst || dst_row_stride < cols)
        return QC_ERR_ARG;
    const qc_kind kind = desc->kind;
    if ((unsigned)kind >= QC_NUM_KINDS)
        return QC_ERR_ARG;
    const int zkind = QC_KINDS[kind].has_zero;
    if (zkind && !zeros)
        return QC_ERR_ARG;
    const qc_kernels *k = qc_active();
    const int64_t group = desc->per_tensor || desc->group <= 0 || desc->group > cols ? cols : desc->group;
    const int64_t ngroups = desc->per_tensor ? 1 : qc_num_groups(cols, group);
    const int64_t rbytes = qc_row_bytes(kind, cols);
    const int four = QC_KINDS[kind].bits == 4;
    int nt = threads_for(rows * cols);
    QC_UNUSED_NT(nt);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *in = data + r * rbytes;
        float *out = dst + r * dst_row_stride;
        for (int64_t g = 0; g < ngroups; g++) {
            int64_t c0 = g * group;
            int64_t n = (c0 + group <= cols) ? group : cols - c0;
            int64_t gi = desc->per_tensor ? 0 : r * ngroups + g;
            qc_qparams p = {0.0f, 0.0f, 0.0f, 0};
            p.d = load_scale(scales, gi, desc->scale_dtype);
            if (kind == QC_SYM4)
                p.z = 8;
            else if (zkind == 1)
                p.z = ((const uint8_t *)zeros)[gi];
            else if (zkind == 2)
                p.m = load_scale(zeros, gi, desc->scale_dtype);
            k->dequantize[kind](four ? in + c0 / 2 : in + c0, n, &p, out + c0);
        }
    }
    return QC_OK;
}

qc_status qc_pack_int4(const uint8_t *src, int64_t rows, int64_t cols, int is_signed,
                       uint8_t *dst, qc_error *err) {
    if (err)
        err->row = err->col = -1;
    if (!src || !dst || rows < 0 || cols < 0)
        return QC_ERR_ARG;
    /* Range check first, so that nothing is written for bad input.  A branch-free
     * OR over the whole input (vectorised by the compiler), then a scan for the
     * place only when something is out of range. */
    const int64_t total = rows * cols;
    uint8_t flag = 0;
    if (is_signed) { /* int8 in [-8, 7]  <=>  (v + 8) as uint8 < 16 */
        for (int64_t i = 0; i < total; i++)
            flag |= (uint8_t)(src[i] + 8u) & 0xf0u;
    } else {
        for (int64_t i = 0; i < total; i++)
            flag |= src[i] & 0xf0u;
    }
    if (flag) {
        for (int64_t i = 0; i < total; i++) {
            uint8_t v = is_signed ? (uint8_t)(src[i] + 8u) : src[i];
            if (v & 0xf0u) {
                if (err) {
                    err->row = i / cols;
                    err->col = i % cols;
                }
                return QC_ERR_RANGE;
            }
        }
    }
    const qc_kernels *k = qc_active();
    int64_t rb = (cols + 1) / 2;
    int nt = threads_for(rows * cols);
    QC_UNUSED_NT(nt);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (int64_t r = 0; r < rows; r++)
        k->pack_int4(src + r * cols, cols, dst + r * rb);
    return QC_OK;
}

qc_status qc_unpack_int4(const uint8_t *src, int64_t rows, int64_t cols, int is_signed,
                         uint8_t *dst) {
    if (!src || !dst || rows < 0 || cols < 0)
        return QC_ERR_ARG;
    const qc_kernels *k = qc_active();
    int64_t rb = (cols + 1) / 2;
    int nt = threads_for(rows * cols);
    QC_UNUSED_NT(nt);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (int64_t r = 0; r < rows; r++)
        k->unpack_int4(src + r * rb, cols, is_signed, dst + r * cols);
    return QC_OK;
}

uint64_t qc_read_probe(const void *p, size_t bytes) {
    const uint64_t *w = (const uint64_t *)p;
    const int64_t n = (int64_t)(bytes / 64);
    uint64_t acc = 0;
    int nt = threads_for((int64_t)bytes);
    QC_UNUSED_NT(nt);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) reduction(^ : acc)
#endif
    for (int64_t i = 0; i < n; i++) { /* one cache line per step; xor keeps every load */
        const uint64_t *l = w + 8 * i;
        acc ^= l[0] ^ l[1] ^ l[2] ^ l[3] ^ l[4] ^ l[5] ^ l[6] ^ l[7];
    }
    return acc;
}
