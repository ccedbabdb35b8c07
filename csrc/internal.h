/*
 * internal.h -- what quantcore's own C files and its Cython module share beyond
 * the public quantcore.h: the thread policy, the GEMM switch-over row count and
 * the benchmark's bandwidth probe.  Not installed (get_include() ships
 * csrc/include only); nothing here is part of the C API.
 */
#ifndef QC_INTERNAL_H
#define QC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "quantcore.h"

/* Work (elements touched) below which an entry point runs on one thread: waking
 * the pool's workers costs more than it saves.  1 MiB of float32. */
#define QC_PAR_MIN_WORK ((int64_t)1 << 18)

/* Threads for a call touching `work` elements: 1 below QC_PAR_MIN_WORK, else
 * qc_get_num_threads(). */
int qc_threads_for(int64_t work);

/* Rows of x from which qc_linear takes the GEMM path at the latest (where the
 * ISA has one); an ISA's table may switch earlier (kernels.h, gemm_min_m). */
#define QC_GEMM_MIN_M 8

/* Read `bytes` (a multiple of 64, 8-byte aligned) with the kernels' threads and
 * return a checksum: the benchmark's probe of the memory bandwidth. */
uint64_t qc_read_probe(const void *p, size_t bytes);

/* Prepacked linear-layer weights (packed.h; x86 builds, int8 compute).
 * qc_packed_bytes: bytes of w in the packed layout (the same as in the row
 * layout), 0 when w is not packable on this build.  qc_pack_weight packs the
 * row-layout w into dst (exactly that many bytes) and fills pw, a qc_qweight
 * for qc_linear (kind QC_KIND_PACKED + w's kind) pointing into dst.
 * qc_unpack_rows writes rows [j0, j1) of a packed weight back in the row
 * layout (data: (j1 - j0) rows; scales / zeros: their per-row groups, or the
 * one value of a per-tensor weight); qc_unpack_weight all of them. */
int64_t qc_packed_bytes(const qc_qweight *w);
qc_status qc_pack_weight(const qc_qweight *w, uint8_t *dst, int64_t dst_bytes, qc_qweight *pw);
qc_status qc_unpack_rows(const qc_qweight *pw, int64_t j0, int64_t j1, uint8_t *data,
                         void *scales, void *zeros);
qc_status qc_unpack_weight(const qc_qweight *pw, uint8_t *data, void *scales, void *zeros);
/* The tail rows [32 * (n / 32), n) of a packed weight as one packed panel of 32
 * rows (the rest zero), built per call so that the packed kernels compute every
 * output: qc_packed_tail_bytes(pw) bytes at dst, tw its packed qc_qweight. */
int64_t qc_packed_tail_bytes(const qc_qweight *pw);
qc_status qc_pack_tail(const qc_qweight *pw, uint8_t *dst, qc_qweight *tw);

#endif /* QC_INTERNAL_H */
