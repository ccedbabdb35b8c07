/*
 * packed_avx512.c -- AVX-512 VNNI kernels of the linear layer on prepacked
 * weights: qc_packed_i8_<KIND>_avx512 (layout and contract: packed.h).
 *
 * ISA: AVX-512 F, BW, VL and VNNI, plus F16C for float16 scales, by target
 * attribute.  Per panel, all of K in one sequential pass for up to PK_MR
 * activation rows (natural order, 4 bytes broadcast against a step's 32 lanes);
 * more rows loop over the panel again (the passes prefetch the next panel), in
 * M tiles that keep the activations in L2.  Each block's dot is an exact int32
 * (vpdpbusd, started at -comp * xsum), then the float steps of packed.h in its
 * order: bit-identical to the scalar reference for any m, rows and threads.
 */
#include "../kernels.h"
#include "../packed.h"

#if defined(QC_HAVE_X86)
#include <immintrin.h>

#define AVX512 QC_TARGET("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")
#if defined(__GNUC__) || defined(__clang__)
#define PK_INLINE inline __attribute__((always_inline))
#else
#define PK_INLINE __forceinline
#endif

#ifndef PK_MR
#define PK_MR 6 /* activation rows per pass */
#endif
#ifndef PK_XTILE
#define PK_XTILE (512 * 1024) /* bytes of activation codes per M tile */
#endif
#ifndef PK_SPLIT
#define PK_SPLIT 1 /* passes of up to this many rows run twice the integer chains */
#endif
/* When a panel takes several passes, they share the prefetch of the next panel:
 * with 2..PK_FEW passes into L2 (PK_PF*_FEW = 2), L1 (1) or not at all (0), with
 * more passes as PK_PF*_MANY says; 8-bit and 4-bit codes. */
#ifndef PK_FEW
#define PK_FEW 4
#endif
#ifndef PK_PF8_FEW
#define PK_PF8_FEW 2
#endif
#ifndef PK_PF8_MANY
#define PK_PF8_MANY 1
#endif
#ifndef PK_PF4_FEW
#define PK_PF4_FEW 1
#endif
#ifndef PK_PF4_MANY
#define PK_PF4_MANY 1
#endif

/* One panel's view for a pass. */
typedef struct {
    const uint8_t *codes; /* the panel's first block                         */
    const char *sc, *zr;  /* the panel's first scale / zero (as in packed.h) */
    float d_pt, c_pt;     /* per tensor: the scale and offset                */
    int64_t nb, kp;
    int gshift, f16, per_tensor;
    const int8_t *xq;
    const float *xd, *xs, *sx;
    const int32_t *xsum;
    int64_t ldy;
    const char *pf; /* bytes [0, npf) from here are this pass's to prefetch, */
    int64_t npf;    /* pfstep of them with each block, into L1 (pfl1) or L2    */
    int64_t pfstep;
    int pfl1;
} pk_args;

/* 16 scale-dtype values at element i of p, as floats. */
AVX512 static PK_INLINE __m512 load16_f(const char *p, int64_t i, int f16) {
    return f16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 2 * i)))
               : _mm512_loadu_ps((const float *)(p + 4 * i));
}

/* Scale d and offset c (c = (-d) * z for ASYM, the minimum for MIN4, else 0) of
 * lanes 16 h..16 h + 15 of the panel's scale entry e (a group's 32 values). */
AVX512 static PK_INLINE void load_dc(const int offs, const int zbytes, const pk_args *A,
                                     int64_t e, __m512 d[2], __m512 c[2]) {
    for (int h = 0; h < 2; h++) {
        const int64_t i = e * QC_PANEL + 16 * h;
        d[h] = load16_f(A->sc, i, A->f16);
        c[h] = _mm512_setzero_ps();
        if (offs && zbytes) { /* ASYM: uint8 zero points */
            const __m512 z = _mm512_cvtepi32_ps(
                _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(A->zr + i))));
            const __m512 nd = _mm512_castsi512_ps(_mm512_xor_si512(
                _mm512_castps_si512(d[h]), _mm512_set1_epi32((int)0x80000000u)));
            c[h] = _mm512_mul_ps(nd, z);
        } else if (offs) { /* MIN4: minima in the scale dtype */
            c[h] = load16_f(A->zr, i, A->f16);
        }
    }
}

/* y[mr x 32] (rows ldy apart) for activation rows r..r+mr-1, over the panel. */
AVX512 static PK_INLINE void pk_rows(const int mr, const int bits8, const int whole,
                                     const int offs, const int zbytes, const int comp,
                                     const pk_args *A, int64_t r, float *y) {
    const int64_t nb = A->nb, kp = A->kp;
    const int64_t blk = bits8 ? 1024 : 512;
    const int8_t *x = A->xq + r * kp;
    const float *xd = A->xd + r * nb, *xs = A->xs + r * nb;
    const int32_t *xsum = A->xsum + r * nb;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const int64_t gmask = whole ? 0 : ((int64_t)1 << A->gshift) - 1;
    const int split = mr <= PK_SPLIT;
    const uint8_t *cb = A->codes;
    int64_t pfc = 0;
    __m512 f[PK_MR][2], dg[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()}, cg[2] = {dg[0], dg[1]};
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++)
        for (int h = 0; h < 2; h++)
            f[i][h] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++, cb += blk) {
        if (!whole && (b & gmask) == 0)
            load_dc(offs, zbytes, A, b >> A->gshift, dg, cg);
        if (pfc < A->npf) { /* this pass's share of the next panel */
            for (const int64_t to = pfc + A->pfstep; pfc < to; pfc += 64) {
                if (A->pfl1)
                    _mm_prefetch(A->pf + pfc, _MM_HINT_T0);
                else
                    _mm_prefetch(A->pf + pfc, _MM_HINT_T1);
            }
        }
        const int8_t *xb = x + b * QC_BLK;
        /* integer chains: s, and with few rows (split) u for the odd steps (8-bit)
         * or the high nibbles (4-bit), added at the end (exact) */
        __m512i s[PK_MR][2], u[PK_MR][2];
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++) {
            s[i][0] = s[i][1] = comp ? _mm512_set1_epi32(-comp * xsum[i * nb + b])
                                     : _mm512_setzero_si512();
            u[i][0] = u[i][1] = _mm512_setzero_si512();
        }
        if (bits8) {
#pragma GCC unroll 8
            for (int st = 0; st < 8; st++) {
                const __m512i w0 = _mm512_loadu_si512((const __m512i *)(cb + st * 128));
                const __m512i w1 = _mm512_loadu_si512((const __m512i *)(cb + st * 128 + 64));
#pragma GCC unroll 8
                for (int i = 0; i < mr; i++) {
                    int32_t xv;
                    memcpy(&xv, xb + i * kp + 4 * st, 4);
                    const __m512i xa = _mm512_set1_epi32(xv);
                    if (split && (st & 1)) {
                        u[i][0] = _mm512_dpbusd_epi32(u[i][0], w0, xa);
                        u[i][1] = _mm512_dpbusd_epi32(u[i][1], w1, xa);
                    } else {
                        s[i][0] = _mm512_dpbusd_epi32(s[i][0], w0, xa);
                        s[i][1] = _mm512_dpbusd_epi32(s[i][1], w1, xa);
                    }
                }
            }
        } else {
#pragma GCC unroll 4
            for (int st = 0; st < 4; st++) {
                const __m512i w0 = _mm512_loadu_si512((const __m512i *)(cb + st * 128));
                const __m512i w1 = _mm512_loadu_si512((const __m512i *)(cb + st * 128 + 64));
                const __m512i l0 = _mm512_and_si512(w0, m4), l1 = _mm512_and_si512(w1, m4);
#pragma GCC unroll 8
                for (int i = 0; i < mr; i++) {
                    int32_t xv;
                    memcpy(&xv, xb + i * kp + 4 * st, 4);
                    const __m512i xa = _mm512_set1_epi32(xv);
                    s[i][0] = _mm512_dpbusd_epi32(s[i][0], l0, xa);
                    s[i][1] = _mm512_dpbusd_epi32(s[i][1], l1, xa);
                }
                const __m512i h0 = _mm512_and_si512(_mm512_srli_epi16(w0, 4), m4);
                const __m512i h1 = _mm512_and_si512(_mm512_srli_epi16(w1, 4), m4);
#pragma GCC unroll 8
                for (int i = 0; i < mr; i++) {
                    int32_t xv;
                    memcpy(&xv, xb + i * kp + 16 + 4 * st, 4);
                    const __m512i xa = _mm512_set1_epi32(xv);
                    if (split) {
                        u[i][0] = _mm512_dpbusd_epi32(u[i][0], h0, xa);
                        u[i][1] = _mm512_dpbusd_epi32(u[i][1], h1, xa);
                    } else {
                        s[i][0] = _mm512_dpbusd_epi32(s[i][0], h0, xa);
                        s[i][1] = _mm512_dpbusd_epi32(s[i][1], h1, xa);
                    }
                }
            }
        }
        if (split)
#pragma GCC unroll 8
            for (int i = 0; i < mr; i++) {
                s[i][0] = _mm512_add_epi32(s[i][0], u[i][0]);
                s[i][1] = _mm512_add_epi32(s[i][1], u[i][1]);
            }
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++) {
            const __m512 da = _mm512_set1_ps(xd[i * nb + b]);
            for (int h = 0; h < 2; h++) {
                const __m512 fi = _mm512_cvtepi32_ps(s[i][h]);
                if (whole) {
                    f[i][h] = _mm512_fmadd_ps(fi, da, f[i][h]);
                } else {
                    f[i][h] = _mm512_fmadd_ps(fi, _mm512_mul_ps(dg[h], da), f[i][h]);
                    if (offs)
                        f[i][h] = _mm512_fmadd_ps(cg[h], _mm512_set1_ps(xs[i * nb + b]), f[i][h]);
                }
            }
        }
    }
    __m512 d[2], c[2];
    if (whole) {
        if (A->per_tensor) {
            d[0] = d[1] = _mm512_set1_ps(A->d_pt);
            c[0] = c[1] = _mm512_set1_ps(A->c_pt);
        } else {
            load_dc(offs, zbytes, A, 0, d, c);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++) {
        float *yi = y + i * A->ldy;
        for (int h = 0; h < 2; h++) {
            __m512 o = f[i][h];
            if (whole) {
                o = _mm512_mul_ps(d[h], o);
                if (offs)
                    o = _mm512_fmadd_ps(c[h], _mm512_set1_ps(A->sx[r + i]), o);
            }
            _mm512_storeu_ps(yi + 16 * h, o);
        }
    }
}

typedef void (*pk_rows_fn)(int mr, int whole, const pk_args *A, int64_t r, float *y);

/* One kind's row-group kernel: mr rows (1..PK_MR), whole rows or groups. */
#define PK_CASE(R, WH, B8, OF, ZB, CP)                                                          \
    case R:                                                                                     \
        pk_rows(R <= PK_MR ? R : 1, B8, WH, OF, ZB, CP, A, r, y);                               \
        break;
#define PK_ROWS_FN(NAME, B8, OF, ZB, CP)                                                        \
    AVX512 static void NAME(int mr, int whole, const pk_args *A, int64_t r, float *y) {         \
        if (whole) {                                                                            \
            switch (mr) {                                                                       \
                PK_CASE(8, 1, B8, OF, ZB, CP) PK_CASE(7, 1, B8, OF, ZB, CP)                     \
                PK_CASE(6, 1, B8, OF, ZB, CP) PK_CASE(5, 1, B8, OF, ZB, CP)                     \
                PK_CASE(4, 1, B8, OF, ZB, CP) PK_CASE(3, 1, B8, OF, ZB, CP)                     \
                PK_CASE(2, 1, B8, OF, ZB, CP)                                                   \
            default:                                                                            \
                pk_rows(1, B8, 1, OF, ZB, CP, A, r, y);                                      \
                break;                                                                          \
            }                                                                                   \
        } else {                                                                                \
            switch (mr) {                                                                       \
                PK_CASE(8, 0, B8, OF, ZB, CP) PK_CASE(7, 0, B8, OF, ZB, CP)                     \
                PK_CASE(6, 0, B8, OF, ZB, CP) PK_CASE(5, 0, B8, OF, ZB, CP)                     \
                PK_CASE(4, 0, B8, OF, ZB, CP) PK_CASE(3, 0, B8, OF, ZB, CP)                     \
                PK_CASE(2, 0, B8, OF, ZB, CP)                                                   \
            default:                                                                            \
                pk_rows(1, B8, 0, OF, ZB, CP, A, r, y);                                      \
                break;                                                                          \
            }                                                                                   \
        }                                                                                       \
    }
/* bits8, offset term, uint8 zero points, integer compensation */
PK_ROWS_FN(pk_rows_SYM8, 1, 0, 0, 128)
PK_ROWS_FN(pk_rows_ASYM8, 1, 1, 1, 0)
PK_ROWS_FN(pk_rows_SYM4, 0, 0, 0, 8)
PK_ROWS_FN(pk_rows_ASYM4, 0, 1, 1, 0)
PK_ROWS_FN(pk_rows_MIN4, 0, 1, 0, 0)

/* Rows for the next pass out of rem left: the last 2 * PK_MR rows in two
 * near-equal passes rather than a full one and a thin one. */
static inline int pk_next_mr(int64_t rem) {
    if (rem >= 2 * PK_MR)
        return PK_MR;
    return rem > PK_MR ? (int)((rem + 1) / 2) : (int)rem;
}

static float pk_value(const void *p, int64_t i, int f16) {
    return qc_param_at(p, f16, i);
}

AVX512 static void pk_run(pk_rows_fn fn, qc_kind kind, const qc_wview *v, const qc_act *a,
                          int64_t m0, int64_t m1, int64_t n0, int64_t n1, float *y,
                          int64_t ldy) {
    const qc_qweight *w = v->w;
    const int f16 = w->scale_dtype == QC_F16, ssz = f16 ? 2 : 4;
    const int whole = w->per_tensor || v->gshift < 0;
    const int64_t nb = v->nb, ng = whole ? 1 : v->ngroups;
    const int64_t blk = QC_PANEL * qc_packed_bpb(kind), bpp = nb * blk; /* bytes per block, panel */
    pk_args A;
    A.nb = nb;
    A.gshift = whole ? 0 : v->gshift;
    A.kp = a->kp;
    A.f16 = f16;
    A.per_tensor = w->per_tensor;
    A.xq = a->xq;
    A.xd = a->xd;
    A.xs = a->xs;
    A.sx = a->sx;
    A.xsum = a->xsum;
    A.ldy = ldy;
    A.d_pt = A.c_pt = 0.0f;
    if (w->per_tensor) {
        A.d_pt = pk_value(w->scales, 0, f16);
        if (kind == QC_ASYM8 || kind == QC_ASYM4)
            A.c_pt = -A.d_pt * (float)((const uint8_t *)w->zeros)[0];
        else if (kind == QC_MIN4)
            A.c_pt = pk_value(w->zeros, 0, f16);
    }
    const int64_t zsz = kind == QC_MIN4 ? ssz : 1;
    /* M tiles of about PK_XTILE bytes of activation codes, near-equal */
    int64_t mt = PK_XTILE / (a->kp > 0 ? a->kp : 1);
    mt = mt < PK_MR ? PK_MR : mt;
    const int64_t ntiles = (m1 - m0 + mt - 1) / mt;
    mt = (m1 - m0 + ntiles - 1) / ntiles;
    const int bits8 = qc_packed_bpb(kind) == 32;
    const int64_t p0 = n0 / QC_PANEL, p1 = n1 / QC_PANEL;
    for (int64_t t0 = m0; t0 < m1; t0 += mt) {
        const int64_t t1 = t0 + mt < m1 ? t0 + mt : m1;
        int64_t passes = 0;
        for (int64_t r = t0; r < t1; r += pk_next_mr(t1 - r))
            passes++;
        const int pf = passes <= PK_FEW ? (bits8 ? PK_PF8_FEW : PK_PF4_FEW)
                                        : (bits8 ? PK_PF8_MANY : PK_PF4_MANY);
        A.pfl1 = pf == 1;
        /* each pass prefetches 1 / passes of the next panel, pfstep bytes per block */
        const int64_t share = (bpp / passes + 63) / 64 * 64;
        A.pfstep = (share / nb + 63) / 64 * 64;
        for (int64_t p = p0; p < p1; p++) {
            const int64_t e0 = w->per_tensor ? 0 : p * ng * QC_PANEL; /* first scale entry */
            A.codes = w->data + p * bpp;
            A.sc = (const char *)w->scales + e0 * ssz;
            A.zr = w->zeros ? (const char *)w->zeros + e0 * zsz : NULL;
            float *yp = y + (p * QC_PANEL - n0);
            int64_t i = 0;
            for (int64_t r = t0; r < t1; i++) {
                const int mr = pk_next_mr(t1 - r);
                const int64_t lo = i * share < bpp ? i * share : bpp;
                const int64_t hi = lo + share < bpp ? lo + share : bpp;
                A.pf = (const char *)A.codes + bpp + lo;
                A.npf = pf && passes > 1 && p + 1 < p1 ? hi - lo : 0;
                fn(mr, whole, &A, r, yp + (r - m0) * ldy);
                r += mr;
            }
        }
    }
}

#define PK_ENTRY(K)                                                                             \
    AVX512 void qc_packed_i8_##K##_avx512(const qc_wview *v, const qc_act *a, int64_t m0,      \
                                          int64_t m1, int64_t n0, int64_t n1, float *y,         \
                                          int64_t ldy) {                                        \
        pk_run(pk_rows_##K, QC_##K, v, a, m0, m1, n0, n1, y, ldy);                              \
    }
PK_ENTRY(SYM8)
PK_ENTRY(ASYM8)
PK_ENTRY(SYM4)
PK_ENTRY(ASYM4)
PK_ENTRY(MIN4)

#endif /* QC_HAVE_X86 */
