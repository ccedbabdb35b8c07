/*
 * gemm_avx2.c -- AVX2/FMA microkernels and panel packers of the tiled GEMM of the
 * linear layer; the tile loops, prefetches and entries are gemm_driver.inc,
 * included at the end (qc_gemm_{f32,i8}_<KIND>_avx2, listed by the AVX2 linear
 * table with the rows from which they run).  Design and measurements:
 * docs/linear.md and docs/performance.md.
 *
 * ISA: AVX2 + FMA + F16C, by target attribute; the I8 4x16 block is inline
 * assembly (GCC/clang syntax; QC_NO_ASM selects the intrinsics).  Layout:
 * weights as quantcore.h, read in place and never past a row's end (a partial
 * last block through a zeroed copy); activations as qc_act (kernels.h), natural
 * order; O(tile) scratch (about 200 KiB) per call.  Panels hold 16 weight rows,
 * one row per 32-bit lane (two halves of 8).
 * F32: panels of float32 weights expanded bit for bit as qc_dequantize; per
 *   output, FMAs in k order within a K tile, K tiles added in order: within
 *   K * eps of the scalar reference.
 * I8: per 32-block an exact int32 dot: 4-bit, vpmaddubsw(codes <= 15, |aq| <=
 *   127) with a step taking the even or the odd codes of each 8 (the activations
 *   follow), 8 steps summed in int16 (<= 30480), then vpmaddwd(.., 1); 8-bit,
 *   int16 codes (SYM8 sign-, ASYM8 zero-extended; codes 0 2 / 1 3 of each 4 per
 *   step) and vpmaddwd.  Then one float step per block: whole-row scales
 *   acc += dot * da_b and y += d * acc + c * sum_b xs_b per K tile; split groups
 *   acc += dot * (d_g * da_b) + c_g * xs_b.  Float sums in another order than
 *   the reference: within K * eps of it.
 */
#include "avx2_common.h"

#if defined(QC_HAVE_X86)

#include "gemm_common.h"

/* F32 tiling: 6 x 16 microkernel, K tile 256 (a 16 KiB panel in L1), N tile
 * 256 rows, M tile up to 132 rows: x tile (140 KiB) and y tile (132 KiB) in L2. */
#define F_MR 6
#define F_NR 16
#ifndef F_KC
#define F_KC 256
#endif
#ifndef F_NC
#define F_NC 256
#endif
#ifndef F_MC
#define F_MC 132
#endif
#define F_XLD (F_KC + 16) /* row stride of the packed x tile */
#ifndef F_XPF
#define F_XPF 4 /* rows of x prefetched ahead while packing */
#endif
/* I8 tiling: microkernels of I_MR4 (4-bit) / I_MR8 (8-bit) rows x 8 * I_NH
 * columns (the assembly block is 4 x 16), K tile in 32-blocks (I_KB4 / I_KB8),
 * N tile 256 rows, M tile up to 128 rows. */
#ifndef I_MR4
#define I_MR4 4
#endif
#ifndef I_NH4
#define I_NH4 2
#endif
#ifndef I_MR8
#define I_MR8 4
#endif
#ifndef I_NH8
#define I_NH8 2
#endif
#ifndef I_KB4
#define I_KB4 16
#endif
#ifndef I_KB8
#define I_KB8 16
#endif
#define I_MR_MAX 8
#ifndef PF_PANELS
#define PF_PANELS 2 /* panels of weights prefetched ahead */
#endif
#ifndef I_NC
#define I_NC 256
#endif
#ifndef I_MC
#define I_MC 128
#endif

_Static_assert(F_KC % QC_BLK == 0 && F_NC % F_NR == 0 && F_MC % F_MR == 0, "F32 tiles");
_Static_assert(I_NC % 16 == 0 && I_MC % I_MR4 == 0 && I_MC % I_MR8 == 0, "I8 tiles");
_Static_assert(I_MR4 <= I_MR_MAX && I_MR8 <= I_MR_MAX, "I8 microkernel rows");

/* ---- helpers ------------------------------------------------------------------ */

/* 4x4 transpose of dwords inside each 128-bit lane: y[i] = [row i | row i+4]
 * in, out t[j] = dword j of rows 0..7. */
AVX2 static QC_INLINE void transpose4_epi32(const __m256i y[4], __m256i t[4]) {
    __m256i a0 = _mm256_unpacklo_epi32(y[0], y[1]), a1 = _mm256_unpackhi_epi32(y[0], y[1]);
    __m256i a2 = _mm256_unpacklo_epi32(y[2], y[3]), a3 = _mm256_unpackhi_epi32(y[2], y[3]);
    t[0] = _mm256_unpacklo_epi64(a0, a2);
    t[1] = _mm256_unpackhi_epi64(a0, a2);
    t[2] = _mm256_unpacklo_epi64(a1, a3);
    t[3] = _mm256_unpackhi_epi64(a1, a3);
}

AVX2 static QC_INLINE __m256i load2x128(const uint8_t *lo, const uint8_t *hi) {
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)lo)),
                                   _mm_loadu_si128((const __m128i *)hi), 1);
}

/* Code bytes of block b of 8 rows (rows[i] NULL: zeros), as dwords t[s] = code
 * bytes 4s..4s+3 of rows 0..7 (8-bit: s = 0..7; 4-bit: the 16 packed bytes,
 * s = 0..3, each dword 8 nibbles). */
AVX2 static QC_INLINE void gather_block8(int bits8, const uint8_t *const rows[8], int64_t rb,
                                         int64_t b, __m256i t[8]) {
    const int len = bits8 ? 32 : 16;
    uint8_t tmp[8][32];
    const uint8_t *src[8];
    for (int i = 0; i < 8; i++)
        src[i] = row_bytes_at(rows[i], rb, b * len, len, tmp[i]);
    __m256i y[4];
    for (int i = 0; i < 4; i++)
        y[i] = load2x128(src[i], src[i + 4]);
    transpose4_epi32(y, t);
    if (bits8) {
        for (int i = 0; i < 4; i++)
            y[i] = load2x128(src[i] + 16, src[i + 4] + 16);
        transpose4_epi32(y, t + 4);
    }
}

/* 8 float16/float32 values p[gi0 + i * stride] (i < nv; 0 beyond) as floats.
 * Put together in registers: eight narrow stores and one wide load would stall
 * on store forwarding, and these run once per group and panel half. */
AVX2 static QC_INLINE __m256 gather8_f(const void *p, int f16, int64_t gi0, int64_t stride, int nv) {
    if (f16) {
        const uint16_t *h = (const uint16_t *)p + gi0;
        if (stride == 1 && nv == 8)
            return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
        uint64_t lo = 0, hi = 0;
        for (int i = 0; i < nv; i++) {
            const uint64_t v = h[i * stride];
            if (i < 4)
                lo |= v << (16 * i);
            else
                hi |= v << (16 * (i - 4));
        }
        return _mm256_cvtph_ps(_mm_set_epi64x((long long)hi, (long long)lo));
    }
    const float *f = (const float *)p + gi0;
    if (stride == 1 && nv == 8)
        return _mm256_loadu_ps(f);
#define QC_F(i) (nv > (i) ? f[(i) * stride] : 0.0f)
    return _mm256_setr_ps(QC_F(0), QC_F(1), QC_F(2), QC_F(3), QC_F(4), QC_F(5), QC_F(6), QC_F(7));
#undef QC_F
}

/* 8 uint8 zero points z[gi0 + i * stride] (i < nv; 0 beyond) as int32. */
AVX2 static QC_INLINE __m256i gather8_u8(const uint8_t *z, int64_t gi0, int64_t stride, int nv) {
    uint64_t v = 0;
    for (int i = 0; i < nv; i++)
        v |= (uint64_t)z[gi0 + i * stride] << (8 * i);
    return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)v));
}

/* Parameters of block b for 8 rows n..n+7 (lanes >= nv: zeros).  F32: d, the
 * integer zero point z (8 for SYM4) and the MIN4 minimum in c.  I8: d and the
 * offset c of qc_group_dc (-d z, -8 d, the minimum), computed the same way. */
AVX2 static QC_INLINE void params8(qc_kind kind, int i8, const qc_wview *v, int64_t n, int nv,
                                   int64_t b, __m256 *d8, __m256 *c8, __m256i *z8) {
    const qc_qweight *w = v->w;
    const int f16 = w->scale_dtype == QC_F16;
    const int64_t gi0 = qc_group_index(v, n, b), st = v->srow;
    __m256 d = gather8_f(w->scales, f16, gi0, st, nv), c = _mm256_setzero_ps();
    __m256i z = _mm256_setzero_si256();
    if (kind == QC_ASYM8 || kind == QC_ASYM4) {
        z = gather8_u8((const uint8_t *)w->zeros, gi0, st, nv);
        if (i8)
            c = _mm256_mul_ps(_mm256_xor_ps(d, _mm256_set1_ps(-0.0f)), _mm256_cvtepi32_ps(z));
    } else if (kind == QC_SYM4) {
        z = _mm256_set1_epi32(8);
        if (i8)
            c = _mm256_mul_ps(_mm256_set1_ps(-8.0f), d);
    } else if (kind == QC_MIN4) {
        c = gather8_f(w->zeros, f16, gi0, st, nv);
    }
    *d8 = d;
    *c8 = c;
    *z8 = z;
}

/* ==== F32 family ================================================================= */

/* Expand 8 codes-as-int32 into float32 weights, as qc_dequantize does. */
AVX2 static QC_INLINE __m256 dq8(qc_kind kind, __m256i q, __m256 d, __m256 c, __m256i z) {
    if (kind == QC_SYM8)
        return _mm256_mul_ps(d, _mm256_cvtepi32_ps(q));
    if (kind == QC_MIN4)
        return _mm256_add_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(q)), c);
    return _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(q, z)));
}

/* Expand rows n..n+nv-1 (nv <= 16), columns [k0, k0 + kc) into a panel
 * dst[(k - k0) * 16 + row]; rows >= nv are zeros. */
AVX2 static QC_INLINE void f32_expand_panel(qc_kind kind, const qc_wview *v, int64_t n, int nv,
                                            int64_t k0, int64_t kc, float *dst) {
    const int bits8 = QC_KINDS[kind].bits == 8;
    const int64_t rb = v->row_bytes, b0 = k0 / QC_BLK, b1 = (k0 + kc) / QC_BLK;
    for (int h = 0; h < 2; h++) {
        int hv = nv - 8 * h;
        hv = hv < 0 ? 0 : hv > 8 ? 8 : hv;
        float *out = dst + 8 * h;
        if (hv == 0) {
            for (int64_t k = 0; k < kc; k++)
                _mm256_store_ps(out + k * F_NR, _mm256_setzero_ps());
            continue;
        }
        const uint8_t *rows[8];
        for (int i = 0; i < 8; i++)
            rows[i] = i < hv ? v->w->data + (n + 8 * h + i) * rb : NULL;
        __m256 d = _mm256_setzero_ps(), c = _mm256_setzero_ps();
        __m256i z = _mm256_setzero_si256();
        for (int64_t b = b0; b < b1; b++) {
            if (new_group(v, b, b0))
                params8(kind, 0, v, n + 8 * h, hv, b, &d, &c, &z);
            __m256i t[8];
            gather_block8(bits8, rows, rb, b, t);
            float *o = out + (b - b0) * QC_BLK * F_NR;
            if (bits8) {
                for (int s = 0; s < 8; s++) {
                    for (int j = 0; j < 4; j++) {
                        __m256i q = kind == QC_SYM8
                                        ? _mm256_srai_epi32(_mm256_slli_epi32(t[s], 24 - 8 * j), 24)
                                        : _mm256_and_si256(_mm256_srli_epi32(t[s], 8 * j), _mm256_set1_epi32(0xff));
                        _mm256_store_ps(o + (4 * s + j) * F_NR, dq8(kind, q, d, c, z));
                    }
                }
            } else {
                for (int s = 0; s < 4; s++) {
                    for (int j = 0; j < 8; j++) {
                        __m256i q = _mm256_and_si256(_mm256_srli_epi32(t[s], 4 * j), _mm256_set1_epi32(0xf));
                        _mm256_store_ps(o + (8 * s + j) * F_NR, dq8(kind, q, d, c, z));
                    }
                }
            }
        }
    }
}

/* c[MR x 16] (+)= x[MR rows, kc] @ panel; x rows ldx floats apart, c rows ldc apart. */
AVX2 static QC_INLINE void f32_micro(const int mr, int64_t kc, const float *x, int64_t ldx,
                                     const float *bp, float *c, int64_t ldc, int accum) {
    __m256 acc[F_MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++) {
        acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        if (accum) /* c is read at the end: start fetching it now */
            _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
    }
    for (int64_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(bp + k * F_NR), b1 = _mm256_load_ps(bp + k * F_NR + 8);
#pragma GCC unroll 6
        for (int i = 0; i < mr; i++) {
            __m256 a = _mm256_broadcast_ss(x + i * ldx + k);
            acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++) {
        float *ci = c + i * ldc;
        if (accum) {
            acc[i][0] = _mm256_add_ps(acc[i][0], _mm256_loadu_ps(ci));
            acc[i][1] = _mm256_add_ps(acc[i][1], _mm256_loadu_ps(ci + 8));
        }
        _mm256_storeu_ps(ci, acc[i][0]);
        _mm256_storeu_ps(ci + 8, acc[i][1]);
    }
}

/* The microkernel for mr rows; a panel with nc < 16 valid columns goes through
 * a 16-wide buffer so that nothing past y's columns is touched. */
AVX2 static void f32_micro_any(int mr, int64_t kc, const float *x, int64_t ldx, const float *bp,
                               float *c, int64_t ldc, int accum, int nc) {
    float tile[F_MR * F_NR];
    float *cc = c;
    int64_t lc = ldc;
    if (nc < F_NR) {
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < F_NR; j++)
                tile[i * F_NR + j] = accum && j < nc ? c[i * ldc + j] : 0.0f;
        cc = tile;
        lc = F_NR;
        accum = 1;
    }
    switch (mr) {
    case 6: f32_micro(6, kc, x, ldx, bp, cc, lc, accum); break;
    case 5: f32_micro(5, kc, x, ldx, bp, cc, lc, accum); break;
    case 4: f32_micro(4, kc, x, ldx, bp, cc, lc, accum); break;
    case 3: f32_micro(3, kc, x, ldx, bp, cc, lc, accum); break;
    case 2: f32_micro(2, kc, x, ldx, bp, cc, lc, accum); break;
    default: f32_micro(1, kc, x, ldx, bp, cc, lc, accum); break;
    }
    if (nc < F_NR)
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < nc; j++)
                c[i * ldc + j] = tile[i * F_NR + j];
}

/* Rows [m, m + rows) of x, columns [k0, k0 + kc), copied to xp (rows F_XLD
 * floats apart), so that the microkernel's rows are close together in cache. */
AVX2 static void f32_pack_x(const qc_act *a, int64_t m, int64_t rows, int64_t k0, int64_t kc,
                            float *xp) {
    for (int64_t r = 0; r < rows; r++) {
        const float *src = a->xf + (m + r) * a->kp + k0;
        float *dst = xp + r * F_XLD;
#ifndef QC_NO_PREFETCH
        if (r + F_XPF < rows) /* rows are far apart: the hardware prefetcher does not follow */
            for (int64_t e = 0; e < kc; e += 16)
                _mm_prefetch((const char *)(src + F_XPF * a->kp + e), _MM_HINT_T0);
#endif
        for (int64_t e = 0; e < kc; e += 8)
            _mm256_store_ps(dst + e, _mm256_loadu_ps(src + e));
    }
}

/* ==== I8 family ================================================================== */

/* Bytes of one 32-block of a 16-row panel: 4-bit, 8 steps of 4 codes (uint8);
 * 8-bit, 16 steps of 2 codes (int16); a step holds 2 halves x 8 rows x 4 bytes. */
#define BLK_BYTES(bits8) ((bits8) ? 1024 : 512)

/* Pack rows n..n+nv-1 (nv <= 16), blocks [b0, b1) into a panel: step s of
 * block b, half h, holds 4 bytes per row (lane) of row n + 8 h + lane:
 *   4-bit: at codes + (b - b0) * 512 + s * 64 + h * 32 + 4 * lane, codes
 *          8 t + e + 2 j (j = 0..3) for s = 2 t + e (the even, then the odd
 *          codes of each 8), as uint8;
 *   8-bit: at codes + (b - b0) * 1024 + s * 64 + h * 32 + 4 * lane, codes
 *          4 t + e and 4 t + e + 2 for s = 2 t + e, as int16 (SYM8 sign-extended,
 *          ASYM8 zero-extended);
 * pack_act puts the activations in the same order.  Per block
 * sc[(b - b0) * 32 + h * 8 + lane] = d, sc[... + 16] = c (qc_group_dc's offset).
 * Rows >= nv: zeros. */
AVX2 static QC_INLINE void i8_pack_panel(qc_kind kind, const qc_wview *v, int64_t n, int nv,
                                         int64_t b0, int64_t b1, uint8_t *codes, float *sc) {
    const int bits8 = QC_KINDS[kind].bits == 8;
    const int64_t rb = v->row_bytes, bb = BLK_BYTES(bits8);
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    for (int h = 0; h < 2; h++) {
        int hv = nv - 8 * h;
        hv = hv < 0 ? 0 : hv > 8 ? 8 : hv;
        const uint8_t *rows[8];
        for (int i = 0; i < 8; i++)
            rows[i] = i < hv ? v->w->data + (n + 8 * h + i) * rb : NULL;
        __m256 d = _mm256_setzero_ps(), c = _mm256_setzero_ps();
        __m256i z = _mm256_setzero_si256();
        for (int64_t b = b0; b < b1; b++) {
            if (hv && new_group(v, b, b0))
                params8(kind, 1, v, n + 8 * h, hv, b, &d, &c, &z);
            float *s8 = sc + (b - b0) * 32 + h * 8;
            _mm256_store_ps(s8, d);
            _mm256_store_ps(s8 + 16, c);
            uint8_t *o = codes + (b - b0) * bb + h * 32;
            const int nsteps = bits8 ? 16 : 8;
            if (hv == 0) {
                for (int st = 0; st < nsteps; st++)
                    _mm256_store_si256((__m256i *)(o + st * 64), _mm256_setzero_si256());
                continue;
            }
            uint8_t tmp[8][32];
            const uint8_t *src[8];
            for (int i = 0; i < 8; i++)
                src[i] = row_bytes_at(rows[i], rb, b * (bits8 ? 32 : 16), bits8 ? 32 : 16, tmp[i]);
            __m256i y[4], t[4];
            /* dwords of 4 code bytes (8-bit) or 8 nibbles (4-bit) of rows i and i + 4,
             * transposed: t[j] = dword j of the 8 rows; then each dword is split in
             * its even and odd codes, which the activations' order (pack_act) follows */
            for (int q = 0; q < (bits8 ? 2 : 1); q++) {
                for (int i = 0; i < 4; i++)
                    y[i] = load2x128(src[i] + 16 * q, src[i + 4] + 16 * q);
                transpose4_epi32(y, t);
                for (int j = 0; j < 4; j++) {
                    __m256i ev, od;
                    if (!bits8) { /* nibbles 0, 2, 4, 6 and 1, 3, 5, 7 as bytes */
                        ev = _mm256_and_si256(t[j], m4);
                        od = _mm256_and_si256(_mm256_srli_epi16(t[j], 4), m4);
                    } else if (kind == QC_SYM8) { /* bytes 0, 2 and 1, 3 as int16 */
                        ev = _mm256_srai_epi16(_mm256_slli_epi16(t[j], 8), 8);
                        od = _mm256_srai_epi16(t[j], 8);
                    } else {
                        ev = _mm256_and_si256(t[j], _mm256_set1_epi16(0xff));
                        od = _mm256_srli_epi16(t[j], 8);
                    }
                    _mm256_store_si256((__m256i *)(o + (8 * q + 2 * j) * 64), ev);
                    _mm256_store_si256((__m256i *)(o + (8 * q + 2 * j + 1) * 64), od);
                }
            }
        }
    }
}

#if defined(__GNUC__) && !defined(QC_NO_ASM)
#define QC_I8_ASM 1
/* The integer part of one block for 4 rows x 16 columns, in inline assembly:
 * GCC's register allocation of the intrinsics version spills and copies the
 * 8 accumulators every step.  ymm12-15 are scratch; s[i][h] come back in
 * registers.  8-bit: 16 steps of vpmaddwd (int16 weight pairs x a broadcast
 * int16 activation pair) + vpaddd; 4-bit: 8 steps of vpmaddubsw (uint8 codes x
 * 4 broadcast int8 activations) + vpaddw. */
#define QC_ROW(OP, ADD, ST, XADDR, A0, A1)                                                       \
    "vpbroadcastd " #ST "*4" XADDR ", %%ymm14\n\t"                                               \
    OP " %%ymm14, %%ymm12, %%ymm15\n\t" ADD " %%ymm15, %" A0 ", %" A0 "\n\t"                      \
    OP " %%ymm14, %%ymm13, %%ymm14\n\t" ADD " %%ymm14, %" A1 ", %" A1 "\n\t"
#define QC_STEP(OP, ADD, ST)                                                                     \
    "vmovdqa " #ST "*64(%[w]), %%ymm12\n\t"                                                      \
    "vmovdqa " #ST "*64+32(%[w]), %%ymm13\n\t"                                                   \
    QC_ROW(OP, ADD, ST, "(%[x])", "[s0]", "[s1]")                                                \
    QC_ROW(OP, ADD, ST, "(%[x],%[ld],1)", "[s2]", "[s3]")                                        \
    QC_ROW(OP, ADD, ST, "(%[x],%[ld],2)", "[s4]", "[s5]")                                        \
    QC_ROW(OP, ADD, ST, "(%[x3])", "[s6]", "[s7]")
#define QC_ZERO8                                                                                 \
    "vpxor %[s0], %[s0], %[s0]\n\t" "vpxor %[s1], %[s1], %[s1]\n\t"                              \
    "vpxor %[s2], %[s2], %[s2]\n\t" "vpxor %[s3], %[s3], %[s3]\n\t"                              \
    "vpxor %[s4], %[s4], %[s4]\n\t" "vpxor %[s5], %[s5], %[s5]\n\t"                              \
    "vpxor %[s6], %[s6], %[s6]\n\t" "vpxor %[s7], %[s7], %[s7]\n\t"
#define QC_ASM_OUT                                                                               \
    [s0] "=&x"(s[0][0]), [s1] "=&x"(s[0][1]), [s2] "=&x"(s[1][0]), [s3] "=&x"(s[1][1]),          \
    [s4] "=&x"(s[2][0]), [s5] "=&x"(s[2][1]), [s6] "=&x"(s[3][0]), [s7] "=&x"(s[3][1])
#define QC_ASM_IN [w] "r"(cb), [x] "r"(xb), [ld] "r"(xstride), [x3] "r"(xb + 3 * xstride)
#define QC_ASM_CLOBBER "xmm12", "xmm13", "xmm14", "xmm15", "memory"
AVX2 static QC_INLINE void block_ints_4x2(const int bits8, const uint8_t *cb, const uint8_t *xb,
                                          int64_t xstride, __m256i s[][2]) {
    if (bits8) {
        __asm__(QC_ZERO8
                QC_STEP("vpmaddwd", "vpaddd", 0) QC_STEP("vpmaddwd", "vpaddd", 1)
                QC_STEP("vpmaddwd", "vpaddd", 2) QC_STEP("vpmaddwd", "vpaddd", 3)
                QC_STEP("vpmaddwd", "vpaddd", 4) QC_STEP("vpmaddwd", "vpaddd", 5)
                QC_STEP("vpmaddwd", "vpaddd", 6) QC_STEP("vpmaddwd", "vpaddd", 7)
                QC_STEP("vpmaddwd", "vpaddd", 8) QC_STEP("vpmaddwd", "vpaddd", 9)
                QC_STEP("vpmaddwd", "vpaddd", 10) QC_STEP("vpmaddwd", "vpaddd", 11)
                QC_STEP("vpmaddwd", "vpaddd", 12) QC_STEP("vpmaddwd", "vpaddd", 13)
                QC_STEP("vpmaddwd", "vpaddd", 14) QC_STEP("vpmaddwd", "vpaddd", 15)
                : QC_ASM_OUT : QC_ASM_IN : QC_ASM_CLOBBER);
    } else {
        __asm__(QC_ZERO8
                QC_STEP("vpmaddubsw", "vpaddw", 0) QC_STEP("vpmaddubsw", "vpaddw", 1)
                QC_STEP("vpmaddubsw", "vpaddw", 2) QC_STEP("vpmaddubsw", "vpaddw", 3)
                QC_STEP("vpmaddubsw", "vpaddw", 4) QC_STEP("vpmaddubsw", "vpaddw", 5)
                QC_STEP("vpmaddubsw", "vpaddw", 6) QC_STEP("vpmaddubsw", "vpaddw", 7)
                : QC_ASM_OUT : QC_ASM_IN : QC_ASM_CLOBBER);
    }
}
#else
#define QC_I8_ASM 0
#endif

/* c[0:mr, 0:nc] (+)= tile (rows 16 floats apart). */
AVX2 static void store_tile(const float *tile, int mr, float *c, int64_t ldc, int accum, int nc) {
    for (int i = 0; i < mr; i++) {
        const float *t = tile + 16 * i;
        float *ci = c + i * ldc;
        if (nc == 16) {
            __m256 t0 = _mm256_load_ps(t), t1 = _mm256_load_ps(t + 8);
            if (accum) {
                t0 = _mm256_add_ps(t0, _mm256_loadu_ps(ci));
                t1 = _mm256_add_ps(t1, _mm256_loadu_ps(ci + 8));
            }
            _mm256_storeu_ps(ci, t0);
            _mm256_storeu_ps(ci + 8, t1);
        } else {
            for (int j = 0; j < nc; j++)
                ci[j] = accum ? ci[j] + t[j] : t[j];
        }
    }
}

/* c[mr x 8 nh] = over blocks [0, nblk) of a panel (codes and scales already
 * offset to the first half used).  x: 4-bit, int8 activation rows ldx bytes
 * apart; 8-bit, the same widened to int16, ldx elements apart.  xd / xs: block
 * scales and sums, ldb floats apart.  Integer accumulators in registers (int16
 * for 4-bit, int32 for 8-bit, one block at a time); the float ones live in c
 * (L1), updated once per block. */
AVX2 static QC_INLINE void i8_micro(const int mr, const int nh, const int bits8, const int whole,
                                    const int offs, int64_t nblk, const void *x, int64_t ldx,
                                    const float *xd, const float *xs, int64_t ldb,
                                    const uint8_t *codes, const float *sc, float *c, int64_t ldc) {
    const __m256i ones = _mm256_set1_epi16(1);
    const int nsteps = bits8 ? 16 : 8;
    for (int i = 0; i < mr; i++)
        for (int h = 0; h < nh; h++)
            _mm256_storeu_ps(c + i * ldc + 8 * h, _mm256_setzero_ps());
    for (int64_t b = 0; b < nblk; b++) {
        const uint8_t *cb = codes + b * BLK_BYTES(bits8);
        const uint8_t *xb = (const uint8_t *)x + b * QC_BLK * (bits8 ? 2 : 1);
        const int64_t xstride = ldx * (bits8 ? 2 : 1);
        __m256i s[I_MR_MAX][2];
#if QC_I8_ASM
        if (mr == 4 && nh == 2) {
            if (bits8)
                block_ints_4x2(1, cb, xb, xstride, s);
            else
                block_ints_4x2(0, cb, xb, xstride, s);
        } else
#endif
        {
#pragma GCC unroll 8
            for (int i = 0; i < mr; i++)
                s[i][0] = s[i][1] = _mm256_setzero_si256();
#pragma GCC unroll 2
            for (int st = 0; st < nsteps; st++) {
                __m256i w[2];
#pragma GCC unroll 2
                for (int h = 0; h < nh; h++)
                    w[h] = _mm256_load_si256((const __m256i *)(cb + st * 64 + 32 * h));
#pragma GCC unroll 8
                for (int i = 0; i < mr; i++) {
                    int32_t xv; /* 4 int8 or 2 int16 activations */
                    memcpy(&xv, xb + i * xstride + 4 * st, 4);
                    const __m256i xa = _mm256_set1_epi32(xv);
#pragma GCC unroll 2
                    for (int h = 0; h < nh; h++) {
                        if (bits8)
                            s[i][h] = _mm256_add_epi32(s[i][h], _mm256_madd_epi16(w[h], xa));
                        else
                            s[i][h] = _mm256_add_epi16(s[i][h], _mm256_maddubs_epi16(w[h], xa));
                    }
                }
            }
        }
        const float *scb = sc + b * 32;
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++) {
            const __m256 da = _mm256_broadcast_ss(xd + i * ldb + b);
#pragma GCC unroll 2
            for (int h = 0; h < nh; h++) {
                __m256i si = bits8 ? s[i][h] : _mm256_madd_epi16(s[i][h], ones);
                __m256 f = _mm256_cvtepi32_ps(si);
                float *ci = c + i * ldc + 8 * h;
                /* whole rows: d is applied once at the end, the blocks only carry da */
                __m256 acc = _mm256_fmadd_ps(f, whole ? da : _mm256_mul_ps(_mm256_load_ps(scb + 8 * h), da),
                                             _mm256_loadu_ps(ci));
                if (offs && !whole)
                    acc = _mm256_fmadd_ps(_mm256_load_ps(scb + 16 + 8 * h), _mm256_broadcast_ss(xs + i * ldb + b), acc);
                _mm256_storeu_ps(ci, acc);
            }
        }
    }
    if (whole) /* one scale and offset for the row: d * acc + c * sum of the blocks' xs */
        for (int i = 0; i < mr; i++) {
            float sx = 0.0f;
            if (offs)
                for (int64_t b = 0; b < nblk; b++)
                    sx += xs[i * ldb + b];
            for (int h = 0; h < nh; h++) {
                float *ci = c + i * ldc + 8 * h;
                __m256 r = _mm256_mul_ps(_mm256_load_ps(sc + 8 * h), _mm256_loadu_ps(ci));
                if (offs)
                    r = _mm256_fmadd_ps(_mm256_load_ps(sc + 16 + 8 * h), _mm256_set1_ps(sx), r);
                _mm256_storeu_ps(ci, r);
            }
        }
}

/* One panel (16 columns, nc valid) for mr rows: the microkernel for each half
 * (NH = 1) or both at once (NH = 2), accumulating in a local tile (no 4 KiB
 * aliasing between rows of y), then added to / stored into c. */
#define QC_I8_CALL(MR, NH, B8, WH, OF)                                                           \
    i8_micro(MR, NH, B8, WH, OF, nblk, x, ldx, xd, xs, ldb, codes + 32 * h, sc + 8 * h,          \
             tile + 8 * h, 16)
#define QC_I8_MICRO_FN(NAME, MRMAX, NH, B8, WH, OF)                                              \
    AVX2 static void NAME(int mr, int64_t nblk, const qc_xtile *xt, int64_t r, const float *xd,  \
                          const float *xs, int64_t ldb, const uint8_t *codes, const float *sc,   \
                          float *c, int64_t ldc, int accum, int nc) {                            \
        const void *x = xt->x + r * xt->ld;                                                      \
        const int64_t ldx = nblk * QC_BLK; /* elements */                                        \
        QC_ALIGNED(32) float tile[I_MR_MAX * 16];                                                \
        if (accum) /* c is read at the end: start fetching it now */                             \
            for (int i = 0; i < mr; i++)                                                         \
                _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);                          \
        for (int h = 0; h < 2; h += NH) {                                                        \
            if (NH == 1 && h == 1 && nc <= 8)                                                    \
                break;                                                                           \
            switch (mr) {                                                                        \
            case 8: QC_I8_CALL(8 <= MRMAX ? 8 : 1, NH, B8, WH, OF); break;                       \
            case 7: QC_I8_CALL(7 <= MRMAX ? 7 : 1, NH, B8, WH, OF); break;                       \
            case 6: QC_I8_CALL(6 <= MRMAX ? 6 : 1, NH, B8, WH, OF); break;                       \
            case 5: QC_I8_CALL(5 <= MRMAX ? 5 : 1, NH, B8, WH, OF); break;                       \
            case 4: QC_I8_CALL(4 <= MRMAX ? 4 : 1, NH, B8, WH, OF); break;                       \
            case 3: QC_I8_CALL(3, NH, B8, WH, OF); break;                                        \
            case 2: QC_I8_CALL(2, NH, B8, WH, OF); break;                                        \
            default: QC_I8_CALL(1, NH, B8, WH, OF); break;                                       \
            }                                                                                    \
        }                                                                                        \
        store_tile(tile, mr, c, ldc, accum, nc);                                                 \
    }
QC_I8_MICRO_FN(i8_micro_q4_whole, I_MR4, I_NH4, 0, 1, 1)
QC_I8_MICRO_FN(i8_micro_q4_group, I_MR4, I_NH4, 0, 0, 1)
QC_I8_MICRO_FN(i8_micro_q8_whole, I_MR8, I_NH8, 1, 1, 1)
QC_I8_MICRO_FN(i8_micro_q8_whole_sym, I_MR8, I_NH8, 1, 1, 0)
QC_I8_MICRO_FN(i8_micro_q8_group, I_MR8, I_NH8, 1, 0, 1)
QC_I8_MICRO_FN(i8_micro_q8_group_sym, I_MR8, I_NH8, 1, 0, 0)

/* The microkernel for a kind and scale layout (driver interface). */
static qc_i8_micro_fn i8_micro_for(qc_kind kind, int whole) {
    if (QC_KINDS[kind].bits == 4)
        return whole ? i8_micro_q4_whole : i8_micro_q4_group;
    if (kind == QC_SYM8)
        return whole ? i8_micro_q8_whole_sym : i8_micro_q8_group_sym;
    return whole ? i8_micro_q8_whole : i8_micro_q8_group;
}

/* Activation rows [m, m + rows), blocks [b0, b0 + nblk) copied to xt (rows
 * nblk * 32 elements apart, close in cache for the microkernel) in the panels'
 * order: int8, the even then the odd codes of each 8 (4-bit weights); widened to
 * int16, codes 0 2 1 3 of each 4 (8-bit weights). */
AVX2 static void i8_pack_act(qc_kind kind, const qc_act *a, int64_t m, int64_t rows, int64_t b0,
                             int64_t nblk, qc_xtile *xt) {
    const int bits8 = QC_KINDS[kind].bits == 8;
    xt->ld = nblk * QC_BLK * (bits8 ? 2 : 1);
    for (int64_t r = 0; r < rows; r++) {
        const int8_t *src = a->xq + (m + r) * a->kp + b0 * QC_BLK;
#ifndef QC_NO_PREFETCH
        if (r + F_XPF < rows) /* rows are far apart: the hardware prefetcher does not follow */
            for (int64_t e = 0; e < nblk * QC_BLK; e += 64)
                _mm_prefetch((const char *)(src + F_XPF * a->kp + e), _MM_HINT_T0);
#endif
        if (bits8) { /* 4 codes a0 a1 a2 a3 -> int16 a0 a2 a1 a3 */
            const __m128i perm = _mm_setr_epi8(0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15);
            int16_t *dst = (int16_t *)(xt->x + r * xt->ld);
            for (int64_t e = 0; e < nblk * QC_BLK; e += 16)
                _mm256_store_si256((__m256i *)(dst + e),
                                   _mm256_cvtepi8_epi16(_mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(src + e)), perm)));
        } else { /* 8 codes a0 .. a7 -> a0 a2 a4 a6 a1 a3 a5 a7 */
            const __m256i perm = _mm256_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15,
                                                  0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
            int8_t *dst = (int8_t *)(xt->x + r * xt->ld);
            for (int64_t e = 0; e < nblk * QC_BLK; e += 32)
                _mm256_store_si256((__m256i *)(dst + e),
                                   _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(src + e)), perm));
        }
    }
}

/* ---- the driver (gemm_driver.inc) ---------------------------------------------- */
#define QC_GEMM_ATTR AVX2
#define QC_GEMM_SFX avx2
#define QC_GEMM_KERNELS qc_linear_avx2
#define QC_GEMM_PREFETCH_X 1
#define I_NR 16
#define I_KB_FOR(bits8) ((bits8) ? I_KB8 : I_KB4)
#define I_MR_FOR(bits8) ((bits8) ? I_MR8 : I_MR4)
#define I_PANEL_BLK(bits8) BLK_BYTES(bits8)
#define I_PANEL_SC 32
#define I_XT_LD(bits8) (I_KB_FOR(bits8) * QC_BLK * ((bits8) ? 2 : 1))
#define I_XT_SUMS 0
#include "gemm_driver.inc"

#endif /* QC_HAVE_X86 */
