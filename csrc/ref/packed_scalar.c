/*
 * packed_scalar.c -- the scalar reference of the packed-weight kernels: a plain
 * reader of packed.h's layout computing each output by packed.h's sequence, one
 * output at a time.  The SIMD kernels (x86/packed_<isa>.c) must equal it bit
 * for bit.
 */
#include "../kernels.h"
#include "../packed.h"

/* Code e (0..31) of block b of panel row r, as the unsigned side of the dot
 * (SYM8: q + 128). */
static inline int32_t pcode(const uint8_t *blk, int bits8, int r, int e) {
    if (bits8)
        return blk[(e / 4) * QC_PSTEP + 4 * r + e % 4];
    const int ee = e & 15;
    const uint8_t byte = blk[(ee / 4) * QC_PSTEP + 4 * r + ee % 4];
    return e >= 16 ? byte >> 4 : byte & 15;
}

/* d and c of row r of panel p, group g (c: 0 for SYM, (-d) * z for ASYM, the
 * minimum for MIN4). */
static void pparams(const qc_wview *v, qc_kind kind, int64_t p, int64_t g, int r, float *d,
                    float *c) {
    const qc_qweight *w = v->w;
    const int f16 = w->scale_dtype == QC_F16;
    const int64_t idx = w->per_tensor ? 0 : (p * v->ngroups + g) * QC_PANEL + r;
    const float dd = qc_param_at(w->scales, f16, idx);
    float cc = 0.0f;
    if (kind == QC_ASYM8 || kind == QC_ASYM4)
        cc = (-dd) * (float)((const uint8_t *)w->zeros)[idx];
    else if (kind == QC_MIN4)
        cc = qc_param_at(w->zeros, f16, idx);
    *d = dd;
    *c = cc;
}

static void packed_scalar(qc_kind kind, const qc_wview *v, const qc_act *a, int64_t m0,
                          int64_t m1, int64_t n0, int64_t n1, float *y, int64_t ldy) {
    const int bits8 = QC_KINDS[kind].bits == 8;
    const int32_t comp = kind == QC_SYM8 ? 128 : kind == QC_SYM4 ? 8 : 0;
    const int offs = QC_KINDS[kind].has_zero != 0;
    const int whole = v->gshift < 0;
    const int64_t nb = v->nb;
    for (int64_t j = n0; j < n1; j++) {
        const int64_t p = j / QC_PANEL;
        const int r = (int)(j % QC_PANEL);
        for (int64_t m = m0; m < m1; m++) {
            const int8_t *xq = a->xq + m * a->kp;
            const float *xd = a->xd + m * nb, *xs = a->xs + m * nb;
            const int32_t *xsum = a->xsum + m * nb;
            float f = 0.0f, d = 0.0f, c = 0.0f;
            if (whole)
                pparams(v, kind, p, 0, r, &d, &c);
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *blk = v->w->data + qc_packed_block_off(kind, nb, p, b);
                int32_t dot = -comp * xsum[b];
                for (int e = 0; e < QC_BLK; e++)
                    dot += pcode(blk, bits8, r, e) * (int32_t)xq[b * QC_BLK + e];
                if (whole) {
                    f = fmaf((float)dot, xd[b], f);
                } else {
                    if (b == 0 || (b & (v->bpg - 1)) == 0)
                        pparams(v, kind, p, b >> v->gshift, r, &d, &c);
                    f = fmaf((float)dot, d * xd[b], f);
                    if (offs)
                        f = fmaf(c, xs[b], f);
                }
            }
            float out = f;
            if (whole) {
                out = d * f;
                if (offs)
                    out = fmaf(c, a->sx[m], out);
            }
            y[(m - m0) * ldy + (j - n0)] = out;
        }
    }
}

#define QC_PACKED_ENTRY(K)                                                                      \
    void qc_packed_i8_##K##_scalar(const qc_wview *v, const qc_act *a, int64_t m0, int64_t m1,  \
                                   int64_t n0, int64_t n1, float *y, int64_t ldy) {             \
        packed_scalar(QC_##K, v, a, m0, m1, n0, n1, y, ldy);                                    \
    }
QC_PACKED_ENTRY(SYM8)
QC_PACKED_ENTRY(ASYM8)
QC_PACKED_ENTRY(SYM4)
QC_PACKED_ENTRY(ASYM4)
QC_PACKED_ENTRY(MIN4)
