/*
 * api_table.c -- the table of entry points that quantcore._ext exports to other
 * extensions in the PyCapsule "quantcore._ext._C_API" (see quantcore_api.h).
 * Filled at compile time; the order of the fields is the ABI.
 */
#define QC_API_TABLE_ONLY
#include "quantcore_api.h"

static const qc_api table = {
    QC_API_VERSION,
    (uint32_t)sizeof(qc_api),
    qc_row_bytes,
    qc_num_groups,
    qc_kind_bits,
    qc_quantize,
    qc_dequantize,
    qc_pack_int4,
    qc_unpack_int4,
    qc_linear,
    qc_linear_uses_gemm,
    qc_cpu_features,
    qc_isa_compiled,
    qc_isa_supported,
    qc_best_isa,
    qc_select_isa,
    qc_current_isa,
    qc_isa_name,
    qc_set_num_threads,
    qc_get_num_threads,
    qc_has_openmp,
    qc_quantize_mse,
    qc_quantize_mse_weighted,
    qc_kquant_row_bytes,
    qc_kquant_sub_blocks,
    qc_quantize_kquant,
    qc_dequantize_kquant,
    qc_kquant_params,
};

const qc_api *qc_api_table(void) { return &table; }
