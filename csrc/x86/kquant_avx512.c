/*
 * kquant_avx512.c -- AVX-512 sub-block fits of the Q4_K / Q5_K / Q6_K quantizers.
 *
 * Layout: two super-blocks per call, their sixteen sub-blocks in the sixteen
 * lanes of a zmm register (value i of every sub-block in one register), so that
 * every lane performs the scalar reference's float32 operations in its order:
 * sums run over i within a lane, never across lanes.  A trial's codes are
 * rounded with roundscale (ties to even) and clamped as floats where a bound on
 * |iscale * (x - min)| shows every lane below 2^22 (there the 1.5 * 2^23 trick of
 * the reference gives the same integers); otherwise with the trick itself.  The
 * winning trial's codes are recomputed once at the end from its saved scale and
 * min.  Q6_K: one super-block per call, sub-block s (16 values) in lane s.
 * No FMA (-ffp-contract=off, no fma intrinsics).
 * Exactness: bit for bit the scalar reference (ref/kquant_scalar.c), hence ggml.
 * Every function carries the AVX-512 target attribute; the file needs no -mavx512f.
 */
#include "../kernels.h"
#include "../kquant.h"

#if defined(QC_HAVE_X86)
#include <immintrin.h>

#define AVX512 QC_TARGET("avx512f,avx512bw,avx512vl,avx2,fma,f16c")

/* the reference's kq_round: integer nearest v, ties to even, for |v| < 2^22 (garbage beyond, as
 * the reference's) */
AVX512 static inline __m512i kq_round16(__m512 v) {
    __m512i bits = _mm512_castps_si512(_mm512_add_ps(v, _mm512_set1_ps(12582912.0f)));
    return _mm512_sub_epi32(_mm512_and_si512(bits, _mm512_set1_epi32(0x007fffff)),
                            _mm512_set1_epi32(0x00400000));
}

/* clamp(kq_round(v), 0, nmax) as a float, either way */
AVX512 static inline __m512 code_exact(__m512 v, __m512i vmax) {
    __m512i l = _mm512_min_epi32(_mm512_max_epi32(kq_round16(v), _mm512_setzero_si512()), vmax);
    return _mm512_cvtepi32_ps(l);
}
AVX512 static inline __m512 code_fast(__m512 v, __m512 fmax) { /* |v| < 2^22 */
    __m512 r = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_min_ps(_mm512_max_ps(r, _mm512_setzero_ps()), fmax); /* -0 becomes +0 */
}

/* lanes where |iscale * (x - lo)| < 2^22 for every x in [xmin, hi] (rounding is monotone, so the
 * bound computed in float32 bounds every rounded product); NaN fails */
AVX512 static inline __mmask16 in_range(__m512 iscale, __m512 lo, __m512 xmin, __m512 hi) {
    __m512 a = _mm512_abs_ps(_mm512_sub_ps(hi, lo));
    __m512 b = _mm512_abs_ps(_mm512_sub_ps(xmin, lo));
    __m512 m = _mm512_max_ps(a, b);
    __m512 bound = _mm512_mul_ps(_mm512_abs_ps(iscale), m);
    __mmask16 ok = _mm512_cmp_ps_mask(bound, _mm512_set1_ps(4194304.0f), _CMP_LT_OQ);
    /* a NaN in a or b is caught by the max only when it is the second operand */
    ok &= _mm512_cmp_ps_mask(a, a, _CMP_ORD_Q) & _mm512_cmp_ps_mask(b, b, _CMP_ORD_Q);
    return ok;
}

/*
 * fit_scale_min of the scalar reference for sixteen sub-blocks at once: x[i], w[i]
 * hold value i (and its weight) of each sub-block.  Codes go to L[32 * lane + i].
 */
AVX512 static void fit16(int nmax, const __m512 *x, const __m512 *w, uint8_t *L, float *scale_out,
                         float *neg_min_out, float rmin, float rdelta, int nstep) {
    const __m512 zero = _mm512_setzero_ps(), fmax = _mm512_set1_ps((float)nmax);
    const __m512i vmax = _mm512_set1_epi32(nmax);
    __m512 fl[32];
    __m512 lo = x[0], hi = x[0];
    __m512 sum_w = w[0];
    __m512 sum_x = _mm512_mul_ps(sum_w, x[0]);
    for (int i = 1; i < 32; i++) {
        lo = _mm512_mask_mov_ps(lo, _mm512_cmp_ps_mask(x[i], lo, _CMP_LT_OQ), x[i]);
        hi = _mm512_mask_mov_ps(hi, _mm512_cmp_ps_mask(x[i], hi, _CMP_GT_OQ), x[i]);
        sum_w = _mm512_add_ps(sum_w, w[i]);
        sum_x = _mm512_add_ps(sum_x, _mm512_mul_ps(w[i], x[i]));
    }
    const __m512 xmin = lo;
    lo = _mm512_mask_mov_ps(lo, _mm512_cmp_ps_mask(lo, zero, _CMP_GT_OQ), zero);
    const __m512 lo0 = lo;
    const __mmask16 flat = _mm512_cmp_ps_mask(hi, lo, _CMP_EQ_OQ); /* these lanes: all codes 0 */
    __m512 iscale = _mm512_div_ps(fmax, _mm512_sub_ps(hi, lo));
    __m512 scale = _mm512_div_ps(_mm512_set1_ps(1.0f), iscale);
    __m512 best = zero;
    __m512 best_iscale = iscale, best_lo = lo; /* the trial whose codes win */
    {
        const int fast = (in_range(iscale, lo, xmin, hi) | flat) == 0xffff;
        for (int i = 0; i < 32; i++) {
            __m512 v = _mm512_mul_ps(iscale, _mm512_sub_ps(x[i], lo));
            __m512 f = fast ? code_fast(v, fmax) : code_exact(v, vmax);
            __m512 diff = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(scale, f), lo), x[i]);
            best = _mm512_add_ps(best, _mm512_mul_ps(w[i], _mm512_mul_ps(diff, diff)));
        }
    }
    for (int is = 0; is <= nstep; is++) {
        const float num = rmin + rdelta * (float)is + (float)nmax; /* the scalar expression */
        iscale = _mm512_div_ps(_mm512_set1_ps(num), _mm512_sub_ps(hi, lo));
        __m512 sl = zero, sl2 = zero, sxl = zero;
        if ((in_range(iscale, lo, xmin, hi) | flat) == 0xffff) {
            for (int i = 0; i < 32; i++) {
                __m512 f = code_fast(_mm512_mul_ps(iscale, _mm512_sub_ps(x[i], lo)), fmax);
                fl[i] = f;
                __m512 wl = _mm512_mul_ps(w[i], f);
                sl = _mm512_add_ps(sl, wl);
                sl2 = _mm512_add_ps(sl2, _mm512_mul_ps(wl, f));
                sxl = _mm512_add_ps(sxl, _mm512_mul_ps(wl, x[i]));
            }
        } else {
            for (int i = 0; i < 32; i++) {
                __m512 f = code_exact(_mm512_mul_ps(iscale, _mm512_sub_ps(x[i], lo)), vmax);
                fl[i] = f;
                __m512 wl = _mm512_mul_ps(w[i], f);
                sl = _mm512_add_ps(sl, wl);
                sl2 = _mm512_add_ps(sl2, _mm512_mul_ps(wl, f));
                sxl = _mm512_add_ps(sxl, _mm512_mul_ps(wl, x[i]));
            }
        }
        __m512 det = _mm512_sub_ps(_mm512_mul_ps(sum_w, sl2), _mm512_mul_ps(sl, sl));
        __mmask16 ok = _mm512_cmp_ps_mask(det, zero, _CMP_GT_OQ);
        if (ok == 0)
            continue;
        __m512 t_scale = _mm512_div_ps(_mm512_sub_ps(_mm512_mul_ps(sum_w, sxl), _mm512_mul_ps(sum_x, sl)), det);
        __m512 t_min = _mm512_div_ps(_mm512_sub_ps(_mm512_mul_ps(sl2, sum_x), _mm512_mul_ps(sl, sxl)), det);
        __mmask16 pos = _mm512_cmp_ps_mask(t_min, zero, _CMP_GT_OQ);
        t_min = _mm512_mask_mov_ps(t_min, pos, zero);
        t_scale = _mm512_mask_mov_ps(t_scale, pos, _mm512_div_ps(sxl, sl2));
        __m512 err = zero;
        for (int i = 0; i < 32; i++) {
            __m512 diff = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(t_scale, fl[i]), t_min), x[i]);
            err = _mm512_add_ps(err, _mm512_mul_ps(w[i], _mm512_mul_ps(diff, diff)));
        }
        __mmask16 better = ok & _mm512_cmp_ps_mask(err, best, _CMP_LT_OQ);
        if (better == 0)
            continue;
        best_iscale = _mm512_mask_mov_ps(best_iscale, better, iscale);
        best_lo = _mm512_mask_mov_ps(best_lo, better, lo);
        best = _mm512_mask_mov_ps(best, better, err);
        scale = _mm512_mask_mov_ps(scale, better, t_scale);
        lo = _mm512_mask_mov_ps(lo, better, t_min);
    }
    /* flat lanes: no codes, scale 0, the min as found */
    scale = _mm512_mask_mov_ps(scale, flat, zero);
    lo = _mm512_mask_mov_ps(lo, flat, lo0);
    uint8_t c[32][16];
    for (int i = 0; i < 32; i++) {
        __m512i l = kq_round16(_mm512_mul_ps(best_iscale, _mm512_sub_ps(x[i], best_lo)));
        l = _mm512_min_epi32(_mm512_max_epi32(l, _mm512_setzero_si512()), vmax);
        l = _mm512_maskz_mov_epi32((__mmask16)~flat, l);
        _mm_storeu_si128((__m128i *)c[i], _mm512_cvtepi32_epi8(l));
    }
    for (int j = 0; j < 16; j++)
        for (int i = 0; i < 32; i++)
            L[32 * j + i] = c[i][j];
    _mm512_storeu_ps(scale_out, scale);
    _mm512_storeu_ps(neg_min_out, _mm512_castsi512_ps(_mm512_xor_si512(
                                       _mm512_castps_si512(lo), _mm512_set1_epi32(INT32_MIN)))); /* -lo */
}

AVX512 void qc_kq_fit_blocks_k45_avx512(const float *x, const float *qw, int nb, int nmax,
                                        float *scales, float *mins, float *sw, uint8_t *L) {
    float rmin, rdelta;
    int nstep;
    qc_kq_fit_params(nmax, qw != NULL, &rmin, &rdelta, &nstep);
    const int nsub = nb == 2 ? 16 : 8; /* one block: its fits run twice, the copy is dropped */
    __m512 xt[32], wt[32];
    {
        float buf[32][16];
        for (int j = 0; j < 16; j++)
            for (int i = 0; i < 32; i++)
                buf[i][j] = x[32 * (j % nsub) + i];
        for (int i = 0; i < 32; i++)
            xt[i] = _mm512_loadu_ps(buf[i]);
        if (qw) {
            for (int j = 0; j < 16; j++)
                for (int i = 0; i < 32; i++)
                    buf[i][j] = qw[32 * (j % nsub) + i];
            for (int i = 0; i < 32; i++)
                wt[i] = _mm512_loadu_ps(buf[i]);
        }
    }
    float sc[16], mn[16];
    uint8_t codes[512];
    if (qw) {
        float sigma2[16];
        for (int b = 0; b < 2; b++) {
            const float *xb = x + QC_QK_K * (b % nb);
            float sum_x2 = 0; /* one sum over the super-block, in order */
            for (int l = 0; l < QC_QK_K; l++)
                sum_x2 += xb[l] * xb[l];
            for (int j = 0; j < 8; j++)
                sigma2[8 * b + j] = 2.0f * sum_x2 / (float)QC_QK_K;
        }
        const __m512 s2 = _mm512_loadu_ps(sigma2);
        __m512 sumw = _mm512_setzero_ps();
        for (int i = 0; i < 32; i++) {
            wt[i] = _mm512_mul_ps(wt[i], _mm512_sqrt_ps(_mm512_add_ps(s2, _mm512_mul_ps(xt[i], xt[i]))));
            sumw = _mm512_add_ps(sumw, wt[i]);
        }
        float swv[16];
        _mm512_storeu_ps(swv, sumw);
        memcpy(sw, swv, sizeof(float) * (size_t)(8 * nb));
    } else {
        __m512 sum_x2 = _mm512_setzero_ps();
        for (int i = 0; i < 32; i++)
            sum_x2 = _mm512_add_ps(sum_x2, _mm512_mul_ps(xt[i], xt[i]));
        const __m512 av_x = _mm512_sqrt_ps(_mm512_div_ps(sum_x2, _mm512_set1_ps(32.0f)));
        for (int i = 0; i < 32; i++)
            wt[i] = _mm512_add_ps(av_x, _mm512_abs_ps(xt[i]));
    }
    fit16(nmax, xt, wt, codes, sc, mn, rmin, rdelta, nstep);
    memcpy(scales, sc, sizeof(float) * (size_t)(8 * nb));
    memcpy(mins, mn, sizeof(float) * (size_t)(8 * nb));
    memcpy(L, codes, (size_t)(QC_QK_K * nb));
}

/*
 * Q6_K: fit_codes_signed of the scalar reference (nmax 32) for the sixteen
 * sub-blocks of one super-block, sub-block s in lane s.  A lane whose largest
 * magnitude is at least 1e-15 has |iscale * x| <= 33, so roundscale gives the
 * reference's integers there; the other lanes are zeroed at the end.
 */
AVX512 void qc_kq_fit_block_q6_avx512(const float *x, const float *qw, float *scales, int8_t *L) {
    const __m512 lo_code = _mm512_set1_ps(-32.0f), hi_code = _mm512_set1_ps(31.0f);
    const __m512 zero = _mm512_setzero_ps();
    __m512 xt[16], wt[16], wx[16];
    {
        const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
                                                                 12, 13, 14, 15),
                                               _mm512_set1_epi32(16));
        for (int i = 0; i < 16; i++) {
            xt[i] = _mm512_i32gather_ps(idx, x + i, 4);
            wt[i] = qw ? _mm512_i32gather_ps(idx, qw + i, 4) : _mm512_mul_ps(xt[i], xt[i]);
            wx[i] = _mm512_mul_ps(wt[i], xt[i]);
        }
    }
    __m512 amax = zero, mx = zero;
    for (int i = 0; i < 16; i++) {
        __m512 ax = _mm512_abs_ps(xt[i]);
        __mmask16 gt = _mm512_cmp_ps_mask(ax, amax, _CMP_GT_OQ);
        amax = _mm512_mask_mov_ps(amax, gt, ax);
        mx = _mm512_mask_mov_ps(mx, gt, xt[i]);
    }
    const __mmask16 live = _mm512_cmp_ps_mask(amax, _mm512_set1_ps(1e-15f), _CMP_GE_OQ);
    __m512 iscale = _mm512_div_ps(_mm512_set1_ps(-32.0f), mx);
    __m512 best_iscale = iscale;
    __m512 sumlx = zero, suml2 = zero;
    for (int i = 0; i < 16; i++) {
        __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(iscale, xt[i]), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m512 l = _mm512_min_ps(_mm512_max_ps(r, lo_code), hi_code);
        sumlx = _mm512_add_ps(sumlx, _mm512_mul_ps(wx[i], l));
        suml2 = _mm512_add_ps(suml2, _mm512_mul_ps(_mm512_mul_ps(wt[i], l), l));
    }
    __m512 scale = _mm512_maskz_div_ps(_mm512_cmp_ps_mask(suml2, zero, _CMP_NEQ_UQ), sumlx, suml2);
    __m512 best = _mm512_mul_ps(scale, sumlx);
    for (int is = -9; is <= 9; is++) {
        if (is == 0)
            continue;
        iscale = _mm512_div_ps(_mm512_set1_ps(-(32.0f + 0.1f * (float)is)), mx);
        sumlx = suml2 = zero;
        for (int i = 0; i < 16; i++) {
            __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(iscale, xt[i]),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            __m512 l = _mm512_min_ps(_mm512_max_ps(r, lo_code), hi_code);
            sumlx = _mm512_add_ps(sumlx, _mm512_mul_ps(wx[i], l));
            suml2 = _mm512_add_ps(suml2, _mm512_mul_ps(_mm512_mul_ps(wt[i], l), l));
        }
        __mmask16 better = _mm512_cmp_ps_mask(suml2, zero, _CMP_GT_OQ) &
                           _mm512_cmp_ps_mask(_mm512_mul_ps(sumlx, sumlx), _mm512_mul_ps(best, suml2),
                                              _CMP_GT_OQ);
        if (better == 0)
            continue;
        best_iscale = _mm512_mask_mov_ps(best_iscale, better, iscale);
        scale = _mm512_mask_div_ps(scale, better, sumlx, suml2);
        best = _mm512_mask_mov_ps(best, better, _mm512_mul_ps(scale, sumlx));
    }
    _mm512_storeu_ps(scales, _mm512_maskz_mov_ps(live, scale));
    int8_t c[16][16];
    for (int i = 0; i < 16; i++) {
        __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(best_iscale, xt[i]), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m512i l = _mm512_cvtps_epi32(_mm512_add_ps(_mm512_min_ps(_mm512_max_ps(r, lo_code), hi_code),
                                                     _mm512_set1_ps(32.0f)));
        _mm_storeu_si128((__m128i *)c[i], _mm512_cvtepi32_epi8(_mm512_maskz_mov_epi32(live, l)));
    }
    for (int s = 0; s < 16; s++)
        for (int i = 0; i < 16; i++)
            L[16 * s + i] = c[i][s];
}

#endif /* QC_HAVE_X86 */
