/*
 * api_kquant.c -- the K-quant entry points of quantcore.h (GGUF Q4_K, Q5_K, Q6_K):
 * argument checks and the loop over rows; the arithmetic is in ref/kquant_scalar.c
 * (and, for the Q4_K / Q5_K sub-block fits, x86/kquant_avx2.c where the kernel set
 * in use has AVX2; both give the same bytes).  One thread: every row is
 * independent, so callers may split rows between threads.
 */
#include "kquant.h"
#include "kernels.h"

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
    const qc_kq_fit45_fn fit = fit45_for_isa();
    const qc_kq_fit6_fn fit6 = fit6_for_isa();
    for (int64_t r = 0; r < rows; r++) {
        const float *x = src + r * src_row_stride;
        uint8_t *y = dst + r * rb;
        int64_t bad = 0;
        int over;
        switch (type) {
        case QC_KTYPE_Q4_K:
            over = fit ? qc_kq_quantize_row_k45(x, cols, importance, y, 15, fit, &bad)
                       : qc_kq_quantize_row_q4_k(x, cols, importance, (qc_block_q4_k *)y, &bad);
            break;
        case QC_KTYPE_Q5_K:
            over = fit ? qc_kq_quantize_row_k45(x, cols, importance, y, 31, fit, &bad)
                       : qc_kq_quantize_row_q5_k(x, cols, importance, (qc_block_q5_k *)y, &bad);
            break;
        default:
            over = fit6 ? qc_kq_quantize_row_q6(x, cols, importance, (qc_block_q6_k *)y, fit6, &bad)
                        : qc_kq_quantize_row_q6_k(x, cols, importance, (qc_block_q6_k *)y, &bad);
            break;
        }
        if (over) {
            set_err(err, r, bad * QC_QK_K);
            return QC_ERR_OVERFLOW;
        }
    }
    return QC_OK;
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
