/*
 * packed_avx2.c -- AVX2 kernels of the linear layer on prepacked weights,
 * qc_packed_i8_<KIND>_avx2 (listed by the AVX2 linear table).
 *
 * ISA: AVX2 + FMA + F16C, by target attribute.  Layout, contract and the float
 * sequence of every output: packed.h; a 32-row panel is 4 x 8 lanes.  Per 32-block
 * an exact int32 dot: 8-bit, the code xor 0x80 as a signed w, vpmaddubsw(|w|,
 * sign(aq, w)) (pairs <= 2 * 128 * 127) then vpmaddwd(.., 1), ASYM8 adding back
 * 128 * xsum (SYM8's q + 128 xor 0x80 is q); 4-bit, vpmaddubsw of the low and the
 * high nibbles (<= 15) against 4 activation bytes each, a block's 8 results summed
 * in int16 (<= 30480) then vpmaddwd(.., 1), SYM4 subtracting 8 * xsum.  The float
 * steps are packed.h's, lane by lane: bit-identical to the scalar reference.
 */
#include "avx2_common.h"

#if defined(QC_HAVE_X86)

#include <string.h>

#include "../packed.h"

#if defined(__GNUC__) || defined(__clang__)
#define PK_INLINE inline __attribute__((always_inline))
#define PK_ALIGNED(n) __attribute__((aligned(n)))
#else
#define PK_INLINE __forceinline
#define PK_ALIGNED(n) __declspec(align(n))
#endif

/* Rows of x per chunk: their float accumulators (PK_MC x 32, 8 KiB) stay in L1
 * while the panel streams once per chunk. */
#ifndef PK_MC
#define PK_MC 64
#endif
#define PK_RMAX 4 /* rows of x per register block */

/* 4 activation bytes at p, in every 32-bit lane. */
AVX2 static PK_INLINE __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* Exact dots of one panel block for R rows of x (x: row 0 at the block's first
 * activation, rows kp apart; xsum: row 0's block sum, rows nb apart) and the Q
 * quarters of 8 panel rows from wb: dot[r][q] as packed.h's dot_b. */
AVX2 static PK_INLINE void pk_dots(const qc_kind kind, const int R, const int Q,
                                   const uint8_t *wb, const int8_t *x, int64_t kp,
                                   const int32_t *xsum, int64_t nb, __m256i dot[PK_RMAX][4]) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (kind == QC_SYM8 || kind == QC_ASYM8) {
        const __m256i flip = _mm256_set1_epi8((char)0x80);
        for (int r = 0; r < R; r++)
            for (int q = 0; q < Q; q++)
                dot[r][q] = kind == QC_ASYM8 ? _mm256_set1_epi32(128 * xsum[r * nb])
                                             : _mm256_setzero_si256();
        for (int s = 0; s < 8; s++) {
            __m256i a[PK_RMAX];
            for (int r = 0; r < R; r++)
                a[r] = bcast4(x + r * kp + 4 * s);
            for (int q = 0; q < Q; q++) {
                __m256i w = _mm256_xor_si256(
                    _mm256_loadu_si256((const __m256i *)(wb + s * QC_PSTEP + 32 * q)), flip);
                __m256i aw = _mm256_abs_epi8(w);
                for (int r = 0; r < R; r++) {
                    __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(a[r], w));
                    dot[r][q] = _mm256_add_epi32(dot[r][q], _mm256_madd_epi16(p, ones));
                }
            }
        }
    } else {
        const __m256i m4 = _mm256_set1_epi8(0x0f);
        __m256i acc[PK_RMAX][4];
        for (int r = 0; r < R; r++)
            for (int q = 0; q < Q; q++)
                acc[r][q] = _mm256_setzero_si256();
        for (int s = 0; s < 4; s++) {
            __m256i lo[PK_RMAX], hi[PK_RMAX];
            for (int r = 0; r < R; r++) {
                lo[r] = bcast4(x + r * kp + 4 * s);
                hi[r] = bcast4(x + r * kp + 16 + 4 * s);
            }
            for (int q = 0; q < Q; q++) {
                __m256i u = _mm256_loadu_si256((const __m256i *)(wb + s * QC_PSTEP + 32 * q));
                __m256i ul = _mm256_and_si256(u, m4);
                __m256i uh = _mm256_and_si256(_mm256_srli_epi16(u, 4), m4);
                for (int r = 0; r < R; r++)
                    acc[r][q] = _mm256_add_epi16(
                        acc[r][q], _mm256_add_epi16(_mm256_maddubs_epi16(ul, lo[r]),
                                                    _mm256_maddubs_epi16(uh, hi[r])));
            }
        }
        for (int r = 0; r < R; r++)
            for (int q = 0; q < Q; q++) {
                dot[r][q] = _mm256_madd_epi16(acc[r][q], ones);
                if (kind == QC_SYM4)
                    dot[r][q] = _mm256_sub_epi32(dot[r][q], _mm256_set1_epi32(8 * xsum[r * nb]));
            }
    }
}

/* Block b of the panel for R rows of x (m: the first, as an activation row), all
 * 4 quarters, Q at a time: f[r * 32 + lane] += the block's float step. */
AVX2 static PK_INLINE void pk_rows(const qc_kind kind, const int R, const int Q, const int groups,
                                   const uint8_t *wb, const qc_act *a, int64_t m, int64_t b,
                                   const __m256 dg[4], const __m256 cg[4], float *f) {
    const int offs = kind == QC_ASYM8 || kind == QC_ASYM4 || kind == QC_MIN4;
    const int64_t kp = a->kp, nb = a->nb;
    for (int q0 = 0; q0 < 4; q0 += Q) {
        __m256i dot[PK_RMAX][4];
        pk_dots(kind, R, Q, wb + 32 * q0, a->xq + m * kp + b * QC_BLK, kp,
                a->xsum + m * nb + b, nb, dot);
        for (int r = 0; r < R; r++) {
            const __m256 xd = _mm256_set1_ps(a->xd[(m + r) * nb + b]);
            for (int q = 0; q < Q; q++) {
                float *fp = f + r * 32 + 8 * (q0 + q);
                __m256 acc = _mm256_load_ps(fp), fd = _mm256_cvtepi32_ps(dot[r][q]);
                if (!groups) {
                    acc = _mm256_fmadd_ps(fd, xd, acc);
                } else {
                    acc = _mm256_fmadd_ps(fd, _mm256_mul_ps(dg[q0 + q], xd), acc);
                    if (offs)
                        acc = _mm256_fmadd_ps(cg[q0 + q],
                                              _mm256_set1_ps(a->xs[(m + r) * nb + b]), acc);
                }
                _mm256_store_ps(fp, acc);
            }
        }
    }
}

/* 8 values of the scale dtype at p[i] as float32. */
AVX2 static PK_INLINE __m256 load8_f(const void *p, int f16, int64_t i) {
    if (f16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
    return _mm256_loadu_ps((const float *)p + i);
}

/* d and c (qc_group_dc's: (-d) * z for ASYM, the minimum for MIN4, else 0) of the
 * panel's 32 rows, scale index i0 of row 0. */
AVX2 static PK_INLINE void pk_params(const qc_kind kind, const qc_qweight *w, int64_t i0,
                                     __m256 d[4], __m256 c[4]) {
    const int f16 = w->scale_dtype == QC_F16;
    for (int q = 0; q < 4; q++) {
        d[q] = load8_f(w->scales, f16, i0 + 8 * q);
        c[q] = _mm256_setzero_ps();
        if (kind == QC_ASYM8 || kind == QC_ASYM4) {
            __m128i z8 = _mm_loadl_epi64((const __m128i *)((const uint8_t *)w->zeros + i0 + 8 * q));
            c[q] = _mm256_mul_ps(_mm256_xor_ps(d[q], _mm256_set1_ps(-0.0f)),
                                 _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(z8)));
        } else if (kind == QC_MIN4) {
            c[q] = load8_f(w->zeros, f16, i0 + 8 * q);
        }
    }
}

AVX2 static PK_INLINE void pk_kernel(const qc_kind kind, const qc_wview *v, const qc_act *a,
                                     int64_t m0, int64_t m1, int64_t n0, int64_t n1, float *y,
                                     int64_t ldy) {
    const qc_qweight *w = v->w;
    const int offs = kind == QC_ASYM8 || kind == QC_ASYM4 || kind == QC_MIN4;
    const int groups = !w->per_tensor && v->gshift >= 0;
    const int64_t nb = v->nb, ng = v->ngroups, gmask = groups ? ((int64_t)1 << v->gshift) - 1 : 0;
    const int64_t pbytes = QC_PANEL * qc_packed_bpb(kind); /* one panel block */
    PK_ALIGNED(32) float f[PK_MC * 32];
    __m256 d[4], c[4], dg[4], cg[4];
    for (int q = 0; q < 4; q++)
        d[q] = c[q] = dg[q] = cg[q] = _mm256_setzero_ps();
    for (int64_t p = n0 / QC_PANEL; p < n1 / QC_PANEL; p++) {
        const uint8_t *pw = w->data + qc_packed_block_off(kind, nb, p, 0);
        if (w->per_tensor) {
            float d0, c0;
            qc_group_dc(v, 0, &d0, &c0);
            for (int q = 0; q < 4; q++) {
                d[q] = _mm256_set1_ps(d0);
                c[q] = _mm256_set1_ps(c0);
            }
        } else if (!groups) {
            pk_params(kind, w, p * ng * QC_PANEL, d, c);
        }
        for (int64_t mc = m0; mc < m1; mc += PK_MC) {
            const int64_t nm = m1 - mc < PK_MC ? m1 - mc : PK_MC;
            for (int64_t i = 0; i < nm * 32; i += 8)
                _mm256_store_ps(f + i, _mm256_setzero_ps());
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *wb = pw + b * pbytes;
                if (groups && (b & gmask) == 0)
                    pk_params(kind, w, (p * ng + (b >> v->gshift)) * QC_PANEL, dg, cg);
                for (int64_t r = 0; r < nm;) {
                    const int64_t left = nm - r;
                    float *fr = f + r * 32;
                    if (left >= 4) {
                        pk_rows(kind, 4, 2, groups, wb, a, mc + r, b, dg, cg, fr);
                        r += 4;
                    } else if (left == 3) {
                        pk_rows(kind, 3, 2, groups, wb, a, mc + r, b, dg, cg, fr);
                        r += 3;
                    } else if (left == 2) {
                        pk_rows(kind, 2, 4, groups, wb, a, mc + r, b, dg, cg, fr);
                        r += 2;
                    } else {
                        pk_rows(kind, 1, 4, groups, wb, a, mc + r, b, dg, cg, fr);
                        r += 1;
                    }
                }
            }
            for (int64_t r = 0; r < nm; r++) {
                float *yr = y + (mc + r - m0) * ldy + (p * QC_PANEL - n0);
                const __m256 sx = _mm256_set1_ps(offs && !groups ? a->sx[mc + r] : 0.0f);
                for (int q = 0; q < 4; q++) {
                    __m256 acc = _mm256_load_ps(f + r * 32 + 8 * q);
                    if (!groups) {
                        acc = _mm256_mul_ps(d[q], acc);
                        if (offs)
                            acc = _mm256_fmadd_ps(c[q], sx, acc);
                    }
                    _mm256_storeu_ps(yr + 8 * q, acc);
                }
            }
        }
    }
}

#define PK_ENTRY(K)                                                                             \
    AVX2 void qc_packed_i8_##K##_avx2(const qc_wview *v, const qc_act *a, int64_t m0,          \
                                      int64_t m1, int64_t n0, int64_t n1, float *y,            \
                                      int64_t ldy) {                                           \
        pk_kernel(QC_##K, v, a, m0, m1, n0, n1, y, ldy);                                       \
    }
PK_ENTRY(SYM8)
PK_ENTRY(ASYM8)
PK_ENTRY(SYM4)
PK_ENTRY(ASYM4)
PK_ENTRY(MIN4)

#endif /* QC_HAVE_X86 */
