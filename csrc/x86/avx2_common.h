/*
 * avx2_common.h -- small AVX2 helpers shared by the AVX2 kernel files.
 * Every function carries the AVX2 target attribute (see QC_TARGET in kernels.h).
 */
#ifndef QC_AVX2_COMMON_H
#define QC_AVX2_COMMON_H

#include "../kernels.h"

#if defined(QC_HAVE_X86)
#include <immintrin.h>

#define AVX2 QC_TARGET("avx2,fma,f16c")

AVX2 static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

AVX2 static inline float hmin8(__m256 v) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    m = _mm_min_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* round half away from zero of values already clamped to a small range */
AVX2 static inline __m256 round_away(__m256 v) {
    const __m256 half = _mm256_set1_ps(0.5f);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m256 frac = _mm256_and_ps(_mm256_sub_ps(v, t), absmask); /* exact */
    __m256 up = _mm256_cmp_ps(frac, half, _CMP_GE_OQ);
    __m256 one = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_andnot_ps(absmask, v)); /* +-1 */
    return _mm256_add_ps(t, _mm256_and_ps(up, one));
}

AVX2 static inline __m256 clamp(__m256 v, __m256 lo, __m256 hi) {
    return _mm256_min_ps(_mm256_max_ps(v, lo), hi);
}

/* Four vectors of int32 codes (already in range) -> 32 bytes in element order. */
AVX2 static inline __m256i pack32_epi8(__m256i a, __m256i b, __m256i c, __m256i d) {
    __m256i ab = _mm256_packs_epi32(a, b);   /* a0-3 b0-3 | a4-7 b4-7 */
    __m256i cd = _mm256_packs_epi32(c, d);   /* c0-3 d0-3 | c4-7 d4-7 */
    __m256i r = _mm256_packs_epi16(ab, cd);  /* a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7 */
    return _mm256_permutevar8x32_epi32(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

AVX2 static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AVX2 static inline int32_t hsum8_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

#endif /* QC_HAVE_X86 */
#endif /* QC_AVX2_COMMON_H */
