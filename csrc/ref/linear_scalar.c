/*
 * linear_scalar.c -- the scalar reference of the linear-layer kernels.
 *
 * ISA: none.  Layout: weights as quantcore.h (row-major codes, scales per group),
 * activations as qc_act in kernels.h.  Per 32-block b of a weight row with group
 * scale d and offset c (w = d * q + c):
 *   F32:  y += d * sum_j(q_j * x_j) + c * sum_j(x_j)        (float32, j in order)
 *   I8:   y += d * (da_b * sum_j(q_j * aq_j)) + c * (da_b * sum_j aq_j)
 *         with the integer dot exact; blocks are added in order.
 * SIMD versions sum in another order, so they agree within a K * eps bound.
 */
#include "../kernels.h"

/* Position of element j of block b in an activation row. */
static inline int64_t act_pos(int span, int64_t nb, int64_t b, int64_t j) {
    return span ? qc_act_pos4(span, nb, b, j) : b * QC_BLK + j;
}

static int act_quant_scalar(const float *x, int64_t k, int span, int8_t *xq, float *xd,
                            float *xs) {
    int64_t nb = (k + QC_BLK - 1) / QC_BLK;
    for (int64_t b = 0; b < nb; b++) {
        float v[QC_BLK];
        float amax = 0.0f;
        for (int j = 0; j < QC_BLK; j++) {
            int64_t e = b * QC_BLK + j;
            v[j] = e < k ? x[e] : 0.0f;
            float a = fabsf(v[j]);
            if (!(a < INFINITY))
                return 1;
            if (a > amax)
                amax = a;
        }
        qc_stats s = {0.0f, 0.0f, amax};
        qc_qparams p = qc_params_from_stats(QC_SYM8, &s);
        int32_t sum = 0;
        for (int j = 0; j < QC_BLK; j++) {
            uint8_t q;
            qc_quantize_scalar(QC_SYM8, &v[j], 1, &p, &q);
            xq[act_pos(span, nb, b, j)] = (int8_t)q;
            sum += (int8_t)q;
        }
        xd[b] = p.d;
        xs[b] = p.d * (float)sum;
    }
    return 0;
}

/* Code of element e (0 <= e < k) of a weight row. */
static inline int32_t wcode(qc_kind kind, const uint8_t *row, int64_t e) {
    if (QC_KINDS[kind].bits == 8)
        return kind == QC_SYM8 ? (int32_t)(int8_t)row[e] : (int32_t)row[e];
    uint8_t byte = row[e >> 1];
    return (e & 1) ? (byte >> 4) : (byte & 0x0f);
}

static void linear_scalar(qc_kind kind, int i8, const qc_wview *v, const qc_act *a, int64_t m0,
                          int64_t m1, int64_t n0, int64_t n1, float *y, int64_t ldy) {
    const qc_qweight *w = v->w;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *row = w->data + n * v->row_bytes;
        for (int64_t m = m0; m < m1; m++) {
            float acc = 0.0f;
            const int deint = a->deinterleaved;
            for (int64_t b = 0; b < v->nb; b++) {
                float d, c;
                qc_group_dc(v, qc_group_index(v, n, b), &d, &c);
                int64_t jn = w->k - b * QC_BLK < QC_BLK ? w->k - b * QC_BLK : QC_BLK;
                float bs;
                if (i8) {
                    const int8_t *xq = a->xq + m * a->kp;
                    int32_t dot = 0;
                    for (int64_t j = 0; j < jn; j++)
                        dot += wcode(kind, row, b * QC_BLK + j) * xq[act_pos(deint, v->nb, b, j)];
                    bs = a->xd[m * a->nb + b] * (float)dot;
                } else {
                    const float *xf = a->xf + m * a->kp;
                    bs = 0.0f;
                    for (int64_t j = 0; j < jn; j++)
                        bs += (float)wcode(kind, row, b * QC_BLK + j) * xf[act_pos(deint, v->nb, b, j)];
                }
                acc += d * bs + c * a->xs[m * a->nb + b];
            }
            y[(m - m0) * ldy + (n - n0)] = acc;
        }
    }
}

#define QC_DEFINE_LINEAR(K)                                                                     \
    static void gemv_f32_##K##_scalar(const qc_wview *v, const qc_act *a, int64_t m0,           \
                                      int64_t m1, int64_t n0, int64_t n1, float *y,             \
                                      int64_t ldy) {                                            \
        linear_scalar(QC_##K, 0, v, a, m0, m1, n0, n1, y, ldy);                                 \
    }                                                                                           \
    static void gemv_i8_##K##_scalar(const qc_wview *v, const qc_act *a, int64_t m0,            \
                                     int64_t m1, int64_t n0, int64_t n1, float *y,              \
                                     int64_t ldy) {                                             \
        linear_scalar(QC_##K, 1, v, a, m0, m1, n0, n1, y, ldy);                                 \
    }
QC_DEFINE_LINEAR(SYM8)
QC_DEFINE_LINEAR(ASYM8)
QC_DEFINE_LINEAR(SYM4)
QC_DEFINE_LINEAR(ASYM4)
QC_DEFINE_LINEAR(MIN4)

const qc_linear_kernels qc_linear_scalar = {
    .name = "scalar",
    .act_quant = act_quant_scalar,
    .act_span4 = 2,
    .gemv_f32 = {gemv_f32_SYM8_scalar, gemv_f32_ASYM8_scalar, gemv_f32_SYM4_scalar,
                 gemv_f32_ASYM4_scalar, gemv_f32_MIN4_scalar},
    .gemv_i8 = {gemv_i8_SYM8_scalar, gemv_i8_ASYM8_scalar, gemv_i8_SYM4_scalar,
                gemv_i8_ASYM4_scalar, gemv_i8_MIN4_scalar},
    .packed_i8 = QC_PACKED_TABLE(scalar),
};
