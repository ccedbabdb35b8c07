/*
 * quantcore.h -- the public C API of quantcore's kernels.
 *
 * Everything here is plain C99 with no Python in it: the Cython layer (and any
 * package that embeds quantcore) validates its arguments and then calls these
 * functions without the GIL.  Every entry point returns a qc_status; on error a
 * qc_error (when given) says where in the input the problem was found.
 *
 * From another Python extension, include quantcore_api.h instead: the kernels
 * live inside quantcore._ext, and that header calls them through the table the
 * module exports (no linking; see docs/embedding.md).
 *
 * Data layout shared by all entry points
 * --------------------------------------
 * A quantized tensor is seen as `rows` x `cols` (the last axis of the original
 * array is `cols`; all others are flattened into `rows`).  Each row is split into
 * groups of `group` elements along the row; the last group of a row may be
 * shorter (it covers what is left).  `group == 0` means one group per row
 * (per-channel).  `per_tensor` means one set of parameters for the whole tensor.
 *
 *   data    rows x qc_row_bytes(kind, cols) bytes, row-major, no padding between
 *           rows.  8-bit kinds: one byte per value.  4-bit kinds: element 2i in
 *           the low nibble of byte i, element 2i+1 in the high nibble (ONNX
 *           Runtime's order); an odd row ends with a zero high nibble.
 *   scales  rows x qc_num_groups(cols, group) values of `scale_dtype`
 *           (a single value when per_tensor).
 *   zeros   QC_ASYM8 / QC_ASYM4: uint8 integer zero points, same shape as scales.
 *           QC_MIN4: the group minimum `m` in `scale_dtype` (GGUF Q4_1).
 *           Other kinds: unused (NULL).
 *
 * Value of an element q in a group with scale d (converted to float32):
 *   QC_SYM8   int8 q in [-127, 127]         x = d * q
 *   QC_ASYM8  uint8 q, zero point z         x = d * (q - z)
 *   QC_SYM4   nibble q in [0, 15]           x = d * (q - 8)      (GGUF Q4_0)
 *   QC_ASYM4  nibble q, zero point z        x = d * (q - z)
 *   QC_MIN4   nibble q, minimum m           x = d * q + m        (GGUF Q4_1)
 * (each product and sum rounded to float32 separately, never fused).
 *
 * The rules that choose d (and z or m) from a group are the GGUF ones, so that
 * Q8_0, Q4_0 and Q4_1 are these kinds with group 32 and float16 scales, bit for
 * bit; see csrc/formats.h.
 */
#ifndef QUANTCORE_H
#define QUANTCORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QC_VERSION_MAJOR 0
#define QC_VERSION_MINOR 1
#define QC_VERSION_PATCH 0

typedef enum {
    QC_OK = 0,
    QC_ERR_ARG = 1,         /* an argument is invalid (a bug in the caller)           */
    QC_ERR_NONFINITE = 2,   /* NaN or Inf in the input; qc_error says where           */
    QC_ERR_NOMEM = 3,       /* a scratch allocation failed                            */
    QC_ERR_RANGE = 4,       /* a value is out of range; qc_error says where           */
    QC_ERR_UNSUPPORTED = 5, /* the ISA is not compiled in or not supported by the CPU */
    QC_ERR_OVERFLOW = 6     /* a scale does not fit the scale dtype (float16)         */
} qc_status;

typedef struct {
    int64_t row; /* where the problem was found, -1 when not applicable */
    int64_t col;
} qc_error;

typedef enum {
    QC_SYM8 = 0, QC_ASYM8, QC_SYM4, QC_ASYM4, QC_MIN4, QC_NUM_KINDS,
    /* qc_linear only (qc_qweight.kind): GGUF K-quant weights, see "Linear layers" */
    QC_KIND_Q4_K = 16, QC_KIND_Q5_K, QC_KIND_Q6_K
} qc_kind;

typedef enum { QC_F32 = 0, QC_F16 = 1, QC_F64 = 2 } qc_dtype;

typedef enum { QC_ISA_SCALAR = 0, QC_ISA_AVX2, QC_ISA_AVX512, QC_ISA_NEON, QC_NUM_ISAS } qc_isa;

/* CPU feature bits reported by qc_cpu_features(); OS support (XCR0) included. */
enum {
    QC_CPU_SSE2 = 1u << 0,
    QC_CPU_AVX = 1u << 1,
    QC_CPU_AVX2 = 1u << 2,
    QC_CPU_FMA = 1u << 3,
    QC_CPU_F16C = 1u << 4,
    QC_CPU_AVX512F = 1u << 5,
    QC_CPU_AVX512BW = 1u << 6,
    QC_CPU_AVX512VL = 1u << 7,
    QC_CPU_AVX512VNNI = 1u << 8,
    QC_CPU_AVXVNNI = 1u << 9,
    QC_CPU_NEON = 1u << 10,
    QC_CPU_DOTPROD = 1u << 11
};

typedef struct {
    qc_kind kind;
    int64_t group;        /* elements per group; 0 = the whole row                */
    int per_tensor;       /* 1: one scale (and zero) for the whole tensor         */
    qc_dtype scale_dtype; /* QC_F32 or QC_F16                                     */
} qc_qdesc;

/* Geometry helpers. */
int64_t qc_row_bytes(qc_kind kind, int64_t cols);
int64_t qc_num_groups(int64_t cols, int64_t group);
int qc_kind_bits(qc_kind kind);

/* Quantize a rows x cols matrix of float16/32/64 with arbitrary byte strides. */
qc_status qc_quantize(const qc_qdesc *desc, const void *src, qc_dtype src_dtype, int64_t rows,
                      int64_t cols, int64_t row_stride, int64_t col_stride, uint8_t *data,
                      void *scales, void *zeros, qc_error *err);

/* As qc_quantize, with method="mse": each group's scale (and zero point or
 * minimum) searched for the least squared error as stored, never worse than
 * qc_quantize's group by group (per_tensor: over the whole tensor); same layout,
 * so Q8_0 / Q4_0 / Q4_1 stay valid GGUF blocks.  Slower (a few dozen passes over
 * each group). */
qc_status qc_quantize_mse(const qc_qdesc *desc, const void *src, qc_dtype src_dtype,
                          int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride,
                          uint8_t *data, void *scales, void *zeros, qc_error *err);

/* As qc_quantize_mse, minimising the importance-weighted squared error
 * sum_j importance[j] * (x[r, j] - xhat[r, j])^2 instead (llama.cpp's imatrix):
 * importance holds cols finite weights >= 0, one per column (input feature),
 * and NULL means all ones.  Never worse than qc_quantize in that weighted error,
 * group by group (per_tensor: over the tensor); all ones give qc_quantize_mse's
 * result bit for bit, as does any group whose weights are all equal (all zero
 * included: a dead input channel); with unequal weights the search also tries
 * narrower ranges, since clipping a low-weight extreme may pay.  A negative
 * weight gives QC_ERR_RANGE, NaN or Inf QC_ERR_NONFINITE, with err->col the
 * column (err->row -1); nothing is written. */
qc_status qc_quantize_mse_weighted(const qc_qdesc *desc, const void *src, qc_dtype src_dtype,
                                   int64_t rows, int64_t cols, int64_t row_stride,
                                   int64_t col_stride, const float *importance, uint8_t *data,
                                   void *scales, void *zeros, qc_error *err);

/* Dequantize into a float32 matrix whose rows are dst_row_stride floats apart. */
qc_status qc_dequantize(const qc_qdesc *desc, const uint8_t *data, const void *scales,
                        const void *zeros, int64_t rows, int64_t cols, float *dst,
                        int64_t dst_row_stride, qc_error *err);

/* Pack rows x cols int4 values (int8 in [-8, 7] when is_signed, else uint8 in
 * [0, 15]) into rows x ceil(cols/2) bytes; out-of-range values give QC_ERR_RANGE. */
qc_status qc_pack_int4(const uint8_t *src, int64_t rows, int64_t cols, int is_signed,
                       uint8_t *dst, qc_error *err);
/* Unpack rows x ceil(cols/2) bytes into rows x cols values (sign-extended when is_signed). */
qc_status qc_unpack_int4(const uint8_t *src, int64_t rows, int64_t cols, int is_signed,
                         uint8_t *dst);

/* ---- K-quants: GGUF Q4_K, Q5_K, Q6_K -------------------------------------------
 * A row of `cols` values (a positive multiple of 256) is stored as cols / 256
 * super-blocks of 144 (Q4_K), 176 (Q5_K) or 210 (Q6_K) bytes, byte for byte
 * ggml's block_q4_K / block_q5_K / block_q6_K (layouts in csrc/formats.h):
 * 4.5, 5.5 and 6.5625 bits per value.  Rows follow each other without padding.
 *
 * qc_quantize_kquant reproduces ggml's quantizers bit for bit: without
 * `importance`, quantize_row_q4_K_ref (q5_K, q6_K); with it, quantize_q4_K &
 * co. given quant_weights = importance (`cols` finite floats >= 0, the same for
 * every row: an importance-matrix column).  src is float32, rows src_row_stride
 * floats apart.  NaN or Inf in src: QC_ERR_NONFINITE (qc_error: where); a bad
 * importance value: QC_ERR_RANGE (col: which); a super-block whose float16
 * scale would overflow, or whose search overflows float32 (where ggml writes
 * garbage): QC_ERR_OVERFLOW (row, first column of the block).
 * Single-threaded; rows are independent.
 *
 * qc_dequantize_kquant: value = (d * sc) * q - dmin * m (Q4_K, Q5_K) or
 * (d * sc) * (q - 32) (Q6_K), as ggml's dequantize_row_* and gguf.quants.
 * qc_kquant_params: the effective scale d * sc of each sub-block (32 values;
 * Q6_K: 16), rows x qc_kquant_sub_blocks floats, and for Q4_K / Q5_K the value
 * of code 0, -(dmin * m), in `offsets` (same shape; NULL for Q6_K). */
typedef enum { QC_KTYPE_Q4_K = 0, QC_KTYPE_Q5_K = 1, QC_KTYPE_Q6_K = 2, QC_NUM_KTYPES } qc_ktype;
#define QC_KQUANT_BLOCK 256

/* Bytes per row; 0 when cols is not a positive multiple of 256 (or type is unknown). */
int64_t qc_kquant_row_bytes(qc_ktype type, int64_t cols);
/* Sub-blocks per row (cols / 32, Q6_K cols / 16); 0 where qc_kquant_row_bytes is 0. */
int64_t qc_kquant_sub_blocks(qc_ktype type, int64_t cols);
qc_status qc_quantize_kquant(qc_ktype type, const float *src, int64_t rows, int64_t cols,
                             int64_t src_row_stride, const float *importance, uint8_t *dst,
                             qc_error *err);
qc_status qc_dequantize_kquant(qc_ktype type, const uint8_t *src, int64_t rows, int64_t cols,
                               float *dst, int64_t dst_row_stride, qc_error *err);
qc_status qc_kquant_params(qc_ktype type, const uint8_t *src, int64_t rows, int64_t cols,
                           float *scales, float *offsets, qc_error *err);

/* ---- Linear layers: y[m, :] = x[m, :] @ W^T (+ bias) ------------------------
 * W is a quantized (n x k) matrix in the layout above, seen through a qc_qweight
 * (no copy).  x is float32 with contiguous rows (x_row_stride floats apart).
 *
 * QC_COMPUTE_F32: activations stay float32; each weight is expanded to
 *   d * q + c in float32 (c = -d*z, -8*d for SYM4, m for MIN4, 0 for SYM8) and
 *   multiplied in float32: y equals x @ dequantize(W).T up to float rounding.
 * QC_COMPUTE_I8: each row of x is quantized on the fly in blocks of 32
 *   (da = amax/127, aq = round_half_away(x / da), as GGUF Q8_0), the block dot
 *   products run in integers and take one float multiply per block:
 *     y = sum_b  d_w * da_b * dot(q_w, aq_b) + c_w * da_b * sum(aq_b).
 *   Error bound against x @ dequantize(W).T (per output element), from the
 *   activation rounding alone: sum_b (da_b / 2) * sum_{k in b} |W[n, k]|,
 *   plus float rounding.  Needs group == 0 (whole rows), per_tensor, or a group
 *   that is a multiple of 32.
 *
 * K-quant weights: kind QC_KIND_Q4_K / Q5_K / Q6_K (QC_KIND_Q4_K + the qc_ktype),
 * data n x qc_kquant_row_bytes(type, k) bytes of super-blocks (k a multiple of
 * 256); group, per_tensor, scale_dtype, scales and zeros are ignored.  The
 * activations are the same Q8_0 blocks of 32 (I8) or float32 rows (F32); every
 * sub-block takes its own d * sc (and -dmin * m).  Both modes give the same bits
 * on every ISA and on the GEMV and GEMM paths (a fixed order of float
 * operations, see docs/kquants.md). */
typedef enum { QC_COMPUTE_F32 = 0, QC_COMPUTE_I8 = 1 } qc_compute;

typedef struct {
    qc_kind kind;
    int64_t n, k;         /* output and input features                      */
    int64_t group;        /* as in qc_qdesc: 0 = whole row                  */
    int per_tensor;
    qc_dtype scale_dtype; /* QC_F32 or QC_F16                               */
    const uint8_t *data;  /* n x qc_row_bytes(kind, k)                      */
    const void *scales;   /* n x qc_num_groups(k, group), or 1 (per_tensor) */
    const void *zeros;    /* as in qc_quantize, or NULL                     */
} qc_qweight;

/* y (m x n, rows y_row_stride floats apart) = x (m x k) @ W^T + bias (may be NULL).
 * y may overlap x.  Outputs are finite wherever the result is representable in
 * float32, for |scales| (and Q4_1 minima) up to ~1e30: rows of x are scaled by a
 * power of two where the kernels' sums would overflow or underflow. */
qc_status qc_linear(const qc_qweight *w, const float *x, int64_t m, int64_t x_row_stride,
                    const float *bias, float *y, int64_t y_row_stride, qc_compute mode);
/* 1 if qc_linear would run its tiled GEMM path for m rows, 0 for the GEMV path. */
int qc_linear_uses_gemm(const qc_qweight *w, int64_t m, qc_compute mode);

/* Runtime: CPU features, kernel set, threads. */
uint32_t qc_cpu_features(void);
int qc_isa_compiled(qc_isa isa);
int qc_isa_supported(qc_isa isa); /* compiled in and runnable on this CPU/OS */
qc_isa qc_best_isa(void);
qc_status qc_select_isa(qc_isa isa);
qc_isa qc_current_isa(void);
const char *qc_isa_name(qc_isa isa);
void qc_set_num_threads(int n);
int qc_get_num_threads(void);
int qc_has_openmp(void); /* 0: the kernels run on quantcore's own thread pool (no OpenMP) */

#ifdef __cplusplus
}
#endif
#endif /* QUANTCORE_H */
