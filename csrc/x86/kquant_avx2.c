/*
 * kquant_avx2.c -- AVX2 sub-block fits of the Q4_K / Q5_K / Q6_K quantizers.
 *
 * Layout: the eight sub-blocks of a super-block run in the eight lanes of a ymm
 * register (the values transposed once, value i of every sub-block in one
 * register), so that every lane performs the scalar reference's float32
 * operations in the scalar reference's order: sums run over i within a lane,
 * never across lanes.  Rounding gives the reference's integers (its 1.5 * 2^23
 * trick, or round-to-even where that is provably the same), the keep-the-better
 * fit branches are per-lane blends.  Q6_K: the same, a lane per sub-block of 16.
 * No FMA (-ffp-contract=off, no fma intrinsics).
 * Exactness: bit for bit the scalar reference (ref/kquant_scalar.c), hence ggml.
 * Every function carries the AVX2 target attribute; the file needs no -mavx2.
 */
#include "avx2_common.h"
#include "../kquant.h"

#if defined(QC_HAVE_X86)

AVX2 static inline __m256i kq_round8(__m256 v) {
    __m256i bits = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12582912.0f)));
    return _mm256_sub_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)),
                            _mm256_set1_epi32(0x00400000));
}

/* b where mask, else a (mask: all ones or all zeros per lane) */
AVX2 static inline __m256 sel(__m256 a, __m256 b, __m256 mask) { return _mm256_blendv_ps(a, b, mask); }

/* clamp(kq_round(v), 0, nmax) as a float, either way */
AVX2 static inline __m256 code_exact8(__m256 v, __m256i vmax) {
    __m256i l = _mm256_min_epi32(_mm256_max_epi32(kq_round8(v), _mm256_setzero_si256()), vmax);
    return _mm256_cvtepi32_ps(l);
}
AVX2 static inline __m256 code_fast8(__m256 v, __m256 fmax) { /* |v| < 2^22 */
    __m256 r = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm256_min_ps(_mm256_max_ps(r, _mm256_setzero_ps()), fmax); /* -0 becomes +0 */
}

/* 1 when every lane not in `skip` has |iscale * (x - lo)| < 2^22 for every x in [xmin, hi]
 * (rounding is monotone, so the bound computed in float32 bounds every rounded product) */
AVX2 static inline int in_range8(__m256 iscale, __m256 lo, __m256 xmin, __m256 hi, __m256 skip) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 a = _mm256_and_ps(_mm256_sub_ps(hi, lo), absmask);
    __m256 b = _mm256_and_ps(_mm256_sub_ps(xmin, lo), absmask);
    __m256 bound = _mm256_mul_ps(_mm256_and_ps(iscale, absmask), _mm256_max_ps(a, b));
    __m256 ok = _mm256_cmp_ps(bound, _mm256_set1_ps(4194304.0f), _CMP_LT_OQ);
    ok = _mm256_and_ps(ok, _mm256_and_ps(_mm256_cmp_ps(a, a, _CMP_ORD_Q), _mm256_cmp_ps(b, b, _CMP_ORD_Q)));
    return _mm256_movemask_ps(_mm256_or_ps(ok, skip)) == 0xff;
}

/*
 * fit_scale_min of the scalar reference for eight sub-blocks at once: x[i], w[i]
 * hold value i (and its weight) of each sub-block.  Codes go to L[32 * lane + i].
 * A trial's codes are rounded with _mm256_round_ps (ties to even) and clamped as
 * floats where in_range8 shows every lane below 2^22, else with the reference's
 * trick; the winning trial's codes are recomputed at the end from its scale and min.
 */
AVX2 static void fit8(int nmax, const __m256 *x, const __m256 *w, uint8_t *L, float *scale_out,
                      float *neg_min_out, float rmin, float rdelta, int nstep) {
    const __m256 zero = _mm256_setzero_ps(), fmax = _mm256_set1_ps((float)nmax);
    const __m256i vmax = _mm256_set1_epi32(nmax);
    __m256 fl[32];
    __m256 lo = x[0], hi = x[0];
    __m256 sum_w = w[0];
    __m256 sum_x = _mm256_mul_ps(sum_w, x[0]);
    for (int i = 1; i < 32; i++) {
        lo = sel(lo, x[i], _mm256_cmp_ps(x[i], lo, _CMP_LT_OQ));
        hi = sel(hi, x[i], _mm256_cmp_ps(x[i], hi, _CMP_GT_OQ));
        sum_w = _mm256_add_ps(sum_w, w[i]);
        sum_x = _mm256_add_ps(sum_x, _mm256_mul_ps(w[i], x[i]));
    }
    const __m256 xmin = lo;
    lo = sel(lo, zero, _mm256_cmp_ps(lo, zero, _CMP_GT_OQ));
    const __m256 lo0 = lo;
    const __m256 flat = _mm256_cmp_ps(hi, lo, _CMP_EQ_OQ); /* these lanes: all codes 0 */
    __m256 iscale = _mm256_div_ps(fmax, _mm256_sub_ps(hi, lo));
    __m256 scale = _mm256_div_ps(_mm256_set1_ps(1.0f), iscale);
    __m256 best = zero;
    __m256 best_iscale = iscale, best_lo = lo; /* the trial whose codes win */
    {
        const int fast = in_range8(iscale, lo, xmin, hi, flat);
        for (int i = 0; i < 32; i++) {
            __m256 v = _mm256_mul_ps(iscale, _mm256_sub_ps(x[i], lo));
            __m256 f = fast ? code_fast8(v, fmax) : code_exact8(v, vmax);
            __m256 diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale, f), lo), x[i]);
            best = _mm256_add_ps(best, _mm256_mul_ps(w[i], _mm256_mul_ps(diff, diff)));
        }
    }
    for (int is = 0; is <= nstep; is++) {
        const float num = rmin + rdelta * (float)is + (float)nmax; /* the scalar expression */
        iscale = _mm256_div_ps(_mm256_set1_ps(num), _mm256_sub_ps(hi, lo));
        __m256 sl = zero, sl2 = zero, sxl = zero;
        if (in_range8(iscale, lo, xmin, hi, flat)) {
            for (int i = 0; i < 32; i++) {
                __m256 f = code_fast8(_mm256_mul_ps(iscale, _mm256_sub_ps(x[i], lo)), fmax);
                fl[i] = f;
                __m256 wl = _mm256_mul_ps(w[i], f);
                sl = _mm256_add_ps(sl, wl);
                sl2 = _mm256_add_ps(sl2, _mm256_mul_ps(wl, f));
                sxl = _mm256_add_ps(sxl, _mm256_mul_ps(wl, x[i]));
            }
        } else {
            for (int i = 0; i < 32; i++) {
                __m256 f = code_exact8(_mm256_mul_ps(iscale, _mm256_sub_ps(x[i], lo)), vmax);
                fl[i] = f;
                __m256 wl = _mm256_mul_ps(w[i], f);
                sl = _mm256_add_ps(sl, wl);
                sl2 = _mm256_add_ps(sl2, _mm256_mul_ps(wl, f));
                sxl = _mm256_add_ps(sxl, _mm256_mul_ps(wl, x[i]));
            }
        }
        __m256 det = _mm256_sub_ps(_mm256_mul_ps(sum_w, sl2), _mm256_mul_ps(sl, sl));
        __m256 ok = _mm256_cmp_ps(det, zero, _CMP_GT_OQ);
        if (_mm256_movemask_ps(ok) == 0)
            continue;
        __m256 t_scale = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_w, sxl), _mm256_mul_ps(sum_x, sl)), det);
        __m256 t_min = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sl2, sum_x), _mm256_mul_ps(sl, sxl)), det);
        __m256 pos = _mm256_cmp_ps(t_min, zero, _CMP_GT_OQ);
        t_min = sel(t_min, zero, pos);
        t_scale = sel(t_scale, _mm256_div_ps(sxl, sl2), pos);
        __m256 err = zero;
        for (int i = 0; i < 32; i++) {
            __m256 diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(t_scale, fl[i]), t_min), x[i]);
            err = _mm256_add_ps(err, _mm256_mul_ps(w[i], _mm256_mul_ps(diff, diff)));
        }
        __m256 better = _mm256_and_ps(ok, _mm256_cmp_ps(err, best, _CMP_LT_OQ));
        if (_mm256_movemask_ps(better) == 0)
            continue;
        best_iscale = sel(best_iscale, iscale, better);
        best_lo = sel(best_lo, lo, better);
        best = sel(best, err, better);
        scale = sel(scale, t_scale, better);
        lo = sel(lo, t_min, better);
    }
    /* flat lanes: no codes, scale 0, the min as found */
    scale = sel(scale, zero, flat);
    lo = sel(lo, lo0, flat);
    __m256i keep = _mm256_castps_si256(flat);
    int32_t c[32][8];
    for (int i = 0; i < 32; i++) {
        __m256i l = kq_round8(_mm256_mul_ps(best_iscale, _mm256_sub_ps(x[i], best_lo)));
        l = _mm256_min_epi32(_mm256_max_epi32(l, _mm256_setzero_si256()), vmax);
        _mm256_storeu_si256((__m256i *)c[i], _mm256_andnot_si256(keep, l));
    }
    for (int j = 0; j < 8; j++)
        for (int i = 0; i < 32; i++)
            L[32 * j + i] = (uint8_t)c[i][j];
    _mm256_storeu_ps(scale_out, scale);
    _mm256_storeu_ps(neg_min_out, _mm256_xor_ps(lo, _mm256_set1_ps(-0.0f))); /* -lo, as C negates */
}

AVX2 static void fit_block(const float *x, const float *qw, int nmax, float *scales, float *mins,
                           float *sw, uint8_t *L) {
    float rmin, rdelta;
    int nstep;
    qc_kq_fit_params(nmax, qw != NULL, &rmin, &rdelta, &nstep);
    __m256 xt[32], wt[32];
    {
        float buf[32][8];
        for (int j = 0; j < 8; j++)
            for (int i = 0; i < 32; i++)
                buf[i][j] = x[32 * j + i];
        for (int i = 0; i < 32; i++)
            xt[i] = _mm256_loadu_ps(buf[i]);
        if (qw) {
            for (int j = 0; j < 8; j++)
                for (int i = 0; i < 32; i++)
                    buf[i][j] = qw[32 * j + i];
            for (int i = 0; i < 32; i++)
                wt[i] = _mm256_loadu_ps(buf[i]);
        }
    }
    if (qw) {
        float sum_x2 = 0; /* one sum over the super-block, in order */
        for (int l = 0; l < QC_QK_K; l++)
            sum_x2 += x[l] * x[l];
        const __m256 sigma2 = _mm256_set1_ps(2.0f * sum_x2 / (float)QC_QK_K);
        __m256 sumw = _mm256_setzero_ps();
        for (int i = 0; i < 32; i++) {
            wt[i] = _mm256_mul_ps(wt[i], _mm256_sqrt_ps(_mm256_add_ps(sigma2, _mm256_mul_ps(xt[i], xt[i]))));
            sumw = _mm256_add_ps(sumw, wt[i]);
        }
        _mm256_storeu_ps(sw, sumw);
    } else {
        const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        __m256 sum_x2 = _mm256_setzero_ps();
        for (int i = 0; i < 32; i++)
            sum_x2 = _mm256_add_ps(sum_x2, _mm256_mul_ps(xt[i], xt[i]));
        const __m256 av_x = _mm256_sqrt_ps(_mm256_div_ps(sum_x2, _mm256_set1_ps(32.0f)));
        for (int i = 0; i < 32; i++)
            wt[i] = _mm256_add_ps(av_x, _mm256_and_ps(xt[i], absmask));
    }
    fit8(nmax, xt, wt, L, scales, mins, rmin, rdelta, nstep);
}

AVX2 void qc_kq_fit_blocks_k45_avx2(const float *x, const float *qw, int nb, int nmax,
                                    float *scales, float *mins, float *sw, uint8_t *L) {
    for (int b = 0; b < nb; b++)
        fit_block(x + QC_QK_K * b, qw ? qw + QC_QK_K * b : NULL, nmax, scales + 8 * b, mins + 8 * b,
                  sw + 8 * b, L + QC_QK_K * b);
}

/*
 * Q6_K: fit_codes_signed of the scalar reference (nmax 32) for eight sub-blocks of
 * 16 values, sub-block s in lane s.  A lane whose largest magnitude is at least
 * 1e-15 has |iscale * x| <= 33, so _mm256_round_ps (ties to even) gives the
 * reference's integers there; the other lanes are zeroed at the end.
 */
AVX2 static void fit8_q6(const float *x, const float *qw, float *scales, int8_t *L) {
    const __m256 lo_code = _mm256_set1_ps(-32.0f), hi_code = _mm256_set1_ps(31.0f);
    const __m256 zero = _mm256_setzero_ps();
    const int rnd = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    __m256 xt[16], wt[16], wx[16];
    const __m256i idx = _mm256_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112);
    for (int i = 0; i < 16; i++) {
        xt[i] = _mm256_i32gather_ps(x + i, idx, 4);
        wt[i] = qw ? _mm256_i32gather_ps(qw + i, idx, 4) : _mm256_mul_ps(xt[i], xt[i]);
        wx[i] = _mm256_mul_ps(wt[i], xt[i]);
    }
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 amax = zero, mx = zero;
    for (int i = 0; i < 16; i++) {
        __m256 ax = _mm256_and_ps(xt[i], absmask);
        __m256 gt = _mm256_cmp_ps(ax, amax, _CMP_GT_OQ);
        amax = sel(amax, ax, gt);
        mx = sel(mx, xt[i], gt);
    }
    const __m256 live = _mm256_cmp_ps(amax, _mm256_set1_ps(1e-15f), _CMP_GE_OQ);
    __m256 iscale = _mm256_div_ps(_mm256_set1_ps(-32.0f), mx);
    __m256 best_iscale = iscale;
    __m256 sumlx = zero, suml2 = zero;
    for (int i = 0; i < 16; i++) {
        __m256 r = _mm256_round_ps(_mm256_mul_ps(iscale, xt[i]), rnd);
        __m256 l = _mm256_min_ps(_mm256_max_ps(r, lo_code), hi_code);
        sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(wx[i], l));
        suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(wt[i], l), l));
    }
    __m256 scale = _mm256_and_ps(_mm256_cmp_ps(suml2, zero, _CMP_NEQ_UQ), _mm256_div_ps(sumlx, suml2));
    __m256 best = _mm256_mul_ps(scale, sumlx);
    for (int is = -9; is <= 9; is++) {
        if (is == 0)
            continue;
        iscale = _mm256_div_ps(_mm256_set1_ps(-(32.0f + 0.1f * (float)is)), mx);
        sumlx = suml2 = zero;
        for (int i = 0; i < 16; i++) {
            __m256 r = _mm256_round_ps(_mm256_mul_ps(iscale, xt[i]), rnd);
            __m256 l = _mm256_min_ps(_mm256_max_ps(r, lo_code), hi_code);
            sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(wx[i], l));
            suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(wt[i], l), l));
        }
        __m256 better = _mm256_and_ps(_mm256_cmp_ps(suml2, zero, _CMP_GT_OQ),
                                      _mm256_cmp_ps(_mm256_mul_ps(sumlx, sumlx),
                                                    _mm256_mul_ps(best, suml2), _CMP_GT_OQ));
        if (_mm256_movemask_ps(better) == 0)
            continue;
        best_iscale = sel(best_iscale, iscale, better);
        scale = sel(scale, _mm256_div_ps(sumlx, suml2), better);
        best = sel(best, _mm256_mul_ps(scale, sumlx), better);
    }
    _mm256_storeu_ps(scales, _mm256_and_ps(live, scale));
    int32_t c[16][8];
    for (int i = 0; i < 16; i++) {
        __m256 r = _mm256_round_ps(_mm256_mul_ps(best_iscale, xt[i]), rnd);
        __m256 l = _mm256_add_ps(_mm256_min_ps(_mm256_max_ps(r, lo_code), hi_code), _mm256_set1_ps(32.0f));
        _mm256_storeu_si256((__m256i *)c[i], _mm256_cvtps_epi32(_mm256_and_ps(live, l)));
    }
    for (int s = 0; s < 8; s++)
        for (int i = 0; i < 16; i++)
            L[16 * s + i] = (int8_t)c[i][s];
}

AVX2 void qc_kq_fit_block_q6_avx2(const float *x, const float *qw, float *scales, int8_t *L) {
    fit8_q6(x, qw, scales, L);
    fit8_q6(x + 128, qw ? qw + 128 : NULL, scales + 8, L + 128);
}

#endif /* QC_HAVE_X86 */
