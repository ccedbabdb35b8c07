/*
 * kquant_linear_neon.c -- NEON GEMV kernels over K-quant weights (Q4_K / Q5_K /
 * Q6_K super-blocks, formats.h), AArch64; no tiled GEMM (its entries stay NULL).
 *
 * ISA: two tables from one body (this file includes itself once per flavour):
 * qc_kq_linear_neon, baseline Advanced SIMD (widening multiplies), and
 * qc_kq_linear_neon_dot, integer dots on SDOT (dispatch.c checks QC_CPU_DOTPROD).
 * Layout and order: exactly those of ref/kquant_linear_scalar.c (8 float lanes in
 * two vectors, lane j = 32-block j of a super-block for I8, element e mod 8 for
 * F32, fused multiply-adds, qc_kq_tree8 at the end; integer dots are exact), so
 * both tables give the scalar reference's bits.  A super-block is decoded once
 * (codes 0..63 in registers, or float32 weights in L1) for up to KQ_MB rows of x.
 */
#include "../kernels.h"

#if defined(__aarch64__)
#ifndef KQ_SFX
#include <arm_neon.h>
#include <string.h>

#include "../kquant.h"

#define KQ_MB 4

static inline float kq_half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return qc_fp16_to_fp32(h);
}

/* A decoded super-block: c[2j], c[2j + 1] the codes (0..63; Q6_K: q, not q - 32)
 * of 32-block j in value order; Q4_K/Q5_K: sc, mn the sub-block scales and mins;
 * Q6_K: sc the sixteen 16-value scales; d, dmin the float16 scales. */
typedef struct {
    uint8x16_t c[16];
    int32_t sc[16], mn[8];
    float d, dmin;
} kq_sb;

static inline void kq_decode(int t, const uint8_t *blk, kq_sb *s) {
    const uint8x16_t lo4 = vdupq_n_u8(15);
    if (t == QC_KTYPE_Q6_K) {
        const qc_block_q6_k *b = (const qc_block_q6_k *)blk;
        const uint8x16_t hm = vdupq_n_u8(0x30);
        for (int h = 0; h < 2; h++)
            for (int u = 0; u < 2; u++) { /* the 16-byte halves */
                const uint8x16_t l0 = vld1q_u8(b->ql + 64 * h + 16 * u);
                const uint8x16_t l1 = vld1q_u8(b->ql + 64 * h + 32 + 16 * u);
                const uint8x16_t qh = vld1q_u8(b->qh + 32 * h + 16 * u);
                uint8x16_t *c = s->c + 8 * h + u; /* block 4h + r at c[8h + 2r + u] */
                c[0] = vorrq_u8(vandq_u8(l0, lo4), vandq_u8(vshlq_n_u8(qh, 4), hm));
                c[2] = vorrq_u8(vandq_u8(l1, lo4), vandq_u8(vshlq_n_u8(qh, 2), hm));
                c[4] = vorrq_u8(vshrq_n_u8(l0, 4), vandq_u8(qh, hm));
                c[6] = vorrq_u8(vshrq_n_u8(l1, 4), vandq_u8(vshrq_n_u8(qh, 2), hm));
            }
        for (int i = 0; i < 16; i++)
            s->sc[i] = b->scales[i];
        s->d = kq_half(blk + offsetof(qc_block_q6_k, d));
        s->dmin = 0.0f;
        return;
    }
    const int q5 = t == QC_KTYPE_Q5_K;
    const uint8_t *qs = blk + (q5 ? 48 : 16);
    for (int k = 0; k < 4; k++)
        for (int u = 0; u < 2; u++) {
            const uint8x16_t v = vld1q_u8(qs + 32 * k + 16 * u);
            s->c[4 * k + u] = vandq_u8(v, lo4);
            s->c[4 * k + 2 + u] = vshrq_n_u8(v, 4);
        }
    if (q5) {
        const uint8x16_t sixteen = vdupq_n_u8(16);
        for (int u = 0; u < 2; u++) {
            const uint8x16_t qh = vld1q_u8(blk + 16 + 16 * u);
            for (int j = 0; j < 8; j++) {
                const uint8x16_t hb = vandq_u8(vtstq_u8(qh, vdupq_n_u8((uint8_t)(1u << j))), sixteen);
                s->c[2 * j + u] = vorrq_u8(s->c[2 * j + u], hb);
            }
        }
    }
    for (int j = 0; j < 8; j++) {
        int sc, m;
        qc_k4_scale_min(blk + 4, j, &sc, &m);
        s->sc[j] = sc;
        s->mn[j] = m;
    }
    s->d = kq_half(blk);
    s->dmin = kq_half(blk + 2);
}

/* 16 codes (0..255, here 0..63) as four float32 vectors */
static inline void kq_codes_f32(uint8x16_t c, float32x4_t f[4]) {
    const uint16x8_t l = vmovl_u8(vget_low_u8(c)), h = vmovl_high_u8(c);
    f[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(l)));
    f[1] = vcvtq_f32_u32(vmovl_high_u16(l));
    f[2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(h)));
    f[3] = vcvtq_f32_u32(vmovl_high_u16(h));
}

/* The super-block as float32 w[256], bit for bit as qc_kq_dequantize_row_*:
 * Q4_K/Q5_K (d * sc) * q - dmin * m; Q6_K (d * sc) * (q - 32). */
static inline void kq_dequant(int t, const kq_sb *s, float *w) {
    for (int j = 0; j < 8; j++)
        for (int u = 0; u < 2; u++) {
            float32x4_t f[4];
            float *o = w + 32 * j + 16 * u;
            if (t == QC_KTYPE_Q6_K) {
                const int8x16_t q = vsubq_s8(vreinterpretq_s8_u8(s->c[2 * j + u]), vdupq_n_s8(32));
                const int16x8_t l = vmovl_s8(vget_low_s8(q)), h = vmovl_high_s8(q);
                f[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(l)));
                f[1] = vcvtq_f32_s32(vmovl_high_s16(l));
                f[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(h)));
                f[3] = vcvtq_f32_s32(vmovl_high_s16(h));
                const float ds = s->d * (float)s->sc[2 * j + u];
                for (int e = 0; e < 4; e++)
                    vst1q_f32(o + 4 * e, vmulq_n_f32(f[e], ds));
            } else {
                kq_codes_f32(s->c[2 * j + u], f);
                const float ds = s->d * (float)s->sc[j];
                const float32x4_t mv = vdupq_n_f32(s->dmin * (float)s->mn[j]);
                for (int e = 0; e < 4; e++)
                    vst1q_f32(o + 4 * e, vsubq_f32(vmulq_n_f32(f[e], ds), mv));
            }
        }
}

/* F32: per row, lanes e mod 8 as two vectors, acc = fma(x_e, w_e, acc) in order */
static void kq_f32(int t, const qc_wview *v, const qc_act *a, int64_t m0, int64_t m1, int64_t n0,
                   int64_t n1, float *y, int64_t ldy) {
    const int64_t nsb = v->w->k / QC_QK_K, bb = v->row_bytes / nsb;
    _Alignas(16) float w[QC_QK_K];
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *row = v->w->data + n * v->row_bytes;
        for (int64_t mb = m0; mb < m1; mb += KQ_MB) {
            const int rows = m1 - mb < KQ_MB ? (int)(m1 - mb) : KQ_MB;
            float32x4_t lo[KQ_MB], hi[KQ_MB];
            for (int r = 0; r < KQ_MB; r++)
                lo[r] = hi[r] = vdupq_n_f32(0.0f);
            for (int64_t i = 0; i < nsb; i++) {
                kq_sb s;
                kq_decode(t, row + i * bb, &s);
                kq_dequant(t, &s, w);
                for (int r = 0; r < rows; r++) {
                    const float *x = a->xf + (mb + r) * a->kp + i * QC_QK_K;
                    float32x4_t l = lo[r], h = hi[r];
                    for (int e = 0; e < QC_QK_K; e += 8) {
                        l = vfmaq_f32(l, vld1q_f32(x + e), vld1q_f32(w + e));
                        h = vfmaq_f32(h, vld1q_f32(x + e + 4), vld1q_f32(w + e + 4));
                    }
                    lo[r] = l;
                    hi[r] = h;
                }
            }
            for (int r = 0; r < rows; r++) {
                float acc[8];
                vst1q_f32(acc, lo[r]);
                vst1q_f32(acc + 4, hi[r]);
                y[(mb + r - m0) * ldy + (n - n0)] = qc_kq_tree8(acc);
            }
        }
    }
}

/* qc_kq_linear_neon: every AArch64 CPU; 16 int8 pairs into four int32 lanes */
static inline int32x4_t kq_dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    return vpadalq_s16(acc, vmull_high_s8(a, b));
}
#define KQ_SFX neon
#define KQ_ATTR
#define KQ_DOT16 kq_dot16
#include "kquant_linear_neon.c"
#undef KQ_SFX
#undef KQ_ATTR
#undef KQ_DOT16

/* qc_kq_linear_neon_dot: with the dot-product extension (see linear_neon.c for
 * the choice of target attribute) */
#if defined(__ARM_FEATURE_DOTPROD)
#define KQ_DOTPROD
#elif defined(__clang__)
#define KQ_DOTPROD __attribute__((target("dotprod")))
#else
#define KQ_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#endif
KQ_DOTPROD static inline int32x4_t kq_dot16_sdot(int32x4_t acc, int8x16_t a, int8x16_t b) {
    return vdotq_s32(acc, a, b);
}
#define KQ_SFX neon_dot
#define KQ_ATTR KQ_DOTPROD
#define KQ_DOT16 kq_dot16_sdot
#include "kquant_linear_neon.c"
#undef KQ_SFX
#undef KQ_ATTR
#undef KQ_DOT16

#else /* KQ_SFX: the I8 kernels and the table of one flavour */

#define KQ_CAT2(a, b) a##_##b
#define KQ_CAT(a, b) KQ_CAT2(a, b)
#define KQ_NAME(f) KQ_CAT(f, KQ_SFX)

/* One super-block of one row: lanes j (blocks 8i + j) of lo (j < 4) and hi. */
KQ_ATTR static inline void KQ_NAME(kq_step_i8)(int t, const kq_sb *s, const int8_t *aq,
                                               const float *xd, const float *xs, float32x4_t *lo,
                                               float32x4_t *hi) {
    int32x4_t p[8];
    const int32x4_t z = vdupq_n_s32(0);
    if (t == QC_KTYPE_Q6_K) {
        const int8x16_t k32 = vdupq_n_s8(32);
        for (int j = 0; j < 8; j++) {
            const int8x16_t c0 = vsubq_s8(vreinterpretq_s8_u8(s->c[2 * j]), k32);
            const int8x16_t c1 = vsubq_s8(vreinterpretq_s8_u8(s->c[2 * j + 1]), k32);
            const int32x4_t dl = KQ_DOT16(z, c0, vld1q_s8(aq + 32 * j));
            const int32x4_t dh = KQ_DOT16(z, c1, vld1q_s8(aq + 32 * j + 16));
            p[j] = vmlaq_n_s32(vmulq_n_s32(dl, s->sc[2 * j]), dh, s->sc[2 * j + 1]);
        }
    } else {
        for (int j = 0; j < 8; j++)
            p[j] = KQ_DOT16(KQ_DOT16(z, vreinterpretq_s8_u8(s->c[2 * j]), vld1q_s8(aq + 32 * j)),
                            vreinterpretq_s8_u8(s->c[2 * j + 1]), vld1q_s8(aq + 32 * j + 16));
    }
    /* lane j = the sum of the lanes of p[j] */
    int32x4_t il = vpaddq_s32(vpaddq_s32(p[0], p[1]), vpaddq_s32(p[2], p[3]));
    int32x4_t ih = vpaddq_s32(vpaddq_s32(p[4], p[5]), vpaddq_s32(p[6], p[7]));
    if (t != QC_KTYPE_Q6_K) {
        il = vmulq_s32(il, vld1q_s32(s->sc));
        ih = vmulq_s32(ih, vld1q_s32(s->sc + 4));
    }
    const float32x4_t dv = vdupq_n_f32(s->d);
    float32x4_t l = vfmaq_f32(*lo, vmulq_f32(dv, vld1q_f32(xd)), vcvtq_f32_s32(il));
    float32x4_t h = vfmaq_f32(*hi, vmulq_f32(dv, vld1q_f32(xd + 4)), vcvtq_f32_s32(ih));
    if (t != QC_KTYPE_Q6_K) { /* acc - (dmin * m) * xs, one rounding */
        const float32x4_t dm = vdupq_n_f32(s->dmin);
        l = vfmsq_f32(l, vmulq_f32(dm, vcvtq_f32_s32(vld1q_s32(s->mn))), vld1q_f32(xs));
        h = vfmsq_f32(h, vmulq_f32(dm, vcvtq_f32_s32(vld1q_s32(s->mn + 4))), vld1q_f32(xs + 4));
    }
    *lo = l;
    *hi = h;
}

KQ_ATTR static void KQ_NAME(kq_i8)(int t, const qc_wview *v, const qc_act *a, int64_t m0,
                                   int64_t m1, int64_t n0, int64_t n1, float *y, int64_t ldy) {
    const int64_t nsb = v->w->k / QC_QK_K, bb = v->row_bytes / nsb;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *row = v->w->data + n * v->row_bytes;
        for (int64_t mb = m0; mb < m1; mb += KQ_MB) {
            const int rows = m1 - mb < KQ_MB ? (int)(m1 - mb) : KQ_MB;
            float32x4_t lo[KQ_MB], hi[KQ_MB];
            for (int r = 0; r < KQ_MB; r++)
                lo[r] = hi[r] = vdupq_n_f32(0.0f);
            for (int64_t i = 0; i < nsb; i++) {
                kq_sb s;
                kq_decode(t, row + i * bb, &s);
                for (int r = 0; r < rows; r++) {
                    const int64_t m = mb + r;
                    KQ_NAME(kq_step_i8)(t, &s, a->xq + m * a->kp + i * QC_QK_K,
                                        a->xd + m * a->nb + 8 * i, a->xs + m * a->nb + 8 * i,
                                        &lo[r], &hi[r]);
                }
            }
            for (int r = 0; r < rows; r++) {
                float acc[8];
                vst1q_f32(acc, lo[r]);
                vst1q_f32(acc + 4, hi[r]);
                y[(mb + r - m0) * ldy + (n - n0)] = qc_kq_tree8(acc);
            }
        }
    }
}

#define KQ_DEFINE(T, NAME)                                                                      \
    KQ_ATTR static void KQ_CAT(gemv_i8_##NAME, KQ_SFX)(const qc_wview *v, const qc_act *a,      \
                                                       int64_t m0, int64_t m1, int64_t n0,      \
                                                       int64_t n1, float *y, int64_t ldy) {     \
        KQ_NAME(kq_i8)(T, v, a, m0, m1, n0, n1, y, ldy);                                        \
    }                                                                                           \
    static void KQ_CAT(gemv_f32_##NAME, KQ_SFX)(const qc_wview *v, const qc_act *a, int64_t m0, \
                                                int64_t m1, int64_t n0, int64_t n1, float *y,   \
                                                int64_t ldy) {                                  \
        kq_f32(T, v, a, m0, m1, n0, n1, y, ldy);                                                \
    }
KQ_DEFINE(QC_KTYPE_Q4_K, q4_k)
KQ_DEFINE(QC_KTYPE_Q5_K, q5_k)
KQ_DEFINE(QC_KTYPE_Q6_K, q6_k)
#undef KQ_DEFINE

const qc_kq_linear_kernels KQ_NAME(qc_kq_linear) = {
    .gemv_f32 = {KQ_CAT(gemv_f32_q4_k, KQ_SFX), KQ_CAT(gemv_f32_q5_k, KQ_SFX),
                 KQ_CAT(gemv_f32_q6_k, KQ_SFX)},
    .gemv_i8 = {KQ_CAT(gemv_i8_q4_k, KQ_SFX), KQ_CAT(gemv_i8_q5_k, KQ_SFX),
                KQ_CAT(gemv_i8_q6_k, KQ_SFX)},
};

#undef KQ_NAME
#undef KQ_CAT
#undef KQ_CAT2
#endif /* KQ_SFX */
#endif /* __aarch64__ */
