/*
 * kquant_scalar.c -- GGUF K-quants (Q4_K, Q5_K, Q6_K): quantize and dequantize,
 * the scalar reference.
 *
 * ISA: none (C99).  Layout: ggml's super-blocks of 256 (formats.h).
 * Exactness: bit for bit ggml's reference quantizers -- quantize_row_q{4,5,6}_K_ref
 * without importance, quantize_q{4,5,6}_K with quant_weights -- for every finite
 * input: every sum is a float32 sum taken in ggml's order, every product and
 * quotient is rounded on its own (the build passes -ffp-contract=off), codes are
 * rounded with ggml's 1.5 * 2^23 trick and narrowed to 8 bits as ggml narrows them.
 * Dequantize is (d * sc) * q - dmin * m, as ggml and gguf.quants compute it.
 */
#include "../kquant.h"

#define KQ_EPS 1e-15f /* below this a group counts as all zero (ggml's GROUP_MAX_EPS) */

/* Round to the nearest integer, ties to even, for |v| < 2^22: adding 1.5 * 2^23
 * leaves the rounded value in the low mantissa bits.  Outside that range (and
 * for NaN or Inf) the result is garbage, the same garbage as ggml's. */
static inline int kq_round(float v) {
    float t = v + 12582912.0f;
    int32_t bits;
    memcpy(&bits, &t, sizeof bits);
    return (bits & 0x007fffff) - 0x00400000;
}

static inline int kq_clamp(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

static inline int fp16_overflows(uint16_t h) { return (h & 0x7c00u) == 0x7c00u; }

/*
 * Codes L in 0..nmax, a scale and a min (value ~ scale * L + min, min <= 0) for
 * n weighted values: start from the range [min(x, 0), max(x)], then try nstep + 1
 * scales (rmin + rdelta * is + nmax) / range, fit scale and min to each trial's
 * codes by weighted least squares and keep the fit of least weighted squared
 * error.  The range of later trials uses the best min so far.  Returns the scale;
 * *neg_min receives -min.  (ggml: make_qkx2_quants and make_qkx3_quants with
 * use_mad false; they agree on finite input.)
 */
static float fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L,
                           float *neg_min, float rmin, float rdelta, int nstep) {
    uint8_t trial[32];
    float lo = x[0], hi = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < lo)
            lo = x[i];
        if (x[i] > hi)
            hi = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (lo > 0)
        lo = 0;
    if (hi == lo) {
        memset(L, 0, (size_t)n);
        *neg_min = -lo;
        return 0.0f;
    }
    float iscale = (float)nmax / (hi - lo);
    float scale = 1.0f / iscale;
    float best = 0;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)kq_clamp(kq_round(iscale * (x[i] - lo)), 0, nmax);
        float diff = scale * (float)L[i] + lo - x[i];
        best += w[i] * (diff * diff);
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * (float)is + (float)nmax) / (hi - lo);
        float sl = 0, sl2 = 0, sxl = 0;
        for (int i = 0; i < n; i++) {
            int l = kq_clamp(kq_round(iscale * (x[i] - lo)), 0, nmax);
            trial[i] = (uint8_t)l;
            float fl = (float)l;
            sl += w[i] * fl;
            sl2 += w[i] * fl * fl;
            sxl += w[i] * fl * x[i];
        }
        float det = sum_w * sl2 - sl * sl;
        if (det > 0) {
            float t_scale = (sum_w * sxl - sum_x * sl) / det;
            float t_min = (sl2 * sum_x - sl * sxl) / det;
            if (t_min > 0) {
                t_min = 0;
                t_scale = sxl / sl2;
            }
            float err = 0;
            for (int i = 0; i < n; i++) {
                float diff = t_scale * (float)trial[i] + t_min - x[i];
                err += w[i] * (diff * diff);
            }
            if (err < best) {
                memcpy(L, trial, (size_t)n);
                best = err;
                scale = t_scale;
                lo = t_min;
            }
        }
    }
    *neg_min = -lo;
    return scale;
}

/*
 * Codes L in 0..nmax and one scale for n values x >= 0 (the sub-block scales or
 * mins of a super-block) under weights qw: the best of nine trial scales
 * (nmax + 0.1 * is) / max(x), is in -4..4, by weighted squared error, then up to
 * five rounds of moving single codes while the least-squares fit improves.
 * Codes are held in uint8_t as ggml holds them.  (ggml: make_qp_quants.)
 */
static float fit_codes_positive(int n, int nmax, const float *x, uint8_t *L, const float *qw) {
    float mx = 0;
    for (int i = 0; i < n; i++)
        mx = mx > x[i] ? mx : x[i];
    if (mx < KQ_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = (float)nmax / mx;
    for (int i = 0; i < n; i++)
        L[i] = (uint8_t)kq_round(iscale * x[i]);
    float scale = 1.0f / iscale;
    float best = 0;
    for (int i = 0; i < n; i++) {
        float diff = x[i] - scale * (float)L[i];
        best += qw[i] * diff * diff;
    }
    for (int is = -4; is <= 4; is++) {
        if (is == 0)
            continue;
        float iscale_is = (0.1f * (float)is + (float)nmax) / mx;
        float scale_is = 1.0f / iscale_is;
        float err = 0;
        for (int i = 0; i < n; i++) {
            int l = kq_round(iscale_is * x[i]);
            if (l > nmax)
                l = nmax;
            float diff = x[i] - scale_is * (float)l;
            err += qw[i] * diff * diff;
        }
        if (err < best) {
            best = err;
            iscale = iscale_is;
        }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = kq_round(iscale * x[i]);
        if (l > nmax)
            l = nmax;
        L[i] = (uint8_t)l;
        sumlx += qw[i] * x[i] * (float)l;
        suml2 += qw[i] * (float)l * (float)l;
    }
    for (int round = 0; round < 5; round++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float w = qw[i];
            float slx = sumlx - w * x[i] * (float)L[i];
            float sl2 = suml2 - w * (float)L[i] * (float)L[i];
            if (slx > 0 && sl2 > 0) {
                int l = kq_round(x[i] * sl2 / slx);
                if (l > nmax)
                    l = nmax;
                if (l != L[i]) {
                    slx += w * x[i] * (float)l;
                    sl2 += w * (float)l * (float)l;
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (uint8_t)l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed)
            break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/*
 * Signed codes in -nmax..nmax-1 (stored + nmax in L) and a scale for n values,
 * weights qw or x^2: the scale -nmax / (the value of largest magnitude, first on
 * ties), then nineteen trial scales -(nmax + 0.1 * is) / that value, is in -9..9,
 * each refitted by least squares, keeping the best.  (ggml: make_qx_quants with
 * rmse_type 1.)
 */
static float fit_codes_signed(int n, int nmax, const float *x, int8_t *L, const float *qw) {
    float amax = 0, mx = 0;
    for (int i = 0; i < n; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            mx = x[i];
        }
    }
    if (amax < KQ_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = (float)(-nmax) / mx;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = kq_clamp(kq_round(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)(l + nmax);
        float w = qw ? qw[i] : x[i] * x[i];
        sumlx += w * x[i] * (float)l;
        suml2 += w * (float)l * (float)l;
    }
    float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0)
            continue;
        iscale = -((float)nmax + 0.1f * (float)is) / mx;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = kq_clamp(kq_round(iscale * x[i]), -nmax, nmax - 1);
            float w = qw ? qw[i] : x[i] * x[i];
            sumlx += w * x[i] * (float)l;
            suml2 += w * (float)l * (float)l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++)
                L[i] = (int8_t)(nmax + kq_clamp(kq_round(iscale * x[i]), -nmax, nmax - 1));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Store the eight 6-bit (scale, min) pairs; codes above 63 are stored as ggml
 * stores them (their extra bits land where ggml's land). */
static void pack_scales_k4(uint8_t *s, const uint8_t *ls, const uint8_t *lm) {
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (uint8_t)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
            s[j - 4] = (uint8_t)(s[j - 4] | ((ls[j] >> 4) << 6));
            s[j] = (uint8_t)(s[j] | ((lm[j] >> 4) << 6));
        }
    }
}

/* The super-block fit parameters of ggml: without importance (quantize_row_q{4,5}_K_ref)
 * and with it (quantize_row_q{4,5}_K_impl). */
void qc_kq_fit_params(int nmax, int with_importance, float *rmin, float *rdelta, int *nstep) {
    if (with_importance) {
        *rmin = -0.9f;
        *rdelta = 0.05f;
        *nstep = 36;
    } else {
        *rmin = nmax == 15 ? -1.0f : -0.5f;
        *rdelta = 0.1f;
        *nstep = nmax == 15 ? 20 : 15;
    }
}

/* The eight sub-block fits of one Q4_K / Q5_K super-block, one after another. */
static void fit_block_k45_scalar(const float *x, const float *qw, int nmax, float *scales,
                                 float *mins, float *sw, uint8_t *L) {
    float weights[32], rmin, rdelta;
    int nstep;
    qc_kq_fit_params(nmax, qw != NULL, &rmin, &rdelta, &nstep);
    float sigma2 = 0;
    if (qw) {
        float sum_x2 = 0;
        for (int l = 0; l < QC_QK_K; l++)
            sum_x2 += x[l] * x[l];
        sigma2 = 2.0f * sum_x2 / (float)QC_QK_K;
    }
    for (int j = 0; j < 8; j++) {
        const float *xs = x + 32 * j;
        if (qw) {
            for (int l = 0; l < 32; l++)
                weights[l] = qw[32 * j + l] * sqrtf(sigma2 + xs[l] * xs[l]);
            float sumw = 0;
            for (int l = 0; l < 32; l++)
                sumw += weights[l];
            sw[j] = sumw;
        } else {
            float sum_x2 = 0;
            for (int l = 0; l < 32; l++)
                sum_x2 += xs[l] * xs[l];
            float av_x = sqrtf(sum_x2 / 32.0f);
            for (int l = 0; l < 32; l++)
                weights[l] = av_x + fabsf(xs[l]);
        }
        scales[j] = fit_scale_min(32, nmax, xs, weights, L + 32 * j, &mins[j], rmin, rdelta, nstep);
    }
}

/* The sub-block fits of nb consecutive super-blocks. */
void qc_kq_fit_blocks_k45_scalar(const float *x, const float *qw, int nb, int nmax, float *scales,
                                 float *mins, float *sw, uint8_t *L) {
    for (int b = 0; b < nb; b++)
        fit_block_k45_scalar(x + QC_QK_K * b, qw ? qw + QC_QK_K * b : NULL, nmax, scales + 8 * b,
                             mins + 8 * b, sw + 8 * b, L + QC_QK_K * b);
}

/*
 * From the sub-block fits (scales, mins, codes L of one Q4_K / Q5_K super-block,
 * nmax 15 or 31; with importance qw, sw holds each sub-block's sum of weights): the 6-bit scale and min codes, d and dmin, and the final codes
 * L[256] recomputed with the stored (rounded) parameters.  Returns 1 when d or
 * dmin overflows float16 or a sub-block's fit is not finite (the block is
 * written all the same, as ggml writes it).
 */
static int finish_block_k45(const float *x, const float *qw, int nmax, const float *scales,
                            const float *mins, const float *sw, uint16_t *d_out, uint16_t *dmin_out,
                            uint8_t *sc_out, uint8_t *L) {
    uint8_t ls[8], lm[8];
    if (!qw) {
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < 8; j++) {
            if (scales[j] > max_scale)
                max_scale = scales[j];
            if (mins[j] > max_min)
                max_min = mins[j];
        }
        float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
        float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
        for (int j = 0; j < 8; j++) {
            uint8_t a = (uint8_t)kq_round(inv_scale * scales[j]);
            uint8_t b = (uint8_t)kq_round(inv_min * mins[j]);
            ls[j] = a < 63 ? a : 63;
            lm[j] = b < 63 ? b : 63;
        }
        *d_out = qc_fp32_to_fp16(max_scale / 63.0f);
        *dmin_out = qc_fp32_to_fp16(max_min / 63.0f);
    } else {
        float d_block = fit_codes_positive(8, 63, scales, ls, sw);
        float m_block = fit_codes_positive(8, 63, mins, lm, sw);
        if (nmax == 31) { /* ggml's Q5_K clamps here, its Q4_K does not */
            for (int j = 0; j < 8; j++) {
                ls[j] = ls[j] < 63 ? ls[j] : 63;
                lm[j] = lm[j] < 63 ? lm[j] : 63;
            }
        }
        *d_out = qc_fp32_to_fp16(d_block);
        *dmin_out = qc_fp32_to_fp16(m_block);
    }
    pack_scales_k4(sc_out, ls, lm);
    const float d = qc_fp16_to_fp32(*d_out), dmin = qc_fp16_to_fp32(*dmin_out);
    for (int j = 0; j < 8; j++) {
        int sc, m;
        qc_k4_scale_min(sc_out, j, &sc, &m);
        const float dj = d * (float)sc;
        if (dj == 0.0f)
            continue; /* the codes of the search stay */
        const float mj = dmin * (float)m;
        for (int l = 0; l < 32; l++)
            L[32 * j + l] = (uint8_t)kq_clamp(kq_round((x[32 * j + l] + mj) / dj), 0, nmax);
    }
    int broken = 0; /* a search that overflowed float32 (values or importance near its range) */
    for (int j = 0; j < 8; j++)
        broken |= !(fabsf(scales[j]) < INFINITY) || !(fabsf(mins[j]) < INFINITY);
    return broken || fp16_overflows(*d_out) || fp16_overflows(*dmin_out);
}

int qc_kq_quantize_row_k45(const float *x, int64_t n, const float *importance, uint8_t *y, int nmax,
                           qc_kq_fit45_fn fit, int64_t *bad_block) {
    const size_t bs = nmax == 15 ? sizeof(qc_block_q4_k) : sizeof(qc_block_q5_k);
    uint8_t LL[2 * QC_QK_K];
    float scales2[16], mins2[16], sw2[16];
    int bad = 0;
    const int64_t nblocks = n / QC_QK_K;
    for (int64_t b = 0; b < nblocks; b++) {
        const float *xb = x + b * QC_QK_K;
        const float *qw = importance ? importance + b * QC_QK_K : NULL;
        uint8_t *blk = y + b * bs;
        uint16_t d, dmin;
        const int second = (int)(b & 1); /* fits run two super-blocks at a time */
        if (!second)
            fit(xb, qw, nblocks - b >= 2 ? 2 : 1, nmax, scales2, mins2, sw2, LL);
        uint8_t *L = LL + QC_QK_K * second;
        const float *scales = scales2 + 8 * second, *mins = mins2 + 8 * second;
        const float *sw = sw2 + 8 * second;
        if (finish_block_k45(xb, qw, nmax, scales, mins, sw, &d, &dmin, blk + 4, L) && !bad) {
            bad = 1;
            *bad_block = b;
        }
        memcpy(blk, &d, 2);
        memcpy(blk + 2, &dmin, 2);
        if (nmax == 15) {
            uint8_t *qs = blk + 16;
            for (int c = 0; c < 4; c++)
                for (int l = 0; l < 32; l++)
                    qs[32 * c + l] = (uint8_t)(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
        } else {
            uint8_t *qh = blk + 16, *qs = blk + 48;
            memset(qh, 0, QC_QK_K / 8);
            for (int c = 0; c < 4; c++) {
                const uint8_t lo_bit = (uint8_t)(1u << (2 * c)), hi_bit = (uint8_t)(2u << (2 * c));
                for (int l = 0; l < 32; l++) {
                    int a = L[64 * c + l], h = L[64 * c + 32 + l];
                    if (a > 15) {
                        a -= 16;
                        qh[l] |= lo_bit;
                    }
                    if (h > 15) {
                        h -= 16;
                        qh[l] |= hi_bit;
                    }
                    qs[32 * c + l] = (uint8_t)(a | (h << 4));
                }
            }
        }
    }
    return bad;
}

int qc_kq_quantize_row_q4_k(const float *x, int64_t n, const float *importance, qc_block_q4_k *y,
                            int64_t *bad_block) {
    return qc_kq_quantize_row_k45(x, n, importance, (uint8_t *)y, 15, qc_kq_fit_blocks_k45_scalar,
                                  bad_block);
}

int qc_kq_quantize_row_q5_k(const float *x, int64_t n, const float *importance, qc_block_q5_k *y,
                            int64_t *bad_block) {
    return qc_kq_quantize_row_k45(x, n, importance, (uint8_t *)y, 31, qc_kq_fit_blocks_k45_scalar,
                                  bad_block);
}

/* The sixteen sub-block fits of one Q6_K super-block, one after another. */
void qc_kq_fit_block_q6_scalar(const float *x, const float *qw, float *scales, int8_t *L) {
    for (int s = 0; s < 16; s++)
        scales[s] = fit_codes_signed(16, 32, x + 16 * s, L + 16 * s, qw ? qw + 16 * s : NULL);
}

int qc_kq_quantize_row_q6_k(const float *x, int64_t n, const float *importance, qc_block_q6_k *y,
                            int64_t *bad_block) {
    return qc_kq_quantize_row_q6(x, n, importance, y, qc_kq_fit_block_q6_scalar, bad_block);
}

int qc_kq_quantize_row_q6(const float *x, int64_t n, const float *importance, qc_block_q6_k *y,
                          qc_kq_fit6_fn fit, int64_t *bad_block) {
    int8_t L[QC_QK_K];
    float scales[16];
    int bad = 0;
    for (int64_t b = 0; b < n / QC_QK_K; b++) {
        const float *xb = x + b * QC_QK_K;
        qc_block_q6_k *blk = &y[b];
        float max_scale = 0, max_abs = 0;
        fit(xb, importance ? importance + b * QC_QK_K : NULL, scales, L);
        for (int s = 0; s < 16; s++) {
            float a = fabsf(scales[s]);
            if (a > max_abs) {
                max_abs = a;
                max_scale = scales[s];
            }
        }
        int broken = 0;
        for (int s = 0; s < 16; s++)
            broken |= !(fabsf(scales[s]) < INFINITY);
        if (broken && !bad) {
            bad = 1;
            *bad_block = b;
        }
        if (max_abs < KQ_EPS) {
            memset(blk, 0, sizeof *blk);
            continue;
        }
        float iscale = -128.0f / max_scale;
        blk->d = qc_fp32_to_fp16(1.0f / iscale);
        if (fp16_overflows(blk->d) && !bad) {
            bad = 1;
            *bad_block = b;
        }
        for (int s = 0; s < 16; s++) {
            int v = kq_round(iscale * scales[s]);
            blk->scales[s] = (int8_t)(v < 127 ? v : 127);
        }
        const float d = qc_fp16_to_fp32(blk->d);
        for (int s = 0; s < 16; s++) {
            const float ds = d * (float)blk->scales[s];
            if (ds == 0.0f)
                continue;
            for (int l = 0; l < 16; l++)
                L[16 * s + l] = (int8_t)(kq_clamp(kq_round(xb[16 * s + l] / ds), -32, 31) + 32);
        }
        for (int h = 0; h < 2; h++) {
            const int8_t *Lh = L + 128 * h;
            uint8_t *ql = blk->ql + 64 * h, *qh = blk->qh + 32 * h;
            for (int l = 0; l < 32; l++) {
                ql[l] = (uint8_t)((Lh[l] & 0xF) | ((Lh[l + 64] & 0xF) << 4));
                ql[l + 32] = (uint8_t)((Lh[l + 32] & 0xF) | ((Lh[l + 96] & 0xF) << 4));
                qh[l] = (uint8_t)((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) | ((Lh[l + 64] >> 4) << 4) |
                                  ((Lh[l + 96] >> 4) << 6));
            }
        }
    }
    return bad;
}

/* ---- dequantize ---------------------------------------------------------------- */

void qc_kq_dequantize_row_q4_k(const qc_block_q4_k *b, int64_t n, float *y) {
    for (int64_t i = 0; i < n / QC_QK_K; i++, b++) {
        const float d = qc_fp16_to_fp32(b->d), dmin = qc_fp16_to_fp32(b->dmin);
        for (int c = 0; c < 4; c++) {
            int sc, m;
            qc_k4_scale_min(b->scales, 2 * c, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            qc_k4_scale_min(b->scales, 2 * c + 1, &sc, &m);
            const float d2 = d * (float)sc, m2 = dmin * (float)m;
            const uint8_t *q = b->qs + 32 * c;
            for (int l = 0; l < 32; l++)
                y[l] = d1 * (float)(q[l] & 0xF) - m1;
            for (int l = 0; l < 32; l++)
                y[32 + l] = d2 * (float)(q[l] >> 4) - m2;
            y += 64;
        }
    }
}

void qc_kq_dequantize_row_q5_k(const qc_block_q5_k *b, int64_t n, float *y) {
    for (int64_t i = 0; i < n / QC_QK_K; i++, b++) {
        const float d = qc_fp16_to_fp32(b->d), dmin = qc_fp16_to_fp32(b->dmin);
        for (int c = 0; c < 4; c++) {
            int sc, m;
            qc_k4_scale_min(b->scales, 2 * c, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            qc_k4_scale_min(b->scales, 2 * c + 1, &sc, &m);
            const float d2 = d * (float)sc, m2 = dmin * (float)m;
            const uint8_t *q = b->qs + 32 * c;
            const int s1 = 2 * c, s2 = 2 * c + 1;
            for (int l = 0; l < 32; l++)
                y[l] = d1 * (float)((q[l] & 0xF) | (((b->qh[l] >> s1) & 1) << 4)) - m1;
            for (int l = 0; l < 32; l++)
                y[32 + l] = d2 * (float)((q[l] >> 4) | (((b->qh[l] >> s2) & 1) << 4)) - m2;
            y += 64;
        }
    }
}

void qc_kq_dequantize_row_q6_k(const qc_block_q6_k *b, int64_t n, float *y) {
    for (int64_t i = 0; i < n / QC_QK_K; i++, b++) {
        const float d = qc_fp16_to_fp32(b->d);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
            const int8_t *sc = b->scales + 8 * h;
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * (float)sc[is] * (float)q1;
                y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
            y += 128;
        }
    }
}

/* ---- decoded parameters ---------------------------------------------------------- */

void qc_kq_params_row_q45_k(const uint8_t *row, size_t block_bytes, int64_t n, float *scales,
                            float *offsets) {
    for (int64_t i = 0; i < n / QC_QK_K; i++, row += block_bytes) {
        uint16_t dh, mh;
        memcpy(&dh, row, 2);
        memcpy(&mh, row + 2, 2);
        const float d = qc_fp16_to_fp32(dh), dmin = qc_fp16_to_fp32(mh);
        for (int j = 0; j < 8; j++) {
            int sc, m;
            qc_k4_scale_min(row + 4, j, &sc, &m);
            *scales++ = d * (float)sc;
            *offsets++ = -(dmin * (float)m);
        }
    }
}

void qc_kq_params_row_q6_k(const qc_block_q6_k *b, int64_t n, float *scales) {
    for (int64_t i = 0; i < n / QC_QK_K; i++, b++) {
        const float d = qc_fp16_to_fp32(b->d);
        for (int s = 0; s < 16; s++)
            *scales++ = d * (float)b->scales[s];
    }
}
