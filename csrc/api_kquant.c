/*
 * api_kquant.c -- the K-quant entry points of quantcore.h (GGUF Q4_K, Q5_K, Q6_K):
 * argument checks and the loop over rows; the arithmetic is in ref/kquant_scalar.c
 * (and the sub-block fits of x86/kquant_avx2.c or x86/kquant_avx512.c where the
 * kernel set in use has them; every one gives the same bytes).  Quantize splits the
 * rows between the pool's threads; every row is independent, so the bytes do not
 * depend on the thread count.
 */
#include <stdlib.h>

#include "internal.h"
#include "kernels.h"
#include "kquant.h"
#include "pool.h"

static qc_kq_fit45_fn fit45_for_isa(void) {
#if defined(QC_HAVE_X86)
    qc_isa isa = qc_current_isa();
    if (isa == QC_ISA_AVX512)
        return qc_kq_fit_blocks_k45_avx512;
    if (isa == QC_ISA_AVX2)
        return qc_kq_fit_blocks_k45_avx2;
#endif
    return NULL; /* the scalar reference */
}

static qc_kq_fit6_fn fit6_for_isa(void) {
#if defined(QC_HAVE_X86)
    qc_isa isa = qc_current_isa();
    if (isa == QC_ISA_AVX512)
        return qc_kq_fit_block_q6_avx512;
    if (isa == QC_ISA_AVX2)
        return qc_kq_fit_block_q6_avx2;
#endif
    return NULL; /* the scalar reference */
}

static const int64_t KQ_BLOCK_BYTES[QC_NUM_KTYPES] = {
    [QC_KTYPE_Q4_K] = (int64_t)sizeof(qc_block_q4_k),
    [QC_KTYPE_Q5_K] = (int64_t)sizeof(qc_block_q5_k),
    [QC_KTYPE_Q6_K] = (int64_t)sizeof(qc_block_q6_k),
};

int64_t qc_kquant_row_bytes(qc_ktype type, int64_t cols) {
    if ((int)type < 0 || type >= QC_NUM_KTYPES || cols < QC_QK_K || cols % QC_QK_K)
        return 0;
    return cols / QC_QK_K * KQ_BLOCK_BYTES[type];
}

int64_t qc_kquant_sub_blocks(qc_ktype type, int64_t cols) {
    if (qc_kquant_row_bytes(type, cols) == 0)
        return 0;
    return cols / (type == QC_KTYPE_Q6_K ? 16 : 32);
}

static void set_err(qc_error *err, int64_t row, int64_t col) {
    if (err) {
        err->row = row;
        err->col = col;
    }
}

/* One quantize call split into chunks of rows; a chunk stops at its first row that
 * overflows and records it (the call reports the first such row of all). */
typedef struct {
    qc_ktype type;
    const float *src;
    int64_t rows, cols, stride, rb, chunk;
    const float *importance;
    uint8_t *dst;
    qc_kq_fit45_fn fit;
    qc_kq_fit6_fn fit6;
    int64_t *bad; /* per chunk: -1, or row * cols + column of the first overflowing block */
} kq_job;

static int quantize_row(const kq_job *j, int64_t r, int64_t *bad) {
    const float *x = j->src + r * j->stride;
    uint8_t *y = j->dst + r * j->rb;
    switch (j->type) {
    case QC_KTYPE_Q4_K:
        return j->fit ? qc_kq_quantize_row_k45(x, j->cols, j->importance, y, 15, j->fit, bad)
                      : qc_kq_quantize_row_q4_k(x, j->cols, j->importance, (qc_block_q4_k *)y, bad);
    case QC_KTYPE_Q5_K:
        return j->fit ? qc_kq_quantize_row_k45(x, j->cols, j->importance, y, 31, j->fit, bad)
                      : qc_kq_quantize_row_q5_k(x, j->cols, j->importance, (qc_block_q5_k *)y, bad);
    default:
        return j->fit6 ? qc_kq_quantize_row_q6(x, j->cols, j->importance, (qc_block_q6_k *)y,
                                               j->fit6, bad)
                       : qc_kq_quantize_row_q6_k(x, j->cols, j->importance, (qc_block_q6_k *)y, bad);
    }
}

static void quantize_chunk(void *ctx, int64_t c, int slot) {
    (void)slot;
    const kq_job *j = (const kq_job *)ctx;
    const int64_t r0 = c * j->chunk, r1 = r0 + j->chunk < j->rows ? r0 + j->chunk : j->rows;
    j->bad[c] = -1;
    for (int64_t r = r0; r < r1; r++) {
        int64_t bad = 0;
        if (quantize_row(j, r, &bad)) {
            j->bad[c] = r * j->cols + bad * QC_QK_K;
            return;
        }
    }
}

qc_status qc_quantize_kquant(qc_ktype type, const float *src, int64_t rows, int64_t cols,
                             int64_t src_row_stride, const float *importance, uint8_t *dst,
                             qc_error *err) {
    set_err(err, -1, -1);
    const int64_t rb = qc_kquant_row_bytes(type, cols);
    if (rb == 0 || rows < 0 || !src || !dst || src_row_stride < cols)
        return QC_ERR_ARG;
    if (importance) {
        for (int64_t c = 0; c < cols; c++) {
            if (!(importance[c] >= 0.0f && importance[c] < INFINITY)) {
                set_err(err, -1, c);
                return QC_ERR_RANGE;
            }
        }
    }
    for (int64_t r = 0; r < rows; r++) {
        const float *x = src + r * src_row_stride;
        for (int64_t c = 0; c < cols; c++) {
            if (!(fabsf(x[c]) < INFINITY)) {
                set_err(err, r, c);
                return QC_ERR_NONFINITE;
            }
        }
    }
    if (rows == 0)
        return QC_OK;
    /* a K-quant search costs ~20x a plain quantizer per element: threads pay off sooner */
    int nt = qc_threads_for(rows * cols * 16);
    kq_job j = {type, src, rows, cols, src_row_stride, rb, 0, importance, dst, fit45_for_isa(),
                fit6_for_isa(), NULL};
    j.chunk = qc_pool_chunk_len(rows, nt, 8, (4096 + cols - 1) / cols, 1);
    const int64_t nchunks = qc_pool_nchunks(rows, j.chunk);
    if (nt > nchunks)
        nt = (int)nchunks;
    j.bad = (int64_t *)malloc((size_t)nchunks * sizeof(int64_t));
    if (!j.bad)
        return QC_ERR_NOMEM;
    qc_pool_run(nt, nchunks, quantize_chunk, &j);
    qc_status st = QC_OK;
    for (int64_t c = 0; c < nchunks; c++) {
        if (j.bad[c] >= 0) {
            set_err(err, j.bad[c] / cols, j.bad[c] % cols);
            st = QC_ERR_OVERFLOW;
            break;
        }
    }
    free(j.bad);
    return st;
}

qc_status qc_dequantize_kquant(qc_ktype type, const uint8_t *src, int64_t rows, int64_t cols,
                               float *dst, int64_t dst_row_stride, qc_error *err) {
    set_err(err, -1, -1);
    const int64_t rb = qc_kquant_row_bytes(type, cols);
    if (rb == 0 || rows < 0 || !src || !dst || dst_row_stride < cols)
        return QC_ERR_ARG;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *b = src + r * rb;
        float *y = dst + r * dst_row_stride;
        switch (type) {
        case QC_KTYPE_Q4_K:
            qc_kq_dequantize_row_q4_k((const qc_block_q4_k *)b, cols, y);
            break;
        case QC_KTYPE_Q5_K:
            qc_kq_dequantize_row_q5_k((const qc_block_q5_k *)b, cols, y);
            break;
        default:
            qc_kq_dequantize_row_q6_k((const qc_block_q6_k *)b, cols, y);
            break;
        }
    }
    return QC_OK;
}

qc_status qc_kquant_params(qc_ktype type, const uint8_t *src, int64_t rows, int64_t cols,
                           float *scales, float *offsets, qc_error *err) {
    set_err(err, -1, -1);
    const int64_t rb = qc_kquant_row_bytes(type, cols);
    const int64_t ns = qc_kquant_sub_blocks(type, cols);
    if (rb == 0 || rows < 0 || !src || !scales || (type != QC_KTYPE_Q6_K && !offsets))
        return QC_ERR_ARG;
    for (int64_t r = 0; r < rows; r++) {
        if (type == QC_KTYPE_Q6_K)
            qc_kq_params_row_q6_k((const qc_block_q6_k *)(src + r * rb), cols, scales + r * ns);
        else
            qc_kq_params_row_q45_k(src + r * rb, (size_t)KQ_BLOCK_BYTES[type], cols,
                                   scales + r * ns, offsets + r * ns);
    }
    return QC_OK;
}
