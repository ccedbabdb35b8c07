/*
 * gemm_avx2.c -- AVX2/FMA tiled GEMM kernels of the linear layer, for m from the
 * ISA's threshold on (dispatch.c).  Design and measurements: docs/linear.md and
 * docs/performance.md.
 *
 * ISA: AVX2 + FMA + F16C, by target attribute; the I8 4x16 block is inline
 * assembly (GCC/clang syntax; QC_NO_ASM selects the intrinsics).  Exported as
 * qc_gemm_f32_avx2 / qc_gemm_i8_avx2, the gemm entries of the AVX2 linear table.
 * Layout: weights as quantcore.h, read in place and never past a row's end (a
 * partial last block through a zeroed copy); activations as qc_act (kernels.h),
 * natural order; a call computes y[m0:m1, n0:n1] (no bias) with O(tile) scratch
 * (about 200 KiB) allocated per call.  Panels hold 16 weight rows, one row per
 * 32-bit lane (two halves of 8).
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

/* `len` bytes of a row starting at `off`, through a zeroed copy when the row ends
 * inside them (or NULL row: zeros). */
static QC_INLINE const uint8_t *row_bytes_at(const uint8_t *row, int64_t rb, int64_t off, int len,
                                             uint8_t *tmp) {
    if (row && off + len <= rb)
        return row + off;
    memset(tmp, 0, (size_t)len);
    if (row && off < rb)
        memcpy(tmp, row + off, (size_t)(rb - off));
    return tmp;
}

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

/* Prefetch into L2 the codes of blocks [b0, b0 + nblk) of rows [n, n + rows)
 * (clipped to the weight), so that the next tile's expansion does not wait on
 * memory row by row. */
AVX2 static void prefetch_tile(const qc_wview *v, int64_t n, int64_t rows, int64_t b0, int64_t nblk) {
#ifdef QC_NO_PREFETCH
    return;
#endif
    const int64_t bpb = QC_KINDS[v->w->kind].bits == 8 ? 32 : 16; /* bytes per block */
    const int64_t rb = v->row_bytes;
    int64_t lo = b0 * bpb, hi = (b0 + nblk) * bpb;
    if (hi > rb)
        hi = rb;
    if (n + rows > v->w->n)
        rows = v->w->n - n;
    const qc_qweight *w = v->w;
    const int64_t ssz = w->scale_dtype == QC_F16 ? 2 : 4;
    const int64_t zsz = w->kind == QC_MIN4 ? ssz : 1;
    const int64_t blast = (b0 + nblk) * QC_BLK < v->kp ? b0 + nblk - 1 : v->nb - 1;
    for (int64_t r = 0; r < rows; r++) {
        const char *row = (const char *)w->data + (n + r) * rb;
        for (int64_t o = lo; o < hi; o += 64)
            prefetch_l2(row + o);
        if (lo < hi)
            prefetch_l2(row + hi - 1);
        /* and the scales (zero points, minima) of those blocks */
        const int64_t g0 = qc_group_index(v, n + r, b0), g1 = qc_group_index(v, n + r, blast);
        for (int64_t o = g0 * ssz; o <= g1 * ssz; o += 64)
            prefetch_l2((const char *)w->scales + o);
        if (w->zeros)
            for (int64_t o = g0 * zsz; o <= g1 * zsz; o += 64)
                prefetch_l2((const char *)w->zeros + o);
    }
}

/* While panel p of np (rows nt + p * nr, blocks [b0, b0 + kb)) is used, prefetch
 * the codes of the panel PF_PANELS ahead: in this K tile, or else in the next
 * one.  Far enough ahead that its rows arrive from memory in time when few rows
 * of x make each panel short work. */
AVX2 static void prefetch_panel(const qc_wview *v, int64_t nt, int64_t np, int64_t p, int64_t nr,
                                int64_t b0, int64_t kb, int64_t nb) {
    int64_t q = p + PF_PANELS;
    if (q >= np) { /* that panel is in the next K tile */
        q -= np;
        b0 += kb;
        if (b0 >= nb || q >= np)
            return;
    }
    prefetch_tile(v, nt + q * nr, nr, b0, kb);
}

/* Prefetch into L2 slice `part` of `parts` of the rows [r0, r1) of the
 * activations, columns [k0, k0 + len) (bytes): the x tile packed after the
 * current one, spread over the current tile's panels so that it overlaps compute. */
AVX2 static void prefetch_x_part(const char *base, int64_t ld, int64_t r0, int64_t r1, int64_t off,
                                 int64_t len, int64_t part, int64_t parts) {
#ifdef QC_NO_PREFETCH
    return;
#endif
    const int64_t per = (r1 - r0 + parts - 1) / parts;
    const int64_t a = r0 + part * per, b = a + per < r1 ? a + per : r1;
    for (int64_t r = a; r < b; r++)
        for (int64_t o = 0; o < len; o += 64)
            prefetch_l2(base + r * ld + off + o);
}

/* The x tile after (mt, k0) in the order K tiles within M tiles within N tiles:
 * its rows [*r0, *r1) and first column *k; 0 when there is none. */
static inline int next_x_tile(int64_t m0, int64_t m1, int64_t mt, int64_t me, int64_t k0,
                              int64_t kt, int64_t kp, int64_t mtile, int last_nt, int64_t *r0,
                              int64_t *r1, int64_t *k) {
    if (k0 + kt < kp) {
        *r0 = mt, *r1 = me, *k = k0 + kt;
    } else if (me < m1) {
        *r0 = me, *r1 = me + mtile < m1 ? me + mtile : m1, *k = 0;
    } else if (!last_nt) {
        *r0 = m0, *r1 = m0 + mtile < m1 ? m0 + mtile : m1, *k = 0;
    } else {
        return 0;
    }
    return 1;
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

AVX2 static QC_INLINE void gemm_f32(qc_kind kind, const qc_wview *v, const qc_act *a, int64_t m0,
                                    int64_t m1, int64_t n0, int64_t n1, float *y, int64_t ldy) {
    const int64_t kp = v->kp, mtile = m_tile(m1 - m0, F_MC, F_MR);
    float *bp = (float *)scratch((size_t)F_KC * F_NR * sizeof(float));
    float *xp = (float *)scratch((size_t)F_MC * F_XLD * sizeof(float));
    if (!bp || !xp) { /* out of memory: the GEMV kernels need none */
        scratch_free(bp);
        scratch_free(xp);
        qc_linear_avx2.gemv_f32[kind](v, a, m0, m1, n0, n1, y, ldy);
        return;
    }
    for (int64_t nt = n0; nt < n1; nt += F_NC) {
        const int64_t nc = n1 - nt < F_NC ? n1 - nt : F_NC;
        const int64_t np = (nc + F_NR - 1) / F_NR;
        for (int64_t mt = m0; mt < m1; mt += mtile) {
            const int64_t me = m1 - mt < mtile ? m1 : mt + mtile;
            for (int64_t k0 = 0; k0 < kp; k0 += F_KC) { /* y[mt:me, nt:nt+nc] stays in L2 */
                const int64_t kc = kp - k0 < F_KC ? kp - k0 : F_KC;
                f32_pack_x(a, mt, me - mt, k0, kc, xp);
                int64_t xr0 = 0, xr1 = 0, xk = 0;
                const int xnext = next_x_tile(m0, m1, mt, me, k0, F_KC, kp, mtile, nt + F_NC >= n1,
                                              &xr0, &xr1, &xk);
                for (int64_t p = 0; p < np; p++) {
                    const int ncol = nc - p * F_NR < F_NR ? (int)(nc - p * F_NR) : F_NR;
                    if (xnext)
                        prefetch_x_part((const char *)a->xf, a->kp * 4, xr0, xr1, xk * 4,
                                        (kp - xk < F_KC ? kp - xk : F_KC) * 4, p, np);
                    /* the panel is expanded into L1 right before its use */
                    f32_expand_panel(kind, v, nt + p * F_NR, ncol, k0, kc, bp);
                    prefetch_panel(v, nt, np, p, F_NR, k0 / QC_BLK, F_KC / QC_BLK, kp / QC_BLK);
                    float *yc = y + (nt + p * F_NR - n0);
                    for (int64_t m = mt, mr; m < me; m += mr) {
                        mr = next_mr(me - m, F_MR);
                        f32_micro_any(mr, kc, xp + (m - mt) * F_XLD, F_XLD, bp, yc + (m - m0) * ldy,
                                      ldy, k0 > 0, ncol);
                    }
                }
            }
        }
    }
    scratch_free(bp);
    scratch_free(xp);
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
    AVX2 static void NAME(int mr, int64_t nblk, const void *x, int64_t ldx, const float *xd,     \
                          const float *xs, int64_t ldb, const uint8_t *codes, const float *sc,   \
                          float *c, int64_t ldc, int accum, int nc) {                            \
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

typedef void (*i8_micro_fn)(int mr, int64_t nblk, const void *x, int64_t ldx, const float *xd,
                            const float *xs, int64_t ldb, const uint8_t *codes, const float *sc,
                            float *c, int64_t ldc, int accum, int nc);

/* Activation rows [m, m + rows), blocks [b0, b0 + nblk) copied to xt (rows
 * nblk * 32 elements apart, close in cache for the microkernel) in the panels'
 * order: int8, the even then the odd codes of each 8 (4-bit weights); widened to
 * int16, codes 0 2 1 3 of each 4 (8-bit weights). */
AVX2 static void pack_act(int bits8, const qc_act *a, int64_t m, int64_t rows, int64_t b0,
                          int64_t nblk, void *xt) {
    for (int64_t r = 0; r < rows; r++) {
        const int8_t *src = a->xq + (m + r) * a->kp + b0 * QC_BLK;
#ifndef QC_NO_PREFETCH
        if (r + F_XPF < rows) /* rows are far apart: the hardware prefetcher does not follow */
            for (int64_t e = 0; e < nblk * QC_BLK; e += 64)
                _mm_prefetch((const char *)(src + F_XPF * a->kp + e), _MM_HINT_T0);
#endif
        if (bits8) { /* 4 codes a0 a1 a2 a3 -> int16 a0 a2 a1 a3 */
            const __m128i perm = _mm_setr_epi8(0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15);
            int16_t *dst = (int16_t *)xt + r * nblk * QC_BLK;
            for (int64_t e = 0; e < nblk * QC_BLK; e += 16)
                _mm256_store_si256((__m256i *)(dst + e),
                                   _mm256_cvtepi8_epi16(_mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(src + e)), perm)));
        } else { /* 8 codes a0 .. a7 -> a0 a2 a4 a6 a1 a3 a5 a7 */
            const __m256i perm = _mm256_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15,
                                                  0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
            int8_t *dst = (int8_t *)xt + r * nblk * QC_BLK;
            for (int64_t e = 0; e < nblk * QC_BLK; e += 32)
                _mm256_store_si256((__m256i *)(dst + e),
                                   _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(src + e)), perm));
        }
    }
}

AVX2 static QC_INLINE void gemm_i8(qc_kind kind, const qc_wview *v, const qc_act *a, int64_t m0,
                                   int64_t m1, int64_t n0, int64_t n1, float *y, int64_t ldy) {
    const int64_t nb = v->nb;
    const int bits8 = QC_KINDS[kind].bits == 8, whole = v->gshift < 0;
    i8_micro_fn micro = bits8 ? (kind == QC_SYM8 ? (whole ? i8_micro_q8_whole_sym : i8_micro_q8_group_sym)
                                                 : (whole ? i8_micro_q8_whole : i8_micro_q8_group))
                              : (whole ? i8_micro_q4_whole : i8_micro_q4_group);
    const int mrmax = bits8 ? I_MR8 : I_MR4;
    const int64_t mtile = m_tile(m1 - m0, I_MC, mrmax);
    const int64_t kb = bits8 ? I_KB8 : I_KB4, bb = BLK_BYTES(bits8);
    uint8_t *codes = (uint8_t *)scratch((size_t)(kb * bb));
    float *sc = (float *)scratch((size_t)(kb * 32) * sizeof(float));
    uint8_t *xt = (uint8_t *)scratch((size_t)(I_MC * kb * QC_BLK) * (bits8 ? 2 : 1));
    if (!codes || !sc || !xt) { /* out of memory: the GEMV kernels need none */
        scratch_free(codes);
        scratch_free(sc);
        scratch_free(xt);
        qc_linear_avx2.gemv_i8[kind](v, a, m0, m1, n0, n1, y, ldy);
        return;
    }
    for (int64_t nt = n0; nt < n1; nt += I_NC) {
        const int64_t nc = n1 - nt < I_NC ? n1 - nt : I_NC;
        const int64_t np = (nc + 15) / 16;
        for (int64_t mt = m0; mt < m1; mt += mtile) {
            const int64_t me = m1 - mt < mtile ? m1 : mt + mtile;
            for (int64_t b0 = 0; b0 < nb; b0 += kb) { /* y[mt:me, nt:nt+nc] stays in L2 */
                const int64_t nblk = nb - b0 < kb ? nb - b0 : kb;
                pack_act(bits8, a, mt, me - mt, b0, nblk, xt);
                int64_t xr0 = 0, xr1 = 0, xb = 0;
                const int xnext = next_x_tile(m0, m1, mt, me, b0, kb, nb, mtile, nt + I_NC >= n1,
                                              &xr0, &xr1, &xb);
                for (int64_t p = 0; p < np; p++) {
                    const int ncol = nc - p * 16 < 16 ? (int)(nc - p * 16) : 16;
                    if (xnext)
                        prefetch_x_part((const char *)a->xq, a->kp, xr0, xr1, xb * QC_BLK,
                                        (nb - xb < kb ? nb - xb : kb) * QC_BLK, p, np);
                    /* the panel is packed into L1 right before its use */
                    i8_pack_panel(kind, v, nt + p * 16, ncol, b0, b0 + nblk, codes, sc);
                    prefetch_panel(v, nt, np, p, 16, b0, kb, nb);
                    float *yc = y + (nt + p * 16 - n0);
                    for (int64_t m = mt, mr; m < me; m += mr) {
                        mr = next_mr(me - m, mrmax);
                        micro(mr, nblk, xt + (m - mt) * nblk * QC_BLK * (bits8 ? 2 : 1), nblk * QC_BLK,
                              a->xd + m * nb + b0, a->xs + m * nb + b0, nb, codes, sc,
                              yc + (m - m0) * ldy, ldy, b0 > 0, ncol);
                    }
                }
            }
        }
    }
    scratch_free(codes);
    scratch_free(sc);
    scratch_free(xt);
}

#define QC_DEFINE_GEMM(K)                                                                       \
    AVX2 static void gemm_f32_##K##_avx2(const qc_wview *v, const qc_act *a, int64_t m0,        \
                                         int64_t m1, int64_t n0, int64_t n1, float *y,          \
                                         int64_t ldy) {                                         \
        gemm_f32(QC_##K, v, a, m0, m1, n0, n1, y, ldy);                                         \
    }                                                                                           \
    AVX2 static void gemm_i8_##K##_avx2(const qc_wview *v, const qc_act *a, int64_t m0,         \
                                        int64_t m1, int64_t n0, int64_t n1, float *y,           \
                                        int64_t ldy) {                                          \
        gemm_i8(QC_##K, v, a, m0, m1, n0, n1, y, ldy);                                          \
    }
QC_DEFINE_GEMM(SYM8)
QC_DEFINE_GEMM(ASYM8)
QC_DEFINE_GEMM(SYM4)
QC_DEFINE_GEMM(ASYM4)
QC_DEFINE_GEMM(MIN4)

const qc_linear_fn qc_gemm_f32_avx2[QC_NUM_KINDS] = {gemm_f32_SYM8_avx2, gemm_f32_ASYM8_avx2,
                                                     gemm_f32_SYM4_avx2, gemm_f32_ASYM4_avx2,
                                                     gemm_f32_MIN4_avx2};
const qc_linear_fn qc_gemm_i8_avx2[QC_NUM_KINDS] = {gemm_i8_SYM8_avx2, gemm_i8_ASYM8_avx2,
                                                    gemm_i8_SYM4_avx2, gemm_i8_ASYM4_avx2,
                                                    gemm_i8_MIN4_avx2};

#endif /* QC_HAVE_X86 */
