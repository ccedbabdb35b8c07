/*
 * kquant_linear_scalar.c -- the scalar reference of the K-quant linear kernels
 * (weights in GGUF Q4_K / Q5_K / Q6_K super-blocks, formats.h).
 *
 * ISA: none.  Activations: qc_act in natural order (kp = k, nb = k / 32).
 * Every ISA computes the same float operations in the same order, so all of
 * them (GEMV and GEMM) give the same bits.  Eight float32 lanes per output,
 * reduced at the end with qc_kq_tree8; fma is fused (one rounding).
 *   I8, lane j = 32-block j of each super-block (b = 8 i + j), blocks in order:
 *     Q4_K/Q5_K: acc_j = fma(d * da_b, (float)(sc_j * dot(q, aq_b)), acc_j)
 *                acc_j = fma(-(dmin * m_j), xs_b, acc_j)     (xs_b = da_b * sum aq_b)
 *     Q6_K:      acc_j = fma(d * da_b, (float)(sc_lo * dot_lo + sc_hi * dot_hi), acc_j)
 *                with dot_lo / dot_hi over the 16-halves of (q - 32) * aq.
 *     The integer sums are exact (below 2^24, so their float conversion is too).
 *   F32, lane e mod 8 of element e, elements in order:
 *     acc = fma(x_e, w_e, acc) with w_e = dequantize(W)[e] bit for bit.
 */
#include "../kernels.h"
#include "../kquant.h"

/* Codes of a super-block as 0..63 values (Q6_K: q, not q - 32), in value order,
 * and the sub-block integers: Q4_K/Q5_K sc[8], m[8]; Q6_K sc[16]. */
static void decode_q45(const uint8_t *blk, int q5, uint8_t *q, int *sc, int *m) {
    const uint8_t *scales = blk + 4;
    const uint8_t *qh = q5 ? blk + 16 : NULL;
    const uint8_t *qs = blk + (q5 ? 48 : 16);
    for (int j = 0; j < 8; j++) {
        qc_k4_scale_min(scales, j, &sc[j], &m[j]);
        const uint8_t *p = qs + 32 * (j / 2);
        for (int l = 0; l < 32; l++) {
            int v = (j & 1) ? p[l] >> 4 : p[l] & 15;
            if (q5)
                v |= ((qh[l] >> j) & 1) << 4;
            q[32 * j + l] = (uint8_t)v;
        }
    }
}

static void decode_q6(const qc_block_q6_k *b, uint8_t *q) {
    for (int j = 0; j < 8; j++) {
        const int h = j / 4, r = j % 4;
        const uint8_t *ql = b->ql + 64 * h + 32 * (r & 1), *qh = b->qh + 32 * h;
        for (int l = 0; l < 32; l++)
            q[32 * j + l] = (uint8_t)(((ql[l] >> (4 * (r >> 1))) & 15) | (((qh[l] >> (2 * r)) & 3) << 4));
    }
}

static float half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return qc_fp16_to_fp32(h);
}

static void kq_i8(int t, const qc_wview *v, const qc_act *a, int64_t m0, int64_t m1, int64_t n0,
                  int64_t n1, float *y, int64_t ldy) {
    const int64_t nsb = v->w->k / QC_QK_K;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *row = v->w->data + n * v->row_bytes;
        for (int64_t m = m0; m < m1; m++) {
            const int8_t *xq = a->xq + m * a->kp;
            const float *xd = a->xd + m * a->nb, *xs = a->xs + m * a->nb;
            float acc[8] = {0};
            for (int64_t i = 0; i < nsb; i++) {
                uint8_t q[QC_QK_K];
                int sc[16], mn[8];
                float d, dmin = 0.0f;
                if (t == QC_KTYPE_Q6_K) {
                    const qc_block_q6_k *b = (const qc_block_q6_k *)(row + i * sizeof(qc_block_q6_k));
                    decode_q6(b, q);
                    for (int s = 0; s < 16; s++)
                        sc[s] = b->scales[s];
                    d = half((const uint8_t *)&b->d);
                } else {
                    const uint8_t *blk = row + i * (t == QC_KTYPE_Q4_K ? sizeof(qc_block_q4_k)
                                                                       : sizeof(qc_block_q5_k));
                    decode_q45(blk, t == QC_KTYPE_Q5_K, q, sc, mn);
                    d = half(blk);
                    dmin = half(blk + 2);
                }
                for (int j = 0; j < 8; j++) {
                    const int64_t b = 8 * i + j;
                    const int8_t *aq = xq + b * QC_BLK;
                    const uint8_t *qq = q + 32 * j;
                    const float s = d * xd[b];
                    if (t == QC_KTYPE_Q6_K) {
                        int32_t lo = 0, hi = 0;
                        for (int l = 0; l < 16; l++)
                            lo += ((int32_t)qq[l] - 32) * aq[l];
                        for (int l = 16; l < 32; l++)
                            hi += ((int32_t)qq[l] - 32) * aq[l];
                        acc[j] = fmaf(s, (float)(sc[2 * j] * lo + sc[2 * j + 1] * hi), acc[j]);
                    } else {
                        int32_t dot = 0;
                        for (int l = 0; l < 32; l++)
                            dot += (int32_t)qq[l] * aq[l];
                        acc[j] = fmaf(s, (float)(sc[j] * dot), acc[j]);
                        acc[j] = fmaf(-(dmin * (float)mn[j]), xs[b], acc[j]);
                    }
                }
            }
            y[(m - m0) * ldy + (n - n0)] = qc_kq_tree8(acc);
        }
    }
}

/* One weight row dequantized into w (k floats), as qc_dequantize_kquant. */
void qc_kq_dequantize_row(int t, const uint8_t *row, int64_t k, float *w) {
    if (t == QC_KTYPE_Q4_K)
        qc_kq_dequantize_row_q4_k((const qc_block_q4_k *)row, k, w);
    else if (t == QC_KTYPE_Q5_K)
        qc_kq_dequantize_row_q5_k((const qc_block_q5_k *)row, k, w);
    else
        qc_kq_dequantize_row_q6_k((const qc_block_q6_k *)row, k, w);
}

static void kq_f32(int t, const qc_wview *v, const qc_act *a, int64_t m0, int64_t m1, int64_t n0,
                   int64_t n1, float *y, int64_t ldy) {
    const int64_t nsb = v->w->k / QC_QK_K;
    const int64_t bb = v->row_bytes / nsb;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *row = v->w->data + n * v->row_bytes;
        for (int64_t m = m0; m < m1; m++) {
            const float *x = a->xf + m * a->kp;
            float acc[8] = {0};
            for (int64_t i = 0; i < nsb; i++) {
                float w[QC_QK_K];
                qc_kq_dequantize_row(t, row + i * bb, QC_QK_K, w);
                for (int e = 0; e < QC_QK_K; e++)
                    acc[e & 7] = fmaf(x[i * QC_QK_K + e], w[e], acc[e & 7]);
            }
            y[(m - m0) * ldy + (n - n0)] = qc_kq_tree8(acc);
        }
    }
}

#define QC_DEFINE_KQ(T, NAME)                                                                   \
    static void gemv_i8_##NAME##_scalar(const qc_wview *v, const qc_act *a, int64_t m0,         \
                                        int64_t m1, int64_t n0, int64_t n1, float *y,           \
                                        int64_t ldy) {                                          \
        kq_i8(T, v, a, m0, m1, n0, n1, y, ldy);                                                 \
    }                                                                                           \
    static void gemv_f32_##NAME##_scalar(const qc_wview *v, const qc_act *a, int64_t m0,        \
                                         int64_t m1, int64_t n0, int64_t n1, float *y,          \
                                         int64_t ldy) {                                         \
        kq_f32(T, v, a, m0, m1, n0, n1, y, ldy);                                                \
    }
QC_DEFINE_KQ(QC_KTYPE_Q4_K, q4_k)
QC_DEFINE_KQ(QC_KTYPE_Q5_K, q5_k)
QC_DEFINE_KQ(QC_KTYPE_Q6_K, q6_k)

const qc_kq_linear_kernels qc_kq_linear_scalar = {
    .gemv_f32 = {gemv_f32_q4_k_scalar, gemv_f32_q5_k_scalar, gemv_f32_q6_k_scalar},
    .gemv_i8 = {gemv_i8_q4_k_scalar, gemv_i8_q5_k_scalar, gemv_i8_q6_k_scalar},
};
