/*
 * mse_scalar.c -- the scalar reference of method="mse", which every SIMD version
 * matches bit for bit: the candidate evaluators, one element at a time but
 * accumulated in 8 lanes (element i into lane i % 8) and reduced in the fixed
 * order of qc_lane_sum8, and the search of quantize_mse.inc.
 *
 * ISA: none (baseline C99).  Exactness: see quantize_mse.h.
 */
#include "../quantize_mse.h"

/* l = round(clamp(x * id, lo, hi)); sums of x l and l l */
static inline void eval_sym_scalar(const float *x, int64_t n, float id, float lo, float hi,
                                   qc_mse_sums *s) {
    float a[8] = {0}, b[8] = {0};
    for (int64_t i = 0; i < n; i++) {
        float l = qc_mse_round(qc_mse_clamp(x[i] * id, lo, hi));
        a[i & 7] += x[i] * l;
        b[i & 7] += l * l;
    }
    s->sxl = qc_lane_sum8(a);
    s->sll = qc_lane_sum8(b);
}

/* q = round(clamp((x - m) * id, 0, hi)); sums of q, q q and x q */
static inline void eval_min_scalar(const float *x, int64_t n, float id, float m, float hi,
                                   qc_mse_sums *s) {
    float a[8] = {0}, b[8] = {0}, c[8] = {0};
    for (int64_t i = 0; i < n; i++) {
        float q = qc_mse_round(qc_mse_clamp((x[i] - m) * id, 0.0f, hi));
        a[i & 7] += q;
        b[i & 7] += q * q;
        c[i & 7] += x[i] * q;
    }
    s->sq = qc_lane_sum8(a);
    s->sqq = qc_lane_sum8(b);
    s->sxq = qc_lane_sum8(c);
}

/* Weighted: wl = w l, sums of x wl and wl l (w = 1 gives the sums above) */
static inline void eval_sym_w_scalar(const float *x, const float *w, int64_t n, float id,
                                     float lo, float hi, qc_mse_sums *s) {
    float a[8] = {0}, b[8] = {0};
    for (int64_t i = 0; i < n; i++) {
        float l = qc_mse_round(qc_mse_clamp(x[i] * id, lo, hi));
        float wl = w[i] * l;
        a[i & 7] += x[i] * wl;
        b[i & 7] += wl * l;
    }
    s->sxl = qc_lane_sum8(a);
    s->sll = qc_lane_sum8(b);
}

/* Weighted: wq = w q, sums of wq, wq q and x wq */
static inline void eval_min_w_scalar(const float *x, const float *w, int64_t n, float id,
                                     float m, float hi, qc_mse_sums *s) {
    float a[8] = {0}, b[8] = {0}, c[8] = {0};
    for (int64_t i = 0; i < n; i++) {
        float q = qc_mse_round(qc_mse_clamp((x[i] - m) * id, 0.0f, hi));
        float wq = w[i] * q;
        a[i & 7] += wq;
        b[i & 7] += wq * q;
        c[i & 7] += x[i] * wq;
    }
    s->sq = qc_lane_sum8(a);
    s->sqq = qc_lane_sum8(b);
    s->sxq = qc_lane_sum8(c);
}

#define QC_MSE_SUFFIX scalar
#define QC_MSE_ATTR
#define QC_MSE_TABLE qc_kernels_scalar
#define QC_MSE_CTX qc_mse_group
#define QC_MSE_EVAL_SYM(c, id, lo, hi, s)                                                       \
    ((c)->w ? eval_sym_w_scalar((c)->x, (c)->w, (c)->n, id, lo, hi, s)                          \
            : eval_sym_scalar((c)->x, (c)->n, id, lo, hi, s))
#define QC_MSE_EVAL_MIN(c, id, m, hi, s)                                                        \
    ((c)->w ? eval_min_w_scalar((c)->x, (c)->w, (c)->n, id, m, hi, s)                           \
            : eval_min_scalar((c)->x, (c)->n, id, m, hi, s))
#define QC_MSE_MOMENTS(c, sw, sx, sxx) qc_mse_moments((c)->x, (c)->w, (c)->n, sw, sx, sxx)
#include "../quantize_mse.inc"
