/*
 * kquant_linear_avx512.c -- AVX-512 VNNI linear kernels over K-quant weights.
 *
 * ISA: AVX-512 F + BW + VL + VNNI.  int8: two 32-blocks per 512-bit vpdpbusd, block dots
 * reduced by permutes; float32: 256-bit FMAs.  Layout, order and exactness:
 * kquant_linear.inc (bit for bit the scalar reference, ref/kquant_linear_scalar.c).
 */
#include "../kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <stddef.h>
#include <stdlib.h>
#if defined(_WIN32)
#include <malloc.h>
#endif

#define KQ_TARGET "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"
#define KQ_ISA avx512
#define KQ_ZMM 1
#define KQ_DOT4(c, a) _mm256_dpbusd_epi32(_mm256_setzero_si256(), (c), (a))
/* rows from which the tiled GEMM beats the GEMV, [float32, int8] (docs/kquants.md) */
#define KQ_GEMM_MIN_M_F32 8
#define KQ_GEMM_MIN_M_I8 6
#include "kquant_linear.inc"
#endif
