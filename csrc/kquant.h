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

/* The expensive part of Q4_K / Q5_K super-blocks (nmax 15 / 31), which every
 * ISA may provide: for nb (1 or 2) consecutive super-blocks x[256 * nb] (and
 * importance qw[256 * nb] or NULL) the 8 * nb sub-block fits -- scales, mins (as
 * -min), the codes L[256 * nb] and, with importance, sw the sums of each
 * sub-block's weights -- exactly as the scalar reference computes them. */
typedef void (*qc_kq_fit45_fn)(const float *x, const float *qw, int nb, int nmax, float *scales,
                               float *mins, float *sw, uint8_t *L);
void qc_kq_fit_blocks_k45_scalar(const float *x, const float *qw, int nb, int nmax, float *scales,
                                 float *mins, float *sw, uint8_t *L);
/* ggml's search parameters (rmin, rdelta, nstep) with and without importance. */
void qc_kq_fit_params(int nmax, int with_importance, float *rmin, float *rdelta, int *nstep);
/* A row of Q4_K (nmax 15) or Q5_K (nmax 31) blocks with the sub-block fits of `fit`. */
int qc_kq_quantize_row_k45(const float *x, int64_t n, const float *importance, uint8_t *y, int nmax,
                           qc_kq_fit45_fn fit, int64_t *bad_block);
/* The expensive part of a Q6_K super-block: for x[256] (and importance qw[256] or
 * NULL) the sixteen sub-block fits -- scales[16] and the codes L[256] (0..63, the
 * signed code + 32) -- exactly as the scalar reference computes them. */
typedef void (*qc_kq_fit6_fn)(const float *x, const float *qw, float *scales, int8_t *L);
/* A row of Q6_K blocks with the sub-block fits of `fit`. */
int qc_kq_quantize_row_q6(const float *x, int64_t n, const float *importance, qc_block_q6_k *y,
                          qc_kq_fit6_fn fit, int64_t *bad_block);
void qc_kq_fit_block_q6_scalar(const float *x, const float *qw, float *scales, int8_t *L);
#if defined(__x86_64__) || defined(_M_X64)
void qc_kq_fit_block_q6_avx2(const float *x, const float *qw, float *scales, int8_t *L);
void qc_kq_fit_block_q6_avx512(const float *x, const float *qw, float *scales, int8_t *L);
void qc_kq_fit_blocks_k45_avx2(const float *x, const float *qw, int nb, int nmax, float *scales,
                               float *mins, float *sw, uint8_t *L);
void qc_kq_fit_blocks_k45_avx512(const float *x, const float *qw, int nb, int nmax, float *scales,
                                 float *mins, float *sw, uint8_t *L);
#endif

void qc_kq_dequantize_row_q4_k(const qc_block_q4_k *b, int64_t n, float *y);
void qc_kq_dequantize_row_q5_k(const qc_block_q5_k *b, int64_t n, float *y);
void qc_kq_dequantize_row_q6_k(const qc_block_q6_k *b, int64_t n, float *y);

/* Per sub-block effective scale (and, for Q4_K / Q5_K, the value of code 0,
 * -(dmin * m)), so that dequantize is scale * q + offset (Q6_K: scale * (q - 32)). */
void qc_kq_params_row_q45_k(const uint8_t *row, size_t block_bytes, int64_t n, float *scales,
                            float *offsets); /* Q4_K and Q5_K share d, dmin, scales[12] */
void qc_kq_params_row_q6_k(const qc_block_q6_k *b, int64_t n, float *scales);

#endif /* QC_KQUANT_H */
