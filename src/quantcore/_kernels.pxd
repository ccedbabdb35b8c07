# Declarations of quantcore's C API (csrc/include/quantcore.h) for Cython.
# Another Cython package can `cimport quantcore._kernels` and call the kernels
# directly, without the GIL; see quantcore.get_include() for the header.
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

cdef extern from "quantcore.h" nogil:
    ctypedef enum qc_status:
        QC_OK
        QC_ERR_ARG
        QC_ERR_NONFINITE
        QC_ERR_NOMEM
        QC_ERR_RANGE
        QC_ERR_UNSUPPORTED
        QC_ERR_OVERFLOW

    ctypedef struct qc_error:
        int64_t row
        int64_t col

    ctypedef enum qc_kind:
        QC_SYM8
        QC_ASYM8
        QC_SYM4
        QC_ASYM4
        QC_MIN4
        QC_NUM_KINDS
        QC_KIND_Q4_K
        QC_KIND_Q5_K
        QC_KIND_Q6_K

    ctypedef enum qc_dtype:
        QC_F32
        QC_F16
        QC_F64

    ctypedef enum qc_isa:
        QC_ISA_SCALAR
        QC_ISA_AVX2
        QC_ISA_AVX512
        QC_ISA_NEON
        QC_NUM_ISAS

    ctypedef struct qc_qdesc:
        qc_kind kind
        int64_t group
        int per_tensor
        qc_dtype scale_dtype

    int64_t qc_row_bytes(qc_kind kind, int64_t cols)
    int64_t qc_num_groups(int64_t cols, int64_t group)
    int qc_kind_bits(qc_kind kind)

    qc_status qc_quantize(const qc_qdesc *desc, const void *src, qc_dtype src_dtype,
                          int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride,
                          uint8_t *data, void *scales, void *zeros, qc_error *err)
    qc_status qc_quantize_mse(const qc_qdesc *desc, const void *src, qc_dtype src_dtype,
                              int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride,
                              uint8_t *data, void *scales, void *zeros, qc_error *err)
    qc_status qc_quantize_mse_weighted(const qc_qdesc *desc, const void *src, qc_dtype src_dtype,
                                       int64_t rows, int64_t cols, int64_t row_stride,
                                       int64_t col_stride, const float *importance,
                                       uint8_t *data, void *scales, void *zeros, qc_error *err)
    qc_status qc_dequantize(const qc_qdesc *desc, const uint8_t *data, const void *scales,
                            const void *zeros, int64_t rows, int64_t cols, float *dst,
                            int64_t dst_row_stride, qc_error *err)
    qc_status qc_pack_int4(const uint8_t *src, int64_t rows, int64_t cols, int is_signed,
                           uint8_t *dst, qc_error *err)
    qc_status qc_unpack_int4(const uint8_t *src, int64_t rows, int64_t cols, int is_signed,
                             uint8_t *dst)

    uint32_t qc_cpu_features()
    int qc_isa_compiled(qc_isa isa)
    int qc_isa_supported(qc_isa isa)
    qc_isa qc_best_isa()
    qc_status qc_select_isa(qc_isa isa)
    qc_isa qc_current_isa()
    const char *qc_isa_name(qc_isa isa)
    void qc_set_num_threads(int n)
    int qc_get_num_threads()
    int qc_has_openmp()

cdef extern from "quantcore.h" nogil:
    ctypedef enum qc_compute:
        QC_COMPUTE_F32
        QC_COMPUTE_I8

    ctypedef struct qc_qweight:
        qc_kind kind
        int64_t n
        int64_t k
        int64_t group
        int per_tensor
        qc_dtype scale_dtype
        const uint8_t *data
        const void *scales
        const void *zeros

    qc_status qc_linear(const qc_qweight *w, const float *x, int64_t m, int64_t x_row_stride,
                        const float *bias, float *y, int64_t y_row_stride, qc_compute mode)
    int qc_linear_uses_gemm(const qc_qweight *w, int64_t m, qc_compute mode)

cdef extern from "quantcore.h" nogil:
    ctypedef enum qc_ktype:
        QC_KTYPE_Q4_K
        QC_KTYPE_Q5_K
        QC_KTYPE_Q6_K
        QC_NUM_KTYPES

    int64_t qc_kquant_row_bytes(qc_ktype type, int64_t cols)
    int64_t qc_kquant_sub_blocks(qc_ktype type, int64_t cols)
    qc_status qc_quantize_kquant(qc_ktype type, const float *src, int64_t rows, int64_t cols,
                                 int64_t src_row_stride, const float *importance, uint8_t *dst,
                                 qc_error *err)
    qc_status qc_dequantize_kquant(qc_ktype type, const uint8_t *src, int64_t rows, int64_t cols,
                                   float *dst, int64_t dst_row_stride, qc_error *err)
    qc_status qc_kquant_params(qc_ktype type, const uint8_t *src, int64_t rows, int64_t cols,
                               float *scales, float *offsets, qc_error *err)
