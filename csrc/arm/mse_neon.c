/*
 * mse_neon.c -- AArch64 NEON version of method="mse" (quantize_mse.h): the
 * candidate evaluators of ref/mse_scalar.c, 8 elements per step in two q
 * registers (lanes 0-3 and 4-7 of the reference's 8 lanes).
 *
 * ISA: baseline armv8-a AdvSIMD.  Accumulation: element i in lane i % 8 (the
 * tail through a zero-padded copy whose unused lanes add +0.0, leaving every
 * lane as the scalar reference has it), reduced as ((l0+l4)+(l2+l6)) +
 * ((l1+l5)+(l3+l7)), the order of qc_lane_sum8.  Products pass through an empty
 * asm barrier so no compiler fuses them with the following add, and rounding is
 * the reference's magic-number add/subtract, so results equal the scalar
 * reference bit for bit (tests/c/test_neon_vs_scalar.c under qemu-aarch64).
 */
#include "../quantize_mse.h"

#if defined(QC_HAVE_NEON)
#include <arm_neon.h>

#if defined(__GNUC__) || defined(__clang__)
#define QC_NOFUSE(v) __asm__("" : "+w"(v))
#else
#define QC_NOFUSE(v) ((void)0)
#endif

static inline float32x4_t mul_nofuse(float32x4_t a, float32x4_t b) {
    float32x4_t p = vmulq_f32(a, b);
    QC_NOFUSE(p);
    return p;
}

static inline float32x4_t round_magic(float32x4_t v) {
    const float32x4_t magic = vdupq_n_f32(QC_ROUND_MAGIC);
    float32x4_t t = vaddq_f32(v, magic);
    QC_NOFUSE(t);
    return vsubq_f32(t, magic);
}

static inline float sum8(float32x4_t lo, float32x4_t hi) {
    float32x4_t s = vaddq_f32(lo, hi);                          /* l_j + l_{j+4}   */
    float32x2_t t = vadd_f32(vget_low_f32(s), vget_high_f32(s)); /* s0+s2, s1+s3   */
    return vget_lane_f32(t, 0) + vget_lane_f32(t, 1);
}

/* lanes [base, base + 4) below r: all ones */
static inline uint32x4_t lanes_below(int64_t r, uint32_t base) {
    const uint32_t iota[4] = {0, 1, 2, 3};
    return vcltq_u32(vaddq_u32(vld1q_u32(iota), vdupq_n_u32(base)), vdupq_n_u32((uint32_t)r));
}

static inline float32x4_t and_mask(float32x4_t v, uint32x4_t m) {
    return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(v), m));
}

static inline void eval_sym_neon(const float *x, int64_t n, float id, float lo, float hi,
                                 qc_mse_sums *s) {
    const float32x4_t vid = vdupq_n_f32(id), vlo = vdupq_n_f32(lo), vhi = vdupq_n_f32(hi);
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, b0 = a0, b1 = a0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float32x4_t v0 = vld1q_f32(x + i), v1 = vld1q_f32(x + i + 4);
        float32x4_t l0 = round_magic(vminq_f32(vmaxq_f32(mul_nofuse(v0, vid), vlo), vhi));
        float32x4_t l1 = round_magic(vminq_f32(vmaxq_f32(mul_nofuse(v1, vid), vlo), vhi));
        a0 = vaddq_f32(a0, mul_nofuse(v0, l0));
        a1 = vaddq_f32(a1, mul_nofuse(v1, l1));
        b0 = vaddq_f32(b0, mul_nofuse(l0, l0));
        b1 = vaddq_f32(b1, mul_nofuse(l1, l1));
    }
    if (i < n) {
        float t[8] = {0};
        memcpy(t, x + i, (size_t)(n - i) * sizeof(float));
        float32x4_t v0 = vld1q_f32(t), v1 = vld1q_f32(t + 4);
        float32x4_t l0 = round_magic(vminq_f32(vmaxq_f32(mul_nofuse(v0, vid), vlo), vhi));
        float32x4_t l1 = round_magic(vminq_f32(vmaxq_f32(mul_nofuse(v1, vid), vlo), vhi));
        l0 = and_mask(l0, lanes_below(n - i, 0));
        l1 = and_mask(l1, lanes_below(n - i, 4));
        a0 = vaddq_f32(a0, mul_nofuse(v0, l0));
        a1 = vaddq_f32(a1, mul_nofuse(v1, l1));
        b0 = vaddq_f32(b0, mul_nofuse(l0, l0));
        b1 = vaddq_f32(b1, mul_nofuse(l1, l1));
    }
    s->sxl = sum8(a0, a1);
    s->sll = sum8(b0, b1);
}

static inline void eval_min_neon(const float *x, int64_t n, float id, float m, float hi,
                                 qc_mse_sums *s) {
    const float32x4_t vid = vdupq_n_f32(id), vm = vdupq_n_f32(m), vhi = vdupq_n_f32(hi);
    const float32x4_t zero = vdupq_n_f32(0.0f);
    float32x4_t a0 = zero, a1 = zero, b0 = zero, b1 = zero, c0 = zero, c1 = zero;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float32x4_t v0 = vld1q_f32(x + i), v1 = vld1q_f32(x + i + 4);
        float32x4_t q0 =
            round_magic(vminq_f32(vmaxq_f32(mul_nofuse(vsubq_f32(v0, vm), vid), zero), vhi));
        float32x4_t q1 =
            round_magic(vminq_f32(vmaxq_f32(mul_nofuse(vsubq_f32(v1, vm), vid), zero), vhi));
        a0 = vaddq_f32(a0, q0);
        a1 = vaddq_f32(a1, q1);
        b0 = vaddq_f32(b0, mul_nofuse(q0, q0));
        b1 = vaddq_f32(b1, mul_nofuse(q1, q1));
        c0 = vaddq_f32(c0, mul_nofuse(v0, q0));
        c1 = vaddq_f32(c1, mul_nofuse(v1, q1));
    }
    if (i < n) {
        float t[8] = {0};
        memcpy(t, x + i, (size_t)(n - i) * sizeof(float));
        float32x4_t v0 = vld1q_f32(t), v1 = vld1q_f32(t + 4);
        float32x4_t q0 =
            round_magic(vminq_f32(vmaxq_f32(mul_nofuse(vsubq_f32(v0, vm), vid), zero), vhi));
        float32x4_t q1 =
            round_magic(vminq_f32(vmaxq_f32(mul_nofuse(vsubq_f32(v1, vm), vid), zero), vhi));
        q0 = and_mask(q0, lanes_below(n - i, 0));
        q1 = and_mask(q1, lanes_below(n - i, 4));
        a0 = vaddq_f32(a0, q0);
        a1 = vaddq_f32(a1, q1);
        b0 = vaddq_f32(b0, mul_nofuse(q0, q0));
        b1 = vaddq_f32(b1, mul_nofuse(q1, q1));
        c0 = vaddq_f32(c0, mul_nofuse(v0, q0));
        c1 = vaddq_f32(c1, mul_nofuse(v1, q1));
    }
    s->sq = sum8(a0, a1);
    s->sqq = sum8(b0, b1);
    s->sxq = sum8(c0, c1);
}

/* Weighted (eval_sym_w_scalar): wl = w l; the tail's padding has w = 0 */
static inline void eval_sym_w_neon(const float *x, const float *w, int64_t n, float id,
                                   float lo, float hi, qc_mse_sums *s) {
    const float32x4_t vid = vdupq_n_f32(id), vlo = vdupq_n_f32(lo), vhi = vdupq_n_f32(hi);
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, b0 = a0, b1 = a0;
    float tx[8], tw[8];
    for (int64_t i = 0; i < n; i += 8) {
        const float *px = x + i, *pw = w + i;
        if (i + 8 > n) {
            memset(tx, 0, sizeof tx);
            memset(tw, 0, sizeof tw);
            memcpy(tx, px, (size_t)(n - i) * sizeof(float));
            memcpy(tw, pw, (size_t)(n - i) * sizeof(float));
            px = tx;
            pw = tw;
        }
        float32x4_t v0 = vld1q_f32(px), v1 = vld1q_f32(px + 4);
        float32x4_t l0 = round_magic(vminq_f32(vmaxq_f32(mul_nofuse(v0, vid), vlo), vhi));
        float32x4_t l1 = round_magic(vminq_f32(vmaxq_f32(mul_nofuse(v1, vid), vlo), vhi));
        float32x4_t wl0 = mul_nofuse(vld1q_f32(pw), l0), wl1 = mul_nofuse(vld1q_f32(pw + 4), l1);
        a0 = vaddq_f32(a0, mul_nofuse(v0, wl0));
        a1 = vaddq_f32(a1, mul_nofuse(v1, wl1));
        b0 = vaddq_f32(b0, mul_nofuse(wl0, l0));
        b1 = vaddq_f32(b1, mul_nofuse(wl1, l1));
    }
    s->sxl = sum8(a0, a1);
    s->sll = sum8(b0, b1);
}

/* Weighted (eval_min_w_scalar): wq = w q */
static inline void eval_min_w_neon(const float *x, const float *w, int64_t n, float id,
                                   float m, float hi, qc_mse_sums *s) {
    const float32x4_t vid = vdupq_n_f32(id), vm = vdupq_n_f32(m), vhi = vdupq_n_f32(hi);
    const float32x4_t zero = vdupq_n_f32(0.0f);
    float32x4_t a0 = zero, a1 = zero, b0 = zero, b1 = zero, c0 = zero, c1 = zero;
    float tx[8], tw[8];
    for (int64_t i = 0; i < n; i += 8) {
        const float *px = x + i, *pw = w + i;
        if (i + 8 > n) {
            memset(tx, 0, sizeof tx);
            memset(tw, 0, sizeof tw);
            memcpy(tx, px, (size_t)(n - i) * sizeof(float));
            memcpy(tw, pw, (size_t)(n - i) * sizeof(float));
            px = tx;
            pw = tw;
        }
        float32x4_t v0 = vld1q_f32(px), v1 = vld1q_f32(px + 4);
        float32x4_t q0 =
            round_magic(vminq_f32(vmaxq_f32(mul_nofuse(vsubq_f32(v0, vm), vid), zero), vhi));
        float32x4_t q1 =
            round_magic(vminq_f32(vmaxq_f32(mul_nofuse(vsubq_f32(v1, vm), vid), zero), vhi));
        float32x4_t wq0 = mul_nofuse(vld1q_f32(pw), q0), wq1 = mul_nofuse(vld1q_f32(pw + 4), q1);
        a0 = vaddq_f32(a0, wq0);
        a1 = vaddq_f32(a1, wq1);
        b0 = vaddq_f32(b0, mul_nofuse(wq0, q0));
        b1 = vaddq_f32(b1, mul_nofuse(wq1, q1));
        c0 = vaddq_f32(c0, mul_nofuse(v0, wq0));
        c1 = vaddq_f32(c1, mul_nofuse(v1, wq1));
    }
    s->sq = sum8(a0, a1);
    s->sqq = sum8(b0, b1);
    s->sxq = sum8(c0, c1);
}

#define QC_MSE_SUFFIX neon
#define QC_MSE_ATTR
#define QC_MSE_TABLE qc_kernels_neon
#define QC_MSE_CTX qc_mse_group
#define QC_MSE_EVAL_SYM(c, id, lo, hi, s)                                                       \
    ((c)->w ? eval_sym_w_neon((c)->x, (c)->w, (c)->n, id, lo, hi, s)                            \
            : eval_sym_neon((c)->x, (c)->n, id, lo, hi, s))
#define QC_MSE_EVAL_MIN(c, id, m, hi, s)                                                        \
    ((c)->w ? eval_min_w_neon((c)->x, (c)->w, (c)->n, id, m, hi, s)                             \
            : eval_min_neon((c)->x, (c)->n, id, m, hi, s))
#define QC_MSE_MOMENTS(c, sw, sx, sxx) qc_mse_moments((c)->x, (c)->w, (c)->n, sw, sx, sxx)
#include "../quantize_mse.inc"

#endif /* QC_HAVE_NEON */
