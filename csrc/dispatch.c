/*
 * dispatch.c -- the one dispatch table, and the thread count.
 *
 * At first use (under a once-guard, so concurrent first calls do not race) the
 * tables of every ISA this CPU and OS run are filled, and the best one is
 * chosen; qc_select_isa() (QUANTCORE_ISA, read by the Python layer at import)
 * forces a lower one.  Entries an ISA leaves NULL come from the scalar table,
 * so callers never test for NULL.
 *
 * The avx512 set is AVX-512 F + BW + VL + VNNI (Ice Lake, Zen 4 and later; an
 * AVX-512 CPU without VNNI, such as Skylake-SP, runs the avx2 set): its GEMV
 * kernels are built around vpdpbusd.  It has linear kernels of its own
 * (x86/linear_avx512.c) and reuses the AVX2 quantize/dequantize kernels, which
 * are bound by the rounding rules rather than by the vector width.
 */
#include <stdatomic.h>

#include "kernels.h"
#include "pool.h"

static const char *const ISA_NAMES[QC_NUM_ISAS] = {"scalar", "avx2", "avx512", "neon"};

static const qc_kernels *compiled_table(qc_isa isa) {
    switch (isa) {
    case QC_ISA_SCALAR:
        return &qc_kernels_scalar;
#ifdef QC_HAVE_X86
    case QC_ISA_AVX2:
    case QC_ISA_AVX512: /* the quantize kernels of avx512 are the AVX2 ones */
        return &qc_kernels_avx2;
#endif
#ifdef QC_HAVE_NEON
    case QC_ISA_NEON:
        return &qc_kernels_neon;
#endif
    default:
        return NULL;
    }
}

static const qc_linear_kernels *compiled_linear(qc_isa isa) {
    switch (isa) {
#ifdef QC_HAVE_X86
    case QC_ISA_AVX2:
        return &qc_linear_avx2;
    case QC_ISA_AVX512:
        return &qc_linear_avx512;
#endif
#ifdef QC_HAVE_NEON
    case QC_ISA_NEON:
        return (qc_cpu_features() & QC_CPU_DOTPROD) ? &qc_linear_neon_dot : &qc_linear_neon;
#endif
    default: /* an ISA without linear kernels of its own runs the scalar ones */
        return &qc_linear_scalar;
    }
}

static int cpu_runs(qc_isa isa) {
    uint32_t f = qc_cpu_features();
    switch (isa) {
    case QC_ISA_SCALAR:
        return 1;
    case QC_ISA_AVX2: {
        uint32_t need = QC_CPU_AVX2 | QC_CPU_FMA | QC_CPU_F16C;
        return (f & need) == need;
    }
    case QC_ISA_AVX512: { /* the AVX2 quantize kernels run here too */
        uint32_t need = QC_CPU_AVX512F | QC_CPU_AVX512BW | QC_CPU_AVX512VL | QC_CPU_AVX512VNNI |
                        QC_CPU_AVX2 | QC_CPU_FMA | QC_CPU_F16C;
        return (f & need) == need;
    }
    case QC_ISA_NEON:
        return (f & QC_CPU_NEON) != 0;
    default:
        return 0;
    }
}

int qc_isa_compiled(qc_isa isa) { return isa >= 0 && isa < QC_NUM_ISAS && compiled_table(isa); }

int qc_isa_supported(qc_isa isa) { return qc_isa_compiled(isa) && cpu_runs(isa); }

qc_isa qc_best_isa(void) {
    for (int i = QC_NUM_ISAS - 1; i > 0; i--)
        if (qc_isa_supported((qc_isa)i))
            return (qc_isa)i;
    return QC_ISA_SCALAR;
}

const char *qc_isa_name(qc_isa isa) {
    return (isa >= 0 && isa < QC_NUM_ISAS) ? ISA_NAMES[isa] : "unknown";
}

/* The tables of every supported ISA: full copies, NULL entries filled from the
 * scalar ones; written once, under init_tables()'s guard, then only read. */
static qc_kernels active_tables[QC_NUM_ISAS];
static qc_linear_kernels active_linear[QC_NUM_ISAS];
static _Atomic int active_isa = -1;

static void fill(qc_isa isa) {
    qc_kernels k = *compiled_table(isa);
    k.name = ISA_NAMES[isa];
    const qc_kernels *s = &qc_kernels_scalar;
#define QC_FILL_FROM(dst, src, f)                                                               \
    if (!dst.f)                                                                                 \
        dst.f = src->f;
#define QC_FILL(f) QC_FILL_FROM(k, s, f)
    QC_FILL(load_f16)
    QC_FILL(load_f64)
    QC_FILL(stats)
    QC_FILL(store_f16)
    QC_FILL(pack_int4)
    QC_FILL(unpack_int4)
#ifdef QC_HAVE_X86
    /* An x86 ISA above AVX2 that has no mse search of its own runs the AVX2 one
     * (bit-identical to the scalar reference, and much faster). */
    if (isa != QC_ISA_SCALAR && isa != QC_ISA_AVX2 && cpu_runs(QC_ISA_AVX2))
        for (int i = 0; i < QC_NUM_KINDS; i++)
            QC_FILL_FROM(k, (&qc_kernels_avx2), quantize_row_mse[i])
#endif
    for (int i = 0; i < QC_NUM_KINDS; i++) {
        QC_FILL(quantize[i])
        QC_FILL(dequantize[i])
        QC_FILL(quantize_row[i])
        QC_FILL(quantize_row_mse[i])
    }
    active_tables[isa] = k;

    qc_linear_kernels l = *compiled_linear(isa);
    const qc_linear_kernels *ls = &qc_linear_scalar;
    QC_FILL_FROM(l, ls, act_quant)
    for (int i = 0; i < QC_NUM_KINDS; i++) {
        QC_FILL_FROM(l, ls, gemv_f32[i])
        QC_FILL_FROM(l, ls, gemv_i8[i])
        QC_FILL_FROM(l, ls, packed_i8[i])
    }
    /* K-quant weights: the ISA's own kernels, NULL GEMV entries from the scalar ones */
    const qc_kq_linear_kernels *kq = &qc_kq_linear_scalar;
#ifdef QC_HAVE_X86
    if (isa == QC_ISA_AVX2)
        kq = &qc_kq_linear_avx2;
    else if (isa == QC_ISA_AVX512)
        kq = &qc_kq_linear_avx512;
#endif
#ifdef QC_HAVE_NEON
    if (isa == QC_ISA_NEON)
        kq = (qc_cpu_features() & QC_CPU_DOTPROD) ? &qc_kq_linear_neon_dot : &qc_kq_linear_neon;
#endif
    l.kq = *kq;
    for (int i = 0; i < QC_NUM_KTYPES; i++) {
        if (!l.kq.gemv_f32[i])
            l.kq.gemv_f32[i] = qc_kq_linear_scalar.gemv_f32[i];
        if (!l.kq.gemv_i8[i])
            l.kq.gemv_i8[i] = qc_kq_linear_scalar.gemv_i8[i];
    }
    active_linear[isa] = l;
#undef QC_FILL
#undef QC_FILL_FROM
}

/* Fill the tables of every supported ISA and choose the best one, exactly once:
 * the first caller does the work (0 -> 1 -> 2), any concurrent one waits for it
 * (the work is a few struct copies, so a spin is enough). */
static _Atomic int init_state = 0;

static void init_tables(void) {
    if (atomic_load_explicit(&init_state, memory_order_acquire) == 2)
        return;
    int expected = 0;
    if (atomic_compare_exchange_strong(&init_state, &expected, 1)) {
        for (int i = 0; i < QC_NUM_ISAS; i++)
            if (qc_isa_supported((qc_isa)i))
                fill((qc_isa)i);
        atomic_store(&active_isa, (int)qc_best_isa());
        atomic_store_explicit(&init_state, 2, memory_order_release);
        return;
    }
    while (atomic_load_explicit(&init_state, memory_order_acquire) != 2)
        ;
}

qc_status qc_select_isa(qc_isa isa) {
    if (!qc_isa_supported(isa))
        return QC_ERR_UNSUPPORTED;
    init_tables();
    atomic_store(&active_isa, (int)isa);
    return QC_OK;
}

qc_isa qc_current_isa(void) {
    init_tables();
    return (qc_isa)atomic_load(&active_isa);
}

const qc_kernels *qc_active(void) { return &active_tables[qc_current_isa()]; }

const qc_linear_kernels *qc_active_linear(void) { return &active_linear[qc_current_isa()]; }

/* ---- threads (the pool itself: pool.c) ---- */
static _Atomic int num_threads = 0; /* 0: not set, use qc_pool_default_threads() */

void qc_set_num_threads(int n) {
    atomic_store(&num_threads, n > 0 ? (n < QC_POOL_MAX_THREADS ? n : QC_POOL_MAX_THREADS) : 0);
}

int qc_get_num_threads(void) {
    int n = atomic_load(&num_threads);
    return n > 0 ? n : qc_pool_default_threads();
}

/* The kernels run on quantcore's own pool (pool.c), never on OpenMP. */
int qc_has_openmp(void) { return 0; }
