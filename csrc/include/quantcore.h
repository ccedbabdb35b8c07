/*
 * quantcore.h -- the public C API of quantcore's kernels.
 *
 * Everything here is plain C99 with no Python in it: the Cython layer (and any
 * package that embeds quantcore) validates its arguments and then calls these
 * functions without the GIL.  Every entry point returns a qc_status; on error a
 * qc_error (when given) says where in the input the problem was found.
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

typedef enum { QC_SYM8 = 0, QC_ASYM8, QC_SYM4, QC_ASYM4, QC_MIN4, QC_NUM_KINDS } qc_kind;

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
int qc_has_openmp(void);

#ifdef __cplusplus
}
#endif
#endif /* QUANTCORE_H */
