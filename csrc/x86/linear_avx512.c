/*
 * linear_avx512.c -- AVX-512 (F, BW, VL, VNNI) GEMV kernels of the linear layer
 * (m below the GEMM threshold), and the Q8_0 activation quantizer.  Design and
 * measurements: docs/linear.md and docs/performance.md.
 *
 * Layout: weights as quantcore.h, read in place.  Activations as qc_act
 * (kernels.h); for 4-bit weights in groups of four blocks (act_span4 = 4): the
 * even elements of the four blocks are the group's first 64 activation bytes, the
 * odd ones the next 64.  Short rows, a last block the row ends inside and a row's
 * last scales are read with masked loads, never past the arrays.  A pass over a
 * weight row serves up to QC_MB activation rows.
 * I8: vpdpbusd (u8 x s8 -> int32, no saturation: q <= 255, |aq| <= 127) with the
 *   weight code unsigned (4-bit and ASYM8 as stored, SYM8 xor 0x80, its extra
 *   128 * sum(aq) taken back through the offset term c = -128 d); per block
 *   acc += (d_b * da_b) * dot_b and corr += c_b * (da_b * sum(aq_b)).
 * F32: 4-bit codes become floats through a 16-entry table of the group's values
 *   (vpermps: w = d * q + c); 8-bit codes are widened, each block's sum(q * x)
 *   scaled by d_b (whole-row scales: d once at the end).
 * Accumulation: per activation row two 16-lane chains on the I8 path (plus one
 * for the offset term), four on the F32 path, reduced at the end; integer dots
 * are exact, float results within K * eps of the scalar reference.
 */
#include "../kernels.h"

#if defined(QC_HAVE_X86)
#include <immintrin.h>

#define AVX512 QC_TARGET("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")
#if defined(__GNUC__) || defined(__clang__)
#define QC_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define QC_ALWAYS_INLINE inline
#endif

#define QC_MB 4 /* activation rows per pass over a weight row */
#ifndef QC_PF_DIST
/* bytes of weights prefetched ahead (chosen by measurement: docs/performance.md) */
#define QC_PF_DIST 2048
#endif

/* asm, not _mm_prefetch: GCC 12 drops helpers made of prefetch intrinsics only */
static inline void prefetch(const void *p) {
#if defined(__GNUC__) || defined(__clang__)
    __asm__ volatile("prefetcht0 %0" : : "m"(*(const char *)p));
#else
    _mm_prefetch((const char *)p, _MM_HINT_T0);
#endif
}

static inline __mmask64 mask64(int64_t n) {
    return n >= 64 ? ~(__mmask64)0 : n <= 0 ? 0 : (((__mmask64)1 << n) - 1);
}
static inline __mmask16 mask16(int64_t n) {
    return (__mmask16)(n >= 16 ? 0xffff : n <= 0 ? 0 : ((1u << n) - 1));
}

/* round half away from zero of values already clamped to a small range (exact);
 * the bit operations go through the integer unit (float ones would need DQ) */
AVX512 static inline __m512 round_away16(__m512 v) {
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m512 frac = _mm512_abs_ps(_mm512_sub_ps(v, t));
    __mmask16 up = _mm512_cmp_ps_mask(frac, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    __m512i sign = _mm512_andnot_si512(absmask, _mm512_castps_si512(v));
    __m512 one = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(_mm512_set1_ps(1.0f)), sign));
    return _mm512_mask_add_ps(t, up, t, one); /* +-1 where the fraction is >= 0.5 */
}

/* elements 0, 2, ..., 30 and 1, 3, ..., 31 of a 32-element block held in two vectors */
static const int32_t QC_EVENS[16] = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
static const int32_t QC_ODDS[16] = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};

AVX512 static int act_quant_avx512(const float *x, int64_t k, int span, int8_t *xq, float *xd,
                                   float *xs) {
    if (span != 0 && span != 4) /* not an order this table asks for; stay correct anyway */
        return qc_linear_scalar.act_quant(x, k, span, xq, xd, xs);
    const __m512 inf = _mm512_set1_ps(INFINITY);
    const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    const __m512i ev = _mm512_loadu_si512(QC_EVENS), od = _mm512_loadu_si512(QC_ODDS);
    const int64_t nb = (k + QC_BLK - 1) / QC_BLK;
    for (int64_t b = 0; b < nb; b++) {
        const int64_t rem = k - b * QC_BLK;
        __m512 v0 = _mm512_maskz_loadu_ps(mask16(rem), x + b * QC_BLK);
        __m512 v1 = _mm512_maskz_loadu_ps(mask16(rem - 16), x + b * QC_BLK + 16);
        __m512 a0 = _mm512_abs_ps(v0), a1 = _mm512_abs_ps(v1);
        if (_mm512_cmp_ps_mask(a0, inf, _CMP_NLT_UQ) | _mm512_cmp_ps_mask(a1, inf, _CMP_NLT_UQ))
            return 1;
        qc_stats s = {0.0f, 0.0f, _mm512_reduce_max_ps(_mm512_max_ps(a0, a1))};
        qc_qparams p = qc_params_from_stats(QC_SYM8, &s);
        const __m512 id = _mm512_set1_ps(p.id);
        __m512i q0 = _mm512_cvttps_epi32(round_away16(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v0, id), lo), hi)));
        __m512i q1 = _mm512_cvttps_epi32(round_away16(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v1, id), lo), hi)));
        if (span) {
            _mm_storeu_si128((__m128i *)(xq + qc_act_pos4(4, nb, b, 0)),
                             _mm512_cvtepi32_epi8(_mm512_permutex2var_epi32(q0, ev, q1)));
            _mm_storeu_si128((__m128i *)(xq + qc_act_pos4(4, nb, b, 1)),
                             _mm512_cvtepi32_epi8(_mm512_permutex2var_epi32(q0, od, q1)));
        } else {
            _mm_storeu_si128((__m128i *)(xq + b * QC_BLK), _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128((__m128i *)(xq + b * QC_BLK + 16), _mm512_cvtepi32_epi8(q1));
        }
        xd[b] = p.d;
        xs[b] = p.d * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    }
    return 0;
}

/* Scale d and offset c (w = d * q + c) of the blocks b .. b+nv-1 of row n, one
 * per lane, for split groups (gshift >= 0); lanes >= nv hold some valid group's
 * values or zeros.  i8: the offset of SYM8 is -128 d (codes are read as q + 128). */
AVX512 static QC_ALWAYS_INLINE void load_dc16(qc_kind kind, int i8, const qc_wview *v, int64_t n,
                                              int64_t b, int64_t nv, __m512 *d16, __m512 *c16) {
    const qc_qweight *w = v->w;
    const int f16 = w->scale_dtype == QC_F16;
    const int gs = v->gshift;
    const int64_t g0 = n * v->srow + (b >> gs);
    const __mmask16 km = mask16(((b + nv - 1) >> gs) - (b >> gs) + 1);
    __m512i idx = _mm512_setzero_si512();
    if (gs) /* lane j: group of block b + j, relative to g0 */
        idx = _mm512_srlv_epi32(
            _mm512_add_epi32(_mm512_set1_epi32((int32_t)(b & (((int64_t)1 << gs) - 1))),
                             _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)),
            _mm512_set1_epi32(gs));
#define QC_EXPAND(x) (gs ? _mm512_permutexvar_ps(idx, (x)) : (x))
#define QC_LOADF(p) (f16 ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(km, (const uint16_t *)(p) + g0)) \
                         : _mm512_maskz_loadu_ps(km, (const float *)(p) + g0))
    __m512 d = QC_EXPAND(QC_LOADF(w->scales)), c;
    switch (kind) {
    case QC_SYM8:
        c = i8 ? _mm512_mul_ps(d, _mm512_set1_ps(-128.0f)) : _mm512_setzero_ps();
        break;
    case QC_SYM4:
        c = _mm512_mul_ps(d, _mm512_set1_ps(-8.0f));
        break;
    case QC_ASYM8:
    case QC_ASYM4: {
        __m512i z = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(km, (const uint8_t *)w->zeros + g0));
        c = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(d, QC_EXPAND(_mm512_cvtepi32_ps(z))));
        break;
    }
    default: /* QC_MIN4 */
        c = QC_EXPAND(QC_LOADF(w->zeros));
        break;
    }
#undef QC_EXPAND
#undef QC_LOADF
    *d16 = d;
    *c16 = c;
}

/* Whole-row scale and offset, same conventions. */
static inline void row_dc(qc_kind kind, int i8, const qc_wview *v, int64_t n, float *d, float *c) {
    qc_group_dc(v, qc_group_index(v, n, 0), d, c);
    if (kind == QC_SYM8 && i8)
        *c = -128.0f * *d;
}

/* lane patterns: for the four blocks of 4-bit group q (of a 16-block chunk),
 * [4q x4, 4q+1 x4, 4q+2 x4, 4q+3 x4]; for the two blocks of 8-bit pair p,
 * [2p x8, 2p+1 x8] */
static const int32_t QC_QIDX[4][16] = {
    {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3},
    {4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7},
    {8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11},
    {12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15}};
static const int32_t QC_PIDX[8][16] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},
    {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5},
    {6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
    {8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9},
    {10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
    {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13},
    {14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15}};

/* Per-call view of MB activation rows starting at row m. */
typedef struct {
    const int8_t *q[QC_MB];
    const float *f[QC_MB], *d[QC_MB], *s[QC_MB];
} act_rows;

static inline void rows_at(const qc_act *a, int64_t m, int mb, act_rows *r) {
    for (int i = 0; i < mb; i++) {
        r->q[i] = a->xq ? a->xq + (m + i) * a->kp : NULL;
        r->f[i] = a->xf ? a->xf + (m + i) * a->kp : NULL;
        r->d[i] = a->xd ? a->xd + (m + i) * a->nb : NULL;
        r->s[i] = a->xs + (m + i) * a->nb;
    }
}

/* The per-row sums of row_q4 / row_q8: acc holds 4 chains of MB rows (QC_MB
 * apart), corr the offset terms, s16 the block scales of the current chunk. */
AVX512 static QC_ALWAYS_INLINE void zero_sums(int MB, __m512 *acc, __m512 *corr, __m512 *s16) {
    for (int i = 0; i < MB; i++) {
        corr[i] = s16[i] = _mm512_setzero_ps();
        for (int c = 0; c < 4; c++)
            acc[c * QC_MB + i] = _mm512_setzero_ps();
    }
}
/* the 4 chains of row i added in one fixed order */
AVX512 static QC_ALWAYS_INLINE __m512 chains_sum(const __m512 *acc, int i) {
    return _mm512_add_ps(_mm512_add_ps(acc[i], acc[QC_MB + i]),
                         _mm512_add_ps(acc[2 * QC_MB + i], acc[3 * QC_MB + i]));
}

/* The blocks b .. b+nv-1 (nv <= 16, one scale chunk) of a 4-bit row against MB
 * activation rows.  FULL (a constant): nv == 16 and every byte is inside the
 * row, so no load needs a mask. */
AVX512 static QC_ALWAYS_INLINE void chunk_q4(int i8, int MB, int FULL, int grouped, int pf,
                                             const uint8_t *row, int64_t rb, int64_t b,
                                             int64_t nv, const act_rows *ar, const __m512 *s16,
                                             const float *dd, const float *cc, __m512 tabw,
                                             __m512 *acc) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int64_t q = 0; q < (FULL ? 16 : nv); q += 4) {
        const int64_t r = FULL ? 4 : (nv - q < 4 ? nv - q : 4), bq = b + q;
        const int64_t off = bq * 16;
        const int64_t len = FULL ? 64 : (rb - off < 16 * r ? rb - off : 16 * r);
        const uint8_t *wp = row + off;
        if (pf)
            prefetch(wp + pf);
        if (i8) {
            __m512i wv = FULL ? _mm512_loadu_si512(wp) : _mm512_maskz_loadu_epi8(mask64(len), wp);
            __m512i lo = _mm512_and_si512(wv, m4);
            __m512i hi = _mm512_and_si512(_mm512_srli_epi16(wv, 4), m4);
            __m512i pat = _mm512_loadu_si512(QC_QIDX[q >> 2]);
            for (int i = 0; i < MB; i++) {
                const int8_t *ap = ar->q[i] + bq * QC_BLK;
                __m512i alo, ahi;
                if (FULL || r == 4) {
                    alo = _mm512_loadu_si512(ap);
                    ahi = _mm512_loadu_si512(ap + 64);
                } else {
                    alo = _mm512_maskz_loadu_epi8(mask64(16 * r), ap);
                    ahi = _mm512_maskz_loadu_epi8(mask64(16 * r), ap + 16 * r);
                }
                __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, alo);
                dot = _mm512_dpbusd_epi32(dot, hi, ahi);
                __m512 *ac = acc + ((q >> 2) & 1) * QC_MB; /* two chains: even/odd group */
                ac[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(pat, s16[i]), ac[i]);
            }
        } else {
            for (int64_t j = 0; j < r; j++) {
                const int64_t blen = len - 16 * j;
                __m128i bytes = FULL || blen >= 16 ? _mm_loadu_si128((const __m128i *)(wp + 16 * j))
                                                   : _mm_maskz_loadu_epi8(mask16(blen), wp + 16 * j);
                __m512i cv = _mm512_cvtepu8_epi32(bytes);
                __m512 tab = grouped ? _mm512_add_ps(_mm512_mul_ps(iota, _mm512_set1_ps(dd[q + j])),
                                                     _mm512_set1_ps(cc[q + j]))
                                     : tabw;
                __m512 wl = _mm512_permutexvar_ps(cv, tab);
                __m512 wh = _mm512_permutexvar_ps(_mm512_srli_epi32(cv, 4), tab);
                /* four independent chains (low/high nibbles x even/odd block) so
                 * the FMA latency does not bound one accumulator */
                __m512 *al = acc + (2 * (j & 1)) * QC_MB, *ah = acc + (2 * (j & 1) + 1) * QC_MB;
                for (int i = 0; i < MB; i++) {
                    const float *xp = ar->f[i] + bq * QC_BLK + 16 * j;
                    al[i] = _mm512_fmadd_ps(wl, _mm512_loadu_ps(xp), al[i]);
                    ah[i] = _mm512_fmadd_ps(wh, _mm512_loadu_ps(xp + 16 * r), ah[i]);
                }
            }
        }
    }
}

/* One 4-bit weight row against MB activation rows: out[i] = y[m + i, n]. */
AVX512 static QC_ALWAYS_INLINE void row_q4(qc_kind kind, int i8, int MB, const qc_wview *v,
                                           int64_t n, const uint8_t *row, const act_rows *ar,
                                           float *out) {
    const int64_t nb = v->nb, rb = v->row_bytes;
    const int grouped = v->gshift >= 0;
    const int pf = QC_PF_DIST;
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    float dw = 1.0f, cw = 0.0f;
    if (!grouped)
        row_dc(kind, i8, v, n, &dw, &cw);
    /* f32 with one scale per row: the table of dequantized values is fixed */
    const __m512 tabw = _mm512_add_ps(_mm512_mul_ps(iota, _mm512_set1_ps(dw)), _mm512_set1_ps(cw));
    __m512 acc[4 * QC_MB], corr[QC_MB], s16[QC_MB]; /* acc: 4 chains (f32) of MB rows */
    zero_sums(MB, acc, corr, s16);
    for (int64_t b = 0; b < nb; b += 16) {
        const int64_t nv = nb - b < 16 ? nb - b : 16;
        const __mmask16 km = mask16(nv);
        __m512 d16 = _mm512_set1_ps(1.0f), c16 = _mm512_set1_ps(cw);
        if (grouped)
            load_dc16(kind, i8, v, n, b, nv, &d16, &c16);
        float dd[16], cc[16];
        if (i8) {
            for (int i = 0; i < MB; i++) {
                corr[i] = _mm512_fmadd_ps(c16, _mm512_maskz_loadu_ps(km, ar->s[i] + b), corr[i]);
                s16[i] = _mm512_mul_ps(d16, _mm512_maskz_loadu_ps(km, ar->d[i] + b));
            }
        } else if (grouped) {
            _mm512_storeu_ps(dd, d16);
            _mm512_storeu_ps(cc, c16);
        }
        if (nv == 16 && (b + 16) * 16 <= rb)
            chunk_q4(i8, MB, 1, grouped, pf, row, rb, b, nv, ar, s16, dd, cc, tabw, acc);
        else
            chunk_q4(i8, MB, 0, grouped, pf, row, rb, b, nv, ar, s16, dd, cc, tabw, acc);
    }
    for (int i = 0; i < MB; i++) {
        acc[i] = chains_sum(acc, i);
        out[i] = i8 ? dw * _mm512_reduce_add_ps(acc[i]) + _mm512_reduce_add_ps(corr[i])
                    : _mm512_reduce_add_ps(acc[i]);
    }
}

/* 16 codes of an 8-bit row as floats (len bytes readable, the rest read as 0). */
AVX512 static QC_ALWAYS_INLINE __m512 codes16(qc_kind kind, int full, const uint8_t *p, int64_t len) {
    __m128i c = full || len >= 16 ? _mm_loadu_si128((const __m128i *)p) : _mm_maskz_loadu_epi8(mask16(len), p);
    return _mm512_cvtepi32_ps(kind == QC_SYM8 ? _mm512_cvtepi8_epi32(c) : _mm512_cvtepu8_epi32(c));
}

/* The blocks b .. b+nv-1 of an 8-bit row against MB activation rows (FULL as in
 * chunk_q4). */
AVX512 static QC_ALWAYS_INLINE void chunk_q8(qc_kind kind, int i8, int MB, int FULL, int grouped,
                                             int pf, const uint8_t *row, int64_t rb, int64_t b,
                                             int64_t nv, const act_rows *ar, const __m512 *s16,
                                             const float *dd, __m512 *acc) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int64_t p = 0; p < (FULL ? 16 : nv); p += 2) {
        const int64_t r = FULL ? 2 : (nv - p < 2 ? nv - p : 2), bp = b + p;
        const int64_t off = bp * 32;
        const int64_t len = FULL ? 64 : (rb - off < 32 * r ? rb - off : 32 * r);
        const uint8_t *wp = row + off;
        if (pf)
            prefetch(wp + pf);
        if (i8) {
            __m512i wv = FULL ? _mm512_loadu_si512(wp) : _mm512_maskz_loadu_epi8(mask64(len), wp);
            if (kind == QC_SYM8)
                wv = _mm512_xor_si512(wv, flip); /* q + 128, as u8 */
            __m512i pat = _mm512_loadu_si512(QC_PIDX[p >> 1]);
            for (int i = 0; i < MB; i++) {
                const int8_t *ap = ar->q[i] + bp * QC_BLK;
                __m512i ax = FULL || r == 2 ? _mm512_loadu_si512(ap) : _mm512_maskz_loadu_epi8(mask64(32), ap);
                __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, ax);
                __m512 *ac = acc + ((p >> 1) & 1) * QC_MB; /* two chains: even/odd pair */
                ac[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(pat, s16[i]), ac[i]);
            }
        } else {
            for (int64_t j = 0; j < r; j++) {
                const int64_t blen = len - 32 * j;
                __m512 h0 = codes16(kind, FULL, wp + 32 * j, blen);
                __m512 h1 = codes16(kind, FULL, wp + 32 * j + 16, blen - 16);
                /* independent chains (halves x even/odd block), as in chunk_q4 */
                __m512 *a0 = acc + (2 * (j & 1)) * QC_MB, *a1 = acc + (2 * (j & 1) + 1) * QC_MB;
                for (int i = 0; i < MB; i++) {
                    const float *xp = ar->f[i] + (bp + j) * QC_BLK;
                    if (grouped) {
                        __m512 t = _mm512_mul_ps(h0, _mm512_loadu_ps(xp));
                        t = _mm512_fmadd_ps(h1, _mm512_loadu_ps(xp + 16), t);
                        a0[i] = _mm512_fmadd_ps(t, _mm512_set1_ps(dd[p + j]), a0[i]);
                    } else {
                        a0[i] = _mm512_fmadd_ps(h0, _mm512_loadu_ps(xp), a0[i]);
                        a1[i] = _mm512_fmadd_ps(h1, _mm512_loadu_ps(xp + 16), a1[i]);
                    }
                }
            }
        }
    }
}

/* One 8-bit weight row against MB activation rows (natural order). */
AVX512 static QC_ALWAYS_INLINE void row_q8(qc_kind kind, int i8, int MB, const qc_wview *v,
                                           int64_t n, const uint8_t *row, const act_rows *ar,
                                           float *out) {
    const int64_t nb = v->nb, rb = v->row_bytes;
    const int grouped = v->gshift >= 0;
    const int has_c = i8 || kind == QC_ASYM8;
    const int pf = QC_PF_DIST;
    float dw = 1.0f, cw = 0.0f;
    if (!grouped)
        row_dc(kind, i8, v, n, &dw, &cw);
    __m512 acc[4 * QC_MB], corr[QC_MB], s16[QC_MB]; /* acc: 4 chains (f32) of MB rows */
    zero_sums(MB, acc, corr, s16);
    for (int64_t b = 0; b < nb; b += 16) {
        const int64_t nv = nb - b < 16 ? nb - b : 16;
        const __mmask16 km = mask16(nv);
        __m512 d16 = _mm512_set1_ps(1.0f), c16 = _mm512_set1_ps(cw);
        if (grouped)
            load_dc16(kind, i8, v, n, b, nv, &d16, &c16);
        float dd[16];
        if (has_c)
            for (int i = 0; i < MB; i++)
                corr[i] = _mm512_fmadd_ps(c16, _mm512_maskz_loadu_ps(km, ar->s[i] + b), corr[i]);
        if (i8) {
            for (int i = 0; i < MB; i++)
                s16[i] = _mm512_mul_ps(d16, _mm512_maskz_loadu_ps(km, ar->d[i] + b));
        } else if (grouped) {
            _mm512_storeu_ps(dd, d16);
        }
        if (nv == 16 && (b + 16) * 32 <= rb)
            chunk_q8(kind, i8, MB, 1, grouped, pf, row, rb, b, nv, ar, s16, dd, acc);
        else
            chunk_q8(kind, i8, MB, 0, grouped, pf, row, rb, b, nv, ar, s16, dd, acc);
    }
    for (int i = 0; i < MB; i++) {
        acc[i] = chains_sum(acc, i);
        out[i] = dw * _mm512_reduce_add_ps(acc[i]) + (has_c ? _mm512_reduce_add_ps(corr[i]) : 0.0f);
    }
}

AVX512 static QC_ALWAYS_INLINE void rows_mb(qc_kind kind, int i8, int MB, const qc_wview *v,
                                            int64_t n, const uint8_t *row, const act_rows *ar,
                                            float *out) {
    if (QC_KINDS[kind].bits == 4)
        row_q4(kind, i8, MB, v, n, row, ar, out);
    else
        row_q8(kind, i8, MB, v, n, row, ar, out);
}

AVX512 static QC_ALWAYS_INLINE void gemv_avx512(qc_kind kind, int i8, const qc_wview *v,
                                                const qc_act *a, int64_t m0, int64_t m1,
                                                int64_t n0, int64_t n1, float *y, int64_t ldy) {
    const qc_qweight *w = v->w;
    /* tiles of 16 weight rows (at most ~230 KB, they stay in L2) against every
     * group of MB activation rows: the weights come from DRAM once per call */
    for (int64_t nt = n0; nt < n1; nt += 16) {
        const int64_t ne = n1 - nt < 16 ? n1 : nt + 16;
        for (int64_t m = m0; m < m1; m += QC_MB) {
            const int mb = m1 - m < QC_MB ? (int)(m1 - m) : QC_MB;
            act_rows ar;
            rows_at(a, m, mb, &ar);
            float *yb = y + (m - m0) * ldy - n0;
            for (int64_t n = nt; n < ne; n++) {
                const uint8_t *row = w->data + n * v->row_bytes;
                float out[QC_MB];
                switch (mb) { /* constant MB: the row loops unroll */
                case 1:
                    rows_mb(kind, i8, 1, v, n, row, &ar, out);
                    break;
                case 2:
                    rows_mb(kind, i8, 2, v, n, row, &ar, out);
                    break;
                case 3:
                    rows_mb(kind, i8, 3, v, n, row, &ar, out);
                    break;
                default:
                    rows_mb(kind, i8, 4, v, n, row, &ar, out);
                    break;
                }
                for (int i = 0; i < mb; i++)
                    yb[i * ldy + n] = out[i];
            }
        }
    }
}

#define QC_DEFINE_GEMV(K)                                                                       \
    AVX512 static void gemv_f32_##K##_avx512(const qc_wview *v, const qc_act *a, int64_t m0,    \
                                             int64_t m1, int64_t n0, int64_t n1, float *y,      \
                                             int64_t ldy) {                                     \
        gemv_avx512(QC_##K, 0, v, a, m0, m1, n0, n1, y, ldy);                                   \
    }                                                                                           \
    AVX512 static void gemv_i8_##K##_avx512(const qc_wview *v, const qc_act *a, int64_t m0,     \
                                            int64_t m1, int64_t n0, int64_t n1, float *y,       \
                                            int64_t ldy) {                                      \
        gemv_avx512(QC_##K, 1, v, a, m0, m1, n0, n1, y, ldy);                                   \
    }
QC_DEFINE_GEMV(SYM8)
QC_DEFINE_GEMV(ASYM8)
QC_DEFINE_GEMV(SYM4)
QC_DEFINE_GEMV(ASYM4)
QC_DEFINE_GEMV(MIN4)

const qc_linear_kernels qc_linear_avx512 = {
    .name = "avx512",
    .act_quant = act_quant_avx512,
    .act_span4 = 4,
    .gemv_f32 = {gemv_f32_SYM8_avx512, gemv_f32_ASYM8_avx512, gemv_f32_SYM4_avx512,
                 gemv_f32_ASYM4_avx512, gemv_f32_MIN4_avx512},
    .gemv_i8 = {gemv_i8_SYM8_avx512, gemv_i8_ASYM8_avx512, gemv_i8_SYM4_avx512,
                gemv_i8_ASYM4_avx512, gemv_i8_MIN4_avx512},
    /* the tiled GEMM (gemm_avx512.c), and the rows from which it beats the GEMV
     * ([f32, i8][8-bit, 4-bit]; one thread, 4096x4096, Zen 4: the GEMM's time at
     * 8 rows against the GEMV's growing time per row) */
    .gemm_f32 = QC_GEMM_TABLE(f32, avx512),
    .gemm_i8 = QC_GEMM_TABLE(i8, avx512),
    .gemm_min_m = {{6, 5}, {5, 8}},
    .packed_i8 = QC_PACKED_TABLE(avx512),
};

#endif /* QC_HAVE_X86 */
