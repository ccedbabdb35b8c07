/*
 * quant_neon.c -- AArch64 Advanced SIMD (NEON) versions of the quantize /
 * dequantize / pack kernels.
 *
 * ISA: baseline armv8-a AdvSIMD (every AArch64 CPU: no target attribute, no
 * runtime check beyond QC_CPU_NEON); float16 loads use the baseline FCVTL.
 * Layout: as quantcore.h; 32 floats per step, one 32-byte store of 8-bit codes or
 * 16 bytes of nibbles (element 2i low, 2i+1 high); tails (n % 32) go to the
 * scalar reference.
 * Exactness: the scalar reference's float32 operations in its order: a multiply,
 * then a separate add (each product passes an empty asm barrier, so no compiler
 * fuses them into FMLA), the same clamps, round-half-away by FCVTAS, truncation by
 * FCVTZS (both 0 for NaN, as the scalar conversion on AArch64).  FPCR.FZ is off
 * on Linux, macOS and Windows, so subnormals are computed, not flushed.  stats
 * returns the reference's min, max and amax_signed, signed zeros included.
 * Results match the reference bit for bit (tests/c, under qemu-aarch64).
 */
#include "../quantize_row.h"

#if defined(QC_HAVE_NEON)
#include <arm_neon.h>

/* Keep v in a register as an opaque value: a product passed through this cannot
 * be contracted with the following add into a fused multiply-add. */
#if defined(__GNUC__) || defined(__clang__)
#define QC_NOFUSE(v) __asm__("" : "+w"(v))
#else
#define QC_NOFUSE(v) ((void)0) /* relies on the build's no-contraction flag */
#endif

static void load_f16_neon(const uint16_t *src, int64_t n, float *dst) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(src + i));
        vst1q_f32(dst + i, vcvt_f32_f16(vget_low_f16(h)));
        vst1q_f32(dst + i + 4, vcvt_high_f32_f16(h));
    }
    for (; i < n; i++)
        dst[i] = qc_fp16_to_fp32(src[i]);
}

static void load_f64_neon(const double *src, int64_t n, float *dst) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x2_t lo = vcvt_f32_f64(vld1q_f64(src + i));
        vst1q_f32(dst + i, vcvt_high_f32_f64(lo, vld1q_f64(src + i + 2)));
    }
    for (; i < n; i++)
        dst[i] = (float)src[i];
}

/* The first element equal (as a float) to v: what a scalar loop that updates its
 * min (max) only on strictly smaller (larger) values keeps.  Only differs from v
 * itself in the sign of a zero. */
static inline float first_equal(const float *x, float v) {
    int64_t j = 0;
    while (x[j] != v)
        j++;
    return x[j];
}

static int stats_neon(const float *x, int64_t n, qc_stats *s) {
    if (n < 16)
        return qc_kernels_scalar.stats(x, n, s);
    const float32x4_t inf = vdupq_n_f32(INFINITY);
    float32x4_t v0 = vld1q_f32(x), v1 = vld1q_f32(x + 4);
    float32x4_t mn0 = v0, mn1 = v1, mx0 = v0, mx1 = v1;
    uint32x4_t ok = vdupq_n_u32(0xffffffffu); /* all lanes: |v| < inf so far */
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        float32x4_t a = vld1q_f32(x + i), b = vld1q_f32(x + i + 4);
        float32x4_t c = vld1q_f32(x + i + 8), d = vld1q_f32(x + i + 12);
        mn0 = vminq_f32(mn0, vminq_f32(a, c));
        mn1 = vminq_f32(mn1, vminq_f32(b, d));
        mx0 = vmaxq_f32(mx0, vmaxq_f32(a, c));
        mx1 = vmaxq_f32(mx1, vmaxq_f32(b, d));
        /* |v| < inf is false for Inf and NaN */
        uint32x4_t oab = vandq_u32(vcaltq_f32(a, inf), vcaltq_f32(b, inf));
        uint32x4_t ocd = vandq_u32(vcaltq_f32(c, inf), vcaltq_f32(d, inf));
        ok = vandq_u32(ok, vandq_u32(oab, ocd));
    }
    for (; i + 4 <= n; i += 4) {
        float32x4_t a = vld1q_f32(x + i);
        mn0 = vminq_f32(mn0, a);
        mx0 = vmaxq_f32(mx0, a);
        ok = vandq_u32(ok, vcaltq_f32(a, inf));
    }
    if (i < n) { /* the last 4 elements, overlapping what was done */
        float32x4_t a = vld1q_f32(x + n - 4);
        mn0 = vminq_f32(mn0, a);
        mx0 = vmaxq_f32(mx0, a);
        ok = vandq_u32(ok, vcaltq_f32(a, inf));
    }
    if (vminvq_u32(ok) == 0)
        return 1;
    float mn = vminvq_f32(vminq_f32(mn0, mn1));
    float mx = vmaxvq_f32(vmaxq_f32(mx0, mx1));
    /* FMIN/FMAX order -0 below +0; the scalar loop keeps the first zero it meets. */
    if (mn == 0.0f)
        mn = first_equal(x, mn);
    if (mx == 0.0f)
        mx = first_equal(x, mx);
    s->min = mn;
    s->max = mx;
    if (mx > -mn) {
        s->amax_signed = mx;
    } else if (-mn > mx) {
        s->amax_signed = mn;
    } else { /* +a and -a both present (or all zero): the first one wins */
        float a = fabsf(mx);
        int64_t j = 0;
        while (fabsf(x[j]) != a)
            j++;
        s->amax_signed = x[j];
    }
    return 0;
}

/* Quantization parameters, broadcast. */
typedef struct {
    float32x4_t id, m, lo, hi, bias;
    int32x4_t z, zlo, zhi;
} vparams;

static inline vparams make_vparams(qc_kind kind, const qc_qparams *p) {
    vparams P;
    float r = kind == QC_SYM8 ? 127.0f : (kind == QC_ASYM8 ? 255.0f : 15.0f);
    P.id = vdupq_n_f32(p->id);
    P.m = vdupq_n_f32(p->m);
    P.lo = vdupq_n_f32(kind == QC_SYM4 || kind == QC_MIN4 ? 0.0f : -r);
    P.hi = vdupq_n_f32(r);
    P.bias = vdupq_n_f32(kind == QC_SYM4 ? 8.5f : 0.5f);
    P.z = vdupq_n_s32(kind == QC_SYM8 ? 0 : p->z);
    P.zlo = vdupq_n_s32(kind == QC_SYM8 ? -127 : 0);
    P.zhi = vdupq_n_s32(QC_KINDS[kind].qmax);
    return P;
}

/* The codes of 4 elements, as quantize_one in the reference.  The clamps are
 * FMAX/FMIN, which return NaN for NaN as the reference's comparisons do. */
static inline int32x4_t codes4(qc_kind kind, float32x4_t v, const vparams *P) {
    if (kind == QC_SYM8 || kind == QC_ASYM8 || kind == QC_ASYM4) {
        float32x4_t t = vmulq_f32(v, P->id);
        t = vminq_f32(vmaxq_f32(t, P->lo), P->hi);
        int32x4_t q = vcvtaq_s32_f32(t); /* round half away from zero, then to int */
        if (kind == QC_SYM8)
            return q; /* already in [-127, 127] */
        q = vaddq_s32(q, P->z);
        return vminq_s32(vmaxq_s32(q, P->zlo), P->zhi);
    }
    /* SYM4: trunc(clamp(x * id + 8.5)); MIN4: trunc(clamp((x - m) * id + 0.5)) */
    if (kind == QC_MIN4)
        v = vsubq_f32(v, P->m);
    float32x4_t t = vmulq_f32(v, P->id);
    QC_NOFUSE(t);
    t = vaddq_f32(t, P->bias);
    t = vminq_f32(vmaxq_f32(t, P->lo), P->hi);
    return vcvtq_s32_f32(t); /* truncation */
}

/* 16 codes (each in the byte range of the kind) -> 16 bytes in element order. */
static inline uint8x16_t narrow16(int32x4_t a, int32x4_t b, int32x4_t c, int32x4_t d) {
    int16x8_t ab = vuzp1q_s16(vreinterpretq_s16_s32(a), vreinterpretq_s16_s32(b));
    int16x8_t cd = vuzp1q_s16(vreinterpretq_s16_s32(c), vreinterpretq_s16_s32(d));
    return vuzp1q_u8(vreinterpretq_u8_s16(ab), vreinterpretq_u8_s16(cd));
}

/* 32 codes in two registers, each < 16 -> 16 bytes, element 2i low, 2i+1 high. */
static inline uint8x16_t pack_nibbles(uint8x16_t a, uint8x16_t b) {
    uint8x16_t even = vuzp1q_u8(a, b), odd = vuzp2q_u8(a, b);
    return vsliq_n_u8(even, odd, 4); /* (odd << 4) | (even & 0x0f) */
}

static inline void quantize_neon(qc_kind kind, const float *x, int64_t n, const qc_qparams *p,
                                 uint8_t *dst) {
    const vparams P = make_vparams(kind, p);
    const int four = QC_KINDS[kind].bits == 4;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const float *xi = x + i;
        uint8x16_t lo = narrow16(codes4(kind, vld1q_f32(xi), &P),
                                 codes4(kind, vld1q_f32(xi + 4), &P),
                                 codes4(kind, vld1q_f32(xi + 8), &P),
                                 codes4(kind, vld1q_f32(xi + 12), &P));
        uint8x16_t hi = narrow16(codes4(kind, vld1q_f32(xi + 16), &P),
                                 codes4(kind, vld1q_f32(xi + 20), &P),
                                 codes4(kind, vld1q_f32(xi + 24), &P),
                                 codes4(kind, vld1q_f32(xi + 28), &P));
        if (four) {
            vst1q_u8(dst + i / 2, pack_nibbles(lo, hi));
        } else {
            vst1q_u8(dst + i, lo);
            vst1q_u8(dst + i + 16, hi);
        }
    }
    if (i < n)
        qc_quantize_scalar(kind, x + i, n - i, p, four ? dst + i / 2 : dst + i);
}

/* 4 codes (int32, already minus the zero point) -> d * q (+ m), as the reference. */
static inline float32x4_t deq4(qc_kind kind, int32x4_t q, float32x4_t d, float32x4_t m) {
    float32x4_t f = vmulq_f32(d, vcvtq_f32_s32(q));
    if (kind == QC_MIN4) {
        QC_NOFUSE(f);
        f = vaddq_f32(f, m);
    }
    return f;
}

/* 16 codes -> 16 floats at dst. */
static inline void deq16(qc_kind kind, uint8x16_t c, int32x4_t z, float32x4_t d, float32x4_t m,
                         float *dst) {
    int32x4_t q0, q1, q2, q3;
    if (kind == QC_SYM8) {
        int8x16_t s = vreinterpretq_s8_u8(c);
        int16x8_t l = vmovl_s8(vget_low_s8(s)), h = vmovl_high_s8(s);
        q0 = vmovl_s16(vget_low_s16(l));
        q1 = vmovl_high_s16(l);
        q2 = vmovl_s16(vget_low_s16(h));
        q3 = vmovl_high_s16(h);
    } else {
        uint16x8_t l = vmovl_u8(vget_low_u8(c)), h = vmovl_high_u8(c);
        q0 = vsubq_s32(vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(l))), z);
        q1 = vsubq_s32(vreinterpretq_s32_u32(vmovl_high_u16(l)), z);
        q2 = vsubq_s32(vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(h))), z);
        q3 = vsubq_s32(vreinterpretq_s32_u32(vmovl_high_u16(h)), z);
    }
    vst1q_f32(dst, deq4(kind, q0, d, m));
    vst1q_f32(dst + 4, deq4(kind, q1, d, m));
    vst1q_f32(dst + 8, deq4(kind, q2, d, m));
    vst1q_f32(dst + 12, deq4(kind, q3, d, m));
}

static inline void dequantize_neon(qc_kind kind, const uint8_t *src, int64_t n,
                                   const qc_qparams *p, float *dst) {
    const float32x4_t d = vdupq_n_f32(p->d);
    const float32x4_t m = vdupq_n_f32(p->m);
    const int32x4_t z = vdupq_n_s32(kind == QC_SYM8 || kind == QC_MIN4 ? 0 : p->z);
    const int four = QC_KINDS[kind].bits == 4;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        uint8x16_t c0, c1;
        if (four) {
            uint8x16_t b = vld1q_u8(src + i / 2);
            uint8x16_t lo = vandq_u8(b, vdupq_n_u8(0x0f)), hi = vshrq_n_u8(b, 4);
            c0 = vzip1q_u8(lo, hi); /* elements 0..15 */
            c1 = vzip2q_u8(lo, hi); /* elements 16..31 */
        } else {
            c0 = vld1q_u8(src + i);
            c1 = vld1q_u8(src + i + 16);
        }
        deq16(kind, c0, z, d, m, dst + i);
        deq16(kind, c1, z, d, m, dst + i + 16);
    }
    if (i < n)
        qc_dequantize_scalar(kind, four ? src + i / 2 : src + i, n - i, p, dst + i);
}

#define QC_DEFINE_KIND_WRAPPERS(K)                                                              \
    static void quantize_##K##_neon(const float *x, int64_t n, const qc_qparams *p,             \
                                    uint8_t *dst) {                                             \
        quantize_neon(QC_##K, x, n, p, dst);                                                    \
    }                                                                                           \
    static void dequantize_##K##_neon(const uint8_t *s, int64_t n, const qc_qparams *p,         \
                                      float *dst) {                                             \
        dequantize_neon(QC_##K, s, n, p, dst);                                                  \
    }
QC_DEFINE_KIND_WRAPPERS(SYM8)
QC_DEFINE_KIND_WRAPPERS(ASYM8)
QC_DEFINE_KIND_WRAPPERS(SYM4)
QC_DEFINE_KIND_WRAPPERS(ASYM4)
QC_DEFINE_KIND_WRAPPERS(MIN4)

QC_DEFINE_QUANTIZE_ROW(neon, , stats_neon, quantize_neon)

static void pack_int4_neon(const uint8_t *src, int64_t n, uint8_t *dst) {
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        uint8x16x2_t v = vld2q_u8(src + i); /* val[0]: even elements, val[1]: odd */
        vst1q_u8(dst + i / 2, vsliq_n_u8(v.val[0], v.val[1], 4));
    }
    if (i < n)
        qc_kernels_scalar.pack_int4(src + i, n - i, dst + i / 2);
}

static void unpack_int4_neon(const uint8_t *src, int64_t n, int is_signed, uint8_t *dst) {
    int64_t i = 0;
    if (is_signed) { /* arithmetic shifts sign-extend each nibble */
        for (; i + 32 <= n; i += 32) {
            int8x16_t b = vreinterpretq_s8_u8(vld1q_u8(src + i / 2));
            int8x16x2_t v;
            v.val[0] = vshrq_n_s8(vshlq_n_s8(b, 4), 4);
            v.val[1] = vshrq_n_s8(b, 4);
            vst2q_s8((int8_t *)(dst + i), v);
        }
    } else {
        for (; i + 32 <= n; i += 32) {
            uint8x16_t b = vld1q_u8(src + i / 2);
            uint8x16x2_t v;
            v.val[0] = vandq_u8(b, vdupq_n_u8(0x0f));
            v.val[1] = vshrq_n_u8(b, 4);
            vst2q_u8(dst + i, v);
        }
    }
    if (i < n)
        qc_kernels_scalar.unpack_int4(src + i / 2, n - i, is_signed, dst + i);
}

const qc_kernels qc_kernels_neon = {
    .name = "neon",
    .load_f16 = load_f16_neon,
    .load_f64 = load_f64_neon,
    .stats = stats_neon,
    .quantize = {quantize_SYM8_neon, quantize_ASYM8_neon, quantize_SYM4_neon,
                 quantize_ASYM4_neon, quantize_MIN4_neon},
    .dequantize = {dequantize_SYM8_neon, dequantize_ASYM8_neon, dequantize_SYM4_neon,
                   dequantize_ASYM4_neon, dequantize_MIN4_neon},
    .quantize_row = QC_QUANTIZE_ROW_TABLE(neon),
    .pack_int4 = pack_int4_neon,
    .unpack_int4 = unpack_int4_neon,
    .quantize_row_mse = QC_ROW_MSE_TABLE(neon),
};

#endif /* QC_HAVE_NEON */
