/*
 * linear_neon.c -- NEON GEMV kernels of the linear layer (AArch64).  NEON has no
 * tiled GEMM of its own: these run for every m (the gemm entries stay NULL).
 *
 * ISA: baseline AArch64 Advanced SIMD only (no dotprod / i8mm), so every ARMv8
 * CPU runs them and no feature check is needed.  Layout: weights as quantcore.h,
 * read in place; activations in natural order (act_span4 = 0: the table's 4-bit
 * order), quantized by the scalar reference's act_quant.  A block the row ends
 * inside is read through a zeroed copy, never past the row.
 *
 * Per 32-block a block's codes are decoded into 32 bytes in natural order
 * (4-bit: mask and shift the nibbles, then zip low/high back together), then
 *   I8:  the integer dot sum(q * aq) with widening multiplies (vmull_s8, products
 *        <= 128 * 127 fit int16) and pairwise widening adds into int32: exact.
 *        ASYM8 codes 0..255 are not int8, so q - 128 is used and 128 * sum(aq) is
 *        added back in integers.  Then, per block and in block order, exactly the
 *        scalar reference's float steps: y += d * (da * dot) + c * xs; the result
 *        is bit-identical to qc_linear_scalar (tests/c checks it).
 *   F32: codes widened to float32, four FMA chains over the block's 32 floats,
 *        summed, then y += d * bs + c * xs as the reference does; the in-block sum
 *        runs in another order, so results agree to a K * eps bound.
 * Memory: one pass over a weight row per activation row (the weights of a row
 * stay in L1/L2 for the next m); memory-bound at m = 1 like the x86 GEMVs.
 */
#include "../kernels.h"

#if defined(__aarch64__)
#include <arm_neon.h>
#include <string.h>

/* The 32 codes of block b of `row` (row_bytes rb) in natural order. */
static inline void block_codes(int bits8, const uint8_t *row, int64_t rb, int64_t b,
                               uint8x16_t *c0, uint8x16_t *c1) {
    const int64_t len = bits8 ? 32 : 16, off = b * len;
    const uint8_t *p = row + off;
    uint8_t tmp[32];
    if (off + len > rb) { /* the row ends inside this block */
        memset(tmp, 0, sizeof tmp);
        memcpy(tmp, p, (size_t)(rb - off));
        p = tmp;
    }
    if (bits8) {
        *c0 = vld1q_u8(p);
        *c1 = vld1q_u8(p + 16);
    } else { /* byte i holds elements 2i (low nibble) and 2i + 1 (high nibble) */
        const uint8x16_t w = vld1q_u8(p);
        const uint8x16_t lo = vandq_u8(w, vdupq_n_u8(0x0f)), hi = vshrq_n_u8(w, 4);
        *c0 = vzip1q_u8(lo, hi);
        *c1 = vzip2q_u8(lo, hi);
    }
}

/* sum(a * b) of 32 int8 pairs, exact */
static inline int32_t dot32(int8x16_t a0, int8x16_t a1, int8x16_t b0, int8x16_t b1) {
    int32x4_t s = vpaddlq_s16(vmull_s8(vget_low_s8(a0), vget_low_s8(b0)));
    s = vpadalq_s16(s, vmull_high_s8(a0, b0));
    s = vpadalq_s16(s, vmull_s8(vget_low_s8(a1), vget_low_s8(b1)));
    s = vpadalq_s16(s, vmull_high_s8(a1, b1));
    return vaddvq_s32(s);
}

/* 16 codes as floats, four vectors (signed codes for SYM8) */
static inline void codes_f32(int sgn, uint8x16_t c, float32x4_t f[4]) {
    if (sgn) {
        const int8x16_t s = vreinterpretq_s8_u8(c);
        const int16x8_t l = vmovl_s8(vget_low_s8(s)), h = vmovl_high_s8(s);
        f[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(l)));
        f[1] = vcvtq_f32_s32(vmovl_high_s16(l));
        f[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(h)));
        f[3] = vcvtq_f32_s32(vmovl_high_s16(h));
    } else {
        const uint16x8_t l = vmovl_u8(vget_low_u8(c)), h = vmovl_high_u8(c);
        f[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(l)));
        f[1] = vcvtq_f32_u32(vmovl_high_u16(l));
        f[2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(h)));
        f[3] = vcvtq_f32_u32(vmovl_high_u16(h));
    }
}

static inline void gemv_neon(qc_kind kind, int i8, const qc_wview *v, const qc_act *a, int64_t m0,
                             int64_t m1, int64_t n0, int64_t n1, float *y, int64_t ldy) {
    const qc_qweight *w = v->w;
    const int bits8 = QC_KINDS[kind].bits == 8;
    const int64_t nb = v->nb, rb = v->row_bytes;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *row = w->data + n * rb;
        for (int64_t m = m0; m < m1; m++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                float d, c;
                qc_group_dc(v, qc_group_index(v, n, b), &d, &c);
                uint8x16_t c0, c1;
                block_codes(bits8, row, rb, b, &c0, &c1);
                float bs;
                if (i8) {
                    const int8_t *xq = a->xq + m * a->kp + b * QC_BLK;
                    const int8x16_t x0 = vld1q_s8(xq), x1 = vld1q_s8(xq + 16);
                    int32_t dot;
                    if (kind == QC_ASYM8) { /* q - 128 as int8, then + 128 * sum(aq) */
                        const uint8x16_t flip = vdupq_n_u8(0x80);
                        dot = dot32(vreinterpretq_s8_u8(veorq_u8(c0, flip)),
                                    vreinterpretq_s8_u8(veorq_u8(c1, flip)), x0, x1) +
                              128 * (int32_t)(vaddlvq_s8(x0) + vaddlvq_s8(x1));
                    } else { /* SYM8 codes are int8; 4-bit codes 0..15 */
                        dot = dot32(vreinterpretq_s8_u8(c0), vreinterpretq_s8_u8(c1), x0, x1);
                    }
                    bs = a->xd[m * a->nb + b] * (float)dot;
                } else {
                    const float *xf = a->xf + m * a->kp + b * QC_BLK;
                    float32x4_t f[8], s[4];
                    codes_f32(kind == QC_SYM8, c0, f);
                    codes_f32(kind == QC_SYM8, c1, f + 4);
                    for (int j = 0; j < 4; j++)
                        s[j] = vmulq_f32(f[j], vld1q_f32(xf + 4 * j));
                    for (int j = 0; j < 4; j++)
                        s[j] = vfmaq_f32(s[j], f[4 + j], vld1q_f32(xf + 16 + 4 * j));
                    bs = vaddvq_f32(vaddq_f32(vaddq_f32(s[0], s[1]), vaddq_f32(s[2], s[3])));
                }
                acc += d * bs + c * a->xs[m * a->nb + b];
            }
            y[(m - m0) * ldy + (n - n0)] = acc;
        }
    }
}

#define QC_DEFINE_GEMV(K)                                                                       \
    static void gemv_f32_##K##_neon(const qc_wview *v, const qc_act *a, int64_t m0, int64_t m1, \
                                    int64_t n0, int64_t n1, float *y, int64_t ldy) {            \
        gemv_neon(QC_##K, 0, v, a, m0, m1, n0, n1, y, ldy);                                     \
    }                                                                                           \
    static void gemv_i8_##K##_neon(const qc_wview *v, const qc_act *a, int64_t m0, int64_t m1,  \
                                   int64_t n0, int64_t n1, float *y, int64_t ldy) {             \
        gemv_neon(QC_##K, 1, v, a, m0, m1, n0, n1, y, ldy);                                     \
    }
QC_DEFINE_GEMV(SYM8)
QC_DEFINE_GEMV(ASYM8)
QC_DEFINE_GEMV(SYM4)
QC_DEFINE_GEMV(ASYM4)
QC_DEFINE_GEMV(MIN4)

const qc_linear_kernels qc_linear_neon = {
    .name = "neon",
    .act_quant = NULL, /* the scalar reference's (dispatch.c fills it in) */
    .act_span4 = 0,    /* natural order */
    .gemv_f32 = {gemv_f32_SYM8_neon, gemv_f32_ASYM8_neon, gemv_f32_SYM4_neon,
                 gemv_f32_ASYM4_neon, gemv_f32_MIN4_neon},
    .gemv_i8 = {gemv_i8_SYM8_neon, gemv_i8_ASYM8_neon, gemv_i8_SYM4_neon,
                gemv_i8_ASYM4_neon, gemv_i8_MIN4_neon},
};

#endif /* __aarch64__ */
