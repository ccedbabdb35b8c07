/*
 * test_neon_vs_scalar.c -- the SIMD kernels of this machine against the scalar
 * reference, bit for bit, through the public API (quantcore.h) and, for the
 * parts the API hides (stats, float16/float64 loads), through the kernel tables.
 *
 * The SIMD ISAs are every one compiled in and supported: NEON on aarch64 (run it
 * under qemu-aarch64, see run_neon_qemu.sh), AVX2 and AVX-512 on x86-64
 * (run_native.sh; the avx512 set shares the AVX2 quantize kernels).  Every result is
 * computed once under qc_select_isa(QC_ISA_SCALAR) and once under the SIMD ISA
 * and the two must be identical: status, error position, codes, scales, zero
 * points / minimums (bytes), dequantized floats (bits).
 *
 * Build (any C11 compiler; -ffp-contract=off as the real build, since the scalar
 * reference's results assume no fused multiply-adds):
 *   cc -std=gnu11 -O2 -ffp-contract=off -Icsrc/include -Icsrc \
 *      tests/c/test_neon_vs_scalar.c csrc/api.c csrc/cpu.c csrc/dispatch.c \
 *      csrc/ref/quant_scalar.c csrc/x86/quant_avx2.c csrc/arm/quant_neon.c -lm
 * Prints "N passed, M failed" last; exits 1 on any failure, 0 otherwise.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "kernels.h"
#include "packed.h"
#include "quantcore.h"

static qc_isa simd;
static long npass, nfail;

#define CHECK(cond, ...)                                                                        \
    do {                                                                                        \
        if (cond) {                                                                             \
            npass++;                                                                            \
        } else {                                                                                \
            nfail++;                                                                            \
            if (nfail <= 40) {                                                                  \
                fprintf(stderr, "FAIL (line %d): ", __LINE__);                                 \
                fprintf(stderr, __VA_ARGS__);                                                   \
                fputc('\n', stderr);                                                            \
            }                                                                                   \
        }                                                                                       \
    } while (0)

/* ---- helpers ---- */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}
static float uni(void) { return (float)((double)(rng() >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f; }
static int64_t irand(int64_t n) { return (int64_t)(rng() % (uint64_t)n); }

static uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float bitsf(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static void use(qc_isa isa) {
    if (qc_select_isa(isa) != QC_OK) {
        fprintf(stderr, "cannot select ISA %s\n", qc_isa_name(isa));
        exit(2);
    }
}

static const char *KIND_NAMES[] = {"SYM8", "ASYM8", "SYM4", "ASYM4", "MIN4"};
static const char *DT_NAMES[] = {"f32", "f16", "f64"};

/* ---- value patterns ---- */
enum {
    P_UNIFORM, P_BIG, P_SMALL, P_HUGE, P_ZERO, P_OUTLIER, P_PM_EQUAL, P_DENORMAL,
    P_TIES_SYM8, P_TIES_ASYM8, P_TIES_015, P_TIES_SYM4, P_WILD, P_CONST, P_RANGE_OVF,
    P_NEG_ZERO_MIX, P_F16_EDGE, NPAT
};
static const char *PAT_NAMES[NPAT] = {
    "uniform", "big", "small", "huge", "zero", "outlier", "pm_equal", "denormal",
    "ties_sym8", "ties_asym8", "ties_0_15", "ties_sym4", "wild", "const", "range_ovf",
    "neg_zero_mix", "f16_edge"};

static void put_unique(float *x, int64_t n, int64_t *used, int nused, float v) {
    /* put v at a random position not already used */
    for (;;) {
        int64_t j = irand(n), ok = 1;
        for (int k = 0; k < nused; k++)
            if (used[k] == j)
                ok = 0;
        if (ok) {
            x[j] = v;
            used[nused] = j;
            return;
        }
    }
}

/* Fill one row of n floats with pattern p. */
static void fill_row(float *x, int64_t n, int p) {
    int64_t used[4];
    switch (p) {
    case P_UNIFORM:
        for (int64_t i = 0; i < n; i++)
            x[i] = uni();
        break;
    case P_BIG:
        for (int64_t i = 0; i < n; i++)
            x[i] = uni() * 1000.0f;
        break;
    case P_SMALL:
        for (int64_t i = 0; i < n; i++)
            x[i] = uni() * 1e-3f;
        break;
    case P_HUGE:
        for (int64_t i = 0; i < n; i++)
            x[i] = uni() * 1e30f;
        break;
    case P_ZERO:
        for (int64_t i = 0; i < n; i++)
            x[i] = 0.0f;
        break;
    case P_OUTLIER:
        for (int64_t i = 0; i < n; i++)
            x[i] = uni() * 0.01f;
        x[irand(n)] = (rng() & 1) ? 50.0f : -73.25f;
        break;
    case P_PM_EQUAL: { /* +M and -M both present, in either order, maybe several times */
        float M = 3.0f + (float)irand(4);
        for (int64_t i = 0; i < n; i++)
            x[i] = uni() * 2.0f;
        if (n >= 2) {
            put_unique(x, n, used, 0, M);
            put_unique(x, n, used, 1, -M);
            if (n >= 4 && (rng() & 1)) {
                put_unique(x, n, used, 2, M);
                put_unique(x, n, used, 3, -M);
            }
        } else {
            x[0] = (rng() & 1) ? M : -M;
        }
        break;
    }
    case P_DENORMAL:
        for (int64_t i = 0; i < n; i++) {
            uint64_t r = rng();
            x[i] = (r & 3) == 0 ? 0.0f : (float)((int64_t)(r >> 40) - (1 << 23)) * 1e-40f / 8388608.0f;
        }
        if (rng() & 1)
            x[irand(n)] = (rng() & 1) ? 1e-40f : -1e-40f;
        break;
    case P_TIES_SYM8: /* amax 127 -> d = 1, id = 1: halves are exact ties */
        for (int64_t i = 0; i < n; i++)
            x[i] = (float)(irand(509) - 254) * 0.5f;
        x[irand(n)] = (rng() & 1) ? 127.0f : -127.0f;
        break;
    case P_TIES_ASYM8: /* min 0, max 255 -> d = 1, z = 0 */
        for (int64_t i = 0; i < n; i++)
            x[i] = (float)irand(511) * 0.5f;
        if (n >= 2) {
            put_unique(x, n, used, 0, 0.0f);
            put_unique(x, n, used, 1, 255.0f);
        }
        break;
    case P_TIES_015: /* min 0, max 15 -> d = 1 for MIN4 and ASYM4 */
        for (int64_t i = 0; i < n; i++)
            x[i] = (float)irand(61) * 0.25f;
        if (n >= 2) {
            put_unique(x, n, used, 0, 0.0f);
            put_unique(x, n, used, 1, 15.0f);
        }
        break;
    case P_TIES_SYM4: /* amax_signed -8 -> d = 1: x + 8.5 lands on integers and halves */
        for (int64_t i = 0; i < n; i++)
            x[i] = (float)(irand(31) - 15) * 0.5f;
        x[irand(n)] = -8.0f;
        break;
    case P_WILD: /* every exponent, both signs */
        for (int64_t i = 0; i < n; i++) {
            uint32_t e = (uint32_t)irand(254);
            uint32_t u = (uint32_t)(rng() & 0x807fffffu) | (e << 23);
            x[i] = bitsf(u) * 1e-1f; /* keep max - min finite */
        }
        break;
    case P_CONST: {
        float c = (rng() & 1) ? 3.0f : -2.5f;
        for (int64_t i = 0; i < n; i++)
            x[i] = c;
        break;
    }
    case P_RANGE_OVF: /* max - min overflows float32 */
        for (int64_t i = 0; i < n; i++)
            x[i] = uni() * 3.0e38f;
        if (n >= 2) {
            put_unique(x, n, used, 0, 3.0e38f);
            put_unique(x, n, used, 1, -3.0e38f);
        }
        break;
    case P_NEG_ZERO_MIX: /* +0, -0 and positive (or negative) values */
        for (int64_t i = 0; i < n; i++) {
            uint64_t r = rng() % 4;
            x[i] = r == 0 ? 0.0f : (r == 1 ? -0.0f : (r == 2 ? fabsf(uni()) : -fabsf(uni()) * 0.0f));
        }
        if (rng() & 1)
            for (int64_t i = 0; i < n; i++)
                x[i] = -x[i];
        break;
    case P_F16_EDGE: /* scales near the float16 limit (65504) and below its subnormals */
        for (int64_t i = 0; i < n; i++)
            x[i] = uni() * ((rng() & 1) ? 65504.0f * 127.0f : 1e-7f);
        break;
    }
}

/* ---- one quantize + dequantize comparison ---- */
typedef struct {
    qc_status st, dst_st;
    qc_error err;
    uint8_t *data, *scales, *zeros;
    float *deq;
} qres;

typedef struct {
    size_t dbytes, sbytes, zbytes, deqn;
    int64_t deq_stride;
} qsizes;

static qsizes sizes_for(const qc_qdesc *d, int64_t rows, int64_t cols) {
    qsizes z;
    int64_t ng = d->per_tensor ? 1 : rows * qc_num_groups(cols, d->group);
    int ssz = d->scale_dtype == QC_F16 ? 2 : 4;
    z.dbytes = (size_t)(rows * qc_row_bytes(d->kind, cols));
    z.sbytes = (size_t)(ng * ssz);
    z.zbytes = d->kind == QC_MIN4 ? (size_t)(ng * ssz) : (size_t)ng;
    z.deq_stride = cols + 3;
    z.deqn = (size_t)(rows * z.deq_stride);
    return z;
}

static int use_mse;     /* run_q: 1 qc_quantize_mse, 2 qc_quantize_mse_weighted (cur_imp) */
static float *cur_imp;  /* the importance of the weighted cases, cols weights */
static int imp_pattern; /* advances with each weighted case */
enum { NIMP = 8 };
static const char *IMP_NAMES[NIMP] = {"ones", "uniform", "exp_wide", "some_zero",
                                      "all_zero", "huge_tiny", "one_column", "pow2"};

/* cols weights >= 0 of pattern p (some_zero: the first 20 columns and every third
 * one zero, so whole groups are dead) */
static float *make_importance(int64_t cols, int p) {
    float *w = xmalloc((size_t)cols * sizeof(float));
    int64_t one = irand(cols);
    for (int64_t j = 0; j < cols; j++) {
        float u = 0.5f * (uni() + 1.0f); /* [0, 1) */
        switch (p) {
        case 0: w[j] = 1.0f; break;
        case 1: w[j] = u + 0x1p-24f; break;
        case 2: w[j] = expf(16.0f * u - 8.0f); break;
        case 3: w[j] = (j < 20 || j % 3 == 0) ? 0.0f : u; break;
        case 4: w[j] = (j & 1) ? -0.0f : 0.0f; break;
        case 5: w[j] = irand(3) == 0 ? 1e30f * u : irand(2) ? 1e-30f * u : 1e-41f; break;
        case 6: w[j] = j == one ? 3.0f : 0.0f; break;
        default: w[j] = ldexpf(1.0f, (int)irand(41) - 20); break;
        }
    }
    return w;
}

static void run_q(qc_isa isa, const qc_qdesc *d, const void *src, qc_dtype dt, int64_t rows,
                  int64_t cols, int64_t rs, int64_t cs, const qsizes *z, qres *r) {
    use(isa);
    r->data = xmalloc(z->dbytes);
    r->scales = xmalloc(z->sbytes);
    r->zeros = xmalloc(z->zbytes);
    r->deq = xmalloc(z->deqn * sizeof(float));
    memset(r->data, 0xa5, z->dbytes);
    memset(r->scales, 0xa5, z->sbytes);
    memset(r->zeros, 0xa5, z->zbytes);
    memset(r->deq, 0xa5, z->deqn * sizeof(float));
    void *zp = QC_KINDS[d->kind].has_zero ? r->zeros : NULL;
    if (use_mse == 2)
        r->st = qc_quantize_mse_weighted(d, src, dt, rows, cols, rs, cs, cur_imp, r->data,
                                         r->scales, zp, &r->err);
    else
        r->st = (use_mse ? qc_quantize_mse : qc_quantize)(d, src, dt, rows, cols, rs, cs,
                                                           r->data, r->scales, zp, &r->err);
    r->dst_st = QC_OK;
    if (r->st == QC_OK) {
        qc_error e2;
        r->dst_st = qc_dequantize(d, r->data, r->scales, zp, rows, cols, r->deq, z->deq_stride, &e2);
    }
}

static void free_q(qres *r) {
    free(r->data);
    free(r->scales);
    free(r->zeros);
    free(r->deq);
}

static long n_ok_cases, n_err_cases;

static void compare_case(const qc_qdesc *d, const void *src, qc_dtype dt, int64_t rows,
                         int64_t cols, int64_t rs, int64_t cs, const char *what) {
    qsizes z = sizes_for(d, rows, cols);
    qres a, b;
    const int ip = imp_pattern;
    if (use_mse == 2) {
        imp_pattern = (imp_pattern + 1) % NIMP;
        cur_imp = make_importance(cols, ip);
    }
    run_q(QC_ISA_SCALAR, d, src, dt, rows, cols, rs, cs, &z, &a);
    run_q(simd, d, src, dt, rows, cols, rs, cs, &z, &b);
    char ctx[240];
    snprintf(ctx, sizeof ctx, "%s%s%s kind=%s rows=%lld cols=%lld group=%lld per_tensor=%d scale=%s src=%s",
             use_mse ? "mse " : "", use_mse == 2 ? IMP_NAMES[ip] : "", what, KIND_NAMES[d->kind],
             (long long)rows, (long long)cols, (long long)d->group,
             d->per_tensor, d->scale_dtype == QC_F16 ? "f16" : "f32", DT_NAMES[dt]);
    if (a.st == QC_OK)
        n_ok_cases++;
    else
        n_err_cases++;
    CHECK(a.st == b.st && a.err.row == b.err.row && a.err.col == b.err.col,
          "%s: status %d (%lld,%lld) vs %d (%lld,%lld)", ctx, a.st, (long long)a.err.row,
          (long long)a.err.col, b.st, (long long)b.err.row, (long long)b.err.col);
    size_t i;
    for (i = 0; i < z.dbytes && a.data[i] == b.data[i]; i++)
        ;
    CHECK(i == z.dbytes, "%s: data byte %zu: %02x vs %02x", ctx, i, i < z.dbytes ? a.data[i] : 0,
          i < z.dbytes ? b.data[i] : 0);
    CHECK(memcmp(a.scales, b.scales, z.sbytes) == 0, "%s: scales differ", ctx);
    if (QC_KINDS[d->kind].has_zero)
        CHECK(memcmp(a.zeros, b.zeros, z.zbytes) == 0, "%s: zeros differ", ctx);
    if (a.st == QC_OK && b.st == QC_OK) {
        CHECK(a.dst_st == QC_OK && b.dst_st == QC_OK, "%s: dequantize status", ctx);
        for (i = 0; i < z.deqn && fbits(a.deq[i]) == fbits(b.deq[i]); i++)
            ;
        CHECK(i == z.deqn, "%s: dequantized element %zu: %a (%08x) vs %a (%08x)", ctx, i,
              i < z.deqn ? a.deq[i] : 0.0, i < z.deqn ? fbits(a.deq[i]) : 0,
              i < z.deqn ? b.deq[i] : 0.0, i < z.deqn ? fbits(b.deq[i]) : 0);
        /* also: the SIMD dequantizer on the scalar quantizer's output (same bytes, but
         * say so explicitly) */
        use(simd);
        float *deq2 = xmalloc(z.deqn * sizeof(float));
        memset(deq2, 0xa5, z.deqn * sizeof(float));
        qc_error e2;
        qc_dequantize(d, a.data, a.scales, QC_KINDS[d->kind].has_zero ? a.zeros : NULL, rows, cols,
                      deq2, z.deq_stride, &e2);
        CHECK(memcmp(deq2, a.deq, z.deqn * sizeof(float)) == 0, "%s: simd dequantize of scalar codes",
              ctx);
        free(deq2);
    }
    free_q(&a);
    free_q(&b);
    if (use_mse == 2) {
        free(cur_imp);
        cur_imp = NULL;
    }
}

static const int64_t GROUPS[] = {0, 16, 32, 64};

static void lens(int64_t *L, int *nl) {
    int n = 0;
    for (int64_t c = 1; c <= 70; c++)
        L[n++] = c;
    L[n++] = 127;
    L[n++] = 128;
    L[n++] = 129;
    L[n++] = 1000;
    *nl = n;
}

/* float32 input, contiguous rows (and one case with a row stride larger than cols) */
static void test_quant_f32(void) {
    int64_t L[80];
    int nl;
    lens(L, &nl);
    const int64_t rows = 3;
    for (int li = 0; li < nl; li++) {
        int64_t cols = L[li];
        float *x = xmalloc((size_t)(rows * (cols + 5)) * sizeof(float));
        for (int p = 0; p < NPAT; p++) {
            /* pattern p in row 0 and 2, row 1 random or also p (per-tensor mixes) */
            int64_t rstride = (p & 1) ? cols + 5 : cols;
            for (int64_t r = 0; r < rows; r++)
                fill_row(x + r * rstride, cols, (r == 1 && (p % 3 == 0)) ? P_UNIFORM : p);
            for (int k = 0; k < QC_NUM_KINDS; k++)
                for (int gi = 0; gi < 4; gi++)
                    for (int pt = 0; pt < 2; pt++)
                        for (int sd = 0; sd < 2; sd++) {
                            if (pt && gi > 1)
                                continue; /* group is ignored per tensor */
                            qc_qdesc d = {(qc_kind)k, GROUPS[gi], pt, sd ? QC_F16 : QC_F32};
                            char what[64];
                            snprintf(what, sizeof what, "f32 pattern=%s", PAT_NAMES[p]);
                            compare_case(&d, x, QC_F32, rows, cols, rstride * 4, 4, what);
                        }
        }
        free(x);
    }
}

/* float16 and float64 input, contiguous (the load kernels) and every 3rd element */
static uint16_t rand_f16_finite(int p) {
    for (;;) {
        uint16_t h;
        if (p == 0) { /* any finite bit pattern, subnormals included */
            h = (uint16_t)rng();
        } else { /* a float32 pattern rounded to float16 */
            float f = uni() * (p == 1 ? 100.0f : 1e-5f);
            h = qc_fp32_to_fp16(f);
        }
        if ((h & 0x7c00u) != 0x7c00u)
            return h;
    }
}

static void test_quant_f16_f64(void) {
    int64_t L[80];
    int nl;
    lens(L, &nl);
    const int64_t rows = 3;
    for (int li = 0; li < nl; li++) {
        int64_t cols = L[li];
        for (int stride = 1; stride <= 3; stride += 2) {
            int64_t rs_el = cols * stride + (stride > 1 ? 2 : 0);
            size_t nel = (size_t)(rows * rs_el);
            uint16_t *h = xmalloc(nel * 2);
            double *g = xmalloc(nel * 8);
            for (int p = 0; p < 3; p++) {
                for (size_t i = 0; i < nel; i++) {
                    h[i] = rand_f16_finite(p);
                    if (p == 0) { /* doubles that round in every way, tiny and huge too */
                        int e = (int)irand(80) - 40;
                        g[i] = ((double)(int64_t)(rng() >> 11) / 9007199254740992.0 * 2.0 - 1.0) *
                               pow(10.0, e);
                    } else if (p == 1) {
                        g[i] = (double)uni() + (double)uni() * 1e-9; /* not float-exact */
                    } else { /* float32 subnormal results */
                        g[i] = (double)uni() * 1e-39;
                    }
                }
                for (int k = 0; k < QC_NUM_KINDS; k++)
                    for (int gi = 0; gi < 4; gi += 2)
                        for (int pt = 0; pt < 2; pt++) {
                            qc_qdesc d = {(qc_kind)k, GROUPS[gi], pt, (k + p) & 1 ? QC_F16 : QC_F32};
                            char what[64];
                            snprintf(what, sizeof what, "stride=%d pattern=%d", stride, p);
                            compare_case(&d, h, QC_F16, rows, cols, rs_el * 2, stride * 2, what);
                            compare_case(&d, g, QC_F64, rows, cols, rs_el * 8, stride * 8, what);
                        }
            }
            free(h);
            free(g);
        }
    }
}

/* NaN / Inf: status QC_ERR_NONFINITE at the first bad (row, col), both ISAs */
static void test_nonfinite(void) {
    int64_t L[80];
    int nl;
    lens(L, &nl);
    const int64_t rows = 4;
    const float bad_vals[3] = {NAN, INFINITY, -INFINITY};
    for (int li = 0; li < nl; li++) {
        int64_t cols = L[li];
        float *x = xmalloc((size_t)(rows * cols) * sizeof(float));
        uint16_t *h = xmalloc((size_t)(rows * cols) * 2);
        double *g = xmalloc((size_t)(rows * cols) * 8);
        for (int trial = 0; trial < 6; trial++) {
            for (int64_t i = 0; i < rows * cols; i++)
                x[i] = uni();
            int nbad = 1 + (int)irand(3);
            int64_t first = rows * cols;
            for (int b = 0; b < nbad; b++) {
                int64_t pos = trial == 0 ? rows * cols - 1 : irand(rows * cols);
                x[pos] = bad_vals[(trial + b) % 3];
                if (pos < first)
                    first = pos;
            }
            for (int64_t i = 0; i < rows * cols; i++) {
                h[i] = qc_fp32_to_fp16(x[i]);
                g[i] = (double)x[i];
            }
            int64_t er = first / cols, ec = first % cols;
            for (int k = 0; k < QC_NUM_KINDS; k++)
                for (int gi = 0; gi < 4; gi++)
                    for (int pt = 0; pt < 2; pt++) {
                        qc_qdesc d = {(qc_kind)k, GROUPS[gi], pt, QC_F32};
                        for (int dti = 0; dti < 3; dti++) {
                            const void *src = dti == 0 ? (const void *)x : dti == 1 ? (const void *)h : (const void *)g;
                            int64_t es = dti == 0 ? 4 : dti == 1 ? 2 : 8;
                            for (int isa = 0; isa < 2; isa++) {
                                use(isa ? simd : QC_ISA_SCALAR);
                                qsizes z = sizes_for(&d, rows, cols);
                                uint8_t *data = xmalloc(z.dbytes), *sc = xmalloc(z.sbytes),
                                        *zz = xmalloc(z.zbytes);
                                qc_error e;
                                qc_status st = qc_quantize(&d, src, (qc_dtype)dti, rows, cols, cols * es, es,
                                                           data, sc, QC_KINDS[k].has_zero ? zz : NULL, &e);
                                CHECK(st == QC_ERR_NONFINITE && e.row == er && e.col == ec,
                                      "nonfinite %s kind=%s cols=%lld group=%lld pt=%d src=%s: status %d at "
                                      "(%lld,%lld), expected (%lld,%lld)",
                                      qc_isa_name(isa ? simd : QC_ISA_SCALAR), KIND_NAMES[k],
                                      (long long)cols, (long long)d.group, pt, DT_NAMES[dti], st,
                                      (long long)e.row, (long long)e.col, (long long)er, (long long)ec);
                                free(data);
                                free(sc);
                                free(zz);
                            }
                        }
                    }
        }
        free(x);
        free(h);
        free(g);
    }
    /* values that only become Inf in the conversion to float32 */
    double big[40];
    for (int i = 0; i < 40; i++)
        big[i] = 1.0;
    big[37] = 1e39;
    for (int isa = 0; isa < 2; isa++) {
        use(isa ? simd : QC_ISA_SCALAR);
        qc_qdesc d = {QC_SYM8, 0, 0, QC_F32};
        uint8_t data[40];
        float sc[1];
        qc_error e;
        qc_status st = qc_quantize(&d, big, QC_F64, 1, 40, 320, 8, data, sc, NULL, &e);
        CHECK(st == QC_ERR_NONFINITE && e.row == 0 && e.col == 37, "f64 1e39: %d (%lld,%lld)", st,
              (long long)e.row, (long long)e.col);
    }
}

/* stats, directly: the same min / max / amax_signed */
static void test_stats(void) {
    use(QC_ISA_SCALAR);
    const qc_kernels *ks = qc_active();
    use(simd);
    const qc_kernels *kv = qc_active();
    int exact_zero_sign = simd == QC_ISA_NEON; /* NEON promises the sign of a zero min/max too */
    long zero_sign_diffs = 0;
    float x[1100];
    for (int trial = 0; trial < 4000; trial++) {
        int64_t n = trial < 1000 ? 1 + trial % 100 : 1 + irand(1100);
        int p = (int)irand(NPAT);
        fill_row(x, n, p);
        if (trial % 7 == 0) { /* equal magnitudes of both signs at random places */
            float M = 10.0f;
            for (int j = 0; j < 3; j++)
                x[irand(n)] = (rng() & 1) ? M : -M;
        }
        int bad = trial % 11 == 0;
        if (bad)
            x[irand(n)] = (trial % 3 == 0) ? NAN : ((trial & 1) ? INFINITY : -INFINITY);
        qc_stats a, b;
        memset(&a, 0, sizeof a);
        memset(&b, 0, sizeof b);
        int ra = ks->stats(x, n, &a), rb = kv->stats(x, n, &b);
        CHECK(ra == rb && ra == bad, "stats n=%lld pattern=%s: returned %d and %d, expected %d",
              (long long)n, PAT_NAMES[p], ra, rb, bad);
        if (ra || rb)
            continue;
        CHECK(fbits(a.amax_signed) == fbits(b.amax_signed), "stats n=%lld pattern=%s: amax %a vs %a",
              (long long)n, PAT_NAMES[p], a.amax_signed, b.amax_signed);
        if (fbits(a.min) != fbits(b.min) || fbits(a.max) != fbits(b.max))
            zero_sign_diffs += a.min == b.min && a.max == b.max;
        if (exact_zero_sign)
            CHECK(fbits(a.min) == fbits(b.min) && fbits(a.max) == fbits(b.max),
                  "stats n=%lld pattern=%s: min %a max %a vs min %a max %a", (long long)n,
                  PAT_NAMES[p], a.min, a.max, b.min, b.max);
        else
            CHECK(a.min == b.min && a.max == b.max,
                  "stats n=%lld pattern=%s: min %a max %a vs min %a max %a", (long long)n,
                  PAT_NAMES[p], a.min, a.max, b.min, b.max);
    }
    if (zero_sign_diffs)
        printf("note: %s stats differ from scalar in the sign of a zero min/max in %ld cases "
               "(harmless: formats.h never uses that sign)\n",
               qc_isa_name(simd), zero_sign_diffs);
}

/* float16 / float64 load kernels, directly */
static void test_loads(void) {
    use(QC_ISA_SCALAR);
    const qc_kernels *ks = qc_active();
    use(simd);
    const qc_kernels *kv = qc_active();
    static uint16_t h[65536 + 7];
    static float fa[65536 + 7], fb[65536 + 7];
    for (int i = 0; i < 65536; i++)
        h[i] = (uint16_t)i;
    long nan_bit_diffs = 0;
    for (int off = 0; off < 8; off++) { /* every pattern, several alignments and tails */
        int64_t n = 65536 - off;
        ks->load_f16(h + off, n, fa);
        kv->load_f16(h + off, n, fb);
        int64_t bad = -1;
        for (int64_t i = 0; i < n; i++) {
            if (fbits(fa[i]) == fbits(fb[i]))
                continue;
            if (isnan(fa[i]) && isnan(fb[i])) { /* the quiet bit of a signalling NaN */
                nan_bit_diffs++;
                continue;
            }
            bad = i;
            break;
        }
        CHECK(bad < 0, "load_f16 off=%d: element %lld (%04x): %a vs %a", off, (long long)bad,
              bad >= 0 ? h[off + bad] : 0, bad >= 0 ? fa[bad] : 0.0, bad >= 0 ? fb[bad] : 0.0);
    }
    if (nan_bit_diffs)
        printf("note: load_f16 %s quiets signalling NaNs (%ld cases); NaN is rejected either way\n",
               qc_isa_name(simd), nan_bit_diffs);
    static double g[4096];
    for (int trial = 0; trial < 20; trial++) {
        int64_t n = 1 + irand(4096);
        for (int64_t i = 0; i < n; i++) {
            uint64_t u = rng();
            if (trial % 2) { /* around float32's range and its subnormals */
                uint64_t e = (uint64_t)(1023 - 160 + irand(300));
                u = (u & 0x800fffffffffffffull) | (e << 52);
            }
            memcpy(&g[i], &u, 8);
            if (isnan(g[i]))
                g[i] = 1.5;
        }
        ks->load_f64(g, n, fa);
        kv->load_f64(g, n, fb);
        CHECK(memcmp(fa, fb, (size_t)n * 4) == 0, "load_f64 trial %d n=%lld", trial, (long long)n);
    }
}

/* dequantize of arbitrary bytes and parameters (not only what quantize makes) */
static void test_dequant_random(void) {
    int64_t L[80];
    int nl;
    lens(L, &nl);
    const int64_t rows = 3;
    for (int li = 0; li < nl; li++) {
        int64_t cols = L[li];
        for (int k = 0; k < QC_NUM_KINDS; k++)
            for (int gi = 0; gi < 4; gi++)
                for (int sd = 0; sd < 2; sd++) {
                    qc_qdesc d = {(qc_kind)k, GROUPS[gi], 0, sd ? QC_F16 : QC_F32};
                    qsizes z = sizes_for(&d, rows, cols);
                    uint8_t *data = xmalloc(z.dbytes), *sc = xmalloc(z.sbytes), *zz = xmalloc(z.zbytes);
                    for (size_t i = 0; i < z.dbytes; i++)
                        data[i] = (uint8_t)rng();
                    size_t ns = z.sbytes / (sd ? 2 : 4);
                    for (size_t i = 0; i < ns; i++) {
                        float v = uni() * (i % 3 == 0 ? 1e-3f : 7.0f);
                        if (sd) {
                            ((uint16_t *)sc)[i] = qc_fp32_to_fp16(v);
                            if (k == QC_MIN4)
                                ((uint16_t *)zz)[i] = qc_fp32_to_fp16(uni() * 50.0f);
                        } else {
                            ((float *)sc)[i] = v;
                            if (k == QC_MIN4)
                                ((float *)zz)[i] = uni() * 50.0f;
                        }
                    }
                    if (k == QC_ASYM8 || k == QC_ASYM4)
                        for (size_t i = 0; i < z.zbytes; i++)
                            zz[i] = (uint8_t)rng();
                    float *out[2];
                    for (int isa = 0; isa < 2; isa++) {
                        use(isa ? simd : QC_ISA_SCALAR);
                        out[isa] = xmalloc(z.deqn * 4);
                        memset(out[isa], 0x5a, z.deqn * 4);
                        qc_status st = qc_dequantize(&d, data, sc, QC_KINDS[k].has_zero ? zz : NULL, rows, cols,
                                                     out[isa], z.deq_stride, NULL);
                        CHECK(st == QC_OK, "dequantize status %d", st);
                    }
                    CHECK(memcmp(out[0], out[1], z.deqn * 4) == 0,
                          "dequantize random kind=%s cols=%lld group=%lld scale=%s", KIND_NAMES[k],
                          (long long)cols, (long long)d.group, sd ? "f16" : "f32");
                    free(out[0]);
                    free(out[1]);
                    free(data);
                    free(sc);
                    free(zz);
                }
    }
}

/* pack / unpack, signed and unsigned */
static void test_pack(void) {
    int64_t L[80];
    int nl;
    lens(L, &nl);
    const int64_t rows = 3;
    for (int li = 0; li < nl; li++) {
        int64_t cols = L[li], rb = (cols + 1) / 2;
        size_t n = (size_t)(rows * cols), nb = (size_t)(rows * rb);
        uint8_t *src = xmalloc(n), *pk[2], *up[2], *expect = xmalloc(nb);
        for (int sgn = 0; sgn < 2; sgn++) {
            for (size_t i = 0; i < n; i++)
                src[i] = sgn ? (uint8_t)(int8_t)(irand(16) - 8) : (uint8_t)irand(16);
            /* expected packing, written out independently */
            memset(expect, 0, nb);
            for (int64_t r = 0; r < rows; r++)
                for (int64_t c = 0; c < cols; c++)
                    expect[r * rb + c / 2] |= (uint8_t)((src[r * cols + c] & 0x0f) << ((c & 1) * 4));
            for (int isa = 0; isa < 2; isa++) {
                use(isa ? simd : QC_ISA_SCALAR);
                pk[isa] = xmalloc(nb);
                up[isa] = xmalloc(n);
                memset(pk[isa], 0xa5, nb);
                memset(up[isa], 0xa5, n);
                qc_error e;
                qc_status st = qc_pack_int4(src, rows, cols, sgn, pk[isa], &e);
                CHECK(st == QC_OK, "pack status %d", st);
                CHECK(memcmp(pk[isa], expect, nb) == 0, "pack %s signed=%d cols=%lld: wrong bytes",
                      qc_isa_name(isa ? simd : QC_ISA_SCALAR), sgn, (long long)cols);
                st = qc_unpack_int4(pk[isa], rows, cols, sgn, up[isa]);
                CHECK(st == QC_OK && memcmp(up[isa], src, n) == 0,
                      "unpack %s signed=%d cols=%lld: no round trip",
                      qc_isa_name(isa ? simd : QC_ISA_SCALAR), sgn, (long long)cols);
            }
            CHECK(memcmp(pk[0], pk[1], nb) == 0 && memcmp(up[0], up[1], n) == 0,
                  "pack/unpack signed=%d cols=%lld: ISAs differ", sgn, (long long)cols);
            /* unpack of arbitrary bytes */
            uint8_t *rnd = xmalloc(nb);
            for (size_t i = 0; i < nb; i++)
                rnd[i] = (uint8_t)rng();
            for (int isa = 0; isa < 2; isa++) {
                use(isa ? simd : QC_ISA_SCALAR);
                memset(up[isa], 0xa5, n);
                qc_unpack_int4(rnd, rows, cols, sgn, up[isa]);
            }
            CHECK(memcmp(up[0], up[1], n) == 0, "unpack random signed=%d cols=%lld: ISAs differ", sgn,
                  (long long)cols);
            free(rnd);
            /* out of range: QC_ERR_RANGE at the first bad element, nothing written */
            int64_t pos = irand((int64_t)n);
            uint8_t saved = src[pos];
            src[pos] = sgn ? (uint8_t)(int8_t)((rng() & 1) ? 8 : -9) : (uint8_t)(16 + irand(240));
            for (int isa = 0; isa < 2; isa++) {
                use(isa ? simd : QC_ISA_SCALAR);
                memset(pk[isa], 0xa5, nb);
                qc_error e;
                qc_status st = qc_pack_int4(src, rows, cols, sgn, pk[isa], &e);
                int untouched = 1;
                for (size_t i = 0; i < nb; i++)
                    untouched &= pk[isa][i] == 0xa5;
                CHECK(st == QC_ERR_RANGE && e.row == pos / cols && e.col == pos % cols && untouched,
                      "pack range signed=%d cols=%lld: status %d at (%lld,%lld)", sgn, (long long)cols, st,
                      (long long)e.row, (long long)e.col);
            }
            src[pos] = saved;
            for (int isa = 0; isa < 2; isa++) {
                free(pk[isa]);
                free(up[isa]);
            }
        }
        free(src);
        free(expect);
    }
}

/* method="mse" (quantize_mse.h): the same cases, the search's kernels compared */
static void test_quant_mse(void) {
    use_mse = 1;
    test_quant_f32();
    test_quant_f16_f64();
    test_nonfinite();
    use_mse = 0;
}

/* qc_quantize_mse_weighted: the same cases with importance vectors of every
 * pattern (make_importance), the weighted search's kernels compared */
static void test_quant_mse_weighted(void) {
    use_mse = 2;
    test_quant_f32();
    test_quant_f16_f64();
    use_mse = 0;
}

/* Bad importance: the first negative (QC_ERR_RANGE) or NaN/Inf (QC_ERR_NONFINITE)
 * column reported, nothing written, on both ISAs alike. */
static void test_importance_errors(void) {
    const int64_t rows = 3, cols = 70;
    const float bad_vals[4] = {-1.0f, NAN, INFINITY, -INFINITY};
    float *x = xmalloc((size_t)(rows * cols) * sizeof(float));
    float *w = xmalloc((size_t)cols * sizeof(float));
    for (int64_t i = 0; i < rows * cols; i++)
        x[i] = uni();
    for (int trial = 0; trial < 12; trial++) {
        for (int64_t j = 0; j < cols; j++)
            w[j] = 0.5f * (uni() + 1.0f);
        int64_t c1 = trial == 0 ? cols - 1 : irand(cols), c2 = irand(cols);
        float v1 = bad_vals[trial % 4], v2 = bad_vals[(trial / 4) % 4];
        w[c1] = v1;
        w[c2] = v2;
        int64_t first = c1 < c2 ? c1 : c2;
        float fv = c1 < c2 ? v1 : v2;
        if (c1 == c2)
            fv = v2;
        qc_status want = fv < 0.0f ? QC_ERR_RANGE : QC_ERR_NONFINITE;
        for (int k = 0; k < QC_NUM_KINDS; k++)
            for (int pt = 0; pt < 2; pt++)
                for (int isa = 0; isa < 2; isa++) {
                    use(isa ? simd : QC_ISA_SCALAR);
                    qc_qdesc d = {(qc_kind)k, 32, pt, QC_F32};
                    qsizes z = sizes_for(&d, rows, cols);
                    uint8_t *data = xmalloc(z.dbytes), *sc = xmalloc(z.sbytes), *zz = xmalloc(z.zbytes);
                    memset(data, 0xa5, z.dbytes);
                    memset(sc, 0xa5, z.sbytes);
                    qc_error e;
                    qc_status st = qc_quantize_mse_weighted(&d, x, QC_F32, rows, cols, cols * 4, 4, w,
                                                            data, sc, QC_KINDS[k].has_zero ? zz : NULL, &e);
                    size_t i = 0;
                    while (i < z.dbytes && data[i] == 0xa5)
                        i++;
                    size_t j = 0;
                    while (j < z.sbytes && sc[j] == 0xa5)
                        j++;
                    CHECK(st == want && e.row == -1 && e.col == first && i == z.dbytes && j == z.sbytes,
                          "bad importance %s kind=%s pt=%d: status %d at column %lld (expected %d at "
                          "%lld), untouched data %d scales %d",
                          qc_isa_name(isa ? simd : QC_ISA_SCALAR), KIND_NAMES[k], pt, st,
                          (long long)e.col, want, (long long)first, i == z.dbytes, j == z.sbytes);
                    free(data);
                    free(sc);
                    free(zz);
                }
    }
    free(x);
    free(w);
}

/* qc_linear under the SIMD ISA against the scalar reference, both compute modes,
 * every kind, whole-row / per-tensor / group scales, float32 / float16 scales, awkward
 * K and N, M from 1 (GEMV) into the x86 GEMM's range.  NEON's int8 path is specified
 * bit-identical to the reference (same integer dots, same float steps in the same
 * order); everything else must agree within a float-summation bound: 8 * (k + 32) *
 * eps * sum_k (|w_deq| + 2 max|w_deq|) * |x|, the second term for the offset
 * (-d z or the minimum) that the kernels apply apart from d * q (|offset| <= 2 max|w|). */
static void test_linear(void) {
    static const int64_t KS[] = {1, 17, 31, 32, 33, 64, 100, 257};
    static const int64_t NS[] = {1, 5, 17};
    static const int64_t MS[] = {1, 2, 5, 9};
    static const int64_t LG[] = {0, 32, 64, -1}; /* -1: per tensor */
    for (int k = 0; k < QC_NUM_KINDS; k++)
        for (int gi = 0; gi < 4; gi++)
            for (int sd = 0; sd < 2; sd++)
                for (size_t ki = 0; ki < sizeof KS / sizeof *KS; ki++)
                    for (size_t ni = 0; ni < sizeof NS / sizeof *NS; ni++) {
                        const int64_t K = KS[ki], N = NS[ni], M = MS[(ki + ni) % 4];
                        qc_qdesc d = {(qc_kind)k, LG[gi] < 0 ? 0 : LG[gi], LG[gi] < 0, sd ? QC_F16 : QC_F32};
                        qsizes z = sizes_for(&d, N, K);
                        float *wf = xmalloc((size_t)(N * K) * 4), *x = xmalloc((size_t)(M * K) * 4);
                        for (int64_t i = 0; i < N * K; i++)
                            wf[i] = uni() * (i % 7 == 0 ? 3.0f : 1.0f);
                        for (int64_t i = 0; i < M * K; i++)
                            x[i] = uni() * (i % 11 == 0 ? 8.0f : 1.0f);
                        uint8_t *data = xmalloc(z.dbytes), *sc = xmalloc(z.sbytes), *zz = xmalloc(z.zbytes);
                        use(QC_ISA_SCALAR);
                        qc_status st = qc_quantize(&d, wf, QC_F32, N, K, K * 4, 4, data, sc,
                                                   QC_KINDS[k].has_zero ? zz : NULL, NULL);
                        CHECK(st == QC_OK, "linear: quantize status %d", st);
                        float *deq = xmalloc(z.deqn * 4);
                        qc_dequantize(&d, data, sc, QC_KINDS[k].has_zero ? zz : NULL, N, K, deq, z.deq_stride, NULL);
                        double wmax = 0.0;
                        for (int64_t r = 0; r < N; r++)
                            for (int64_t j = 0; j < K; j++)
                                if (fabs((double)deq[r * z.deq_stride + j]) > wmax) /* not fmax: */
                                    wmax = fabs((double)deq[r * z.deq_stride + j]); /* GCC 12 aarch64 -O3 ICE */
                        qc_qweight w = {(qc_kind)k, N, K, d.group, d.per_tensor, d.scale_dtype, data, sc,
                                        QC_KINDS[k].has_zero ? zz : NULL};
                        for (int mode = 0; mode < 2; mode++) {
                            const qc_compute cm = mode ? QC_COMPUTE_I8 : QC_COMPUTE_F32;
                            float *y[2];
                            for (int isa = 0; isa < 2; isa++) {
                                use(isa ? simd : QC_ISA_SCALAR);
                                y[isa] = xmalloc((size_t)(M * N) * 4);
                                st = qc_linear(&w, x, M, K, NULL, y[isa], N, cm);
                                CHECK(st == QC_OK, "linear status %d", st);
                            }
                            const int exact = simd == QC_ISA_NEON && cm == QC_COMPUTE_I8;
                            int bad = 0;
                            for (int64_t r = 0; r < M && !bad; r++)
                                for (int64_t c = 0; c < N && !bad; c++) {
                                    double mag = 0.0;
                                    for (int64_t j = 0; j < K; j++)
                                        mag += (fabs((double)deq[c * z.deq_stride + j]) + 2.0 * wmax) *
                                               fabs((double)x[r * K + j]);
                                    const float a = y[0][r * N + c], b = y[1][r * N + c];
                                    if (exact ? fbits(a) != fbits(b)
                                              : !(fabs((double)a - (double)b) <= 8.0 * (double)(K + 32) * 1.2e-7 * mag + 1e-30))
                                        bad = 1;
                                    if (bad)
                                        CHECK(0, "linear %s kind=%s group=%lld%s scale=%s m=%lld n=%lld k=%lld: "
                                                 "y[%lld,%lld] scalar %.9g %s %.9g (mag %.3g)",
                                              mode ? "int8" : "float32", KIND_NAMES[k], (long long)d.group,
                                              d.per_tensor ? " per-tensor" : "", sd ? "f16" : "f32",
                                              (long long)M, (long long)N, (long long)K, (long long)r,
                                              (long long)c, a, qc_isa_name(simd), b, mag);
                                }
                            if (!bad)
                                CHECK(1, "linear");
                            free(y[0]);
                            free(y[1]);
                        }
                        free(wf);
                        free(x);
                        free(data);
                        free(sc);
                        free(zz);
                        free(deq);
                    }
}

/* qc_linear over K-quant weights (Q4_K, Q5_K, Q6_K) under the SIMD ISA against the
 * scalar reference: every ISA runs the same float operations in the same order
 * (docs/kquants.md), so both compute modes must agree bit for bit, for M from 1
 * into the GEMM's range, and with a NaN row (the exact float64 path). */
static void test_linear_kquant(void) {
    static const int64_t KS[] = {256, 512, 1280};
    static const int64_t NS[] = {1, 7, 33};
    static const int64_t MS[] = {1, 3, 5, 17};
    for (int t = 0; t < QC_NUM_KTYPES; t++)
        for (size_t ki = 0; ki < sizeof KS / sizeof *KS; ki++)
            for (size_t ni = 0; ni < sizeof NS / sizeof *NS; ni++) {
                const int64_t K = KS[ki], N = NS[ni], M = MS[(ki + ni + t) % 4];
                const int64_t rb = qc_kquant_row_bytes((qc_ktype)t, K);
                float *wf = xmalloc((size_t)(N * K) * 4), *x = xmalloc((size_t)(M * K) * 4);
                for (int64_t i = 0; i < N * K; i++)
                    wf[i] = uni() * (i % 7 == 0 ? 3.0f : 1.0f);
                for (int64_t i = 0; i < M * K; i++)
                    x[i] = uni() * (i % 11 == 0 ? 8.0f : 1.0f);
                if (M > 2)
                    x[2 * K + 5] = NAN;
                uint8_t *data = xmalloc((size_t)(N * rb));
                qc_status st = qc_quantize_kquant((qc_ktype)t, wf, N, K, K, NULL, data, NULL);
                CHECK(st == QC_OK, "linear kquant: quantize status %d", st);
                qc_qweight w = {(qc_kind)(QC_KIND_Q4_K + t), N, K, 0, 0, QC_F32, data, NULL, NULL};
                for (int mode = 0; mode < 2; mode++) {
                    float *y[2];
                    for (int isa = 0; isa < 2; isa++) {
                        use(isa ? simd : QC_ISA_SCALAR);
                        y[isa] = xmalloc((size_t)(M * N) * 4);
                        st = qc_linear(&w, x, M, K, NULL, y[isa], N, mode ? QC_COMPUTE_I8 : QC_COMPUTE_F32);
                        CHECK(st == QC_OK, "linear kquant status %d", st);
                    }
                    int bad = 0;
                    for (int64_t i = 0; i < M * N && !bad; i++)
                        bad = fbits(y[0][i]) != fbits(y[1][i]);
                    CHECK(!bad, "linear kquant type=%d %s m=%lld n=%lld k=%lld: %s differs from scalar",
                          t, mode ? "int8" : "float32", (long long)M, (long long)N, (long long)K,
                          qc_isa_name(simd));
                    free(y[0]);
                    free(y[1]);
                }
                free(wf);
                free(x);
                free(data);
            }
}

/* qc_linear over prepacked weights (packed.h; x86 builds pack, others skip): the SIMD
 * packed kernels against the scalar packed reader, bit for bit (every ISA follows
 * packed.h's float sequence), over every kind and scale layout, panels with and
 * without a tail, M from 1 across the kernels' row passes and activation chunks, and
 * a NaN row (the exact float64 path); pack then unpack gives the row layout back. */
static void test_linear_packed(void) {
    static const int64_t KS[] = {32, 64, 160, 1024};
    static const int64_t NS[] = {32, 33, 63, 100};
    static const int64_t MS[] = {1, 2, 5, 7, 13, 130};
    static const int64_t LG[] = {0, 32, 64, -1}; /* -1: per tensor */
    for (int k = 0; k < QC_NUM_KINDS; k++)
        for (int gi = 0; gi < 4; gi++)
            for (int sd = 0; sd < 2; sd++)
                for (size_t ki = 0; ki < sizeof KS / sizeof *KS; ki++) {
                    const int64_t K = KS[ki], N = NS[(ki + gi + sd) % 4];
                    const int64_t M = MS[(ki + gi + k) % 6];
                    qc_qdesc d = {(qc_kind)k, LG[gi] < 0 ? 0 : LG[gi], LG[gi] < 0, sd ? QC_F16 : QC_F32};
                    qsizes z = sizes_for(&d, N, K);
                    float *wf = xmalloc((size_t)(N * K) * 4), *x = xmalloc((size_t)(M * K) * 4);
                    for (int64_t i = 0; i < N * K; i++)
                        wf[i] = uni() * (i % 7 == 0 ? 3.0f : 1.0f);
                    for (int64_t i = 0; i < M * K; i++)
                        x[i] = uni() * (i % 11 == 0 ? 8.0f : 1.0f);
                    if (M > 2)
                        x[2 * K + 3] = NAN;
                    uint8_t *data = xmalloc(z.dbytes), *sc = xmalloc(z.sbytes), *zz = xmalloc(z.zbytes);
                    use(QC_ISA_SCALAR);
                    qc_status st = qc_quantize(&d, wf, QC_F32, N, K, K * 4, 4, data, sc,
                                               QC_KINDS[k].has_zero ? zz : NULL, NULL);
                    CHECK(st == QC_OK, "packed: quantize status %d", st);
                    qc_qweight w = {(qc_kind)k, N, K, d.group, d.per_tensor, d.scale_dtype, data, sc,
                                    QC_KINDS[k].has_zero ? zz : NULL};
                    const int64_t nb = qc_packed_bytes(&w);
                    if (nb > 0) {
                        uint8_t *buf = xmalloc((size_t)nb), *d2 = xmalloc(z.dbytes);
                        uint8_t *s2 = xmalloc(z.sbytes), *z2 = xmalloc(z.zbytes);
                        qc_qweight pw;
                        CHECK(qc_pack_weight(&w, buf, nb, &pw) == QC_OK, "packed: pack");
                        CHECK(qc_unpack_weight(&pw, d2, s2, QC_KINDS[k].has_zero ? z2 : NULL) == QC_OK &&
                                  !memcmp(d2, data, z.dbytes) && !memcmp(s2, sc, z.sbytes) &&
                                  (!QC_KINDS[k].has_zero || !memcmp(z2, zz, z.zbytes)),
                              "packed: unpack gives the row layout back (kind=%s k=%lld n=%lld)",
                              KIND_NAMES[k], (long long)K, (long long)N);
                        float *y[2];
                        for (int isa = 0; isa < 2; isa++) {
                            use(isa ? simd : QC_ISA_SCALAR);
                            y[isa] = xmalloc((size_t)(M * N) * 4);
                            st = qc_linear(&pw, x, M, K, NULL, y[isa], N, QC_COMPUTE_I8);
                            CHECK(st == QC_OK, "packed: linear status %d", st);
                        }
                        int bad = 0;
                        for (int64_t i = 0; i < M * N && !bad; i++)
                            bad = fbits(y[0][i]) != fbits(y[1][i]);
                        CHECK(!bad, "packed kind=%s group=%lld%s scale=%s m=%lld n=%lld k=%lld: %s differs from scalar",
                              KIND_NAMES[k], (long long)d.group, d.per_tensor ? " per-tensor" : "",
                              sd ? "f16" : "f32", (long long)M, (long long)N, (long long)K, qc_isa_name(simd));
                        free(y[0]);
                        free(y[1]);
                        free(buf);
                        free(d2);
                        free(s2);
                        free(z2);
                    }
                    free(wf);
                    free(x);
                    free(data);
                    free(sc);
                    free(zz);
                }
}

/* qc_linear near the float32 limits, scalar and the SIMD ISA, against a double
 * reference over the dequantized weight: rows with one element of 1e30..3e38,
 * whole rows near the limit, tiny and subnormal rows, a huge element among
 * subnormals.  Where the reference (with its bound) is representable the output
 * must be finite and within 8 * (k + 64) * u * sum_k (|w| + 2 max|w|) |x^|, plus
 * for int8 compute the activation rounding, plus k * 2^-96 * max|x| * 3 max|w|
 * for rows scaled down (contributions below that are lost to underflow). */
static void test_linear_extremes(void) {
    static const float HUGE_V[] = {1e30f, 1e35f, 1e37f, 1e38f, 3e38f};
    static const int64_t LG[] = {0, 32, 64, -1};
    const int64_t K = 100, N = 13, M = 9;
    for (int k = 0; k < QC_NUM_KINDS; k++)
        for (int gi = 0; gi < 4; gi++)
            for (int sd = 0; sd < 2; sd++) {
                qc_qdesc d = {(qc_kind)k, LG[gi] < 0 ? 0 : LG[gi], LG[gi] < 0, sd ? QC_F16 : QC_F32};
                qsizes z = sizes_for(&d, N, K);
                float *wf = xmalloc((size_t)(N * K) * 4), *x = xmalloc((size_t)(M * K) * 4);
                for (int64_t i = 0; i < N * K; i++)
                    wf[i] = uni();
                for (int64_t r = 0; r < M; r++) {
                    float *xr = x + r * K;
                    const float big = HUGE_V[(r + k + gi) % 5];
                    for (int64_t j = 0; j < K; j++)
                        xr[j] = uni();
                    switch (r % 6) {
                    case 0:
                        xr[irand(K)] = irand(2) ? big : -big;
                        break;
                    case 1:
                        for (int64_t j = 0; j < K; j++)
                            xr[j] *= big / 2.0f;
                        break;
                    case 2:
                        for (int64_t j = 0; j < K; j++)
                            xr[j] *= r % 4 ? 1e-42f : 1e-38f;
                        break;
                    case 3:
                        for (int64_t j = 0; j < K; j++)
                            xr[j] *= 1e-40f;
                        xr[irand(K)] = big;
                        break;
                    default:
                        break;
                    }
                }
                uint8_t *data = xmalloc(z.dbytes), *sc = xmalloc(z.sbytes), *zz = xmalloc(z.zbytes);
                use(QC_ISA_SCALAR);
                qc_status st = qc_quantize(&d, wf, QC_F32, N, K, K * 4, 4, data, sc,
                                           QC_KINDS[k].has_zero ? zz : NULL, NULL);
                CHECK(st == QC_OK, "extremes: quantize status %d", st);
                float *deq = xmalloc(z.deqn * 4);
                qc_dequantize(&d, data, sc, QC_KINDS[k].has_zero ? zz : NULL, N, K, deq, z.deq_stride, NULL);
                double wmax = 0.0;
                for (int64_t r = 0; r < N; r++)
                    for (int64_t j = 0; j < K; j++)
                        if (fabs((double)deq[r * z.deq_stride + j]) > wmax)
                            wmax = fabs((double)deq[r * z.deq_stride + j]);
                qc_qweight w = {(qc_kind)k, N, K, d.group, d.per_tensor, d.scale_dtype, data, sc,
                                QC_KINDS[k].has_zero ? zz : NULL};
                float *y = xmalloc((size_t)(M * N) * 4);
                for (int mode = 0; mode < 2; mode++)
                    for (int isa = 0; isa < 2; isa++)
                        for (int64_t m = 1; m <= M; m += M - 1) { /* GEMV and (x86) GEMM */
                            use(isa ? simd : QC_ISA_SCALAR);
                            st = qc_linear(&w, x, m, K, NULL, y, N, mode ? QC_COMPUTE_I8 : QC_COMPUTE_F32);
                            CHECK(st == QC_OK, "extremes: linear status %d", st);
                            int bad = 0;
                            for (int64_t r = 0; r < m && !bad; r++) {
                                const float *xr = x + r * K;
                                double amax = 0.0, bmax[4] = {0, 0, 0, 0};
                                for (int64_t j = 0; j < K; j++) {
                                    double a = fabs((double)xr[j]);
                                    amax = a > amax ? a : amax;
                                    bmax[j / 32] = a > bmax[j / 32] ? a : bmax[j / 32];
                                }
                                for (int64_t c = 0; c < N && !bad; c++) {
                                    const float *wr = deq + c * z.deq_stride;
                                    double ref = 0.0, mag = 0.0, i8b = 0.0, wsum = 0.0;
                                    for (int64_t j = 0; j < K; j++) {
                                        double xa = fabs((double)xr[j]);
                                        if (mode)
                                            xa += bmax[j / 32] / 254.0;
                                        ref += (double)xr[j] * (double)wr[j];
                                        mag += (fabs((double)wr[j]) + 2.0 * wmax) * xa;
                                        i8b += bmax[j / 32] / 254.0 * fabs((double)wr[j]);
                                        wsum += fabs((double)wr[j]);
                                    }
                                    double tol = 8.0 * (double)(K + 64) * 0x1p-24 * mag +
                                                 (double)K * 0x1p-96 * amax * 3.0 * wmax +
                                                 (mode ? i8b * 1.000001 + 0x1p-118 * wsum : 0.0) + 0x1p-115;
                                    const float v = y[r * N + c];
                                    if (!(fabs(ref) + tol < 3.4028234663852886e38))
                                        continue;
                                    if (!(fabs((double)v - ref) <= tol)) {
                                        bad = 1;
                                        CHECK(0, "extremes %s %s kind=%s group=%lld%s scale=%s m=%lld: "
                                                 "y[%lld,%lld] %.9g, double reference %.9g (bound %.3g)",
                                              qc_isa_name(isa ? simd : QC_ISA_SCALAR), mode ? "int8" : "float32",
                                              KIND_NAMES[k], (long long)d.group, d.per_tensor ? " per-tensor" : "",
                                              sd ? "f16" : "f32", (long long)m, (long long)r, (long long)c,
                                              v, ref, tol);
                                    }
                                }
                            }
                            if (!bad)
                                CHECK(1, "extremes");
                        }
                free(y);
                free(wf);
                free(x);
                free(data);
                free(sc);
                free(zz);
                free(deq);
            }
}

int main(void) {
    printf("quantcore %d.%d.%d: cpu features 0x%x\n", QC_VERSION_MAJOR, QC_VERSION_MINOR,
           QC_VERSION_PATCH, qc_cpu_features());
    /* QC_TEST_SECTIONS=linear: only the linear kernels (run_neon_qemu.sh's second
     * run, on a CPU model without the dot-product extension) */
    const char *sections = getenv("QC_TEST_SECTIONS");
    const int only_linear = sections && !strcmp(sections, "linear");
    int nsimd = 0;
    long before;
    qc_kernels seen[QC_NUM_ISAS];
#define SECTION(fn)                                                                             \
    before = npass + nfail;                                                                     \
    fn();                                                                                       \
    printf("%-22s %8ld checks\n", #fn, npass + nfail - before);                                 \
    fflush(stdout);
    /* every SIMD ISA compiled in and supported here (avx2 and avx512 on x86-64) */
    for (int i = 1; i < QC_NUM_ISAS; i++) {
        if (!qc_isa_supported((qc_isa)i))
            continue;
        simd = (qc_isa)i;
        use(simd);
        printf("%s linear kernels against scalar\n", qc_isa_name(simd));
        SECTION(test_linear) /* every ISA has linear kernels of its own */
        SECTION(test_linear_extremes)
        SECTION(test_linear_kquant)
        SECTION(test_linear_packed)
        if (only_linear) {
            nsimd++;
            continue;
        }
        use(simd);
        seen[nsimd] = *qc_active();
        seen[nsimd].name = NULL;
        int dup = -1;
        for (int j = 0; j < nsimd; j++)
            if (!memcmp(&seen[j], &seen[nsimd], sizeof seen[j]))
                dup = j;
        nsimd++;
        if (dup >= 0) { /* the same functions (avx512 shares the AVX2 quantize kernels) */
            printf("%s: the same quantize kernels as an ISA compared above, skipped\n",
                   qc_isa_name(simd));
            continue;
        }
        printf("comparing %s against scalar\n", qc_isa_name(simd));
        SECTION(test_loads)
        SECTION(test_stats)
        SECTION(test_quant_f32)
        SECTION(test_quant_f16_f64)
        SECTION(test_nonfinite)
        SECTION(test_dequant_random)
        SECTION(test_pack)
        SECTION(test_quant_mse)
        SECTION(test_quant_mse_weighted)
        SECTION(test_importance_errors)
    }
    if (!nsimd) {
        printf("no SIMD ISA compiled in and supported here: nothing to compare\n");
        printf("0 passed, 0 failed\n");
        return 0;
    }
    printf("quantize cases: %ld returned QC_OK, %ld returned an error (compared too)\n", n_ok_cases,
           n_err_cases);
    printf("%ld passed, %ld failed\n", npass, nfail);
    return nfail ? 1 : 0;
}
