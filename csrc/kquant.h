/*
 * kquant.h -- the K-quant row kernels (GGUF Q4_K / Q5_K / Q6_K) behind
 * qc_quantize_kquant and qc_dequantize_kquant.
 *
 * A row holds n values, n a multiple of QC_QK_K; its n / QC_QK_K super-blocks
 * are written one after another (layouts in formats.h).  `importance` is NULL
 * or n non-negative floats (ggml's quant_weights for one row).
 */
#ifndef QC_KQUANT_H
#define QC_KQUANT_H

#include "formats.h"

/* Quantize one row; 0, or 1 when a super-block's float16 scale overflows or its
 * search overflowed float32 (the row is written all the same, as ggml writes
 * it); *bad_block receives the first such super-block. */
int qc_kq_quantize_row_q4_k(const float *x, int64_t n, const float *importance, qc_block_q4_k *y,
                            int64_t *bad_block);
int qc_kq_quantize_row_q5_k(const float *x, int64_t n, const float *importance, qc_block_q5_k *y,
                            int64_t *bad_block);
int qc_kq_quantize_row_q6_k(const float *x, int64_t n, const float *importance, qc_block_q6_k *y,
                            int64_t *bad_block);

void qc_kq_dequantize_row_q4_k(const qc_block_q4_k *b, int64_t n, float *y);
void qc_kq_dequantize_row_q5_k(const qc_block_q5_k *b, int64_t n, float *y);
void qc_kq_dequantize_row_q6_k(const qc_block_q6_k *b, int64_t n, float *y);

/* Per sub-block effective scale (and, for Q4_K / Q5_K, the value of code 0,
 * -(dmin * m)), so that dequantize is scale * q + offset (Q6_K: scale * (q - 32)). */
void qc_kq_params_row_q45_k(const uint8_t *row, size_t block_bytes, int64_t n, float *scales,
                            float *offsets); /* Q4_K and Q5_K share d, dmin, scales[12] */
void qc_kq_params_row_q6_k(const qc_block_q6_k *b, int64_t n, float *scales);

#endif /* QC_KQUANT_H */
