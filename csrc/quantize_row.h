/*
 * quantize_row.h -- the per-row quantize loop, written once and instantiated in
 * each ISA file with that ISA's inline stats and quantize functions (one
 * specialisation per kind), so nothing inside a row is an indirect call.
 *
 * A row of n floats is cut into groups of `group` (the last may be shorter).  For
 * each group: stats, the rules of formats.h, then the codes.  The float32 scale,
 * minimum and integer zero point of group g go to d[g], m[g], z[g]; api.c checks
 * that they fit their storage dtype and stores them.  Returns -1, or the first
 * column of the first group that holds NaN or Inf (nothing after it is written).
 */
#ifndef QC_QUANTIZE_ROW_H
#define QC_QUANTIZE_ROW_H

#include "kernels.h"

/* Q4_1's zero minimum: -0.0 when the group holds -0.0 and no +0.0 (see api.c). */
static inline int qc_min_is_negative_zero(const float *x, int64_t n) {
    int neg = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, &x[i], 4);
        if (b == 0u)
            return 0;
        neg |= b == 0x80000000u;
    }
    return neg;
}

#define QC_QROW_ONE(ISA, ATTR, K)                                                               \
    ATTR static int64_t quantize_row_##K##_##ISA(const float *x, int64_t n, int64_t group,      \
                                                 uint8_t *dst, float *d, float *m, uint8_t *z) { \
        return quantize_row_gen_##ISA(QC_##K, x, n, group, dst, d, m, z);                       \
    }

#define QC_DEFINE_QUANTIZE_ROW(ISA, ATTR, STATS, QUANT)                                         \
    ATTR static inline int64_t quantize_row_gen_##ISA(qc_kind kind, const float *x, int64_t n,   \
                                                      int64_t group, uint8_t *dst, float *d,    \
                                                      float *m, uint8_t *z) {                   \
        const int four = QC_KINDS[kind].bits == 4;                                              \
        int64_t g = 0;                                                                          \
        for (int64_t c0 = 0; c0 < n; c0 += group, g++) {                                        \
            const int64_t len = n - c0 < group ? n - c0 : group;                                \
            qc_stats s;                                                                         \
            if (STATS(x + c0, len, &s))                                                         \
                return c0;                                                                      \
            if (kind == QC_MIN4 && s.min == 0.0f)                                               \
                s.min = qc_min_is_negative_zero(x + c0, len) ? -0.0f : 0.0f;                    \
            qc_qparams p = qc_params_from_stats(kind, &s);                                      \
            d[g] = p.d;                                                                         \
            m[g] = p.m;                                                                         \
            z[g] = (uint8_t)p.z;                                                                \
            QUANT(kind, x + c0, len, &p, four ? dst + c0 / 2 : dst + c0);                       \
        }                                                                                       \
        return -1;                                                                              \
    }                                                                                           \
    QC_QROW_ONE(ISA, ATTR, SYM8)                                                                \
    QC_QROW_ONE(ISA, ATTR, ASYM8)                                                               \
    QC_QROW_ONE(ISA, ATTR, SYM4)                                                                \
    QC_QROW_ONE(ISA, ATTR, ASYM4)                                                               \
    QC_QROW_ONE(ISA, ATTR, MIN4)

#define QC_QUANTIZE_ROW_TABLE(ISA)                                                              \
    {quantize_row_SYM8_##ISA, quantize_row_ASYM8_##ISA, quantize_row_SYM4_##ISA,               \
     quantize_row_ASYM4_##ISA, quantize_row_MIN4_##ISA}

#endif /* QC_QUANTIZE_ROW_H */
