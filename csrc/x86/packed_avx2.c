/*
 * packed_avx2.c -- AVX2 kernels of the linear layer on prepacked weights,
 * qc_packed_i8_<KIND>_avx2 (listed by the AVX2 linear table).
 *
 * ISA: AVX2 + FMA + F16C, by target attribute.  Layout, contract and the float
 * sequence of every output: packed.h; a 32-row panel is 4 x 8 lanes.  Per 32-block
 * an exact int32 dot: 8-bit, vpmaddwd of the codes 0 2 and 1 3 of each lane as
 * int16 (0..255) against int16 activation pairs (products <= 255 * 127), SYM8
 * subtracting 128 * xsum; 4-bit, vpmaddubsw of the low and the high nibbles
 * (<= 15) against 4 activation bytes each, a block's 8 results summed in int16
 * (<= 30480) then vpmaddwd(.., 1), SYM4 subtracting 8 * xsum.  The float steps
 * are packed.h's, lane by lane: bit-identical to the scalar reference.
 * Order: chunks of up to 128 rows of x, copied block-major (8-bit: widened to
 * int16; one malloc per call), each panel's K streamed once per chunk.  The dot
 * loops are inline assembly (GCC/clang syntax); QC_NO_ASM, or no memory for the
 * copy, selects intrinsics on the int8 activations (8-bit: vpmaddubsw(|w|,
 * sign(aq, w)) with w = code xor 0x80, pairs <= 2 * 128 * 127).
 */
#include "avx2_common.h"

#if defined(QC_HAVE_X86)

#include <stdlib.h>
#include <string.h>

#include "../packed.h"

#if defined(__GNUC__) || defined(__clang__)
#define PK_INLINE inline __attribute__((always_inline))
#define PK_ALIGNED(n) __attribute__((aligned(n)))
#else
#define PK_INLINE __forceinline
#define PK_ALIGNED(n) __declspec(align(n))
#endif

/* Rows of x per chunk: their float accumulators (PK_MC x 32, 16 KiB) stay in L1
 * while the panel streams once per chunk. */
#ifndef PK_MC
#define PK_MC 128
#endif
#define PK_RMAX 4 /* rows of x per register block */

/* 4 activation bytes at p, in every 32-bit lane. */
AVX2 static PK_INLINE __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* Exact dots of one panel block for R rows of x (x: row 0 at the block's first
 * activation, rows xld bytes apart; xsum: row 0's block sum, rows sld apart) and
 * the Q quarters of 8 panel rows from wb: dot[r][q] as packed.h's dot_b. */
AVX2 static PK_INLINE void pk_dots(const qc_kind kind, const int R, const int Q,
                                   const uint8_t *wb, const int8_t *x, int64_t xld,
                                   const int32_t *xsum, int64_t sld, __m256i dot[PK_RMAX][4]) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (kind == QC_SYM8 || kind == QC_ASYM8) {
        const __m256i flip = _mm256_set1_epi8((char)0x80);
        for (int r = 0; r < R; r++)
            for (int q = 0; q < Q; q++)
                dot[r][q] = kind == QC_ASYM8 ? _mm256_set1_epi32(128 * xsum[r * sld])
                                             : _mm256_setzero_si256();
        for (int s = 0; s < 8; s++) {
            __m256i a[PK_RMAX];
            for (int r = 0; r < R; r++)
                a[r] = bcast4(x + r * xld + 4 * s);
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
                lo[r] = bcast4(x + r * xld + 4 * s);
                hi[r] = bcast4(x + r * xld + 16 + 4 * s);
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
                    dot[r][q] = _mm256_sub_epi32(dot[r][q], _mm256_set1_epi32(8 * xsum[r * sld]));
            }
    }
}

#if defined(__GNUC__) && !defined(QC_NO_ASM)
#define PK_ASM 1
/* The same for Q = 2 and R = 1..4, in inline assembly (GCC's allocation of the
 * intrinsics spills accumulators).  Accumulators come back in registers (int32
 * for 8-bit, int16 for 4-bit: the caller finishes them); ymm8-15 are scratch.
 * 8-bit (activations widened, pk_chunk.wide): vpmaddwd of codes 0 2 (ymm8 /
 * ymm10: the two quarters) and codes 1 3 (ymm9 / ymm11) of each lane, as
 * int16, against the int16 activation pairs (a0 a2) and (a1 a3); ymm15 = 0x00ff
 * words.  4-bit: ymm8 / ymm10 low nibbles, ymm9 / ymm11 high nibbles, ymm15 =
 * 0x0f bytes. */
#define PK8_ROW(S, XA, A0, A1)                                                                  \
    "vpbroadcastd " #S "*8" XA ", %%ymm12\n\t"                                                  \
    "vpbroadcastd 4+" #S "*8" XA ", %%ymm13\n\t"                                                \
    "vpmaddwd %%ymm12, %%ymm8, %%ymm14\n\t"                                                     \
    "vpaddd %%ymm14, %" A0 ", %" A0 "\n\t"                                                      \
    "vpmaddwd %%ymm13, %%ymm9, %%ymm14\n\t"                                                     \
    "vpaddd %%ymm14, %" A0 ", %" A0 "\n\t"                                                      \
    "vpmaddwd %%ymm12, %%ymm10, %%ymm14\n\t"                                                    \
    "vpaddd %%ymm14, %" A1 ", %" A1 "\n\t"                                                      \
    "vpmaddwd %%ymm13, %%ymm11, %%ymm12\n\t"                                                    \
    "vpaddd %%ymm12, %" A1 ", %" A1 "\n\t"
#define PK8_HEAD(S)                                                                             \
    "vpand " #S "*128(%[w]), %%ymm15, %%ymm8\n\t"                                               \
    "vmovdqu " #S "*128(%[w]), %%ymm9\n\t"                                                      \
    "vpsrlw $8, %%ymm9, %%ymm9\n\t"                                                             \
    "vpand " #S "*128+32(%[w]), %%ymm15, %%ymm10\n\t"                                           \
    "vmovdqu " #S "*128+32(%[w]), %%ymm11\n\t"                                                  \
    "vpsrlw $8, %%ymm11, %%ymm11\n\t"
#define PK4_ROW(S, XA, A0, A1)                                                                  \
    "vpbroadcastd " #S "*4" XA ", %%ymm12\n\t"                                                  \
    "vpbroadcastd 16+" #S "*4" XA ", %%ymm13\n\t"                                               \
    "vpmaddubsw %%ymm12, %%ymm8, %%ymm14\n\t"                                                   \
    "vpaddw %%ymm14, %" A0 ", %" A0 "\n\t"                                                      \
    "vpmaddubsw %%ymm13, %%ymm9, %%ymm14\n\t"                                                   \
    "vpaddw %%ymm14, %" A0 ", %" A0 "\n\t"                                                      \
    "vpmaddubsw %%ymm12, %%ymm10, %%ymm14\n\t"                                                  \
    "vpaddw %%ymm14, %" A1 ", %" A1 "\n\t"                                                      \
    "vpmaddubsw %%ymm13, %%ymm11, %%ymm12\n\t"                                                  \
    "vpaddw %%ymm12, %" A1 ", %" A1 "\n\t"
#define PK4_HEAD(S)                                                                             \
    "vpand " #S "*128(%[w]), %%ymm15, %%ymm8\n\t"                                               \
    "vpandn " #S "*128(%[w]), %%ymm15, %%ymm9\n\t"                                              \
    "vpsrlw $4, %%ymm9, %%ymm9\n\t"                                                             \
    "vpand " #S "*128+32(%[w]), %%ymm15, %%ymm10\n\t"                                           \
    "vpandn " #S "*128+32(%[w]), %%ymm15, %%ymm11\n\t"                                          \
    "vpsrlw $4, %%ymm11, %%ymm11\n\t"
#define PK_X0 "(%[x])"
#define PK_X1 "(%[x],%[ld],1)"
#define PK_X2 "(%[x],%[ld],2)"
#define PK_X3 "(%[x3])"
#define PK_ROWS1(R, S) R(S, PK_X0, "[a0]", "[a1]")
#define PK_ROWS2(R, S) PK_ROWS1(R, S) R(S, PK_X1, "[a2]", "[a3]")
#define PK_ROWS3(R, S) PK_ROWS2(R, S) R(S, PK_X2, "[a4]", "[a5]")
#define PK_ROWS4(R, S) PK_ROWS3(R, S) R(S, PK_X3, "[a6]", "[a7]")
#define PK8_STEP(N, S) PK8_HEAD(S) PK_ROWS##N(PK8_ROW, S)
#define PK4_STEP(N, S) PK4_HEAD(S) PK_ROWS##N(PK4_ROW, S)
#define PK_ZERO(A) "vpxor %" A ", %" A ", %" A "\n\t"
#define PK_ZERO1 PK_ZERO("[a0]") PK_ZERO("[a1]")
#define PK_ZERO2 PK_ZERO1 PK_ZERO("[a2]") PK_ZERO("[a3]")
#define PK_ZERO3 PK_ZERO2 PK_ZERO("[a4]") PK_ZERO("[a5]")
#define PK_ZERO4 PK_ZERO3 PK_ZERO("[a6]") PK_ZERO("[a7]")
#define PK8_BODY(N)                                                                             \
    PK_ZERO##N "vmovdqu %[c], %%ymm15\n\t"                                                      \
    PK8_STEP(N, 0) PK8_STEP(N, 1) PK8_STEP(N, 2) PK8_STEP(N, 3)                                 \
    PK8_STEP(N, 4) PK8_STEP(N, 5) PK8_STEP(N, 6) PK8_STEP(N, 7)
#define PK4_BODY(N)                                                                             \
    PK_ZERO##N "vmovdqu %[c], %%ymm15\n\t"                                                      \
    PK4_STEP(N, 0) PK4_STEP(N, 1) PK4_STEP(N, 2) PK4_STEP(N, 3)
#define PK_OUT                                                                                  \
    [a0] "=&x"(acc[0][0]), [a1] "=&x"(acc[0][1]), [a2] "=&x"(acc[1][0]), [a3] "=&x"(acc[1][1]), \
    [a4] "=&x"(acc[2][0]), [a5] "=&x"(acc[2][1]), [a6] "=&x"(acc[3][0]), [a7] "=&x"(acc[3][1])
#define PK_IN                                                                                   \
    [w] "r"(wb), [x] "r"(x), [ld] "r"(xld), [x3] "r"(x + 3 * xld), [c] "m"(*(const __m256i *)cm)
#define PK_CLOBBER "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "memory"

static const uint16_t pk_low8w[16] PK_ALIGNED(32) = {255, 255, 255, 255, 255, 255, 255, 255,
                                                      255, 255, 255, 255, 255, 255, 255, 255};
static const uint8_t pk_low4[32] PK_ALIGNED(32) = {
    15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15,
    15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15};

/* pk_dots for Q = 2 (wb: the first of the two quarters); 8-bit: x widened
 * (xld bytes between rows). */
AVX2 static PK_INLINE void pk_dots_asm(const qc_kind kind, const int R, const uint8_t *wb,
                                       const int8_t *x, int64_t xld, const int32_t *xsum,
                                       int64_t sld, __m256i dot[PK_RMAX][4]) {
    __m256i acc[4][2];
    const int bits8 = kind == QC_SYM8 || kind == QC_ASYM8;
    const void *cm = bits8 ? (const void *)pk_low8w : (const void *)pk_low4;
    if (bits8) {
        switch (R) {
        case 4: __asm__(PK8_BODY(4) : PK_OUT : PK_IN : PK_CLOBBER); break;
        case 3: __asm__(PK8_BODY(3) : PK_OUT : PK_IN : PK_CLOBBER); break;
        case 2: __asm__(PK8_BODY(2) : PK_OUT : PK_IN : PK_CLOBBER); break;
        default: __asm__(PK8_BODY(1) : PK_OUT : PK_IN : PK_CLOBBER); break;
        }
    } else {
        switch (R) {
        case 4: __asm__(PK4_BODY(4) : PK_OUT : PK_IN : PK_CLOBBER); break;
        case 3: __asm__(PK4_BODY(3) : PK_OUT : PK_IN : PK_CLOBBER); break;
        case 2: __asm__(PK4_BODY(2) : PK_OUT : PK_IN : PK_CLOBBER); break;
        default: __asm__(PK4_BODY(1) : PK_OUT : PK_IN : PK_CLOBBER); break;
        }
    }
    const __m256i ones = _mm256_set1_epi16(1);
    for (int r = 0; r < R; r++)
        for (int q = 0; q < 2; q++) {
            __m256i d = acc[r][q];
            if (kind == QC_SYM8)
                d = _mm256_sub_epi32(d, _mm256_set1_epi32(128 * xsum[r * sld]));
            if (!bits8)
                d = _mm256_madd_epi16(d, ones);
            if (kind == QC_SYM4)
                d = _mm256_sub_epi32(d, _mm256_set1_epi32(8 * xsum[r * sld]));
            dot[r][q] = d;
        }
}

/* One row of x against all 4 quarters (8-bit, widened): one pass over the
 * block, its cache lines in order.  ymm8-15: codes 0 2 / 1 3 of quarters 0-3,
 * ymm4 / ymm5 the activation pairs, ymm7 = 0x00ff words. */
#define PK8Q4_HEAD(S, Q, UE, UO)                                                                \
    "vpand " #S "*128+" #Q "*32(%[w]), %%ymm7, %%ymm" #UE "\n\t"                                \
    "vmovdqu " #S "*128+" #Q "*32(%[w]), %%ymm" #UO "\n\t"                                      \
    "vpsrlw $8, %%ymm" #UO ", %%ymm" #UO "\n\t"
#define PK8Q4_MAC(UE, UO, A)                                                                    \
    "vpmaddwd %%ymm4, %%ymm" #UE ", %%ymm6\n\t"                                                 \
    "vpaddd %%ymm6, %" A ", %" A "\n\t"                                                         \
    "vpmaddwd %%ymm5, %%ymm" #UO ", %%ymm6\n\t"                                                 \
    "vpaddd %%ymm6, %" A ", %" A "\n\t"
#define PK8Q4_STEP(S)                                                                           \
    PK8Q4_HEAD(S, 0, 8, 9) PK8Q4_HEAD(S, 1, 10, 11) PK8Q4_HEAD(S, 2, 12, 13)                    \
    PK8Q4_HEAD(S, 3, 14, 15)                                                                    \
    "vpbroadcastd " #S "*8(%[x]), %%ymm4\n\t"                                                   \
    "vpbroadcastd 4+" #S "*8(%[x]), %%ymm5\n\t"                                                 \
    PK8Q4_MAC(8, 9, "[a0]") PK8Q4_MAC(10, 11, "[a1]") PK8Q4_MAC(12, 13, "[a2]")                 \
    PK8Q4_MAC(14, 15, "[a3]")

AVX2 static PK_INLINE void pk_dots8_r1q4(const qc_kind kind, const uint8_t *wb, const int8_t *x,
                                         const int32_t *xsum, __m256i dot[PK_RMAX][4]) {
    __m256i acc[4];
    __asm__(PK_ZERO("[a0]") PK_ZERO("[a1]") PK_ZERO("[a2]") PK_ZERO("[a3]")
            "vmovdqu %[c], %%ymm7\n\t"
            PK8Q4_STEP(0) PK8Q4_STEP(1) PK8Q4_STEP(2) PK8Q4_STEP(3)
            PK8Q4_STEP(4) PK8Q4_STEP(5) PK8Q4_STEP(6) PK8Q4_STEP(7)
            : [a0] "=&x"(acc[0]), [a1] "=&x"(acc[1]), [a2] "=&x"(acc[2]), [a3] "=&x"(acc[3])
            : [w] "r"(wb), [x] "r"(x), [c] "m"(*(const __m256i *)pk_low8w)
            : "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
              "xmm13", "xmm14", "xmm15", "memory");
    for (int q = 0; q < 4; q++)
        dot[0][q] = kind == QC_SYM8 ? _mm256_sub_epi32(acc[q], _mm256_set1_epi32(128 * xsum[0]))
                                    : acc[q];
}

#else
#define PK_ASM 0
#endif

/* The activations of a chunk of rows: x[r * xld + b * xbs] is block b of row r;
 * xd, xs, xsum at [r * sld + b * sbs]; sx[r]. */
typedef struct {
    const int8_t *x;
    const float *xd, *xs, *sx;
    const int32_t *xsum;
    int64_t xld, xbs, sld, sbs;
    int wide; /* x holds widened activations for 8-bit weights (pk_chunk_at) */
} pk_chunk;

/* Block b of the panel (wb) for R rows of the chunk from row r, all 4 quarters,
 * Q at a time: f[r * 32 + lane] += the block's float step. */
AVX2 static PK_INLINE void pk_rows(const qc_kind kind, const int R, const int Q, const int groups,
                                   const uint8_t *wb, const pk_chunk *c, int64_t r, int64_t b,
                                   const __m256 dg[4], const __m256 cg[4], float *f) {
    const int offs = kind == QC_ASYM8 || kind == QC_ASYM4 || kind == QC_MIN4;
    const int8_t *x = c->x + r * c->xld + b * c->xbs;
    const int64_t si = r * c->sld + b * c->sbs, sld = c->sld;
    for (int q0 = 0; q0 < 4; q0 += Q) {
        __m256i dot[PK_RMAX][4];
#if PK_ASM
        if (R == 1 && Q == 4 && c->wide)
            pk_dots8_r1q4(kind, wb, x, c->xsum + si, dot);
        else if (Q == 2 && (c->wide || !(kind == QC_SYM8 || kind == QC_ASYM8)))
            pk_dots_asm(kind, R, wb + 32 * q0, x, c->xld, c->xsum + si, sld, dot);
        else
#endif
            pk_dots(kind, R, Q, wb + 32 * q0, x, c->xld, c->xsum + si, sld, dot);
        for (int i = 0; i < R; i++) {
            const __m256 xd = _mm256_set1_ps(c->xd[si + i * sld]);
            for (int q = 0; q < Q; q++) {
                float *fp = f + i * 32 + 8 * (q0 + q);
                __m256 acc = _mm256_load_ps(fp), fd = _mm256_cvtepi32_ps(dot[i][q]);
                if (!groups) {
                    acc = _mm256_fmadd_ps(fd, xd, acc);
                } else {
                    acc = _mm256_fmadd_ps(fd, _mm256_mul_ps(dg[q0 + q], xd), acc);
                    if (offs)
                        acc = _mm256_fmadd_ps(cg[q0 + q], _mm256_set1_ps(c->xs[si + i * sld]),
                                              acc);
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

/* Rows [m0, m0 + nm) of the activations as a chunk, in buf (room for cap rows)
 * block-major (a block's rows side by side: rows kp apart would share L1 sets),
 * widened for the 8-bit assembly (wide: per step s, int16 pairs (a[4s],
 * a[4s+2]) and (a[4s+1], a[4s+3])); in place for a few rows when not widened,
 * or without buf. */
AVX2 static void pk_chunk_at(const qc_act *a, int64_t m0, int64_t nm, int8_t *buf, int64_t cap,
                             int wide, pk_chunk *c) {
    const int64_t kp = a->kp, nb = a->nb;
    c->sx = a->sx + m0;
    c->wide = 0;
    if (!buf || (!wide && nm <= PK_RMAX)) {
        c->x = a->xq + m0 * kp;
        c->xd = a->xd + m0 * nb;
        c->xs = a->xs + m0 * nb;
        c->xsum = a->xsum + m0 * nb;
        c->xld = kp;
        c->xbs = QC_BLK;
        c->sld = nb;
        c->sbs = 1;
        return;
    }
    const int64_t bb = wide ? 2 * QC_BLK : QC_BLK; /* bytes of a row's block */
    float *xd = (float *)(buf + cap * nb * bb), *xs = xd + cap * nb;
    int32_t *xsum = (int32_t *)(xs + cap * nb);
    for (int64_t r = 0; r < nm; r++) {
        const int64_t m = m0 + r;
        for (int64_t b = 0; b < nb; b++) {
            const int8_t *src = a->xq + m * kp + b * QC_BLK;
            int8_t *dst = buf + (b * nm + r) * bb;
            if (wide) {
                for (int h = 0; h < 2; h++) {
                    __m128i b16 = _mm_loadu_si128((const __m128i *)(src + 16 * h));
                    __m256i v = _mm256_cvtepi8_epi16(b16);
                    v = _mm256_shufflehi_epi16(_mm256_shufflelo_epi16(v, 0xD8), 0xD8);
                    _mm256_storeu_si256((__m256i *)(dst + 32 * h), v);
                }
            } else {
                memcpy(dst, src, QC_BLK);
            }
            xd[b * nm + r] = a->xd[m * nb + b];
            xs[b * nm + r] = a->xs[m * nb + b];
            xsum[b * nm + r] = a->xsum[m * nb + b];
        }
    }
    c->x = buf;
    c->xd = xd;
    c->xs = xs;
    c->xsum = xsum;
    c->xld = bb;
    c->xbs = nm * bb;
    c->sld = 1;
    c->sbs = nm;
    c->wide = wide;
}

/* Panels [n0, n1) / 32 for chunks of PK_MC rows: per chunk all panels, each
 * streamed once (its K in order), the chunk's float accumulators in f. */
AVX2 static PK_INLINE void pk_kernel(const qc_kind kind, const qc_wview *v, const qc_act *a,
                                     int64_t m0, int64_t m1, int64_t n0, int64_t n1, float *y,
                                     int64_t ldy) {
    const qc_qweight *w = v->w;
    const int offs = kind == QC_ASYM8 || kind == QC_ASYM4 || kind == QC_MIN4;
    const int groups = !w->per_tensor && v->gshift >= 0;
    const int64_t nb = v->nb, ng = v->ngroups, gmask = groups ? ((int64_t)1 << v->gshift) - 1 : 0;
    const int64_t pbytes = QC_PANEL * qc_packed_bpb(kind); /* one panel block */
    /* 4-bit streams fewer bytes per instruction: fetch 2 KiB ahead */
    const int64_t pf = kind == QC_SYM8 || kind == QC_ASYM8 ? 0 : 4 * pbytes;
    PK_ALIGNED(32) float f[PK_MC * 32];
    __m256 d[4], c[4], dg[4], cg[4];
    for (int q = 0; q < 4; q++)
        d[q] = c[q] = dg[q] = cg[q] = _mm256_setzero_ps();
    /* the chunks' copies; NULL (few 4-bit rows, or no memory): read in place */
    const int wide = PK_ASM && (kind == QC_SYM8 || kind == QC_ASYM8);
    const int64_t cap = m1 - m0 < PK_MC ? m1 - m0 : PK_MC, pend = n1 / QC_PANEL;
    int8_t *buf = wide || cap > PK_RMAX ? malloc((size_t)(cap * (a->kp * (wide ? 2 : 1) + 12 * nb)))
                                        : NULL;
    for (int64_t mc = m0; mc < m1; mc += PK_MC) {
        const int64_t nm = m1 - mc < PK_MC ? m1 - mc : PK_MC;
        pk_chunk ch;
        pk_chunk_at(a, mc, nm, buf, cap, wide, &ch);
        for (int64_t p = n0 / QC_PANEL; p < pend; p++) {
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
            for (int64_t i = 0; i < nm * 32; i += 8)
                _mm256_store_ps(f + i, _mm256_setzero_ps());
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *wb = pw + b * pbytes;
                if (pf && (b + 4 < nb || p + 1 < pend)) /* within the call's panels */
                    for (int64_t i = 0; i < pbytes; i += 64)
                        _mm_prefetch((const char *)(wb + pf + i), _MM_HINT_T0);
                if (groups && (b & gmask) == 0)
                    pk_params(kind, w, (p * ng + (b >> v->gshift)) * QC_PANEL, dg, cg);
                for (int64_t r = 0; r < nm;) {
                    const int64_t left = nm - r;
                    float *fr = f + r * 32;
                    if (left >= 4) {
                        pk_rows(kind, 4, 2, groups, wb, &ch, r, b, dg, cg, fr);
                        r += 4;
                    } else if (left == 3) {
                        pk_rows(kind, 3, 2, groups, wb, &ch, r, b, dg, cg, fr);
                        r += 3;
                    } else if (left == 2) {
                        pk_rows(kind, 2, PK_ASM ? 2 : 4, groups, wb, &ch, r, b, dg, cg, fr);
                        r += 2;
                    } else {
                        pk_rows(kind, 1, wide || !PK_ASM ? 4 : 2, groups, wb, &ch, r, b, dg, cg,
                                fr);
                        r += 1;
                    }
                }
            }
            for (int64_t r = 0; r < nm; r++) {
                float *yr = y + (mc + r - m0) * ldy + (p * QC_PANEL - n0);
                const __m256 sx = _mm256_set1_ps(offs && !groups ? ch.sx[r] : 0.0f);
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
    free(buf);
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
