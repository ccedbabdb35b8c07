/*
 * api.c -- the public entry points of quantcore.h: row loops, threads, dtype and
 * stride handling, parameter storage.  No arithmetic on values lives here; it
 * calls the active kernel table for that (kernels.h).
 *
 * Threads: the pool (pool.h) over chunks of rows, only when the work is large
 * enough to pay for waking it.  A row's result never depends on the thread count.
 */
#include <stdatomic.h>
#include <stdlib.h>

#include "internal.h"
#include "pool.h"
#include "quantize_mse.h"

#define QC_CHUNK_MIN_ELEMS (1 << 14) /* the smallest chunk of a pooled row loop */

int qc_kind_bits(qc_kind kind) { return (kind >= 0 && kind < QC_NUM_KINDS) ? QC_KINDS[kind].bits : 0; }

int64_t qc_row_bytes(qc_kind kind, int64_t cols) {
    return qc_kind_bits(kind) == 4 ? (cols + 1) / 2 : cols;
}

int64_t qc_num_groups(int64_t cols, int64_t group) {
    return (group <= 0 || group >= cols) ? 1 : (cols + group - 1) / group;
}

int qc_threads_for(int64_t work) { return work < QC_PAR_MIN_WORK ? 1 : qc_get_num_threads(); }

/* Rows per chunk of a pooled row loop: about 8 chunks per thread, none much
 * smaller than QC_CHUNK_MIN_ELEMS elements. */
static int64_t row_chunk(int64_t rows, int64_t cols, int nt) {
    int64_t min_rows = QC_CHUNK_MIN_ELEMS / (cols > 0 ? cols : 1);
    return qc_pool_chunk_len(rows, nt, 8, min_rows > 0 ? min_rows : 1, 1);
}

/* Per-thread scratch of a pooled loop: slot s's block, allocated at its first use
 * (so threads that take no chunk allocate nothing). */
typedef struct {
    void **mem;
    int n;
    size_t bytes;
} slot_mem;

static int slot_mem_init(slot_mem *s, int nt, size_t bytes) {
    s->n = nt;
    s->bytes = bytes ? bytes : 1;
    s->mem = (void **)calloc((size_t)nt, sizeof(void *));
    return s->mem != NULL;
}

static void *slot_get(slot_mem *s, int slot) {
    if (!s->mem[slot])
        s->mem[slot] = malloc(s->bytes);
    return s->mem[slot];
}

static void slot_mem_free(slot_mem *s) {
    if (!s->mem)
        return;
    for (int i = 0; i < s->n; i++)
        free(s->mem[i]);
    free(s->mem);
}

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
    if (*st == QC_OK || row < err->row || (row == err->row && col < err->col)) {
        *st = s;
        err->row = row;
        err->col = col;
    }
}

/* The errors of one chunk of a pooled loop, merged in chunk order afterwards. */
typedef struct {
    qc_status st;
    qc_error err;
} err_rec;

/* Statistics of the whole tensor (per-tensor granularity): each chunk of rows
 * folds its rows in order, then the chunks are folded in order, so the result is
 * the one-thread fold (the first of equal extremes wins). */
typedef struct {
    int have;
    qc_stats total;
    float amax;       /* |total.amax_signed| */
    int64_t row_amax; /* row holding the first element of largest magnitude */
    err_rec e;
} stats_part;

typedef struct {
    const qc_kernels *k;
    const char *src;
    qc_dtype dt;
    int64_t rows, cols, rs, cs, chunk;
    stats_part *parts;
    slot_mem bufs;
} stats_job;

static void fold_stats(stats_part *t, const qc_stats *s, float a, int64_t row) {
    if (!t->have) {
        t->total = *s;
        t->have = 1;
    } else {
        if (s->min < t->total.min)
            t->total.min = s->min;
        if (s->max > t->total.max)
            t->total.max = s->max;
    }
    if (a > t->amax || (a == t->amax && row < t->row_amax)) {
        t->amax = a;
        t->row_amax = row;
        t->total.amax_signed = s->amax_signed;
    }
}

static void stats_chunk(void *ctx, int64_t c, int slot) {
    stats_job *j = (stats_job *)ctx;
    stats_part *part = &j->parts[c];
    float *buf = (float *)slot_get(&j->bufs, slot);
    if (!buf) {
        record_error(&part->e.st, &part->e.err, QC_ERR_NOMEM, -1, -1);
        return;
    }
    const int64_t r1 = (c + 1) * j->chunk < j->rows ? (c + 1) * j->chunk : j->rows;
    for (int64_t r = c * j->chunk; r < r1; r++) {
        const float *x = load_row(j->k, j->src, j->dt, r, j->cols, j->rs, j->cs, buf);
        qc_stats s;
        if (j->k->stats(x, j->cols, &s)) {
            record_error(&part->e.st, &part->e.err, QC_ERR_NONFINITE, r, first_bad(x, j->cols));
            continue; /* no early exit on errors: the smallest (row, col) must win */
        }
        fold_stats(part, &s, fabsf(s.amax_signed), r);
    }
}

static qc_status tensor_stats(const qc_kernels *k, const char *src, qc_dtype dt, int64_t rows,
                              int64_t cols, int64_t rs, int64_t cs, qc_stats *out, qc_error *err) {
    qc_status st = QC_OK;
    int nt = qc_threads_for(rows * cols);
    stats_job j = {k, src, dt, rows, cols, rs, cs, row_chunk(rows, cols, nt), NULL, {NULL, 0, 0}};
    const int64_t nchunks = qc_pool_nchunks(rows, j.chunk);
    if (nt > nchunks)
        nt = (int)nchunks;
    j.parts = (stats_part *)calloc((size_t)nchunks, sizeof(stats_part));
    if (!j.parts || !slot_mem_init(&j.bufs, nt, (size_t)cols * sizeof(float))) {
        free(j.parts);
        return QC_ERR_NOMEM;
    }
    for (int64_t c = 0; c < nchunks; c++) {
        j.parts[c].amax = -1.0f;
        j.parts[c].row_amax = -1;
    }
    qc_pool_run(nt, nchunks, stats_chunk, &j);
    stats_part total = {0, {0, 0, 0}, -1.0f, -1, {QC_OK, {-1, -1}}};
    for (int64_t c = 0; c < nchunks; c++) {
        const stats_part *p = &j.parts[c];
        if (p->e.st != QC_OK)
            record_error(&st, err, p->e.st, p->e.err.row, p->e.err.col);
        if (p->have)
            fold_stats(&total, &p->total, p->amax, p->row_amax);
    }
    slot_mem_free(&j.bufs);
    free(j.parts);
    *out = total.total;
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
typedef struct {
    tensor_ctx *c;
    float id, lo, hi, m;
    int mode;
    int64_t chunk;
    slot_mem bufs;
    _Atomic int failed;
} sums_job;

static void sums_chunk(void *ctx, int64_t ci, int slot) {
    sums_job *j = (sums_job *)ctx;
    tensor_ctx *c = j->c;
    float *buf = (float *)slot_get(&j->bufs, slot);
    if (!buf) {
        atomic_store_explicit(&j->failed, 1, memory_order_relaxed);
        return;
    }
    const int64_t r1 = (ci + 1) * j->chunk < c->rows ? (ci + 1) * j->chunk : c->rows;
    for (int64_t r = ci * j->chunk; r < r1; r++) {
        const float *x = load_row(c->k, c->src, c->dt, r, c->cols, c->rs, c->cs, buf);
        double *u = c->rowsums + 3 * r;
        u[0] = u[1] = u[2] = 0.0;
        if (j->mode == 2)
            qc_mse_moments(x, c->w, c->cols, &u[2], &u[0], &u[1]);
        else
            qc_mse_row_sums(x, c->w, c->cols, j->id, j->lo, j->hi, j->m, j->mode, u);
    }
}

static void tensor_sums(tensor_ctx *c, float id, float lo, float hi, float m, int mode,
                        double t[3]) {
    int nt = qc_threads_for(c->n);
    sums_job j = {c, id, lo, hi, m, mode, row_chunk(c->rows, c->cols, nt), {NULL, 0, 0}, 0};
    const int64_t nchunks = qc_pool_nchunks(c->rows, j.chunk);
    if (nt > nchunks)
        nt = (int)nchunks;
    int failed = !slot_mem_init(&j.bufs, nt, (size_t)c->cols * sizeof(float));
    if (!failed) {
        qc_pool_run(nt, nchunks, sums_chunk, &j);
        failed = atomic_load_explicit(&j.failed, memory_order_relaxed);
    }
    slot_mem_free(&j.bufs);
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

/* The exact squared error of each row with the absmax parameters (re[2r]) and
 * with the search's (re[2r + 1]). */
typedef struct {
    const qc_kernels *k;
    qc_kind kind;
    const char *src;
    qc_dtype dt;
    int64_t rows, cols, rs, cs, chunk;
    const qc_qparams *p, *ps, *c;
    const float *imp; /* as given, NULL: unweighted */
    double *re;
    slot_mem bufs;
    size_t fbytes;
    _Atomic int failed;
} mse_err_job;

static void mse_err_chunk(void *ctx, int64_t ci, int slot) {
    mse_err_job *j = (mse_err_job *)ctx;
    char *mem = (char *)slot_get(&j->bufs, slot);
    if (!mem) {
        atomic_store_explicit(&j->failed, 1, memory_order_relaxed);
        return;
    }
    float *buf = (float *)mem;
    uint8_t *codes = (uint8_t *)(mem + j->fbytes);
    const int64_t r1 = (ci + 1) * j->chunk < j->rows ? (ci + 1) * j->chunk : j->rows;
    for (int64_t r = ci * j->chunk; r < r1; r++) {
        const float *x = load_row(j->k, j->src, j->dt, r, j->cols, j->rs, j->cs, buf);
        j->k->quantize[j->kind](x, j->cols, j->p, codes);
        j->re[2 * r] = qc_mse_group_error(j->kind, x, j->cols, codes, j->ps, j->imp);
        qc_mse_codes(j->kind, x, j->cols, j->c, codes);
        j->re[2 * r + 1] = qc_mse_group_error(j->kind, x, j->cols, codes, j->c, j->imp);
    }
}

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
    int nt = qc_threads_for(rows * cols);
    mse_err_job j = {k, kind, src, dt, rows, cols, rs, cs, row_chunk(rows, cols, nt), p, &ps, &c,
                     imp, re, {NULL, 0, 0}, 0};
    const int64_t nchunks = qc_pool_nchunks(rows, j.chunk);
    if (nt > nchunks)
        nt = (int)nchunks;
    /* per thread: a float32 row, then one row's codes */
    j.fbytes = ((size_t)cols * sizeof(float) + 63) / 64 * 64;
    int failed = !slot_mem_init(&j.bufs, nt, j.fbytes + (size_t)rb);
    if (!failed) {
        qc_pool_run(nt, nchunks, mse_err_chunk, &j);
        failed = atomic_load_explicit(&j.failed, memory_order_relaxed);
    }
    slot_mem_free(&j.bufs);
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

/* The row loop of quantize_impl, one chunk of rows at a time. */
typedef struct {
    const qc_kernels *k;
    const qc_qdesc *desc;
    int mse;
    const float *imp; /* mse weights per column, NULL: unweighted */
    const char *base;
    qc_dtype src_dtype;
    int64_t cols, row_stride, col_stride, group, ngroups, rbytes;
    uint8_t *data;
    void *scales, *zeros;
    const qc_qparams *tensor_p;
    int tensor_search;
    int64_t rows, chunk;
    err_rec *errs;
    slot_mem bufs;
    size_t off[4]; /* in a thread's block: pd, pz, scratch, wscratch (buf at 0) */
} quant_job;

static void quant_chunk(void *ctx, int64_t ci, int slot) {
    quant_job *j = (quant_job *)ctx;
    const qc_kernels *k = j->k;
    const qc_qdesc *desc = j->desc;
    const qc_kind kind = desc->kind;
    const int mse = j->mse, zkind = QC_KINDS[kind].has_zero, tensor_search = j->tensor_search;
    const char *base = j->base;
    const qc_dtype src_dtype = j->src_dtype;
    const int64_t cols = j->cols, row_stride = j->row_stride, col_stride = j->col_stride;
    const int64_t group = j->group, ngroups = j->ngroups, rbytes = j->rbytes;
    uint8_t *data = j->data;
    void *scales = j->scales, *zeros = j->zeros;
    const qc_qparams tensor_p = *j->tensor_p;
    qc_status st = QC_OK;
    qc_error *err = &j->errs[ci].err;
    char *mem = (char *)slot_get(&j->bufs, slot);
    if (!mem) {
        j->errs[ci].st = QC_ERR_NOMEM;
        err->row = err->col = -1;
        return;
    }
    float *buf = (float *)mem, *pd = (float *)(mem + j->off[0]), *pm = pd + ngroups;
    uint8_t *pz = (uint8_t *)(mem + j->off[1]);
    uint8_t *scratch = mse ? (uint8_t *)(mem + j->off[2]) : NULL;
    float *wscratch = mse && j->imp ? (float *)(mem + j->off[3]) : NULL;
    const int64_t r0 = ci * j->chunk, r1 = r0 + j->chunk < j->rows ? r0 + j->chunk : j->rows;
    for (int64_t r = r0; r < r1; r++) {
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
                                                      j->imp, out, pd, pm, pz, scratch, wscratch)
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
    j->errs[ci].st = st;
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

    qc_qparams tensor_p = {0.0f, 0.0f, 0.0f, 0};
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
    int nt = qc_threads_for(mse && !desc->per_tensor ? rows * cols * 16 : rows * cols);
    quant_job j = {k, desc, mse, imp, base, src_dtype, cols, row_stride, col_stride, group, ngroups,
                   rbytes, data, scales, zeros, &tensor_p, tensor_search, rows, 0, NULL,
                   {NULL, 0, 0}, {0, 0, 0, 0}};
    j.chunk = row_chunk(rows, mse && !desc->per_tensor ? cols * 16 : cols, nt);
    const int64_t nchunks = qc_pool_nchunks(rows, j.chunk);
    if (nt > nchunks)
        nt = (int)nchunks;
    /* per thread: a float32 row, and the parameters of one row's groups */
    j.off[0] = ((size_t)cols * sizeof(float) + 63) / 64 * 64;
    j.off[1] = j.off[0] + ((size_t)ngroups * 2 * sizeof(float) + 63) / 64 * 64;
    j.off[2] = j.off[1] + ((size_t)ngroups + 63) / 64 * 64;
    j.off[3] = j.off[2] + (mse ? ((size_t)qc_row_bytes(kind, group) + 63) / 64 * 64 : 0);
    size_t bytes = j.off[3] + (mse && imp ? (size_t)group * sizeof(float) : 0);
    j.errs = (err_rec *)calloc((size_t)nchunks, sizeof(err_rec));
    if (!j.errs || !slot_mem_init(&j.bufs, nt, bytes)) {
        free(j.errs);
        return QC_ERR_NOMEM;
    }
    qc_pool_run(nt, nchunks, quant_chunk, &j);
    for (int64_t c = 0; c < nchunks; c++)
        if (j.errs[c].st != QC_OK)
            record_error(&st, err, j.errs[c].st, j.errs[c].err.row, j.errs[c].err.col);
    slot_mem_free(&j.bufs);
    free(j.errs);
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

/* The row loop of qc_dequantize, one chunk of rows at a time. */
typedef struct {
    const qc_kernels *k;
    const qc_qdesc *desc;
    const uint8_t *data;
    const void *scales, *zeros;
    int64_t cols;
    float *dst;
    int64_t dst_row_stride, group, ngroups, rbytes;
    int four;
    int64_t rows, chunk;
} dequant_job;

static void dequant_chunk(void *ctx, int64_t ci, int slot) {
    const dequant_job *j = (const dequant_job *)ctx;
    (void)slot;
    const qc_kernels *k = j->k;
    const qc_qdesc *desc = j->desc;
    const qc_kind kind = desc->kind;
    const int zkind = QC_KINDS[kind].has_zero, four = j->four;
    const uint8_t *data = j->data;
    const void *scales = j->scales, *zeros = j->zeros;
    const int64_t cols = j->cols, group = j->group, ngroups = j->ngroups, rbytes = j->rbytes;
    float *dst = j->dst;
    const int64_t dst_row_stride = j->dst_row_stride;
    const int64_t r0 = ci * j->chunk, r1 = r0 + j->chunk < j->rows ? r0 + j->chunk : j->rows;
    for (int64_t r = r0; r < r1; r++) {
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
    int nt = qc_threads_for(rows * cols);
    dequant_job j = {k, desc, data, scales, zeros, cols, dst, dst_row_stride, group, ngroups,
                     rbytes, four, rows, row_chunk(rows, cols, nt)};
    qc_pool_run(nt, qc_pool_nchunks(rows, j.chunk), dequant_chunk, &j);
    return QC_OK;
}

/* The row loops of qc_pack_int4 / qc_unpack_int4, one chunk of rows at a time. */
typedef struct {
    const qc_kernels *k;
    const uint8_t *src;
    uint8_t *dst;
    int64_t rows, cols;
    int is_signed;
    int64_t chunk;
} pack_job;

static void pack_chunk(void *ctx, int64_t ci, int slot) {
    const pack_job *j = (const pack_job *)ctx;
    (void)slot;
    const int64_t rb = (j->cols + 1) / 2;
    const int64_t r1 = (ci + 1) * j->chunk < j->rows ? (ci + 1) * j->chunk : j->rows;
    for (int64_t r = ci * j->chunk; r < r1; r++)
        j->k->pack_int4(j->src + r * j->cols, j->cols, j->dst + r * rb);
}

static void unpack_chunk(void *ctx, int64_t ci, int slot) {
    const pack_job *j = (const pack_job *)ctx;
    (void)slot;
    const int64_t rb = (j->cols + 1) / 2;
    const int64_t r1 = (ci + 1) * j->chunk < j->rows ? (ci + 1) * j->chunk : j->rows;
    for (int64_t r = ci * j->chunk; r < r1; r++)
        j->k->unpack_int4(j->src + r * rb, j->cols, j->is_signed, j->dst + r * j->cols);
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
    int nt = qc_threads_for(rows * cols);
    pack_job j = {qc_active(), src, dst, rows, cols, 0, row_chunk(rows, cols, nt)};
    qc_pool_run(nt, qc_pool_nchunks(rows, j.chunk), pack_chunk, &j);
    return QC_OK;
}

qc_status qc_unpack_int4(const uint8_t *src, int64_t rows, int64_t cols, int is_signed,
                         uint8_t *dst) {
    if (!src || !dst || rows < 0 || cols < 0)
        return QC_ERR_ARG;
    int nt = qc_threads_for(rows * cols);
    pack_job j = {qc_active(), src, dst, rows, cols, is_signed, row_chunk(rows, cols, nt)};
    qc_pool_run(nt, qc_pool_nchunks(rows, j.chunk), unpack_chunk, &j);
    return QC_OK;
}

/* The probe's read loop: chunk c xors its cache lines into part[c]. */
#define QC_PROBE_MAX_CHUNKS 256

typedef struct {
    const uint64_t *w;
    int64_t lines, chunk;
    uint64_t part[QC_PROBE_MAX_CHUNKS];
} probe_job;

static void probe_chunk(void *ctx, int64_t c, int slot) {
    probe_job *j = (probe_job *)ctx;
    (void)slot;
    const int64_t i1 = (c + 1) * j->chunk < j->lines ? (c + 1) * j->chunk : j->lines;
    uint64_t acc = 0;
    for (int64_t i = c * j->chunk; i < i1; i++) { /* one cache line per step; xor keeps every load */
        const uint64_t *l = j->w + 8 * i;
        acc ^= l[0] ^ l[1] ^ l[2] ^ l[3] ^ l[4] ^ l[5] ^ l[6] ^ l[7];
    }
    j->part[c] = acc;
}

uint64_t qc_read_probe(const void *p, size_t bytes) {
    probe_job j;
    j.w = (const uint64_t *)p;
    j.lines = (int64_t)(bytes / 64);
    int nt = qc_threads_for((int64_t)bytes);
    /* chunks of at least 64 KiB, at most QC_PROBE_MAX_CHUNKS of them */
    j.chunk = qc_pool_chunk_len(j.lines, nt, 16, 1024, 1);
    if (j.chunk < (j.lines + QC_PROBE_MAX_CHUNKS - 1) / QC_PROBE_MAX_CHUNKS)
        j.chunk = (j.lines + QC_PROBE_MAX_CHUNKS - 1) / QC_PROBE_MAX_CHUNKS;
    const int64_t nchunks = qc_pool_nchunks(j.lines, j.chunk);
    qc_pool_run(nt, nchunks, probe_chunk, &j);
    uint64_t acc = 0;
    for (int64_t c = 0; c < nchunks; c++)
        acc ^= j.part[c];
    return acc;
}
