/*
 * linear_avx2.c -- AVX2/FMA GEMV kernels of the linear layer, and the Q8_0
 * activation quantizer.
 *
 * Layout: weights as quantcore.h, read in place: a 32-block of a row is 16 bytes
 * of nibbles (4-bit) or 32 bytes (8-bit), scales and zero points per group.
 * Activations as qc_act (kernels.h); for 4-bit weights each block is
 * deinterleaved, so that the low nibbles (elements 0, 2, ..., 30) meet the first
 * 16 activations and the high nibbles the last 16.  The last block of a row is
 * read through a zeroed copy when the row ends inside it.
 * I8: vpmaddubsw(u8, s8) then vpmaddwd(.., 1) per block, exact in int32: 4-bit
 *   codes (<= 15) x |aq| <= 127 cannot saturate int16; 8-bit weights use the sign
 *   trick (|w| x sign(a, w)), ASYM8 shifted by 128 first, so every pair sum stays
 *   <= 2 * 128 * 127.  Per block acc += (d * da) * dot, plus c * (da * sum(aq)).
 * F32: codes widened to float32, acc += d * sum(q * x) per block, plus c * sum(x).
 * Accumulation: two 8-lane accumulators (even and odd blocks), summed at the end;
 * the order differs from the scalar reference, so results agree to K * eps.
 */
#include "avx2_common.h"

#if defined(QC_HAVE_X86)

/* natural -> deinterleaved order inside a 32-byte block */
AVX2 static inline __m256i deinterleave32(__m256i v) {
    const __m256i sh = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2,
                                        4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    return _mm256_permute4x64_epi64(_mm256_shuffle_epi8(v, sh), 0xD8);
}

AVX2 static int act_quant_avx2(const float *x, int64_t k, int span, int8_t *xq, float *xd,
                               float *xs) {
    if (span != 0 && span != 2) /* not an order this table asks for; stay correct anyway */
        return qc_linear_scalar.act_quant(x, k, span, xq, xd, xs);
    const int deint = span != 0;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 inf = _mm256_set1_ps(INFINITY);
    const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    int64_t nb = (k + QC_BLK - 1) / QC_BLK;
    for (int64_t b = 0; b < nb; b++) {
        float tmp[QC_BLK];
        const float *src = x + b * QC_BLK;
        if ((b + 1) * QC_BLK > k) {
            int64_t rem = k - b * QC_BLK;
            memset(tmp, 0, sizeof tmp);
            memcpy(tmp, src, (size_t)rem * sizeof(float));
            src = tmp;
        }
        __m256 v[4];
        __m256 amax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(src + 8 * i);
            __m256 av = _mm256_and_ps(v[i], absmask);
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(av, inf, _CMP_NLT_UQ));
            amax = _mm256_max_ps(amax, av);
        }
        if (_mm256_movemask_ps(bad))
            return 1;
        qc_stats s = {0.0f, 0.0f, hmax8(amax)};
        qc_qparams p = qc_params_from_stats(QC_SYM8, &s);
        const __m256 id = _mm256_set1_ps(p.id);
        __m256i q[4];
        for (int i = 0; i < 4; i++)
            q[i] = _mm256_cvttps_epi32(round_away(clamp(_mm256_mul_ps(v[i], id), lo, hi)));
        __m256i packed = pack32_epi8(q[0], q[1], q[2], q[3]);
        if (deint) { /* evens and odds to their places in the pair layout */
            packed = deinterleave32(packed);
            _mm_storeu_si128((__m128i *)(xq + qc_act_pos4(2, nb, b, 0)), _mm256_castsi256_si128(packed));
            _mm_storeu_si128((__m128i *)(xq + qc_act_pos4(2, nb, b, 1)), _mm256_extracti128_si256(packed, 1));
        } else {
            _mm256_storeu_si256((__m256i *)(xq + b * QC_BLK), packed);
        }
        __m256i sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        xd[b] = p.d;
        xs[b] = p.d * (float)hsum8_epi32(sum);
    }
    return 0;
}

/* Scale and offset of the 8 blocks b..b+7 of row n, as vectors. */
AVX2 static inline void load_dc8(qc_kind kind, const qc_wview *v, int64_t n, int64_t b, __m256 *d8,
                                 __m256 *c8) {
    const qc_qweight *w = v->w;
    if (v->gshift == 0) { /* one group per block: contiguous */
        int64_t gi = n * v->srow + b;
        const int f16 = w->scale_dtype == QC_F16;
        __m256 d = f16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w->scales + gi)))
                       : _mm256_loadu_ps((const float *)w->scales + gi);
        __m256 c;
        if (kind == QC_SYM4) {
            c = _mm256_mul_ps(d, _mm256_set1_ps(-8.0f));
        } else if (kind == QC_ASYM4 || kind == QC_ASYM8) {
            __m256i z = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)((const uint8_t *)w->zeros + gi)));
            c = _mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), d), _mm256_cvtepi32_ps(z));
        } else if (kind == QC_MIN4) {
            c = f16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w->zeros + gi)))
                    : _mm256_loadu_ps((const float *)w->zeros + gi);
        } else {
            c = _mm256_setzero_ps();
        }
        *d8 = d;
        *c8 = c;
        return;
    }
    float dd[8], cc[8];
    int64_t last = -1;
    for (int j = 0; j < 8; j++) {
        int64_t gi = qc_group_index(v, n, b + j);
        if (gi != last) {
            qc_group_dc(v, gi, &dd[j], &cc[j]);
            last = gi;
        } else {
            dd[j] = dd[j - 1];
            cc[j] = cc[j - 1];
        }
    }
    *d8 = _mm256_loadu_ps(dd);
    *c8 = _mm256_loadu_ps(cc);
}

/* lane-broadcast patterns: [2p x4, 2p+1 x4] for p = 0..3, and [j x8] */
static const int32_t QC_PAIR_IDX[4][8] = {{0, 0, 0, 0, 1, 1, 1, 1}, {2, 2, 2, 2, 3, 3, 3, 3},
                                          {4, 4, 4, 4, 5, 5, 5, 5}, {6, 6, 6, 6, 7, 7, 7, 7}};

/* One 4-bit row against one activation row: sum over blocks of
 * d * (scale_a) * dot(q, a) + c * sum_a, where (i8) a = aq with scale_a = da
 * and sum_a = da * sum(aq), or (f32) a = x, scale_a = 1, sum_a = sum(x). */
AVX2 static inline float row_q4(qc_kind kind, int i8, const qc_wview *v, int64_t n,
                                const uint8_t *row, const void *xa, const float *xd,
                                const float *xs) {
    const int64_t nb = v->nb, rb = v->row_bytes;
    const int64_t nload = rb / 16 < nb ? rb / 16 : nb; /* blocks readable with full loads */
    const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), corr = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 8 <= nload && b + 8 <= (nb & ~(int64_t)1); b += 8) {
        __m256 d8, c8;
        load_dc8(kind, v, n, b, &d8, &c8);
        corr = _mm256_fmadd_ps(c8, _mm256_loadu_ps(xs + b), corr);
        __m256 s8 = i8 ? _mm256_mul_ps(d8, _mm256_loadu_ps(xd + b)) : d8;
        for (int p = 0; p < 4; p++) {
            const int64_t bp = b + 2 * p;
            __m256i wv = _mm256_loadu_si256((const __m256i *)(row + bp * 16));
            __m256i lo = _mm256_and_si256(wv, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(wv, 4), m4);
            __m256 sc = _mm256_permutevar8x32_ps(s8, _mm256_loadu_si256((const __m256i *)QC_PAIR_IDX[p]));
            __m256 f;
            if (i8) {
                const int8_t *ap = (const int8_t *)xa + bp * QC_BLK;
                __m256i dot = _mm256_add_epi16(
                    _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)ap)),
                    _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(ap + 32))));
                f = _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, ones));
            } else { /* lanes 0-3 of the result belong to block bp, 4-7 to bp + 1 */
                const float *xp = (const float *)xa + bp * QC_BLK;
                __m128i l0 = _mm256_castsi256_si128(lo), l1 = _mm256_extracti128_si256(lo, 1);
                __m128i h0 = _mm256_castsi256_si128(hi), h1 = _mm256_extracti128_si256(hi, 1);
#define QC_CV(c) _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c))
                __m256 a0 = _mm256_mul_ps(QC_CV(l0), _mm256_loadu_ps(xp));
                a0 = _mm256_fmadd_ps(QC_CV(_mm_srli_si128(l0, 8)), _mm256_loadu_ps(xp + 8), a0);
                a0 = _mm256_fmadd_ps(QC_CV(h0), _mm256_loadu_ps(xp + 32), a0);
                a0 = _mm256_fmadd_ps(QC_CV(_mm_srli_si128(h0, 8)), _mm256_loadu_ps(xp + 40), a0);
                __m256 a1 = _mm256_mul_ps(QC_CV(l1), _mm256_loadu_ps(xp + 16));
                a1 = _mm256_fmadd_ps(QC_CV(_mm_srli_si128(l1, 8)), _mm256_loadu_ps(xp + 24), a1);
                a1 = _mm256_fmadd_ps(QC_CV(h1), _mm256_loadu_ps(xp + 48), a1);
                a1 = _mm256_fmadd_ps(QC_CV(_mm_srli_si128(h1, 8)), _mm256_loadu_ps(xp + 56), a1);
#undef QC_CV
                /* fold each block's 8 lanes into 4, so lanes 0-3 / 4-7 are blocks bp / bp+1 */
                f = _mm256_add_ps(_mm256_permute2f128_ps(a0, a1, 0x20), _mm256_permute2f128_ps(a0, a1, 0x31));
            }
            if (p & 1)
                acc1 = _mm256_fmadd_ps(f, sc, acc1);
            else
                acc0 = _mm256_fmadd_ps(f, sc, acc0);
        }
    }
    float tail = 0.0f;
    for (; b < nb; b++) { /* remaining blocks one at a time, through a zeroed copy if partial */
        uint8_t tmp[16] = {0};
        const uint8_t *src = row + b * 16;
        if ((b + 1) * 16 > rb) {
            memcpy(tmp, src, (size_t)(rb - b * 16));
            src = tmp;
        }
        __m128i qb = _mm_loadu_si128((const __m128i *)src);
        __m128i lo = _mm_and_si128(qb, _mm_set1_epi8(0x0f));
        __m128i hi = _mm_and_si128(_mm_srli_epi16(qb, 4), _mm_set1_epi8(0x0f));
        float d, c, dot;
        qc_group_dc(v, qc_group_index(v, n, b), &d, &c);
        const int64_t pe = qc_act_pos4(2, nb, b, 0), po = qc_act_pos4(2, nb, b, 1);
        if (i8) {
            const int8_t *ap = (const int8_t *)xa;
            __m128i s16 = _mm_add_epi16(_mm_maddubs_epi16(lo, _mm_loadu_si128((const __m128i *)(ap + pe))),
                                        _mm_maddubs_epi16(hi, _mm_loadu_si128((const __m128i *)(ap + po))));
            __m128i s32 = _mm_madd_epi16(s16, _mm_set1_epi16(1));
            s32 = _mm_add_epi32(s32, _mm_shuffle_epi32(s32, 0x4e));
            s32 = _mm_add_epi32(s32, _mm_shuffle_epi32(s32, 0xb1));
            dot = xd[b] * (float)_mm_cvtsi128_si32(s32);
        } else {
            const float *xp = (const float *)xa;
            __m256 a = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), _mm256_loadu_ps(xp + pe));
            a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), _mm256_loadu_ps(xp + pe + 8), a);
            a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), _mm256_loadu_ps(xp + po), a);
            a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), _mm256_loadu_ps(xp + po + 8), a);
            dot = hsum8(a);
        }
        tail += d * dot + c * xs[b];
    }
    return hsum8(_mm256_add_ps(acc0, acc1)) + hsum8(corr) + tail;
}

/* The 32 code bytes of block b of an 8-bit row; a block the row ends inside goes
 * through a zeroed copy, so nothing past the row is read. */
AVX2 static inline __m256i load_q8(const uint8_t *row, int64_t rb, int64_t b) {
    if ((b + 1) * 32 <= rb)
        return _mm256_loadu_si256((const __m256i *)(row + b * 32));
    uint8_t tmp[32] = {0};
    memcpy(tmp, row + b * 32, (size_t)(rb - b * 32));
    return _mm256_loadu_si256((const __m256i *)tmp);
}

/* One 8-bit block: (i8) int32 dot as float, or (f32) sum of q * x, 8 lanes. */
AVX2 static inline __m256 block_q8(qc_kind kind, int i8, __m256i wv, const void *xa, int64_t b) {
    if (i8) {
        __m256i ax = _mm256_loadu_si256((const __m256i *)((const int8_t *)xa + b * QC_BLK));
        if (kind == QC_ASYM8)
            wv = _mm256_xor_si256(wv, _mm256_set1_epi8((char)0x80)); /* q - 128 */
        __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(wv), _mm256_sign_epi8(ax, wv));
        return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
    }
    const float *xb = (const float *)xa + b * QC_BLK;
    __m128i l = _mm256_castsi256_si128(wv), h = _mm256_extracti128_si256(wv, 1);
    __m128i c8[4] = {l, _mm_srli_si128(l, 8), h, _mm_srli_si128(h, 8)};
    __m256 a = _mm256_setzero_ps();
    for (int i = 0; i < 4; i++) {
        __m256i q32 = kind == QC_SYM8 ? _mm256_cvtepi8_epi32(c8[i]) : _mm256_cvtepu8_epi32(c8[i]);
        a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q32), _mm256_loadu_ps(xb + 8 * i), a);
    }
    return a;
}

/* One 8-bit row against one activation row (natural order).  ASYM8 with int8
 * activations runs on codes shifted by -128, so its offset is c + 128 d. */
AVX2 static inline float row_q8(qc_kind kind, int i8, const qc_wview *v, int64_t n,
                                const uint8_t *row, const void *xa, const float *xd,
                                const float *xs) {
    const int64_t nb = v->nb, rb = v->row_bytes;
    const int64_t nload = rb / 32 < nb ? rb / 32 : nb;
    const float shift = (kind == QC_ASYM8 && i8) ? 128.0f : 0.0f;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), corr = _mm256_setzero_ps();
    int64_t b = 0;
    if (v->gshift < 0) { /* one scale for the row: factor it out */
        float d, c;
        qc_group_dc(v, qc_group_index(v, n, 0), &d, &c);
        c += shift * d;
        for (; b + 2 <= nload; b += 2) {
            __m256 f0 = block_q8(kind, i8, _mm256_loadu_si256((const __m256i *)(row + b * 32)), xa, b);
            __m256 f1 = block_q8(kind, i8, _mm256_loadu_si256((const __m256i *)(row + b * 32 + 32)), xa, b + 1);
            if (i8) {
                acc0 = _mm256_fmadd_ps(f0, _mm256_set1_ps(xd[b]), acc0);
                acc1 = _mm256_fmadd_ps(f1, _mm256_set1_ps(xd[b + 1]), acc1);
            } else {
                acc0 = _mm256_add_ps(acc0, f0);
                acc1 = _mm256_add_ps(acc1, f1);
            }
        }
        float tail = 0.0f, sx = 0.0f;
        for (; b < nb; b++)
            tail += hsum8(block_q8(kind, i8, load_q8(row, rb, b), xa, b)) * (i8 ? xd[b] : 1.0f);
        if (c != 0.0f)
            for (int64_t j = 0; j < nb; j++)
                sx += xs[j];
        return d * (hsum8(_mm256_add_ps(acc0, acc1)) + tail) + c * sx;
    }
    /* split groups: scales and offsets 8 blocks at a time */
    for (; b + 8 <= nload; b += 8) {
        __m256 d8, c8;
        load_dc8(kind, v, n, b, &d8, &c8);
        c8 = _mm256_fmadd_ps(d8, _mm256_set1_ps(shift), c8);
        corr = _mm256_fmadd_ps(c8, _mm256_loadu_ps(xs + b), corr);
        float sc[8];
        _mm256_storeu_ps(sc, i8 ? _mm256_mul_ps(d8, _mm256_loadu_ps(xd + b)) : d8);
        for (int j = 0; j < 8; j += 2) {
            __m256 f0 = block_q8(kind, i8, _mm256_loadu_si256((const __m256i *)(row + (b + j) * 32)), xa, b + j);
            __m256 f1 = block_q8(kind, i8, _mm256_loadu_si256((const __m256i *)(row + (b + j) * 32 + 32)), xa, b + j + 1);
            acc0 = _mm256_fmadd_ps(f0, _mm256_set1_ps(sc[j]), acc0);
            acc1 = _mm256_fmadd_ps(f1, _mm256_set1_ps(sc[j + 1]), acc1);
        }
    }
    float tail = 0.0f;
    for (; b < nb; b++) {
        float d, c;
        qc_group_dc(v, qc_group_index(v, n, b), &d, &c);
        c += shift * d;
        __m256 f = block_q8(kind, i8, load_q8(row, rb, b), xa, b);
        tail += d * hsum8(f) * (i8 ? xd[b] : 1.0f) + c * xs[b];
    }
    return hsum8(_mm256_add_ps(acc0, acc1)) + hsum8(corr) + tail;
}

AVX2 static inline void gemv_avx2(qc_kind kind, int i8, const qc_wview *v, const qc_act *a,
                                  int64_t m0, int64_t m1, int64_t n0, int64_t n1, float *y,
                                  int64_t ldy) {
    const qc_qweight *w = v->w;
    const int four = QC_KINDS[kind].bits == 4;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *row = w->data + n * v->row_bytes;
        for (int64_t m = m0; m < m1; m++) {
            const void *xa = i8 ? (const void *)(a->xq + m * a->kp) : (const void *)(a->xf + m * a->kp);
            const float *xd = i8 ? a->xd + m * a->nb : NULL;
            const float *xs = a->xs + m * a->nb;
            y[(m - m0) * ldy + (n - n0)] = four ? row_q4(kind, i8, v, n, row, xa, xd, xs)
                                                : row_q8(kind, i8, v, n, row, xa, xd, xs);
        }
    }
}

#define QC_DEFINE_GEMV(K)                                                                       \
    AVX2 static void gemv_f32_##K##_avx2(const qc_wview *v, const qc_act *a, int64_t m0,        \
                                         int64_t m1, int64_t n0, int64_t n1, float *y,          \
                                         int64_t ldy) {                                         \
        gemv_avx2(QC_##K, 0, v, a, m0, m1, n0, n1, y, ldy);                                     \
    }                                                                                           \
    AVX2 static void gemv_i8_##K##_avx2(const qc_wview *v, const qc_act *a, int64_t m0,         \
                                        int64_t m1, int64_t n0, int64_t n1, float *y,           \
                                        int64_t ldy) {                                          \
        gemv_avx2(QC_##K, 1, v, a, m0, m1, n0, n1, y, ldy);                                     \
    }
QC_DEFINE_GEMV(SYM8)
QC_DEFINE_GEMV(ASYM8)
QC_DEFINE_GEMV(SYM4)
QC_DEFINE_GEMV(ASYM4)
QC_DEFINE_GEMV(MIN4)

const qc_linear_kernels qc_linear_avx2 = {
    .name = "avx2",
    .act_quant = act_quant_avx2,
    .act_span4 = 2,
    .gemv_f32 = {gemv_f32_SYM8_avx2, gemv_f32_ASYM8_avx2, gemv_f32_SYM4_avx2, gemv_f32_ASYM4_avx2,
                 gemv_f32_MIN4_avx2},
    .gemv_i8 = {gemv_i8_SYM8_avx2, gemv_i8_ASYM8_avx2, gemv_i8_SYM4_avx2, gemv_i8_ASYM4_avx2,
                gemv_i8_MIN4_avx2},
    /* the tiled GEMM (gemm_avx2.c), and the rows from which it beats the GEMV
     * ([f32, i8][8-bit, 4-bit]; one thread, 4096x4096, Zen 4: the GEMM's time at
     * 8 rows against the GEMV's growing time per row) */
    .gemm_f32 = QC_GEMM_TABLE(f32, avx2),
    .gemm_i8 = QC_GEMM_TABLE(i8, avx2),
    .gemm_min_m = {{4, 4}, {5, 6}},
    .packed_i8 = QC_PACKED_TABLE(avx2),
};

#endif /* QC_HAVE_X86 */
