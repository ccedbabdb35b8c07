/*
 * quant_scalar.c -- the scalar reference of the quantize / dequantize / pack
 * kernels, which every SIMD version matches.
 *
 * ISA: none (baseline C99).  Data layout: see quantcore.h.  Accumulation: none
 * (every output element depends on one input element and its group's
 * parameters), so the SIMD versions must agree bit for bit.  The formulas are
 * the ones in formats.h, written out one element at a time.
 */
#include "../quantize_row.h"

static void load_f16_scalar(const uint16_t *src, int64_t n, float *dst) {
    for (int64_t i = 0; i < n; i++)
        dst[i] = qc_fp16_to_fp32(src[i]);
}

static void load_f64_scalar(const double *src, int64_t n, float *dst) {
    for (int64_t i = 0; i < n; i++)
        dst[i] = (float)src[i];
}

static int stats_scalar(const float *x, int64_t n, qc_stats *s) {
    float mn = x[0], mx = x[0], amax = -1.0f, sgn = x[0];
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        float a = fabsf(v);
        if (!(a < INFINITY))
            return 1;
        if (v < mn)
            mn = v;
        if (v > mx)
            mx = v;
        if (a > amax) { /* strict: the first of equal magnitudes wins */
            amax = a;
            sgn = v;
        }
    }
    s->min = mn;
    s->max = mx;
    s->amax_signed = sgn;
    return 0;
}

/* NaN goes to lo, as max(v, lo) does in the SIMD versions: no input makes the
 * float-to-int conversion below undefined. */
static inline float clampf(float v, float lo, float hi) {
    return !(v >= lo) ? lo : (v > hi ? hi : v);
}

/* One code, by the rules of formats.h.  Values are clamped in float before the
 * conversion to int, so no input makes the conversion undefined. */
static inline int32_t quantize_one(qc_kind kind, float x, const qc_qparams *p) {
    switch (kind) {
    case QC_SYM8:
        return (int32_t)qc_round_away(clampf(x * p->id, -127.0f, 127.0f));
    case QC_ASYM8: {
        int32_t q = (int32_t)qc_round_away(clampf(x * p->id, -255.0f, 255.0f)) + p->z;
        return q < 0 ? 0 : (q > 255 ? 255 : q);
    }
    case QC_SYM4:
        return (int32_t)clampf(x * p->id + 8.5f, 0.0f, 15.0f); /* truncation */
    case QC_ASYM4: {
        int32_t q = (int32_t)qc_round_away(clampf(x * p->id, -15.0f, 15.0f)) + p->z;
        return q < 0 ? 0 : (q > 15 ? 15 : q);
    }
    case QC_MIN4:
        return (int32_t)clampf((x - p->m) * p->id + 0.5f, 0.0f, 15.0f);
    default:
        return 0;
    }
}

void qc_quantize_scalar(qc_kind kind, const float *x, int64_t n, const qc_qparams *p,
                        uint8_t *dst) {
    if (QC_KINDS[kind].bits == 8) {
        for (int64_t i = 0; i < n; i++)
            dst[i] = (uint8_t)quantize_one(kind, x[i], p);
        return;
    }
    int64_t i = 0;
    for (; i + 1 < n; i += 2) {
        uint32_t lo = (uint32_t)quantize_one(kind, x[i], p);
        uint32_t hi = (uint32_t)quantize_one(kind, x[i + 1], p);
        dst[i / 2] = (uint8_t)(lo | (hi << 4));
    }
    if (i < n)
        dst[i / 2] = (uint8_t)quantize_one(kind, x[i], p);
}

static inline float dequantize_one(qc_kind kind, int32_t q, const qc_qparams *p) {
    switch (kind) {
    case QC_SYM8:
        return p->d * (float)(int8_t)q;
    case QC_MIN4:
        return p->d * (float)q + p->m;
    default: /* ASYM8, SYM4 (z = 8), ASYM4 */
        return p->d * (float)(q - p->z);
    }
}

void qc_dequantize_scalar(qc_kind kind, const uint8_t *src, int64_t n, const qc_qparams *p,
                          float *dst) {
    if (QC_KINDS[kind].bits == 8) {
        for (int64_t i = 0; i < n; i++)
            dst[i] = dequantize_one(kind, src[i], p);
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        uint8_t b = src[i / 2];
        dst[i] = dequantize_one(kind, (i & 1) ? (b >> 4) : (b & 0x0f), p);
    }
}

#define QC_DEFINE_KIND_WRAPPERS(K)                                                              \
    static void quantize_##K##_scalar(const float *x, int64_t n, const qc_qparams *p,           \
                                      uint8_t *dst) {                                           \
        qc_quantize_scalar(QC_##K, x, n, p, dst);                                               \
    }                                                                                           \
    static void dequantize_##K##_scalar(const uint8_t *s, int64_t n, const qc_qparams *p,       \
                                        float *dst) {                                           \
        qc_dequantize_scalar(QC_##K, s, n, p, dst);                                             \
    }
QC_DEFINE_KIND_WRAPPERS(SYM8)
QC_DEFINE_KIND_WRAPPERS(ASYM8)
QC_DEFINE_KIND_WRAPPERS(SYM4)
QC_DEFINE_KIND_WRAPPERS(ASYM4)
QC_DEFINE_KIND_WRAPPERS(MIN4)

QC_DEFINE_QUANTIZE_ROW(scalar, , stats_scalar, qc_quantize_scalar)

static void store_f16_scalar(const float *src, int64_t n, uint16_t *dst) {
    for (int64_t i = 0; i < n; i++)
        dst[i] = qc_fp32_to_fp16(src[i]);
}

static void pack_int4_scalar(const uint8_t *src, int64_t n, uint8_t *dst) {
    int64_t i = 0;
    for (; i + 1 < n; i += 2)
        dst[i / 2] = (uint8_t)((src[i] & 0x0f) | ((src[i + 1] & 0x0f) << 4));
    if (i < n)
        dst[i / 2] = (uint8_t)(src[i] & 0x0f);
}

static void unpack_int4_scalar(const uint8_t *src, int64_t n, int is_signed, uint8_t *dst) {
    for (int64_t i = 0; i < n; i++) {
        uint8_t v = (i & 1) ? (uint8_t)(src[i / 2] >> 4) : (uint8_t)(src[i / 2] & 0x0f);
        dst[i] = (is_signed && v >= 8) ? (uint8_t)(v | 0xf0) : v;
    }
}

const qc_kernels qc_kernels_scalar = {
    .name = "scalar",
    .load_f16 = load_f16_scalar,
    .load_f64 = load_f64_scalar,
    .stats = stats_scalar,
    .quantize = {quantize_SYM8_scalar, quantize_ASYM8_scalar, quantize_SYM4_scalar,
                 quantize_ASYM4_scalar, quantize_MIN4_scalar},
    .dequantize = {dequantize_SYM8_scalar, dequantize_ASYM8_scalar, dequantize_SYM4_scalar,
                   dequantize_ASYM4_scalar, dequantize_MIN4_scalar},
    .quantize_row = QC_QUANTIZE_ROW_TABLE(scalar),
    .store_f16 = store_f16_scalar,
    .pack_int4 = pack_int4_scalar,
    .unpack_int4 = unpack_int4_scalar,
    .quantize_row_mse = QC_ROW_MSE_TABLE(scalar),
};
