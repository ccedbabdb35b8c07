/*
 * quantize_mse.h -- method="mse": the per-group search for the parameters that
 * minimise the squared error, written once (this header and quantize_mse.inc)
 * and instantiated in each ISA file with that ISA's two candidate evaluators.
 *
 * The search, per group x[0..n) (ref/mse_scalar.c is its scalar reference)
 * ------------------------------------------------------------------------
 * 1. The absmax parameters and codes of formats.h, exactly as method="absmax"
 *    makes them, and their exact squared error with the parameters as stored
 *    (float16-rounded when the scales are float16).
 * 2. A grid of candidate scales around the absmax one.  For each, the codes
 *    (nearest, clamped to the format's range) and their sums give the
 *    least-squares parameters for those codes and the error they leave:
 *      symmetric (SYM8, SYM4) and integer zero point (ASYM8, ASYM4):
 *        x ~ d * l, l = clamp(round(x / d0), lo, hi) (lo = -z, hi = qmax - z for
 *        ASYM), d = sum(x l) / sum(l l), error = sum(x x) - sum(x l)^2 / sum(l l);
 *        SYM4 tries d0 mapping the largest-magnitude element near -8 and near
 *        +7 (its range is [-8, 7]); ASYM tries z anchoring the minimum at code 0
 *        and z anchoring the maximum at qmax;
 *      float minimum (MIN4, GGUF Q4_1):
 *        x ~ d * q + m, q = clamp(round((x - m0) / d0), 0, 15), (d, m) the 2x2
 *        least-squares solution, error = sum(x x) - d sum(x q) - m sum(x).
 *    The best candidate is then refined: codes again from its fitted (d, m),
 *    refit, for as long as that lowers the error (at most QC_MSE_REFINE times).
 * 3. The winner is rounded to the storage dtype, its codes recomputed with the
 *    rounded parameters, and its exact squared error compared with step 1's:
 *    the absmax result is kept unless the search is strictly better.  So the
 *    error of method="mse" never exceeds that of method="absmax", group by
 *    group, and Q8_0 / Q4_0 / Q4_1 stay valid GGUF blocks (same layout, float16
 *    scales evaluated as stored).
 *
 * Weighted (an importance w_j >= 0 per column): the same search for the least
 * sum_j w_j (x_j - xhat_j)^2.  Every candidate sum carries w (sum(w x l),
 * sum(w l l); MIN4 fits with sum(w) in place of n), taken from w / max(w) of
 * the group (or tensor); the grid also tries narrower ranges (QC_MSE_WIDE);
 * step 3 compares exact errors weighted by w as given.  A group whose weights
 * are all equal (all zero included) gets the unweighted search, bit for bit.
 *
 * Exactness: the candidate sums are float32, accumulated in 8 lanes (element i
 * into lane i % 8) and reduced as ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)); codes
 * are rounded to nearest-even by the 1.5 * 2^23 trick on clamped values; all
 * else (fits, grids, final codes, exact errors in float64) is the shared C code
 * below.  With -ffp-contract=off every ISA therefore gives the same results as
 * the scalar reference, bit for bit.
 */
#ifndef QC_QUANTIZE_MSE_H
#define QC_QUANTIZE_MSE_H

#include "quantize_row.h"

#define QC_MSE_REFINE 3
#define QC_ROUND_MAGIC 12582912.0f /* 1.5 * 2^23: (v + M) - M rounds |v| < 2^22 to nearest-even */

/* Candidate grids (chosen on MiniLM and Gaussian data: docs/accuracy.md). */
#define QC_MSE_SYM4_STEPS 19 /* per side: 8 + 0.1 i and 7 + 0.1 i, i = -9..9 */
#define QC_MSE_SYM8_STEPS 18 /* 127 + i, i = -16..1 */
#define QC_MSE_ASYM4_STEPS 13 /* qmax + delta, delta = -2 + 0.25 j */
#define QC_MSE_ASYM8_STEPS 18 /* qmax + delta, delta = -16 + j */
/* Non-uniform weights may leave a low-weight extreme best clipped: also every
 * QC_MSE_WIDE_EVERY-th point of the grid with the range narrowed by 0.8^k,
 * k = 1..QC_MSE_WIDE (1/d times 1.25^k, exact in float32). */
#define QC_MSE_WIDE 4
#define QC_MSE_WIDE_EVERY 6
/* the most candidates of one search (SYM4's two sides) */
#define QC_MSE_MAX_CANDIDATES                                                                   \
    (2 * QC_MSE_SYM4_STEPS +                                                                    \
     2 * QC_MSE_WIDE * ((QC_MSE_SYM4_STEPS + QC_MSE_WIDE_EVERY - 1) / QC_MSE_WIDE_EVERY))
_Static_assert(2 * (QC_MSE_ASYM8_STEPS + QC_MSE_WIDE * ((QC_MSE_ASYM8_STEPS + QC_MSE_WIDE_EVERY - 1) /
                                                        QC_MSE_WIDE_EVERY)) <=
                   QC_MSE_MAX_CANDIDATES,
               "the integer zero point search needs more candidates");

/* Sum of 8 lanes in the order of hsum8 (x86/avx2_common.h). */
static inline float qc_lane_sum8(const float a[8]) {
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

static inline float qc_mse_clamp(float v, float lo, float hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

/* round to nearest-even of a value already clamped to a small range */
static inline float qc_mse_round(float v) { return (v + QC_ROUND_MAGIC) - QC_ROUND_MAGIC; }

/* The value a float32 parameter takes once stored. */
static inline float qc_mse_stored(float v, int f16) {
    return f16 ? qc_fp16_to_fp32(qc_fp32_to_fp16(v)) : v;
}

static inline int qc_mse_fits(float v, int f16) {
    return fabsf(v) <= (f16 ? 65504.0f : 3.40282347e38f);
}

/* Sums that candidates are judged by (float32 sums of a group, exactly
 * widened; float64 ones over a whole tensor). */
typedef struct {
    double sxl, sll;      /* symmetric / integer zero: sum(x l), sum(l l) */
    double sq, sqq, sxq;  /* MIN4: sum(q), sum(q q), sum(x q) */
} qc_mse_sums;

/* What the sums of one group run over (QC_MSE_CTX of the row kernels). */
typedef struct {
    const float *x;
    int64_t n;
    const float *w; /* the group's weights scaled to max 1; NULL: unweighted */
} qc_mse_group;

/* Symmetric least squares: d for the codes, and the error reduction sxl^2/sll
 * (larger is better); 0 if all codes are zero. */
static inline double qc_mse_sym_fit(const qc_mse_sums *s, float *d) {
    if (!(s->sll > 0.0))
        return -1.0;
    *d = (float)(s->sxl / s->sll);
    return s->sxl * s->sxl / s->sll;
}

/* MIN4 least squares (d, m) for codes with sums s over elements whose weights
 * sum to sw (their count when unweighted) and whose sum(w x) is sx; the error
 * reduction d sxq + m sx (larger is better). */
static inline double qc_mse_min_fit(const qc_mse_sums *s, double sw, double sx, float *d,
                                    float *m) {
    double nn = sw, sq = s->sq, sqq = s->sqq, sxq = s->sxq;
    double det = nn * sqq - sq * sq;
    if (!(det > 0.0))
        return -1.0; /* all codes equal: nothing to fit */
    double dd = (nn * sxq - sq * sx) / det;
    double mm = (sqq * sx - sq * sxq) / det;
    if (!(fabs(dd) < 3.0e38) || !(fabs(mm) < 3.0e38))
        return -1.0;
    *d = (float)dd;
    *m = (float)mm;
    return dd * sxq + mm * sx;
}

/* Integer zero point z for scale 1/id: the minimum at code 0 (anchor 0) or the
 * maximum at qmax (anchor 1). */
static inline int32_t qc_mse_zero(const qc_stats *st, float id, float qmax, int anchor) {
    if (anchor == 0)
        return (int32_t)qc_mse_round(qc_mse_clamp(-st->min * id, 0.0f, qmax));
    return (int32_t)(qmax - qc_mse_round(qc_mse_clamp(st->max * id, 0.0f, qmax)));
}

/* Codes of a group for parameters p (p->id = 1/d, p->z, p->m), nearest-even,
 * packed as quantcore stores them. */
static inline void qc_mse_codes(qc_kind kind, const float *x, int64_t n, const qc_qparams *p,
                                uint8_t *dst) {
    const int four = QC_KINDS[kind].bits == 4;
    const float qmax = (float)QC_KINDS[kind].qmax;
    for (int64_t i = 0; i < n; i++) {
        int32_t q;
        switch (kind) {
        case QC_SYM8:
            q = (int32_t)qc_mse_round(qc_mse_clamp(x[i] * p->id, -127.0f, 127.0f));
            break;
        case QC_SYM4:
            q = (int32_t)qc_mse_round(qc_mse_clamp(x[i] * p->id, -8.0f, 7.0f)) + 8;
            break;
        case QC_MIN4:
            q = (int32_t)qc_mse_round(qc_mse_clamp((x[i] - p->m) * p->id, 0.0f, 15.0f));
            break;
        default: /* ASYM8, ASYM4 */
            q = (int32_t)qc_mse_round(qc_mse_clamp(x[i] * p->id, (float)-p->z,
                                                   qmax - (float)p->z)) + p->z;
            break;
        }
        if (!four)
            dst[i] = (uint8_t)q;
        else if (i & 1)
            dst[i / 2] = (uint8_t)(dst[i / 2] | (q << 4));
        else
            dst[i / 2] = (uint8_t)q;
    }
}

/* Exact squared error (float64, in element order) of stored codes against x,
 * each value dequantized as qc_dequantize does (p->d, p->m as stored); each
 * term times w[i] unless w is NULL. */
static inline double qc_mse_group_error(qc_kind kind, const float *x, int64_t n,
                                        const uint8_t *codes, const qc_qparams *p,
                                        const float *w) {
    const int four = QC_KINDS[kind].bits == 4;
    double e = 0.0;
    for (int64_t i = 0; i < n; i++) {
        int32_t q = four ? ((i & 1) ? codes[i / 2] >> 4 : codes[i / 2] & 0x0f) : codes[i];
        float v;
        if (kind == QC_SYM8)
            v = p->d * (float)(int8_t)q;
        else if (kind == QC_MIN4)
            v = p->d * (float)q + p->m;
        else
            v = p->d * (float)(q - p->z);
        double r = (double)x[i] - (double)v;
        e += w ? r * r * (double)w[i] : r * r;
    }
    return e;
}

/* The candidate sums of one row in float64, element order (the per-tensor
 * search): t = {sum(x l), sum(l l), -} for l = round(clamp(x * id, lo, hi)), or
 * with mode_min t = {sum(q), sum(q q), sum(x q)} for q = round(clamp((x - m) * id,
 * 0, hi)); each term carries w[i] (as w l or w q) unless w is NULL. */
static inline void qc_mse_row_sums(const float *x, const float *w, int64_t n, float id,
                                   float lo, float hi, float m, int mode_min, double t[3]) {
    double a = 0.0, b = 0.0, e = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (mode_min) {
            float q = qc_mse_round(qc_mse_clamp((x[i] - m) * id, 0.0f, hi));
            double wq = w ? (double)w[i] * (double)q : (double)q;
            a += wq;
            b += wq * (double)q;
            e += (double)x[i] * wq;
        } else {
            float l = qc_mse_round(qc_mse_clamp(x[i] * id, lo, hi));
            double wl = w ? (double)w[i] * (double)l : (double)l;
            a += (double)x[i] * wl;
            b += wl * (double)l;
        }
    }
    t[0] = a;
    t[1] = b;
    t[2] = e;
}

/* float64 sum(w), sum(w x) and sum(w x x) of a group, in element order (w NULL:
 * all ones, sum(w) = n). */
static inline void qc_mse_moments(const float *x, const float *w, int64_t n, double *sw,
                                  double *sx, double *sxx) {
    double a = 0.0, b = 0.0, c = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double wi = w ? (double)w[i] : 1.0;
        a += wi * (double)x[i];
        b += wi * (double)x[i] * (double)x[i];
        c += wi;
    }
    *sx = a;
    *sxx = b;
    *sw = c;
}

/* The weights of a group scaled to a largest of 1 (out[i] = w[i] / max w, so
 * float32 sums of weighted terms range as unweighted ones); 0 when they are
 * all equal (all zero included: nothing to weight, out unset). */
static inline int qc_mse_weights(const float *w, int64_t n, float *out) {
    float mx = 0.0f, mn = w[0];
    for (int64_t i = 0; i < n; i++) {
        mx = w[i] > mx ? w[i] : mx;
        mn = w[i] < mn ? w[i] : mn;
    }
    if (!(mx > mn))
        return 0;
    for (int64_t i = 0; i < n; i++)
        out[i] = w[i] / mx;
    return 1;
}

#endif /* QC_QUANTIZE_MSE_H */
