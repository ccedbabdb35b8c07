/*
 * linear_neon.c -- NEON GEMV kernels of the linear layer (AArch64), for every m:
 * NEON has no tiled GEMM (its gemm entries stay NULL).
 *
 * ISA: two tables from one loop (linear_neon_gemv.inc): qc_linear_neon, baseline
 * AArch64 Advanced SIMD, and qc_linear_neon_dot, with the integer dots on SDOT
 * for CPUs with the dot-product extension (dispatch.c checks QC_CPU_DOTPROD);
 * both give the same bits.  Layout: weights as quantcore.h, read in place;
 * activations in natural order (act_span4 = 0), quantized by the scalar
 * reference's act_quant; a block the row ends inside is read through a zeroed
 * copy.  Per 32-block the codes are decoded into 32 bytes in natural order, then
 *   I8:  the exact integer dot sum(q * aq) (widening multiplies into int16, then
 *        pairwise adds into int32; or SDOT); ASYM8 uses q - 128 and adds
 *        128 * sum(aq) back in integers; then, per block and in block order, the
 *        scalar reference's float steps y += d * (da * dot) + c * xs: bit for
 *        bit qc_linear_scalar (tests/c checks it).
 *   F32: codes widened to float32, four FMA chains over the block, summed, then
 *        y += d * bs + c * xs: within K * eps of the reference.
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

/* SDOT (ARMv8.2 dot product, QC_CPU_DOTPROD): four int8 products per lane */
#if defined(__ARM_FEATURE_DOTPROD)
#define QC_DOTPROD /* the build targets it already (-march/-mcpu): keep that target */
#elif defined(__clang__)
#define QC_DOTPROD __attribute__((target("dotprod")))
#else
/* GCC 12 rejects "+dotprod" here; "arch=" replaces the build's -march for these
 * functions, hence the case above (else newer -mcpu builds stop inlining helpers) */
#define QC_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#endif
QC_DOTPROD static inline int32_t dot32_sdot(int8x16_t a0, int8x16_t a1, int8x16_t b0,
                                            int8x16_t b1) {
    return vaddvq_s32(vdotq_s32(vdotq_s32(vdupq_n_s32(0), a0, b0), a1, b1));
}

/* qc_linear_neon: every AArch64 CPU */
#define QC_SFX neon
#define QC_ATTR
#define QC_DOT32 dot32
#define QC_TABLE_NAME "neon"
#include "linear_neon_gemv.inc"
#undef QC_SFX
#undef QC_ATTR
#undef QC_DOT32
#undef QC_TABLE_NAME

/* qc_linear_neon_dot: with the dot-product extension (dispatch.c picks it) */
#define QC_SFX neon_dot
#define QC_ATTR QC_DOTPROD
#define QC_DOT32 dot32_sdot
#define QC_TABLE_NAME "neon (sdot)"
#include "linear_neon_gemv.inc"
#undef QC_SFX
#undef QC_ATTR
#undef QC_DOT32
#undef QC_TABLE_NAME

#endif /* __aarch64__ */
