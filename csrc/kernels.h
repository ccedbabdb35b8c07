/*
 * kernels.h -- the dispatch table: one struct of typed function pointers per ISA.
 *
 * Each ISA file (ref/quant_scalar.c, x86/quant_avx2.c, arm/quant_neon.c) fills one qc_kernels
 * at compile time; dispatch.c picks one at import (the best the CPU and OS run,
 * or the one QUANTCORE_ISA / qc_select_isa() names).  An ISA may leave an entry
 * NULL: dispatch.c fills it from the scalar table, so every entry is callable.
 *
 * All row kernels work on contiguous float32 rows; api.c converts other dtypes
 * and strides into a per-thread buffer first, with load_f16 / load_f64.
 */
#ifndef QC_KERNELS_H
#define QC_KERNELS_H

#include "formats.h"

typedef void (*qc_load_f16_fn)(const uint16_t *src, int64_t n, float *dst);
typedef void (*qc_load_f64_fn)(const double *src, int64_t n, float *dst);
/* min, max and signed absmax of x[0..n); returns 1 if x holds NaN or Inf (stats unset). */
typedef int (*qc_stats_fn)(const float *x, int64_t n, qc_stats *s);
/* Quantize n floats of one group into codes: bytes (8-bit) or nibbles starting at
 * the low nibble of dst[0] (4-bit; an odd n leaves the last high nibble 0). */
typedef void (*qc_quantize_fn)(const float *x, int64_t n, const qc_qparams *p, uint8_t *dst);
/* Inverse of the above, with p->d the stored scale. */
typedef void (*qc_dequantize_fn)(const uint8_t *src, int64_t n, const qc_qparams *p, float *dst);
/* Quantize a whole row group by group (see quantize_row.h). */
typedef int64_t (*qc_quantize_row_fn)(const float *x, int64_t n, int64_t group, uint8_t *dst,
                                      float *d, float *m, uint8_t *z);
/* method="mse": as qc_quantize_row_fn, with the parameters searched for the
 * least squared error as stored (scale_f16: float16 scales), weighted by imp[0..n)
 * unless imp is NULL; scratch holds one group's codes, wscratch one group's
 * floats (see quantize_mse.h). */
typedef int64_t (*qc_quantize_row_mse_fn)(const float *x, int64_t n, int64_t group,
                                          int scale_f16, const float *imp, uint8_t *dst,
                                          float *d, float *m, uint8_t *z, uint8_t *scratch,
                                          float *wscratch);
/* float32 -> float16 (round to nearest even) for n values. */
typedef void (*qc_store_f16_fn)(const float *src, int64_t n, uint16_t *dst);
/* Pack n nibble values (already range-checked) into ceil(n/2) bytes, and back. */
typedef void (*qc_pack4_fn)(const uint8_t *src, int64_t n, uint8_t *dst);
typedef void (*qc_unpack4_fn)(const uint8_t *src, int64_t n, int is_signed, uint8_t *dst);

/* ---- linear layers ----------------------------------------------------------
 * api_linear.c prepares the activations once per call (qc_act) and splits the
 * output features [n0, n1) across threads; a kernel computes y[m0:m1, n0:n1].
 * Activation rows are padded with zeros to kp = k rounded up to 32 and split
 * into nb = kp / 32 blocks.  Order inside a row: natural, except for 4-bit
 * weights on the GEMV paths, where blocks go in groups of `span` (the linear
 * table's act_span4: 2 for AVX2 and the scalar reference, 4 for AVX-512, 0 =
 * natural for NEON, which splits the nibbles in registers instead) and a
 * group holds the even elements of its first block, those of its second, ...,
 * then the odd elements of the first, of the second, ...  The last group of a
 * row may hold fewer blocks (r < span; same pattern with r blocks); see
 * qc_act_pos4.  A load of r blocks' nibbles (16 r bytes) then meets its
 * activations with one mask (low nibbles) and one shift (high nibbles). */
#define QC_BLK 32

typedef struct {
    const qc_qweight *w;
    int64_t row_bytes; /* bytes of one weight row                            */
    int64_t ngroups;   /* scale groups in one row                            */
    int64_t srow;      /* scale-array stride between rows: ngroups, 0 per tensor */
    int64_t bpg;       /* 32-blocks per scale group (nb for whole rows)      */
    int gshift;        /* log2(bpg) when groups are split, -1 for whole rows */
    int64_t nb;        /* 32-blocks per row                                  */
    int64_t kp;        /* k rounded up to 32                                 */
    int64_t panels;    /* packed weights (packed.h): panels of 32 rows; 0: row layout */
} qc_wview;

typedef struct {
    int64_t m, kp, nb;
    int deinterleaved; /* span of the 4-bit GEMV order (qc_act_pos4), 0: natural */
    const float *xf;   /* F32: m x kp floats                                 */
    const int8_t *xq;  /* I8: m x kp codes                                   */
    const float *xd;   /* I8: m x nb block scales da                         */
    const float *xs;   /* m x nb block sums: da * sum(aq) (I8), sum(x) (F32)  */
    /* packed weights only (packed.h), I8: */
    const int32_t *xsum; /* m x nb integer block sums sum(aq)                   */
    const float *sx;     /* m: sum of the row's xs over b = 0, 1, ... in order */
} qc_act;

/* Offset in an activation row of element j of block b in the 4-bit GEMV order
 * with groups of `span` blocks. */
static inline int64_t qc_act_pos4(int span, int64_t nb, int64_t b, int64_t j) {
    int64_t g = b / span * span;                /* first block of b's group */
    int64_t r = nb - g < span ? nb - g : span;  /* blocks in that group     */
    return g * QC_BLK + (j & 1) * 16 * r + (b - g) * 16 + (j >> 1);
}

/* Index into the scale array of the group holding block b of row r. */
static inline int64_t qc_group_index(const qc_wview *v, int64_t r, int64_t b) {
    return r * v->srow + (v->gshift < 0 ? 0 : (b >> v->gshift));
}

/* Element i of a float16 (f16) or float32 parameter array at any alignment (a
 * packed weight's sections may sit at any byte, e.g. in a caller's buffer). */
static inline float qc_param_at(const void *p, int f16, int64_t i) {
    if (f16) {
        uint16_t h;
        memcpy(&h, (const uint8_t *)p + 2 * i, 2);
        return qc_fp16_to_fp32(h);
    }
    float v;
    memcpy(&v, (const uint8_t *)p + 4 * i, 4);
    return v;
}

/* Scale d and offset c of scale group gi (w = d * q + c). */
static inline void qc_group_dc(const qc_wview *v, int64_t gi, float *d, float *c) {
    const qc_qweight *w = v->w;
    float dd = qc_param_at(w->scales, w->scale_dtype == QC_F16, gi);
    float cc = 0.0f;
    switch (w->kind) {
    case QC_SYM4:
        cc = -8.0f * dd;
        break;
    case QC_ASYM8:
    case QC_ASYM4:
        cc = -dd * (float)((const uint8_t *)w->zeros)[gi];
        break;
    case QC_MIN4:
        cc = qc_param_at(w->zeros, w->scale_dtype == QC_F16, gi);
        break;
    default:
        break;
    }
    *d = dd;
    *c = cc;
}

/* Quantize one activation row (k floats) into kp codes in Q8_0 blocks, in the
 * 4-bit GEMV order with groups of `span` blocks (0: natural order); returns 1
 * (outputs unspecified) if the row holds NaN or Inf. */
typedef int (*qc_act_quant_fn)(const float *x, int64_t k, int span, int8_t *xq,
                                float *xd, float *xs);
/* y[(m - m0) * ldy + (n - n0)] for m in [m0, m1), n in [n0, n1) (no bias). */
typedef void (*qc_linear_fn)(const qc_wview *w, const qc_act *a, int64_t m0, int64_t m1,
                             int64_t n0, int64_t n1, float *y, int64_t ldy);

typedef struct {
    const char *name;
    qc_load_f16_fn load_f16;
    qc_load_f64_fn load_f64;
    qc_stats_fn stats;
    qc_quantize_fn quantize[QC_NUM_KINDS];
    qc_dequantize_fn dequantize[QC_NUM_KINDS];
    qc_quantize_row_fn quantize_row[QC_NUM_KINDS];
    qc_store_f16_fn store_f16;
    qc_pack4_fn pack_int4;
    qc_unpack4_fn unpack_int4;
    /* NULL: the AVX2 one where the CPU runs it (x86), else the scalar one */
    qc_quantize_row_mse_fn quantize_row_mse[QC_NUM_KINDS];
} qc_kernels;

/* The method="mse" row kernels of an ISA file (ref/mse_scalar.c, x86/mse_avx2.c). */
#define QC_DECLARE_ROW_MSE(K, ISA)                                                              \
    int64_t qc_quantize_row_mse_##K##_##ISA(const float *x, int64_t n, int64_t group,          \
                                            int scale_f16, const float *imp, uint8_t *dst,     \
                                            float *d, float *m, uint8_t *z, uint8_t *scratch,  \
                                            float *wscratch);
#define QC_DECLARE_ROW_MSE_ALL(ISA)                                                             \
    QC_DECLARE_ROW_MSE(SYM8, ISA)                                                               \
    QC_DECLARE_ROW_MSE(ASYM8, ISA)                                                              \
    QC_DECLARE_ROW_MSE(SYM4, ISA)                                                               \
    QC_DECLARE_ROW_MSE(ASYM4, ISA)                                                              \
    QC_DECLARE_ROW_MSE(MIN4, ISA)
#define QC_ROW_MSE_TABLE(ISA)                                                                   \
    {qc_quantize_row_mse_SYM8_##ISA, qc_quantize_row_mse_ASYM8_##ISA,                           \
     qc_quantize_row_mse_SYM4_##ISA, qc_quantize_row_mse_ASYM4_##ISA,                           \
     qc_quantize_row_mse_MIN4_##ISA}
QC_DECLARE_ROW_MSE_ALL(scalar)

/* The packed-weight kernels of an ISA file (ref/packed_scalar.c,
 * x86/packed_<isa>.c): qc_packed_i8_<KIND>_<ISA>, contract in packed.h. */
#define QC_DECLARE_PACKED(K, ISA)                                                               \
    void qc_packed_i8_##K##_##ISA(const qc_wview *, const qc_act *, int64_t, int64_t, int64_t, \
                                  int64_t, float *, int64_t);
#define QC_DECLARE_PACKED_ALL(ISA)                                                              \
    QC_DECLARE_PACKED(SYM8, ISA)                                                                \
    QC_DECLARE_PACKED(ASYM8, ISA)                                                               \
    QC_DECLARE_PACKED(SYM4, ISA)                                                                \
    QC_DECLARE_PACKED(ASYM4, ISA)                                                               \
    QC_DECLARE_PACKED(MIN4, ISA)
#define QC_PACKED_TABLE(ISA)                                                                    \
    {qc_packed_i8_SYM8_##ISA, qc_packed_i8_ASYM8_##ISA, qc_packed_i8_SYM4_##ISA,                \
     qc_packed_i8_ASYM4_##ISA, qc_packed_i8_MIN4_##ISA}

/* The linear-layer part of an ISA's table (linear_<isa>.c). */
typedef struct {
    const char *name;
    qc_act_quant_fn act_quant; /* handles span 0 and act_span4 (the scalar one: any) */
    int act_span4;             /* blocks per group of the 4-bit GEMV activation order */
    /* GEMV paths: stream the weights once per call for a few rows of x (any m;
     * they loop).  GEMM paths (NULL: the GEMV ones are used): tiled, for many
     * rows; they take natural-order activations.  Each ISA's table lists its own
     * (dispatch.c fills only the GEMV entries an ISA leaves NULL). */
    qc_linear_fn gemv_f32[QC_NUM_KINDS];
    qc_linear_fn gemv_i8[QC_NUM_KINDS];
    qc_linear_fn gemm_f32[QC_NUM_KINDS];
    qc_linear_fn gemm_i8[QC_NUM_KINDS];
    /* Rows from which the GEMM path beats the GEMV one, [f32, i8][8-bit, 4-bit
     * weights] (0: QC_GEMM_MIN_M); measured per ISA, see its table. */
    int gemm_min_m[2][2];
    /* Prepacked weights (packed.h), int8 compute, any m; n0 and n1 multiples of
     * 32 within the panels.  NULL: the scalar reference's (dispatch.c). */
    qc_linear_fn packed_i8[QC_NUM_KINDS];
    /* K-quant weights (kind QC_KIND_Q4_K + ktype), natural-order activations;
     * filled by dispatch.c from the ISA's qc_kq_linear_kernels. */
    struct qc_kq_linear_kernels_s {
        qc_linear_fn gemv_f32[QC_NUM_KTYPES];
        qc_linear_fn gemv_i8[QC_NUM_KTYPES];
        qc_linear_fn gemm_f32[QC_NUM_KTYPES]; /* NULL: the GEMV ones */
        qc_linear_fn gemm_i8[QC_NUM_KTYPES];
        int gemm_min_m[2]; /* [mode]; 0: QC_GEMM_MIN_M */
    } kq;
} qc_linear_kernels;
typedef struct qc_kq_linear_kernels_s qc_kq_linear_kernels;

/* The K-quant linear kernels of each ISA file (ref/kquant_linear_scalar.c,
 * x86/kquant_linear_avx2.c, x86/kquant_linear_avx512.c, arm/kquant_linear_neon.c);
 * see docs/kquants.md for the order of float operations they all share. */
extern const qc_kq_linear_kernels qc_kq_linear_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const qc_kq_linear_kernels qc_kq_linear_avx2, qc_kq_linear_avx512;
#endif
#if defined(__aarch64__) /* arm/kquant_linear_neon.c: baseline, and with SDOT */
extern const qc_kq_linear_kernels qc_kq_linear_neon, qc_kq_linear_neon_dot;
#endif
/* One K-quant weight row (k values) dequantized into w, as qc_dequantize_kquant. */
void qc_kq_dequantize_row(int ktype, const uint8_t *row, int64_t k, float *w);
/* ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)): the reduction of eight
 * lanes every K-quant kernel ends with (an AVX2 256 -> 128 -> 64 -> 32 fold). */
static inline float qc_kq_tree8(const float *a) {
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

extern const qc_kernels qc_kernels_scalar;
extern const qc_linear_kernels qc_linear_scalar;
QC_DECLARE_PACKED_ALL(scalar)
#if defined(__x86_64__) || defined(_M_X64)
#define QC_HAVE_X86 1
extern const qc_kernels qc_kernels_avx2;
extern const qc_linear_kernels qc_linear_avx2;
/* The tiled GEMM entries of an ISA (x86/gemm_<isa>.c through gemm_driver.inc),
 * which its linear table lists (QC_GEMM_TABLE(f32 | i8, isa)). */
#define QC_DECLARE_GEMM(K, ISA)                                                                 \
    void qc_gemm_f32_##K##_##ISA(const qc_wview *, const qc_act *, int64_t, int64_t, int64_t,  \
                                 int64_t, float *, int64_t);                                   \
    void qc_gemm_i8_##K##_##ISA(const qc_wview *, const qc_act *, int64_t, int64_t, int64_t,   \
                                int64_t, float *, int64_t);
#define QC_DECLARE_GEMM_ALL(ISA)                                                                \
    QC_DECLARE_GEMM(SYM8, ISA)                                                                  \
    QC_DECLARE_GEMM(ASYM8, ISA)                                                                 \
    QC_DECLARE_GEMM(SYM4, ISA)                                                                  \
    QC_DECLARE_GEMM(ASYM4, ISA)                                                                 \
    QC_DECLARE_GEMM(MIN4, ISA)
#define QC_GEMM_TABLE(MODE, ISA)                                                                \
    {qc_gemm_##MODE##_SYM8_##ISA, qc_gemm_##MODE##_ASYM8_##ISA, qc_gemm_##MODE##_SYM4_##ISA,    \
     qc_gemm_##MODE##_ASYM4_##ISA, qc_gemm_##MODE##_MIN4_##ISA}
QC_DECLARE_GEMM_ALL(avx2)
QC_DECLARE_GEMM_ALL(avx512)
QC_DECLARE_PACKED_ALL(avx2)
QC_DECLARE_PACKED_ALL(avx512)
QC_DECLARE_ROW_MSE_ALL(avx2)
/* AVX-512 F+BW+VL+VNNI: own linear kernels (x86/linear_avx512.c); its quantize
 * kernels are the AVX2 ones (dispatch.c), AVX-512 did not make them faster. */
extern const qc_linear_kernels qc_linear_avx512;
#endif
#if defined(__aarch64__)
#define QC_HAVE_NEON 1
extern const qc_kernels qc_kernels_neon;
/* GEMV only (arm/linear_neon.c): baseline, and with SDOT (QC_CPU_DOTPROD) */
extern const qc_linear_kernels qc_linear_neon, qc_linear_neon_dot;
QC_DECLARE_ROW_MSE_ALL(neon)
#endif

/* The tables in use (set by dispatch.c); every entry callable, except the GEMM
 * ones, which may be NULL. */
const qc_kernels *qc_active(void);
const qc_linear_kernels *qc_active_linear(void);

/* Scalar helpers that SIMD kernels reuse for their tails. */
void qc_quantize_scalar(qc_kind kind, const float *x, int64_t n, const qc_qparams *p,
                        uint8_t *dst);
void qc_dequantize_scalar(qc_kind kind, const uint8_t *src, int64_t n, const qc_qparams *p,
                          float *dst);

/* Functions of an ISA file are compiled for that ISA with a target attribute on
 * each function (GCC and clang), so the rest of the build stays baseline. */
#if defined(__GNUC__) || defined(__clang__)
#define QC_TARGET(t) __attribute__((target(t)))
#else
#define QC_TARGET(t)
#endif

#endif /* QC_KERNELS_H */
