/*
 * packed.h -- the prepacked weight layout of the linear layer, declared once.
 *
 * QuantizedLinear with int8 compute on an x86 build holds its weight in this
 * layout instead of quantcore.h's row layout: the layout the packed kernels read
 * as one sequential stream, with weight rows in SIMD lanes, so that every row of
 * x (any m) is served by one pass over the weights and no call transposes them.
 * The same bytes serve the scalar, AVX2 and AVX-512 kernels (set_isa keeps
 * working); other builds keep the row layout.  It holds exactly the bytes of the
 * row layout, rearranged: nothing is padded.
 *
 * Packable: kinds SYM8, ASYM8, SYM4, ASYM4, MIN4 (not K-quants), k a multiple of
 * 32, n >= 32, whole rows, per tensor, or groups of a power of two of 32-blocks.
 * P = n / 32 panels of 32 rows, T = n % 32 tail rows, nb = k / 32 blocks per row,
 * bpb = bytes of a row's block (32 for 8-bit codes, 16 for 4-bit), ng = groups per
 * row (1 for whole rows), one byte buffer of three sections:
 *
 * codes, at offset 0: panel p, block b at (p * nb + b) * 32 * bpb, then the T
 *   tail rows in the row layout (nb * bpb bytes each).  In a panel block, step s
 *   at s * 128, holding one 32-bit lane per row r (bytes 4r..4r+3) of row 32p + r:
 *   8-bit (8 steps): byte i = code 32b + 4s + i; SYM8 stored as q + 128 (q ^ 0x80),
 *     so every kind is the unsigned side of vpdpbusd; ASYM8 as stored.
 *   4-bit (4 steps): byte i = code 32b + 4s + i in its low nibble and code
 *     32b + 16 + 4s + i in its high nibble (codes as stored: 0..15), so both
 *     nibbles meet activations in natural order (4 consecutive bytes each).
 * scales, at offset n * nb * bpb: per tensor, one value; else panel p, group g:
 *   32 values (row r at (p * ng + g) * 32 + r), then the tail rows' T x ng
 *   values in the row layout.  The stored dtype (float16 or float32).
 * zeros (ASYM8 / ASYM4: uint8 zero points; MIN4: minima in the scale dtype), right
 *   after the scales, arranged as the scales.
 *
 * A packed weight is a qc_qweight with kind QC_KIND_PACKED + its base kind and
 * data / scales / zeros pointing at the three sections; only quantcore's own
 * Python layer builds one (internal.h: qc_pack_weight / qc_unpack_weight).
 *
 * Packed kernels (qc_linear_kernels.packed_i8[kind], contract qc_linear_fn):
 * y[(m - m0) * ldy + (j - n0)] for rows m in [m0, m1) and features j in
 * [n0, n1), n0 and n1 multiples of 32 at most 32 P, over natural-order int8
 * activations (qc_act: xq, xd, xs, and xsum, sx).  Every output is computed by
 * this sequence, in this order, in every ISA (so all are bit-identical to the
 * scalar reference, for any thread count and any batch of rows):
 *   comp = 128 (SYM8), 8 (SYM4), 0 (others); offs = kind has a zero or minimum
 *   dot_b = sum_{e in block b} code[j, e] * aq[m, e] - comp * xsum[m, b]  (int32, exact)
 *   whole rows (incl. per tensor), d and c the row's:
 *     f = 0; for b in order: f = fma((float)dot_b, xd[m, b], f)
 *     y = d * f; if offs: y = fma(c, sx[m], y)
 *   groups, d_g and c_g of block b's group:
 *     f = 0; for b in order: f = fma((float)dot_b, d_g * xd[m, b], f);
 *                            if offs: f = fma(c_g, xs[m, b], f)
 *     y = f
 *   with c = -d * z for ASYM (as (-d) * z), the minimum for MIN4, and float16
 *   values converted to float32 first.
 */
#ifndef QC_PACKED_H
#define QC_PACKED_H

#include "formats.h"

/* Kind of a packed weight: QC_KIND_PACKED + its base kind (internal only). */
#define QC_KIND_PACKED 32
#define QC_PANEL 32       /* rows per panel */
#define QC_PSTEP 128      /* bytes per step of a panel block */

static inline int qc_is_packed_kind(int kind) {
    return kind >= QC_KIND_PACKED && kind < QC_KIND_PACKED + QC_NUM_KINDS;
}

/* w with its kind switched between the base kind and the packed one (a copy; the
 * pointers kept): the packed weight of a base-kind view, or the other way round. */
static inline qc_qweight qc_packed_twin(const qc_qweight *w) {
    qc_qweight t = *w;
    t.kind = (qc_kind)(qc_is_packed_kind(w->kind) ? w->kind - QC_KIND_PACKED
                                                  : w->kind + QC_KIND_PACKED);
    return t;
}

/* Bytes of one row's 32-block: 32 for 8-bit kinds, 16 for 4-bit. */
static inline int64_t qc_packed_bpb(qc_kind base) { return QC_KINDS[base].bits == 8 ? 32 : 16; }

/* Offset of panel p, block b in the codes section. */
static inline int64_t qc_packed_block_off(qc_kind base, int64_t nb, int64_t p, int64_t b) {
    return (p * nb + b) * QC_PANEL * qc_packed_bpb(base);
}

#endif /* QC_PACKED_H */
