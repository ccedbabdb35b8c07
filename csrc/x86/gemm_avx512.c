/*
 * gemm_avx512.c -- AVX-512 / VNNI microkernels and panel packers of the tiled
 * GEMM of the linear layer; the tile loops, prefetches and entries are
 * gemm_driver.inc, included at the end (qc_gemm_{f32,i8}_<KIND>_avx512, listed by
 * the AVX-512 linear table with the rows from which they run).  Design and
 * measurements: docs/linear.md and docs/performance.md.
 *
 * ISA: AVX-512 F, BW, VL and VNNI, plus F16C for float16 scales, by target
 * attribute.  Layout: weights as quantcore.h, read in place and never past a
 * row's end (a partial last block through a zeroed copy); activations as qc_act
 * (kernels.h), natural order; columns past n1 never written (masked stores);
 * O(tile) scratch (at most about 350 KiB) per call.  Panels hold 32 weight rows,
 * one row per 32-bit lane (two halves of 16).
 * F32: panels of float32 weights expanded bit for bit as qc_dequantize; per
 *   output, FMAs in k order within a K tile, K tiles added in order: within
 *   K * eps of the scalar reference.
 * I8: vpdpbusd with the weight codes as the unsigned side for every kind (4-bit
 *   and ASYM8 codes as stored, SYM8 codes q + 128) and the activations (|aq| <=
 *   127) as the signed side; a SYM8 / SYM4 block's accumulator starts at -128 /
 *   -8 * sum(aq), so its dot is exactly sum(w * aq) in int32 (|dot| <= 255 * 127
 *   * 32).  Panel step s (4 codes of each of 32 rows): 8-bit, codes 4s..4s+3;
 *   4-bit, the even codes 8t, +2, +4, +6 (s = 2t) or the odd ones (s = 2t + 1)
 *   of each 8; the packed activations follow that order.  Then one float step per
 *   block: whole-row scales f += dot * da_b and y += d * f + c * sum_b xs_b per
 *   K tile; split groups f += dot * (d_g * da_b) [+ c_g * xs_b].  Float sums in
 *   another order than the reference: within K * eps of it.
 */
#include "../kernels.h"

#if defined(QC_HAVE_X86)
#include <immintrin.h>

#define AVX512 QC_TARGET("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")

#include "gemm_common.h"

/* F32 tiling: 14 x 32 microkernel, K tile 256 (a 32 KiB panel), N tile 256 rows,
 * M tile up to ~140 rows (x tile 150 KiB and y tile 140 KiB in L2). */
#ifndef F_MR
#define F_MR 14
#endif
#define F_NR 32
#ifndef F_KC
#define F_KC 256
#endif
#ifndef F_NC
#define F_NC 256
#endif
#ifndef F_MC
#define F_MC 140
#endif
#define F_XLD (F_KC + 16) /* row stride (floats) of the packed x tile */
/* I8 tiling: microkernel I_MR rows x 32 columns, K tile I_KB 32-blocks (a 32 KiB
 * panel; measured 3% faster than 16 blocks, 8 and 4 are slower), N tile 256 rows,
 * M tile up to ~256 rows (x tile 272 KiB, y tile 256 KiB in L2: a panel is packed
 * once per M tile, so M = 512 packs it twice). */
#ifndef I_MR
#define I_MR 6
#endif
#ifndef I_KB
#define I_KB 32
#endif
#ifndef I_NC
#define I_NC 256
#endif
#ifndef I_MC
#define I_MC 256
#endif
#define I_XLD (I_KB * QC_BLK + 64) /* row stride (bytes) of the packed x tile */
#define I_BLK_BYTES 1024           /* one 32-block of a 32-row panel: 8 steps x 128 bytes */
#define I_MR_MAX 8
#ifndef PF_PANELS
#define PF_PANELS 2 /* panels of weights prefetched ahead */
#endif

_Static_assert(F_KC % QC_BLK == 0 && F_NC % F_NR == 0, "F32 tiles");
_Static_assert(I_NC % 32 == 0 && I_MR <= I_MR_MAX && F_MR <= 14, "I8 / F32 microkernel");

/* ---- helpers ------------------------------------------------------------------ */

/* 16 bytes at src[i] + off for 16 rows, transposed: t[j] = bytes 4j..4j+3 of
 * rows 0..15 (row r in dword lane r). */
AVX512 static QC_INLINE void load_t16(const uint8_t *const src[16], int off, __m512i t[4]) {
    __m512i y[4];
    for (int i = 0; i < 4; i++) {
        __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(src[i] + off)));
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(src[i + 4] + off)), 1);
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(src[i + 8] + off)), 2);
        y[i] = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(src[i + 12] + off)), 3);
    }
    __m512i a0 = _mm512_unpacklo_epi32(y[0], y[1]), a1 = _mm512_unpackhi_epi32(y[0], y[1]);
    __m512i a2 = _mm512_unpacklo_epi32(y[2], y[3]), a3 = _mm512_unpackhi_epi32(y[2], y[3]);
    t[0] = _mm512_unpacklo_epi64(a0, a2);
    t[1] = _mm512_unpackhi_epi64(a0, a2);
    t[2] = _mm512_unpacklo_epi64(a1, a3);
    t[3] = _mm512_unpackhi_epi64(a1, a3);
}

/* Elements gi[lane] (lanes in mask) of base[] (esz-byte elements), zero-extended
 * to 32 bits; base is element `before` of an array of `total`.  One dword gather:
 * each lane reads the 4 bytes ending at its element (or, near the start of the
 * array, starting at the array), so nothing outside the array is touched. */
AVX512 static QC_INLINE __m512i gather16(const void *base, int esz, int64_t before, int64_t total,
                                         __m512i gi, __mmask16 mask) {
    if (esz == 4)
        return _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mask, gi, base, 4);
    if (total * esz < 4) { /* too small for one dword: element by element */
        QC_ALIGNED(64) int32_t idx[16], out[16];
        _mm512_store_si512(idx, gi);
        for (int i = 0; i < 16; i++) {
            out[i] = 0;
            if (mask >> i & 1) {
                const uint8_t *p = (const uint8_t *)base + (int64_t)idx[i] * esz;
                out[i] = esz == 1 ? p[0] : (int32_t)(p[0] | p[1] << 8);
            }
        }
        return _mm512_load_si512(out);
    }
    const __m512i byte = _mm512_mullo_epi32(gi, _mm512_set1_epi32(esz));
    const int64_t lo = before * esz > 4 ? 4 : before * esz; /* bytes readable before base */
    const __m512i off = _mm512_max_epi32(_mm512_sub_epi32(byte, _mm512_set1_epi32(4 - esz)),
                                         _mm512_set1_epi32((int32_t)-lo));
    __m512i v = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mask, off, base, 1);
    v = _mm512_srlv_epi32(v, _mm512_slli_epi32(_mm512_sub_epi32(byte, off), 3));
    return _mm512_and_si512(v, _mm512_set1_epi32(esz == 1 ? 0xff : 0xffff));
}

/* float16 or float32 values gi[lane] of p (zeros outside mask), as floats. */
AVX512 static QC_INLINE __m512 gather16_f(const void *p, int f16, int64_t before, int64_t total,
                                          __m512i gi, __mmask16 mask) {
    if (!f16)
        return _mm512_castsi512_ps(gather16(p, 4, before, total, gi, mask));
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(gather16(p, 2, before, total, gi, mask)));
}

/* Parameters of block b for rows n..n+15 (lanes >= nv: zeros): the scale d, the
 * integer zero point z as float (F32 family: 8 for SYM4) and c: the MIN4 minimum,
 * or, I8 family, the offset -d z (ASYM).  Whole rows in one group per row. */
AVX512 static QC_INLINE void params16(qc_kind kind, int i8, const qc_wview *v, int64_t n, int nv,
                                      int64_t b, __m512 *d16, __m512 *c16, __m512 *z16) {
    const qc_qweight *w = v->w;
    const int f16 = w->scale_dtype == QC_F16;
    const __mmask16 mask = (__mmask16)((1u << nv) - 1u);
    const int64_t total = w->per_tensor ? 1 : w->n * v->ngroups;
    const int64_t g0 = qc_group_index(v, n, b); /* lanes index from here: small offsets */
    const __m512i gi = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32((int32_t)v->srow));
    const int ssz = f16 ? 2 : 4;
    __m512 d = gather16_f((const char *)w->scales + g0 * ssz, f16, g0, total, gi, mask);
    __m512 c = _mm512_setzero_ps(), z = _mm512_setzero_ps();
    if (kind == QC_ASYM8 || kind == QC_ASYM4) {
        z = _mm512_cvtepi32_ps(gather16((const uint8_t *)w->zeros + g0, 1, g0, total, gi, mask));
        if (i8)
            c = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(d), _mm512_set1_epi32((int)0x80000000u))), z);
    } else if (kind == QC_SYM4) {
        z = _mm512_set1_ps(8.0f);
    } else if (kind == QC_MIN4) {
        c = gather16_f((const char *)w->zeros + g0 * ssz, f16, g0, total, gi, mask);
    }
    *d16 = d;
    *c16 = c;
    *z16 = z;
}

/* Mask of the valid lanes of half h of a 32-column panel with nc columns. */
static QC_INLINE __mmask16 half_mask(int nc, int h) {
    int v = nc - 16 * h;
    v = v < 0 ? 0 : v > 16 ? 16 : v;
    return (__mmask16)((1u << v) - 1u);
}

/* ==== F32 family ================================================================= */

/* Codes (16 lanes of int32) -> float32 weights, as qc_dequantize does. */
AVX512 static QC_INLINE __m512 dq16(qc_kind kind, __m512i q, __m512 d, __m512 c, __m512 z) {
    __m512 qf = _mm512_cvtepi32_ps(q);
    if (kind == QC_SYM8)
        return _mm512_mul_ps(d, qf);
    if (kind == QC_MIN4)
        return _mm512_add_ps(_mm512_mul_ps(d, qf), c);
    return _mm512_mul_ps(d, _mm512_sub_ps(qf, z)); /* q - z is exact in float */
}

/* Expand rows n..n+nv-1 (nv <= 32), columns [k0, k0 + kc) into a panel
 * dst[(k - k0) * 32 + row]; rows >= nv are zeros. */
AVX512 static void f32_expand_panel(qc_kind kind, const qc_wview *v, int64_t n, int nv, int64_t k0,
                                    int64_t kc, float *dst) {
    const int bits8 = QC_KINDS[kind].bits == 8;
    const int64_t rb = v->row_bytes, b0 = k0 / QC_BLK, b1 = (k0 + kc) / QC_BLK;
    const int len = bits8 ? 32 : 16;
    for (int h = 0; h < 2; h++) {
        int hv = nv - 16 * h;
        hv = hv < 0 ? 0 : hv > 16 ? 16 : hv;
        float *out = dst + 16 * h;
        if (hv == 0) {
            for (int64_t k = 0; k < kc; k++)
                _mm512_store_ps(out + k * F_NR, _mm512_setzero_ps());
            continue;
        }
        const uint8_t *rows[16];
        for (int i = 0; i < 16; i++)
            rows[i] = i < hv ? v->w->data + (n + 16 * h + i) * rb : NULL;
        __m512 d = _mm512_setzero_ps(), c = d, z = d;
        for (int64_t b = b0; b < b1; b++) {
            if (new_group(v, b, b0))
                params16(kind, 0, v, n + 16 * h, hv, b, &d, &c, &z);
            uint8_t tmp[16][32];
            const uint8_t *src[16];
            for (int i = 0; i < 16; i++)
                src[i] = row_bytes_at(rows[i], rb, b * len, len, tmp[i]);
            float *o = out + (b - b0) * QC_BLK * F_NR;
            __m512i t[4];
            if (bits8) {
                for (int q = 0; q < 2; q++) {
                    load_t16(src, 16 * q, t);
                    for (int s = 0; s < 4; s++)
                        for (int j = 0; j < 4; j++) {
                            __m512i c8 = kind == QC_SYM8
                                             ? _mm512_srai_epi32(_mm512_slli_epi32(t[s], 24 - 8 * j), 24)
                                             : _mm512_and_si512(_mm512_srli_epi32(t[s], 8 * j), _mm512_set1_epi32(0xff));
                            _mm512_store_ps(o + (16 * q + 4 * s + j) * F_NR, dq16(kind, c8, d, c, z));
                        }
                }
            } else {
                load_t16(src, 0, t);
                for (int s = 0; s < 4; s++)
                    for (int j = 0; j < 8; j++) {
                        __m512i c4 = _mm512_and_si512(_mm512_srli_epi32(t[s], 4 * j), _mm512_set1_epi32(0xf));
                        _mm512_store_ps(o + (8 * s + j) * F_NR, dq16(kind, c4, d, c, z));
                    }
            }
        }
    }
}

/* y[mr x 32] (+)= x[mr rows, kc] @ panel; x rows ldx floats apart, y rows ldy
 * apart, masked to the valid columns. */
AVX512 static QC_INLINE void f32_micro(const int mr, int64_t kc, const float *x, int64_t ldx,
                                       const float *bp, float *y, int64_t ldy, int accum,
                                       __mmask16 m0, __mmask16 m1) {
    __m512 acc[F_MR][2];
#pragma GCC unroll 14
    for (int i = 0; i < mr; i++) {
        acc[i][0] = acc[i][1] = _mm512_setzero_ps();
        if (accum)
            prefetch_l1(y + i * ldy);
    }
#pragma GCC unroll 2
    for (int64_t k = 0; k < kc; k++) {
        const __m512 b0 = _mm512_load_ps(bp + k * F_NR), b1 = _mm512_load_ps(bp + k * F_NR + 16);
#pragma GCC unroll 14
        for (int i = 0; i < mr; i++) {
            const __m512 a = _mm512_set1_ps(x[i * ldx + k]);
            acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
        }
    }
#pragma GCC unroll 14
    for (int i = 0; i < mr; i++) {
        float *yi = y + i * ldy;
        if (accum) {
            acc[i][0] = _mm512_add_ps(acc[i][0], _mm512_maskz_loadu_ps(m0, yi));
            acc[i][1] = _mm512_add_ps(acc[i][1], _mm512_maskz_loadu_ps(m1, yi + 16));
        }
        _mm512_mask_storeu_ps(yi, m0, acc[i][0]);
        _mm512_mask_storeu_ps(yi + 16, m1, acc[i][1]);
    }
}

AVX512 static void f32_micro_any(int mr, int64_t kc, const float *x, int64_t ldx, const float *bp,
                                 float *y, int64_t ldy, int accum, int nc) {
    const __mmask16 m0 = half_mask(nc, 0), m1 = half_mask(nc, 1);
#define QC_F32_CASE(R)                                                                           \
    case R:                                                                                      \
        f32_micro(R, kc, x, ldx, bp, y, ldy, accum, m0, m1);                                     \
        break;
    switch (mr) {
        QC_F32_CASE(14) QC_F32_CASE(13) QC_F32_CASE(12) QC_F32_CASE(11) QC_F32_CASE(10)
        QC_F32_CASE(9) QC_F32_CASE(8) QC_F32_CASE(7) QC_F32_CASE(6) QC_F32_CASE(5)
        QC_F32_CASE(4) QC_F32_CASE(3) QC_F32_CASE(2)
    default:
        f32_micro(1, kc, x, ldx, bp, y, ldy, accum, m0, m1);
        break;
    }
#undef QC_F32_CASE
}

/* Rows [m, m + rows) of x, columns [k0, k0 + kc), copied to xp (rows F_XLD
 * floats apart). */
AVX512 static void f32_pack_x(const qc_act *a, int64_t m, int64_t rows, int64_t k0, int64_t kc,
                              float *xp) {
    for (int64_t r = 0; r < rows; r++) {
        const float *src = a->xf + (m + r) * a->kp + k0;
        float *dst = xp + r * F_XLD;
#ifndef QC_NO_PREFETCH
        if (r + 4 < rows) /* rows are far apart: the hardware prefetcher does not follow */
            for (int64_t e = 0; e < kc; e += 16)
                prefetch_l1(src + 4 * a->kp + e);
#endif
        for (int64_t e = 0; e < kc; e += 16)
            _mm512_store_ps(dst + e, _mm512_loadu_ps(src + e));
    }
}

/* ==== I8 family ================================================================== */

/* Pack rows n..n+nv-1 (nv <= 32), blocks [b0, b1) into a panel of uint8 codes:
 * step s of block b, half h, lane r (row n + 16 h + r) at
 * codes + (b - b0) * 1024 + s * 128 + h * 64 + 4 * r (see the header for the
 * codes of a step).  Per block sc[(b - b0) * 64 + h * 16 + r] = d and [+ 32] = c
 * (the ASYM offset -d z or the MIN4 minimum; 0 for SYM, whose offset is in the
 * integer compensation); whole rows: only block b0's entries are set.  Rows >= nv:
 * zeros. */
AVX512 static void i8_pack_panel(qc_kind kind, const qc_wview *v, int64_t n, int nv, int64_t b0,
                                 int64_t b1, uint8_t *codes, float *sc) {
    const int bits8 = QC_KINDS[kind].bits == 8, whole = v->gshift < 0;
    const int64_t rb = v->row_bytes;
    const int len = bits8 ? 32 : 16;
    const __m512i m4 = _mm512_set1_epi8(0x0f), flip = _mm512_set1_epi8((char)0x80);
    for (int h = 0; h < 2; h++) {
        int hv = nv - 16 * h;
        hv = hv < 0 ? 0 : hv > 16 ? 16 : hv;
        const uint8_t *rows[16];
        for (int i = 0; i < 16; i++)
            rows[i] = i < hv ? v->w->data + (n + 16 * h + i) * rb : NULL;
        __m512 d = _mm512_setzero_ps(), c = d, z = d;
        for (int64_t b = b0; b < b1; b++) {
            if (new_group(v, b, b0)) {
                if (hv)
                    params16(kind, 1, v, n + 16 * h, hv, b, &d, &c, &z);
            }
            if (!whole || b == b0) {
                float *s16 = sc + (b - b0) * 64 + h * 16;
                _mm512_store_ps(s16, d);
                _mm512_store_ps(s16 + 32, c);
            }
            uint8_t *o = codes + (b - b0) * I_BLK_BYTES + h * 64;
            if (hv == 0) {
                for (int st = 0; st < 8; st++)
                    _mm512_store_si512((__m512i *)(o + st * 128), _mm512_setzero_si512());
                continue;
            }
            uint8_t tmp[16][32];
            const uint8_t *src[16];
            for (int i = 0; i < 16; i++)
                src[i] = row_bytes_at(rows[i], rb, b * len, len, tmp[i]);
            __m512i t[4];
            if (bits8) {
                for (int q = 0; q < 2; q++) {
                    load_t16(src, 16 * q, t);
                    for (int j = 0; j < 4; j++) {
                        __m512i u = kind == QC_SYM8 ? _mm512_xor_si512(t[j], flip) : t[j];
                        _mm512_store_si512((__m512i *)(o + (4 * q + j) * 128), u);
                    }
                }
            } else {
                load_t16(src, 0, t);
                for (int j = 0; j < 4; j++) { /* nibbles 0 2 4 6 and 1 3 5 7 as bytes */
                    _mm512_store_si512((__m512i *)(o + (2 * j) * 128), _mm512_and_si512(t[j], m4));
                    _mm512_store_si512((__m512i *)(o + (2 * j + 1) * 128),
                                       _mm512_and_si512(_mm512_srli_epi16(t[j], 4), m4));
                }
            }
        }
    }
}

/* Activation rows [m, m + rows), blocks [b0, b0 + nblk) copied to xt (rows I_XLD
 * bytes apart) in the panels' order (4-bit: the even then the odd codes of each
 * 8; 8-bit: natural).  Per row and block, cmp = -comp * sum(aq) (the integer
 * start of a SYM block; comp 128 or 8, 0 for none), and per row sx = the sum of
 * xs over the blocks (the whole-row offset term). */
AVX512 static void i8_pack_act(qc_kind kind, const qc_act *a, int64_t m, int64_t rows,
                               int64_t b0, int64_t nblk, qc_xtile *xt) {
    const int bits8 = QC_KINDS[kind].bits == 8;
    const int comp = kind == QC_SYM8 ? 128 : kind == QC_SYM4 ? 8 : 0;
    int32_t *cmp = xt->cmp;
    float *sx = xt->sx;
    xt->ld = I_XLD;
    const __m256i perm = _mm256_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15,
                                          0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (int64_t r = 0; r < rows; r++) {
        const int8_t *src = a->xq + (m + r) * a->kp + b0 * QC_BLK;
        uint8_t *dst = xt->x + r * I_XLD;
#ifndef QC_NO_PREFETCH
        if (r + 4 < rows)
            for (int64_t e = 0; e < nblk * QC_BLK; e += 64)
                prefetch_l1(src + 4 * a->kp + e);
#endif
        for (int64_t bi = 0; bi < nblk; bi++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(src + bi * QC_BLK));
            if (comp) { /* sum of the int8 codes: |x + 128| summed by vpsadbw, less 32 * 128 */
                __m256i s = _mm256_sad_epu8(_mm256_xor_si256(v, flip), _mm256_setzero_si256());
                __m128i s2 = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
                int32_t sum = (int32_t)(_mm_cvtsi128_si64(s2) + _mm_extract_epi64(s2, 1)) - 32 * 128;
                cmp[r * I_KB + bi] = -comp * sum;
            }
            if (!bits8)
                v = _mm256_shuffle_epi8(v, perm);
            _mm256_store_si256((__m256i *)(dst + bi * QC_BLK), v);
        }
        float s = 0.0f;
        for (int64_t bi = 0; bi < nblk; bi++)
            s += a->xs[(m + r) * a->nb + b0 + bi];
        sx[r] = s;
    }
}

/* y[mr x 32] (+)= over blocks [0, nblk) of a panel.  x: packed activation rows
 * I_XLD bytes apart; xd / xs: block scales and sums, ldb floats apart; cmp: the
 * SYM compensation (rows I_KB apart); sx: per row sum of xs.  Integer
 * accumulators per block in registers, then one float step per block. */
AVX512 static QC_INLINE void i8_micro(const int mr, const int whole, const int offs,
                                      const int comp, int64_t nblk, const uint8_t *x,
                                      const float *xd, const float *xs, int64_t ldb,
                                      const int32_t *cmp, const float *sx, const uint8_t *codes,
                                      const float *sc, float *y, int64_t ldy, int accum,
                                      __mmask16 k0, __mmask16 k1) {
    __m512 f[I_MR_MAX][2];
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++) {
        f[i][0] = f[i][1] = _mm512_setzero_ps();
        if (accum)
            prefetch_l1(y + i * ldy);
    }
    for (int64_t b = 0; b < nblk; b++) {
        const uint8_t *cb = codes + b * I_BLK_BYTES;
        const uint8_t *xb = x + b * QC_BLK;
        __m512i s[I_MR_MAX][2];
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++)
            s[i][0] = s[i][1] = comp ? _mm512_set1_epi32(cmp[i * I_KB + b]) : _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int st = 0; st < 8; st++) {
            const __m512i w0 = _mm512_load_si512((const __m512i *)(cb + st * 128));
            const __m512i w1 = _mm512_load_si512((const __m512i *)(cb + st * 128 + 64));
#pragma GCC unroll 8
            for (int i = 0; i < mr; i++) {
                int32_t xv;
                memcpy(&xv, xb + i * I_XLD + 4 * st, 4);
                const __m512i xa = _mm512_set1_epi32(xv);
                s[i][0] = _mm512_dpbusd_epi32(s[i][0], w0, xa);
                s[i][1] = _mm512_dpbusd_epi32(s[i][1], w1, xa);
            }
        }
        const float *scb = sc + b * 64;
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++) {
            const __m512 da = _mm512_set1_ps(xd[i * ldb + b]);
            for (int h = 0; h < 2; h++) {
                const __m512 fi = _mm512_cvtepi32_ps(s[i][h]);
                if (whole) {
                    f[i][h] = _mm512_fmadd_ps(fi, da, f[i][h]);
                } else {
                    f[i][h] = _mm512_fmadd_ps(fi, _mm512_mul_ps(_mm512_load_ps(scb + 16 * h), da), f[i][h]);
                    if (offs)
                        f[i][h] = _mm512_fmadd_ps(_mm512_load_ps(scb + 32 + 16 * h),
                                                  _mm512_set1_ps(xs[i * ldb + b]), f[i][h]);
                }
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++) {
        float *yi = y + i * ldy;
        for (int h = 0; h < 2; h++) {
            const __mmask16 k = h ? k1 : k0;
            __m512 r = f[i][h];
            if (whole) { /* one scale and offset for the row */
                r = _mm512_mul_ps(_mm512_load_ps(sc + 16 * h), r);
                if (offs)
                    r = _mm512_fmadd_ps(_mm512_load_ps(sc + 32 + 16 * h), _mm512_set1_ps(sx[i]), r);
            }
            if (accum)
                r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(k, yi + 16 * h));
            _mm512_mask_storeu_ps(yi + 16 * h, k, r);
        }
    }
}

#define QC_I8_MICRO_FN(NAME, WH, OF, CP)                                                        \
    AVX512 static void NAME(int mr, int64_t nblk, const qc_xtile *xt, int64_t r,                \
                            const float *xd, const float *xs, int64_t ldb, const uint8_t *codes, \
                            const float *sc, float *y, int64_t ldy, int accum, int nc) {        \
        const uint8_t *x = xt->x + r * xt->ld;                                                  \
        const int32_t *cmp = xt->cmp + r * xt->kb;                                              \
        const float *sx = xt->sx + r;                                                           \
        const __mmask16 k0 = half_mask(nc, 0), k1 = half_mask(nc, 1);                           \
        switch (mr) {                                                                           \
        case 8: i8_micro(8 <= I_MR ? 8 : 1, WH, OF, CP, nblk, x, xd, xs, ldb, cmp, sx, codes,   \
                         sc, y, ldy, accum, k0, k1); break;                                     \
        case 7: i8_micro(7 <= I_MR ? 7 : 1, WH, OF, CP, nblk, x, xd, xs, ldb, cmp, sx, codes,   \
                         sc, y, ldy, accum, k0, k1); break;                                     \
        case 6: i8_micro(6 <= I_MR ? 6 : 1, WH, OF, CP, nblk, x, xd, xs, ldb, cmp, sx, codes,   \
                         sc, y, ldy, accum, k0, k1); break;                                     \
        case 5: i8_micro(5 <= I_MR ? 5 : 1, WH, OF, CP, nblk, x, xd, xs, ldb, cmp, sx, codes,   \
                         sc, y, ldy, accum, k0, k1); break;                                     \
        case 4: i8_micro(4, WH, OF, CP, nblk, x, xd, xs, ldb, cmp, sx, codes, sc, y, ldy,       \
                         accum, k0, k1); break;                                                 \
        case 3: i8_micro(3, WH, OF, CP, nblk, x, xd, xs, ldb, cmp, sx, codes, sc, y, ldy,       \
                         accum, k0, k1); break;                                                 \
        case 2: i8_micro(2, WH, OF, CP, nblk, x, xd, xs, ldb, cmp, sx, codes, sc, y, ldy,       \
                         accum, k0, k1); break;                                                 \
        default: i8_micro(1, WH, OF, CP, nblk, x, xd, xs, ldb, cmp, sx, codes, sc, y, ldy,      \
                          accum, k0, k1); break;                                                \
        }                                                                                       \
    }
/* whole rows / split groups x offset term x integer compensation */
QC_I8_MICRO_FN(i8_micro_whole_off, 1, 1, 0)
QC_I8_MICRO_FN(i8_micro_whole_cmp, 1, 0, 1)
QC_I8_MICRO_FN(i8_micro_group_off, 0, 1, 0)
QC_I8_MICRO_FN(i8_micro_group_cmp, 0, 0, 1)

/* The microkernel for a kind and scale layout (driver interface). */
static qc_i8_micro_fn i8_micro_for(qc_kind kind, int whole) {
    const int comp = kind == QC_SYM8 || kind == QC_SYM4;
    return whole ? (comp ? i8_micro_whole_cmp : i8_micro_whole_off)
                 : (comp ? i8_micro_group_cmp : i8_micro_group_off);
}

/* ---- the driver (gemm_driver.inc) ---------------------------------------------- */
#define QC_GEMM_ATTR AVX512
#define QC_GEMM_SFX avx512
#define QC_GEMM_KERNELS qc_linear_avx512
#define QC_GEMM_PREFETCH_X 0
#define I_NR 32
#define I_KB_FOR(bits8) I_KB
#define I_MR_FOR(bits8) I_MR
#define I_PANEL_BLK(bits8) I_BLK_BYTES
#define I_PANEL_SC 64
#define I_XT_LD(bits8) I_XLD
#define I_XT_SUMS 1
#include "gemm_driver.inc"

#endif /* QC_HAVE_X86 */
