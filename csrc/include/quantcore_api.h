/*
 * quantcore_api.h -- call quantcore's kernels from another Python extension.
 *
 * The kernels live inside the extension module `quantcore._ext`, which Python
 * loads privately (RTLD_LOCAL), so another extension cannot link against its
 * symbols.  Instead `quantcore._ext` exports a table of function pointers in a
 * PyCapsule named QC_API_CAPSULE (the way NumPy exports its C API), and this
 * header turns the usual names into calls through that table:
 *
 *     #include "quantcore_api.h"          // after <Python.h>
 *     // once, in the module's init function (with the GIL held):
 *     if (qc_import_api() < 0) return NULL;
 *     // then, anywhere, with or without the GIL:
 *     qc_status st = qc_linear(&w, x, m, k, NULL, y, n, QC_COMPUTE_I8);
 *
 * The caller uses the very dispatch table and thread setting quantcore's own
 * Python API uses (quantcore.set_isa / set_num_threads apply to both).
 *
 * Build against it with include_dirs=[quantcore.get_include()]; nothing to link.
 * Cython: `from quantcore.kernels cimport *` and call `qc_import_api()` at module
 * level (see src/quantcore/kernels.pxd).
 *
 * The table pointer is `static`: each C file that calls the kernels calls
 * qc_import_api() once (it is cheap after the first time).  Versioning: the
 * table only grows at its end; qc_import_api() fails cleanly (ImportError) when
 * the installed quantcore's table is older than this header's or has another
 * major version.
 *
 * Defining QC_API_TABLE_ONLY before the include gives the table type alone
 * (quantcore builds its own table that way).
 */
#ifndef QUANTCORE_API_H
#define QUANTCORE_API_H

#include "quantcore.h"
#ifndef QC_API_TABLE_ONLY
#include <Python.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define QC_API_VERSION 2 /* major: a change that is not an append */
#define QC_API_CAPSULE "quantcore._ext._C_API"

typedef struct qc_api {
    uint32_t version; /* QC_API_VERSION of the quantcore that filled the table */
    uint32_t size;    /* sizeof(qc_api) there: the table grows only at its end */
    /* geometry */
    int64_t (*row_bytes)(qc_kind kind, int64_t cols);
    int64_t (*num_groups)(int64_t cols, int64_t group);
    int (*kind_bits)(qc_kind kind);
    /* quantize / dequantize / int4 packing */
    qc_status (*quantize)(const qc_qdesc *desc, const void *src, qc_dtype src_dtype, int64_t rows,
                          int64_t cols, int64_t row_stride, int64_t col_stride, uint8_t *data,
                          void *scales, void *zeros, qc_error *err);
    qc_status (*dequantize)(const qc_qdesc *desc, const uint8_t *data, const void *scales,
                            const void *zeros, int64_t rows, int64_t cols, float *dst,
                            int64_t dst_row_stride, qc_error *err);
    qc_status (*pack_int4)(const uint8_t *src, int64_t rows, int64_t cols, int is_signed,
                           uint8_t *dst, qc_error *err);
    qc_status (*unpack_int4)(const uint8_t *src, int64_t rows, int64_t cols, int is_signed,
                             uint8_t *dst);
    /* linear layers */
    qc_status (*linear)(const qc_qweight *w, const float *x, int64_t m, int64_t x_row_stride,
                        const float *bias, float *y, int64_t y_row_stride, qc_compute mode);
    int (*linear_uses_gemm)(const qc_qweight *w, int64_t m, qc_compute mode);
    /* runtime */
    uint32_t (*cpu_features)(void);
    int (*isa_compiled)(qc_isa isa);
    int (*isa_supported)(qc_isa isa);
    qc_isa (*best_isa)(void);
    qc_status (*select_isa)(qc_isa isa);
    qc_isa (*current_isa)(void);
    const char *(*isa_name)(qc_isa isa);
    void (*set_num_threads)(int n);
    int (*get_num_threads)(void);
    int (*has_openmp)(void);
    /* appended: method="mse" quantization and the K-quants */
    qc_status (*quantize_mse)(const qc_qdesc *desc, const void *src, qc_dtype src_dtype,
                              int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride,
                              uint8_t *data, void *scales, void *zeros, qc_error *err);
    qc_status (*quantize_mse_weighted)(const qc_qdesc *desc, const void *src, qc_dtype src_dtype,
                                       int64_t rows, int64_t cols, int64_t row_stride,
                                       int64_t col_stride, const float *importance, uint8_t *data,
                                       void *scales, void *zeros, qc_error *err);
    int64_t (*kquant_row_bytes)(qc_ktype type, int64_t cols);
    int64_t (*kquant_sub_blocks)(qc_ktype type, int64_t cols);
    qc_status (*quantize_kquant)(qc_ktype type, const float *src, int64_t rows, int64_t cols,
                                 int64_t src_row_stride, const float *importance, uint8_t *dst,
                                 qc_error *err);
    qc_status (*dequantize_kquant)(qc_ktype type, const uint8_t *src, int64_t rows, int64_t cols,
                                   float *dst, int64_t dst_row_stride, qc_error *err);
    qc_status (*kquant_params)(qc_ktype type, const uint8_t *src, int64_t rows, int64_t cols,
                               float *scales, float *offsets, qc_error *err);
} qc_api;

#ifndef QC_API_TABLE_ONLY
static const qc_api *qc_api_ptr = NULL;

/* Import quantcore._ext and fetch its table; 0 on success, -1 with a Python
 * exception set.  Needs the GIL. */
static inline int qc_import_api(void) {
    PyObject *mod, *cap;
    const qc_api *api;
    if (qc_api_ptr != NULL)
        return 0;
    mod = PyImport_ImportModule("quantcore._ext");
    if (mod == NULL)
        return -1;
    cap = PyObject_GetAttrString(mod, "_C_API");
    Py_DECREF(mod);
    if (cap == NULL)
        return -1;
    api = (const qc_api *)PyCapsule_GetPointer(cap, QC_API_CAPSULE);
    Py_DECREF(cap);
    if (api == NULL)
        return -1;
    if (api->version != QC_API_VERSION) {
        PyErr_Format(PyExc_ImportError,
                     "quantcore C API version %u, but this module was built for version %d",
                     (unsigned)api->version, QC_API_VERSION);
        return -1;
    }
    if (api->size < sizeof(qc_api)) {
        PyErr_Format(PyExc_ImportError,
                     "the installed quantcore has an older C API table (%u bytes) than this "
                     "module was built against (%u bytes): upgrade quantcore",
                     (unsigned)api->size, (unsigned)sizeof(qc_api));
        return -1;
    }
    qc_api_ptr = api;
    return 0;
}

/* The public names, called through the table. */
#define qc_row_bytes (qc_api_ptr->row_bytes)
#define qc_num_groups (qc_api_ptr->num_groups)
#define qc_kind_bits (qc_api_ptr->kind_bits)
#define qc_quantize (qc_api_ptr->quantize)
#define qc_dequantize (qc_api_ptr->dequantize)
#define qc_pack_int4 (qc_api_ptr->pack_int4)
#define qc_unpack_int4 (qc_api_ptr->unpack_int4)
#define qc_linear (qc_api_ptr->linear)
#define qc_linear_uses_gemm (qc_api_ptr->linear_uses_gemm)
#define qc_cpu_features (qc_api_ptr->cpu_features)
#define qc_isa_compiled (qc_api_ptr->isa_compiled)
#define qc_isa_supported (qc_api_ptr->isa_supported)
#define qc_best_isa (qc_api_ptr->best_isa)
#define qc_select_isa (qc_api_ptr->select_isa)
#define qc_current_isa (qc_api_ptr->current_isa)
#define qc_isa_name (qc_api_ptr->isa_name)
#define qc_set_num_threads (qc_api_ptr->set_num_threads)
#define qc_get_num_threads (qc_api_ptr->get_num_threads)
#define qc_has_openmp (qc_api_ptr->has_openmp)
#define qc_quantize_mse (qc_api_ptr->quantize_mse)
#define qc_quantize_mse_weighted (qc_api_ptr->quantize_mse_weighted)
#define qc_kquant_row_bytes (qc_api_ptr->kquant_row_bytes)
#define qc_kquant_sub_blocks (qc_api_ptr->kquant_sub_blocks)
#define qc_quantize_kquant (qc_api_ptr->quantize_kquant)
#define qc_dequantize_kquant (qc_api_ptr->dequantize_kquant)
#define qc_kquant_params (qc_api_ptr->kquant_params)
#endif /* QC_API_TABLE_ONLY */

#ifdef __cplusplus
}
#endif
#endif /* QUANTCORE_API_H */
