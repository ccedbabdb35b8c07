/*
 * formats.h -- quantcore's formats, declared once.
 *
 * The per-kind facts (bits, code range, whether a zero point is stored) and the
 * rules that turn a group's statistics into its parameters live here and nowhere
 * else; every ISA's kernels include this file.  The rules are GGUF's
 * (ggml-quants.c), so that Q8_0 / Q4_0 / Q4_1 come out bit for bit:
 *
 *   SYM8  (Q8_0): d = amax / 127,           q = round_half_away(x * (1/d))
 *   SYM4  (Q4_0): d = max / -8 (max = the signed value of largest magnitude, first
 *                 one on ties), q = min(15, trunc(x * (1/d) + 8.5))
 *   MIN4  (Q4_1): d = (max - min) / 15, m = min,
 *                 q = min(15, trunc((x - m) * (1/d) + 0.5))
 *   ASYM8/ASYM4 (integer zero point, ONNX Runtime / PyTorch style): the range is
 *                 widened to include 0, d = (hi - lo) / qmax,
 *                 z = round_half_away(-lo * (1/d)), q = clamp(round_half_away(x/d) + z)
 *
 * 1/d is taken once per group (0 when d is 0) and every product and sum is rounded
 * to float32 on its own; the build passes -ffp-contract=off so that no compiler
 * fuses them.  Scales are computed in float32 and, for float16 storage, rounded
 * to nearest-even afterwards (the quantized codes use the float32 scale, as GGUF
 * does).
 */
#ifndef QC_FORMATS_H
#define QC_FORMATS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "quantcore.h"

/* GGUF block layouts, for import/export.  Sizes asserted as in ggml-common.h. */
#define QC_QK 32
typedef struct {
    uint16_t d; /* float16 scale */
    int8_t qs[QC_QK];
} qc_block_q8_0;
typedef struct {
    uint16_t d;
    uint8_t qs[QC_QK / 2]; /* element j in the low nibble of byte j, j+16 in its high nibble */
} qc_block_q4_0;
typedef struct {
    uint16_t d;
    uint16_t m;
    uint8_t qs[QC_QK / 2];
} qc_block_q4_1;
_Static_assert(sizeof(qc_block_q8_0) == 2 + QC_QK, "wrong q8_0 block size");
_Static_assert(sizeof(qc_block_q4_0) == 2 + QC_QK / 2, "wrong q4_0 block size");
_Static_assert(sizeof(qc_block_q4_1) == 4 + QC_QK / 2, "wrong q4_1 block size");

/* GGUF K-quant super-blocks of QC_QK_K values, byte for byte ggml's.  A row of
 * a K-quant tensor is its super-blocks one after another (cols a multiple of 256).
 *
 * Q4_K / Q5_K: eight sub-blocks of 32, each with a 6-bit scale sc and a 6-bit
 * min m; value = (d * sc) * q - (dmin * m), q in 0..15 (Q5_K: 0..31).
 *   scales[12]: sub-block j < 4: sc = scales[j] & 63, m = scales[j + 4] & 63;
 *               j >= 4: sc = (scales[j + 4] & 15) | (scales[j - 4] >> 6) << 4,
 *                       m  = (scales[j + 4] >> 4) | (scales[j] >> 6) << 4.
 *   qs: 64 values per 32 bytes: value 64c + l in the low nibble of qs[32c + l],
 *       64c + 32 + l in its high nibble.
 *   qh (Q5_K): the fifth bit of value 32s + l is bit s of qh[l].
 * Q6_K: sixteen sub-blocks of 16 with an int8 scale; value = (d * sc) * (q - 32).
 *   Per half of 128 values (h = 0, 1; ql += 64h, qh += 32h), l in 0..31:
 *   value 128h + l      : low nibble of ql[l],      bits 0-1 of qh[l];
 *   value 128h + 32 + l : low nibble of ql[32 + l], bits 2-3 of qh[l];
 *   value 128h + 64 + l : high nibble of ql[l],     bits 4-5 of qh[l];
 *   value 128h + 96 + l : high nibble of ql[32 + l], bits 6-7 of qh[l]. */
#define QC_QK_K 256
#define QC_K_SCALE_SIZE 12
typedef struct {
    uint16_t d;    /* float16 super-block scale of the sub-block scales */
    uint16_t dmin; /* float16 super-block scale of the sub-block mins   */
    uint8_t scales[QC_K_SCALE_SIZE];
    uint8_t qs[QC_QK_K / 2];
} qc_block_q4_k;
typedef struct {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[QC_K_SCALE_SIZE];
    uint8_t qh[QC_QK_K / 8];
    uint8_t qs[QC_QK_K / 2];
} qc_block_q5_k;
typedef struct {
    uint8_t ql[QC_QK_K / 2];
    uint8_t qh[QC_QK_K / 4];
    int8_t scales[QC_QK_K / 16];
    uint16_t d; /* float16 */
} qc_block_q6_k;
_Static_assert(sizeof(qc_block_q4_k) == 144, "wrong q4_K block size");
_Static_assert(sizeof(qc_block_q5_k) == 176, "wrong q5_K block size");
_Static_assert(sizeof(qc_block_q6_k) == 210, "wrong q6_K block size");

/* The 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K super-block. */
static inline void qc_k4_scale_min(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

typedef struct {
    int bits;
    int qmin, qmax; /* range of the stored code */
    int has_zero;   /* 1: integer zero points; 2: float minimum (Q4_1); 0: none */
} qc_kind_info;

static const qc_kind_info QC_KINDS[QC_NUM_KINDS] = {
    [QC_SYM8] = {8, -127, 127, 0},
    [QC_ASYM8] = {8, 0, 255, 1},
    [QC_SYM4] = {4, 0, 15, 0},
    [QC_ASYM4] = {4, 0, 15, 1},
    [QC_MIN4] = {4, 0, 15, 2},
};

/* Statistics of a group, as the stats kernel of every ISA reports them. */
typedef struct {
    float min, max;
    float amax_signed; /* the element of largest magnitude, sign kept (first on ties) */
} qc_stats;

/* Parameters of one group. */
typedef struct {
    float d;    /* scale, float32 (as stored, for dequantize; as computed, for quantize) */
    float id;   /* 1/d or 0 */
    float m;    /* QC_MIN4: the minimum */
    int32_t z;  /* integer zero point (ASYM); 8 for SYM4 when dequantizing */
} qc_qparams;

/* round half away from zero, exactly as C's roundf and gguf's np_roundf */
static inline float qc_round_away(float x) { return roundf(x); }

static inline qc_qparams qc_params_from_stats(qc_kind kind, const qc_stats *s) {
    qc_qparams p = {0.0f, 0.0f, 0.0f, 0};
    switch (kind) {
    case QC_SYM8: {
        float amax = fabsf(s->amax_signed);
        p.d = amax / 127.0f;
        break;
    }
    case QC_SYM4:
        p.d = s->amax_signed / -8.0f;
        p.z = 8;
        break;
    case QC_MIN4:
        p.d = (s->max - s->min) / 15.0f;
        p.m = s->min;
        break;
    case QC_ASYM8:
    case QC_ASYM4: {
        float qmax = (float)QC_KINDS[kind].qmax;
        float lo = s->min < 0.0f ? s->min : 0.0f;
        float hi = s->max > 0.0f ? s->max : 0.0f;
        p.d = (hi - lo) / qmax;
        break;
    }
    default:
        break;
    }
    if (p.d == 0.0f && kind != QC_SYM4)
        p.d = 0.0f; /* canonical +0: the sign of a zero min/max is not meaningful */
    p.id = p.d != 0.0f ? 1.0f / p.d : 0.0f;
    if (!(fabsf(p.id) < INFINITY)) {
        /* A group so small (|x| below ~1e-36) that 1/d overflows: GGUF's reference
         * gives garbage here; quantcore stores it as zeros. */
        p.d = 0.0f;
        p.id = 0.0f;
    }
    /* Keep d * (largest code) finite: FLT_MAX / 127 rounds up, so nudge such a
     * scale down by ulps (only values within ~1% of FLT_MAX ever get here). */
    {
        const float reach = kind == QC_SYM8 ? 127.0f : kind == QC_SYM4 ? 8.0f :
                            kind == QC_ASYM8 ? 255.0f : 15.0f;
        if (fabsf(p.d) < INFINITY && fabsf(p.d) * reach > 3.40282347e38f) {
            float lim = 3.40282347e38f / reach; /* may round up: step down until it fits */
            while (lim * reach > 3.40282347e38f)
                lim = nextafterf(lim, 0.0f);
            p.d = copysignf(lim, p.d);
            p.id = 1.0f / p.d;
        }
    }
    if (kind == QC_ASYM8 || kind == QC_ASYM4) {
        float lo = s->min < 0.0f ? s->min : 0.0f;
        float z = qc_round_away(-lo * p.id);
        float qmax = (float)QC_KINDS[kind].qmax;
        p.z = (int32_t)(z < 0.0f ? 0.0f : (z > qmax ? qmax : z));
    }
    return p;
}

/* ---- float16 <-> float32, scalar, round to nearest even (as F16C and NumPy) ---- */
static inline float qc_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while ((man & 0x400u) == 0);
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + (127 - 15)) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t qc_fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
    if (ax >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
        if (ax < 0x33000000u) /* < 2^-25: rounds to zero (2^-25 itself ties to even 0) */
            return (uint16_t)sign;
        uint32_t e = ax >> 23;
        uint32_t man = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* 14 + (112 - e) ... gives man >> (shift) in 2^-24 units */
        uint32_t q = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u)))
            q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = ax + 0xfffu + ((ax >> 13) & 1u); /* round to nearest even at bit 13 */
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

#endif /* QC_FORMATS_H */
