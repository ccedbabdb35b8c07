/*
 * quant_avx2.c -- AVX2 + FMA + F16C versions of the quantize / dequantize / pack
 * kernels (Haswell and Zen and later).
 *
 * Layout: as quantcore.h; 32 floats per step (four ymm registers), which is one
 * 32-byte store of 8-bit codes or a 16-byte store of nibbles.  Tails (n % 32) go
 * to the scalar reference, so a row of any length is exact.
 * Exactness: every element is computed with the same float32 operations as the
 * scalar reference (multiply, then add; no FMA; round-half-away built from an
 * exact truncation), so results match it bit for bit.
 * Every function carries the target attribute; the file needs no -mavx2.
 */
#include "avx2_common.h"
#include "../quantize_row.h"

#if defined(QC_HAVE_X86)

AVX2 static void load_f16_avx2(const uint16_t *src, int64_t n, float *dst) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++)
        dst[i] = qc_fp16_to_fp32(src[i]);
}

AVX2 static void load_f64_avx2(const double *src, int64_t n, float *dst) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128 a = _mm256_cvtpd_ps(_mm256_loadu_pd(src + i));
        __m128 b = _mm256_cvtpd_ps(_mm256_loadu_pd(src + i + 4));
        _mm256_storeu_ps(dst + i, _mm256_set_m128(b, a));
    }
    for (; i < n; i++)
        dst[i] = (float)src[i];
}

AVX2 static inline int stats_avx2(const float *x, int64_t n, qc_stats *s) {
    if (n < 8) {
        return qc_kernels_scalar.stats(x, n, s);
    }
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 inf = _mm256_set1_ps(INFINITY);
    __m256 vmin = _mm256_loadu_ps(x), vmax = vmin, bad = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        vmin = _mm256_min_ps(vmin, v);
        vmax = _mm256_max_ps(vmax, v);
        /* not (|v| < inf): true for Inf and NaN */
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_and_ps(v, absmask), inf, _CMP_NLT_UQ));
    }
    if (i < n) { /* the last 8 elements, overlapping what was done */
        __m256 v = _mm256_loadu_ps(x + n - 8);
        vmin = _mm256_min_ps(vmin, v);
        vmax = _mm256_max_ps(vmax, v);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_and_ps(v, absmask), inf, _CMP_NLT_UQ));
    }
    if (_mm256_movemask_ps(bad))
        return 1;
    float mn = hmin8(vmin), mx = hmax8(vmax);
    s->min = mn;
    s->max = mx;
    if (mx > -mn) {
        s->amax_signed = mx;
    } else if (-mn > mx) {
        s->amax_signed = mn;
    } else { /* +a and -a both present (or all zero): the first one wins */
        float a = mx;
        int64_t j = 0;
        while (fabsf(x[j]) != a)
            j++;
        s->amax_signed = x[j];
    }
    return 0;
}

/* 32 bytes of nibble codes (each < 16) -> 16 bytes, element 2i low, 2i+1 high. */
AVX2 static inline __m128i pack_nibbles(__m256i b) {
    __m256i lo = _mm256_and_si256(b, _mm256_set1_epi16(0x000f));
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), _mm256_set1_epi16(0x00f0));
    __m256i w = _mm256_or_si256(lo, hi); /* packed byte in the low half of each 16-bit lane */
    __m256i p = _mm256_packus_epi16(w, w);
    p = _mm256_permute4x64_epi64(p, 0x08); /* qwords 0 and 2 */
    return _mm256_castsi256_si128(p);
}

/* The code of 8 elements, one kind at a time (mirrors quantize_one in the reference). */
#define QC_CODES(kind, v, P)                                                                    \
    ((kind) == QC_SYM8 || (kind) == QC_ASYM8 || (kind) == QC_ASYM4 ? codes_round(kind, v, P)    \
                                                                   : codes_trunc(kind, v, P))

typedef struct {
    __m256 id, m, lo, hi, bias;
    __m256i z, zlo, zhi;
} vparams;

AVX2 static inline vparams make_vparams(qc_kind kind, const qc_qparams *p) {
    vparams P;
    P.id = _mm256_set1_ps(p->id);
    P.m = _mm256_set1_ps(p->m);
    P.z = _mm256_set1_epi32(p->z);
    float r = kind == QC_SYM8 ? 127.0f : (kind == QC_ASYM8 ? 255.0f : 15.0f);
    P.lo = _mm256_set1_ps(kind == QC_SYM4 || kind == QC_MIN4 ? 0.0f : -r);
    P.hi = _mm256_set1_ps(r);
    P.bias = _mm256_set1_ps(kind == QC_SYM4 ? 8.5f : 0.5f);
    P.zlo = _mm256_set1_epi32(kind == QC_SYM8 ? -127 : 0);
    P.zhi = _mm256_set1_epi32(QC_KINDS[kind].qmax);
    return P;
}

AVX2 static inline __m256i codes_round(qc_kind kind, __m256 v, const vparams *P) {
    __m256 t = round_away(clamp(_mm256_mul_ps(v, P->id), P->lo, P->hi));
    __m256i q = _mm256_cvttps_epi32(t);
    if (kind != QC_SYM8)
        q = _mm256_add_epi32(q, P->z);
    return _mm256_min_epi32(_mm256_max_epi32(q, P->zlo), P->zhi);
}

AVX2 static inline __m256i codes_trunc(qc_kind kind, __m256 v, const vparams *P) {
    if (kind == QC_MIN4)
        v = _mm256_sub_ps(v, P->m);
    __m256 t = _mm256_add_ps(_mm256_mul_ps(v, P->id), P->bias);
    return _mm256_cvttps_epi32(clamp(t, P->lo, P->hi));
}

AVX2 static inline void quantize_avx2(qc_kind kind, const float *x, int64_t n,
                                      const qc_qparams *p, uint8_t *dst) {
    const vparams P = make_vparams(kind, p);
    const int four = QC_KINDS[kind].bits == 4;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i a = QC_CODES(kind, _mm256_loadu_ps(x + i), &P);
        __m256i b = QC_CODES(kind, _mm256_loadu_ps(x + i + 8), &P);
        __m256i c = QC_CODES(kind, _mm256_loadu_ps(x + i + 16), &P);
        __m256i d = QC_CODES(kind, _mm256_loadu_ps(x + i + 24), &P);
        if (kind == QC_ASYM8) { /* codes up to 255: unsigned saturation on the last step */
            __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
            __m256i r = _mm256_packus_epi16(ab, cd);
            r = _mm256_permutevar8x32_epi32(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(dst + i), r);
        } else if (!four) {
            _mm256_storeu_si256((__m256i *)(dst + i), pack32_epi8(a, b, c, d));
        } else {
            _mm_storeu_si128((__m128i *)(dst + i / 2), pack_nibbles(pack32_epi8(a, b, c, d)));
        }
    }
    if (i < n)
        qc_quantize_scalar(kind, x + i, n - i, p, four ? dst + i / 2 : dst + i);
}

/* 16 bytes of nibbles -> 32 bytes of codes in element order */
AVX2 static inline __m256i unpack_nibbles(__m128i b) {
    const __m128i mask = _mm_set1_epi8(0x0f);
    __m128i lo = _mm_and_si128(b, mask);
    __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
    return _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi));
}

AVX2 static inline void dequantize_avx2(qc_kind kind, const uint8_t *src, int64_t n,
                                        const qc_qparams *p, float *dst) {
    const __m256 d = _mm256_set1_ps(p->d);
    const __m256 m = _mm256_set1_ps(p->m);
    const __m256i z = _mm256_set1_epi32(kind == QC_SYM8 || kind == QC_MIN4 ? 0 : p->z);
    const int four = QC_KINDS[kind].bits == 4;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i codes = four ? unpack_nibbles(_mm_loadu_si128((const __m128i *)(src + i / 2)))
                             : _mm256_loadu_si256((const __m256i *)(src + i));
        __m128i halves[2] = {_mm256_castsi256_si128(codes), _mm256_extracti128_si256(codes, 1)};
        for (int h = 0; h < 2; h++) {
            __m128i c8 = halves[h];
            __m256i q0, q1;
            if (kind == QC_SYM8) {
                q0 = _mm256_cvtepi8_epi32(c8);
                q1 = _mm256_cvtepi8_epi32(_mm_srli_si128(c8, 8));
            } else {
                q0 = _mm256_cvtepu8_epi32(c8);
                q1 = _mm256_cvtepu8_epi32(_mm_srli_si128(c8, 8));
            }
            __m256 f0 = _mm256_cvtepi32_ps(_mm256_sub_epi32(q0, z));
            __m256 f1 = _mm256_cvtepi32_ps(_mm256_sub_epi32(q1, z));
            f0 = _mm256_mul_ps(d, f0);
            f1 = _mm256_mul_ps(d, f1);
            if (kind == QC_MIN4) {
                f0 = _mm256_add_ps(f0, m);
                f1 = _mm256_add_ps(f1, m);
            }
            _mm256_storeu_ps(dst + i + 16 * h, f0);
            _mm256_storeu_ps(dst + i + 16 * h + 8, f1);
        }
    }
    if (i < n)
        qc_dequantize_scalar(kind, four ? src + i / 2 : src + i, n - i, p, dst + i);
}

#define QC_DEFINE_KIND_WRAPPERS(K)                                                              \
    AVX2 static void quantize_##K##_avx2(const float *x, int64_t n, const qc_qparams *p,        \
                                         uint8_t *dst) {                                        \
        quantize_avx2(QC_##K, x, n, p, dst);                                                    \
    }                                                                                           \
    AVX2 static void dequantize_##K##_avx2(const uint8_t *s, int64_t n, const qc_qparams *p,    \
                                           float *dst) {                                        \
        dequantize_avx2(QC_##K, s, n, p, dst);                                                  \
    }
QC_DEFINE_KIND_WRAPPERS(SYM8)
QC_DEFINE_KIND_WRAPPERS(ASYM8)
QC_DEFINE_KIND_WRAPPERS(SYM4)
QC_DEFINE_KIND_WRAPPERS(ASYM4)
QC_DEFINE_KIND_WRAPPERS(MIN4)

QC_DEFINE_QUANTIZE_ROW(avx2, AVX2, stats_avx2, quantize_avx2)

AVX2 static void store_f16_avx2(const float *src, int64_t n, uint16_t *dst) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        dst[i] = qc_fp32_to_fp16(src[i]);
}

AVX2 static void pack_int4_avx2(const uint8_t *src, int64_t n, uint8_t *dst) {
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i b = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(src + i)),
                                     _mm256_set1_epi8(0x0f));
        _mm_storeu_si128((__m128i *)(dst + i / 2), pack_nibbles(b));
    }
    if (i < n)
        qc_kernels_scalar.pack_int4(src + i, n - i, dst + i / 2);
}

AVX2 static void unpack_int4_avx2(const uint8_t *src, int64_t n, int is_signed, uint8_t *dst) {
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i v = unpack_nibbles(_mm_loadu_si128((const __m128i *)(src + i / 2)));
        if (is_signed) { /* (v ^ 8) - 8 sign-extends a nibble */
            const __m256i eight = _mm256_set1_epi8(8);
            v = _mm256_sub_epi8(_mm256_xor_si256(v, eight), eight);
        }
        _mm256_storeu_si256((__m256i *)(dst + i), v);
    }
    if (i < n)
        qc_kernels_scalar.unpack_int4(src + i / 2, n - i, is_signed, dst + i);
}

const qc_kernels qc_kernels_avx2 = {
    .name = "avx2",
    .load_f16 = load_f16_avx2,
    .load_f64 = load_f64_avx2,
    .stats = stats_avx2,
    .quantize = {quantize_SYM8_avx2, quantize_ASYM8_avx2, quantize_SYM4_avx2,
                 quantize_ASYM4_avx2, quantize_MIN4_avx2},
    .dequantize = {dequantize_SYM8_avx2, dequantize_ASYM8_avx2, dequantize_SYM4_avx2,
                   dequantize_ASYM4_avx2, dequantize_MIN4_avx2},
    .quantize_row = QC_QUANTIZE_ROW_TABLE(avx2),
    .store_f16 = store_f16_avx2,
    .pack_int4 = pack_int4_avx2,
    .unpack_int4 = unpack_int4_avx2,
    .quantize_row_mse = QC_ROW_MSE_TABLE(avx2),
};

#endif /* QC_HAVE_X86 */
