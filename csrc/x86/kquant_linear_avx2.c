/*
 * kquant_linear_avx2.c -- AVX2 (+ FMA, F16C) linear kernels over K-quant weights.
 *
 * ISA: AVX2 + FMA.  Layout, order and exactness: kquant_linear.inc (bit for bit the
 * scalar reference, ref/kquant_linear_scalar.c).  Integer dots: vpmaddubsw (codes
 * <= 63 times int8: no saturation) and vpmaddwd into int32.
 */
#include "../kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <stddef.h>
#include <stdlib.h>
#if defined(_WIN32)
#include <malloc.h>
#endif

#define KQ_TARGET "avx2,fma,f16c"
#define KQ_ISA avx2
#define KQ_DOT4(c, a) _mm256_madd_epi16(_mm256_maddubs_epi16((c), (a)), _mm256_set1_epi16(1))
/* rows from which the tiled GEMM beats the GEMV, [float32, int8] (docs/kquants.md) */
#define KQ_GEMM_MIN_M_F32 8
#define KQ_GEMM_MIN_M_I8 6
#include "kquant_linear.inc"
#endif
