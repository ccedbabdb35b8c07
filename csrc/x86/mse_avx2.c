/*
 * mse_avx2.c -- AVX2 version of method="mse" (quantize_mse.h): the candidate
 * evaluators of ref/mse_scalar.c, 8 elements per step.
 *
 * Layout: one group of contiguous float32.  Accumulation: one ymm accumulator
 * per sum, element i in lane i % 8 (the tail through a masked load, its unused
 * lanes adding +0.0, which leaves every lane as the scalar reference has it),
 * reduced by hsum8 in the order of qc_lane_sum8.  Multiply and add stay
 * separate (no FMA), and rounding is the same magic-number add/subtract, so the
 * results equal the scalar reference bit for bit.
 */
#include "avx2_common.h"
#include "../quantize_mse.h"

#if defined(QC_HAVE_X86)

/* lanes [0, r) set, r in 1..7 */
AVX2 static inline __m256i tail_mask(int64_t r) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)r), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

AVX2 static inline __m256 round_magic(__m256 v) {
    const __m256 magic = _mm256_set1_ps(QC_ROUND_MAGIC);
    return _mm256_sub_ps(_mm256_add_ps(v, magic), magic);
}

AVX2 static inline void eval_sym_avx2(const float *x, int64_t n, float id, float lo, float hi,
                                      qc_mse_sums *s) {
    const __m256 vid = _mm256_set1_ps(id), vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
    __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 l = round_magic(clamp(_mm256_mul_ps(v, vid), vlo, vhi));
        a = _mm256_add_ps(a, _mm256_mul_ps(v, l));
        b = _mm256_add_ps(b, _mm256_mul_ps(l, l));
    }
    if (i < n) {
        __m256i mask = tail_mask(n - i);
        __m256 v = _mm256_maskload_ps(x + i, mask);
        __m256 l = round_magic(clamp(_mm256_mul_ps(v, vid), vlo, vhi));
        l = _mm256_and_ps(l, _mm256_castsi256_ps(mask));
        a = _mm256_add_ps(a, _mm256_mul_ps(v, l));
        b = _mm256_add_ps(b, _mm256_mul_ps(l, l));
    }
    s->sxl = hsum8(a);
    s->sll = hsum8(b);
}

AVX2 static inline void eval_min_avx2(const float *x, int64_t n, float id, float m, float hi,
                                      qc_mse_sums *s) {
    const __m256 vid = _mm256_set1_ps(id), vm = _mm256_set1_ps(m), vhi = _mm256_set1_ps(hi);
    const __m256 zero = _mm256_setzero_ps();
    __m256 a = zero, b = zero, c = zero;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 q = round_magic(clamp(_mm256_mul_ps(_mm256_sub_ps(v, vm), vid), zero, vhi));
        a = _mm256_add_ps(a, q);
        b = _mm256_add_ps(b, _mm256_mul_ps(q, q));
        c = _mm256_add_ps(c, _mm256_mul_ps(v, q));
    }
    if (i < n) {
        __m256i mask = tail_mask(n - i);
        __m256 v = _mm256_maskload_ps(x + i, mask);
        __m256 q = round_magic(clamp(_mm256_mul_ps(_mm256_sub_ps(v, vm), vid), zero, vhi));
        q = _mm256_and_ps(q, _mm256_castsi256_ps(mask));
        a = _mm256_add_ps(a, q);
        b = _mm256_add_ps(b, _mm256_mul_ps(q, q));
        c = _mm256_add_ps(c, _mm256_mul_ps(v, q));
    }
    s->sq = hsum8(a);
    s->sqq = hsum8(b);
    s->sxq = hsum8(c);
}

/* Weighted (eval_sym_w_scalar): wl = w l; the tail's unused lanes load w = 0 */
AVX2 static inline void eval_sym_w_avx2(const float *x, const float *w, int64_t n, float id,
                                        float lo, float hi, qc_mse_sums *s) {
    const __m256 vid = _mm256_set1_ps(id), vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
    __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 l = round_magic(clamp(_mm256_mul_ps(v, vid), vlo, vhi));
        __m256 wl = _mm256_mul_ps(_mm256_loadu_ps(w + i), l);
        a = _mm256_add_ps(a, _mm256_mul_ps(v, wl));
        b = _mm256_add_ps(b, _mm256_mul_ps(wl, l));
    }
    if (i < n) {
        __m256i mask = tail_mask(n - i);
        __m256 v = _mm256_maskload_ps(x + i, mask);
        __m256 l = round_magic(clamp(_mm256_mul_ps(v, vid), vlo, vhi));
        __m256 wl = _mm256_mul_ps(_mm256_maskload_ps(w + i, mask), l);
        a = _mm256_add_ps(a, _mm256_mul_ps(v, wl));
        b = _mm256_add_ps(b, _mm256_mul_ps(wl, l));
    }
    s->sxl = hsum8(a);
    s->sll = hsum8(b);
}

/* Weighted (eval_min_w_scalar): wq = w q */
AVX2 static inline void eval_min_w_avx2(const float *x, const float *w, int64_t n, float id,
                                        float m, float hi, qc_mse_sums *s) {
    const __m256 vid = _mm256_set1_ps(id), vm = _mm256_set1_ps(m), vhi = _mm256_set1_ps(hi);
    const __m256 zero = _mm256_setzero_ps();
    __m256 a = zero, b = zero, c = zero;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 q = round_magic(clamp(_mm256_mul_ps(_mm256_sub_ps(v, vm), vid), zero, vhi));
        __m256 wq = _mm256_mul_ps(_mm256_loadu_ps(w + i), q);
        a = _mm256_add_ps(a, wq);
        b = _mm256_add_ps(b, _mm256_mul_ps(wq, q));
        c = _mm256_add_ps(c, _mm256_mul_ps(v, wq));
    }
    if (i < n) {
        __m256i mask = tail_mask(n - i);
        __m256 v = _mm256_maskload_ps(x + i, mask);
        __m256 q = round_magic(clamp(_mm256_mul_ps(_mm256_sub_ps(v, vm), vid), zero, vhi));
        __m256 wq = _mm256_mul_ps(_mm256_maskload_ps(w + i, mask), q);
        a = _mm256_add_ps(a, wq);
        b = _mm256_add_ps(b, _mm256_mul_ps(wq, q));
        c = _mm256_add_ps(c, _mm256_mul_ps(v, wq));
    }
    s->sq = hsum8(a);
    s->sqq = hsum8(b);
    s->sxq = hsum8(c);
}

#define QC_MSE_SUFFIX avx2
#define QC_MSE_ATTR AVX2
#define QC_MSE_TABLE qc_kernels_avx2
#define QC_MSE_CTX qc_mse_group
#define QC_MSE_EVAL_SYM(c, id, lo, hi, s)                                                       \
    ((c)->w ? eval_sym_w_avx2((c)->x, (c)->w, (c)->n, id, lo, hi, s)                            \
            : eval_sym_avx2((c)->x, (c)->n, id, lo, hi, s))
#define QC_MSE_EVAL_MIN(c, id, m, hi, s)                                                        \
    ((c)->w ? eval_min_w_avx2((c)->x, (c)->w, (c)->n, id, m, hi, s)                             \
            : eval_min_avx2((c)->x, (c)->n, id, m, hi, s))
#define QC_MSE_MOMENTS(c, sw, sx, sxx) qc_mse_moments((c)->x, (c)->w, (c)->n, sw, sx, sxx)
#include "../quantize_mse.inc"

#endif /* QC_HAVE_X86 */
