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
/* Pack n nibble values (already range-checked) into ceil(n/2) bytes, and back. */
typedef void (*qc_pack4_fn)(const uint8_t *src, int64_t n, uint8_t *dst);
typedef void (*qc_unpack4_fn)(const uint8_t *src, int64_t n, int is_signed, uint8_t *dst);

typedef struct {
    const char *name;
    qc_load_f16_fn load_f16;
    qc_load_f64_fn load_f64;
    qc_stats_fn stats;
    qc_quantize_fn quantize[QC_NUM_KINDS];
    qc_dequantize_fn dequantize[QC_NUM_KINDS];
    qc_pack4_fn pack_int4;
    qc_unpack4_fn unpack_int4;
} qc_kernels;

extern const qc_kernels qc_kernels_scalar;
#if defined(__x86_64__) || defined(_M_X64)
#define QC_HAVE_X86 1
extern const qc_kernels qc_kernels_avx2;
#endif
#if defined(__aarch64__)
#define QC_HAVE_NEON 1
extern const qc_kernels qc_kernels_neon;
#endif

/* The table in use (set by dispatch.c). */
const qc_kernels *qc_active(void);

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
