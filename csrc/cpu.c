/*
 * cpu.c -- what the CPU and the operating system can run, detected once.
 *
 * x86: CPUID for the instruction sets, XGETBV(XCR0) for whether the OS saves the
 * YMM (bits 1-2) and ZMM/opmask (bits 5-7) state; an AVX feature the OS does not
 * enable is reported absent (as numpy's npy_cpu_features.c does).
 * aarch64: NEON is architectural; dot product from HWCAP on Linux.
 */
#include <stdatomic.h>

#include "quantcore.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>

static uint64_t xgetbv0(void) {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}

static uint32_t detect(void) {
    uint32_t f = 0, a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    if (d & (1u << 26))
        f |= QC_CPU_SSE2;
    int osxsave = (c >> 27) & 1;
    int avx = (c >> 28) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    uint64_t xcr0 = osxsave ? xgetbv0() : 0;
    int os_ymm = (xcr0 & 0x6) == 0x6;
    int os_zmm = (xcr0 & 0xe6) == 0xe6;
    if (!(avx && os_ymm))
        return f;
    f |= QC_CPU_AVX;
    if (fma)
        f |= QC_CPU_FMA;
    if (f16c)
        f |= QC_CPU_F16C;
    if (__get_cpuid_max(0, 0) >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        if (b & (1u << 5))
            f |= QC_CPU_AVX2;
        if (os_zmm) {
            if (b & (1u << 16))
                f |= QC_CPU_AVX512F;
            if (b & (1u << 30))
                f |= QC_CPU_AVX512BW;
            if (b & (1u << 31))
                f |= QC_CPU_AVX512VL;
            if (c & (1u << 11))
                f |= QC_CPU_AVX512VNNI;
        }
        __cpuid_count(7, 1, a, b, c, d);
        if (a & (1u << 4))
            f |= QC_CPU_AVXVNNI;
    }
    return f;
}

#elif defined(__aarch64__)
#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif
static uint32_t detect(void) {
    uint32_t f = QC_CPU_NEON;
#if defined(__linux__)
    if (getauxval(AT_HWCAP) & HWCAP_ASIMDDP)
        f |= QC_CPU_DOTPROD;
#elif defined(__APPLE__)
    f |= QC_CPU_DOTPROD;
#endif
    return f;
}
#else
static uint32_t detect(void) { return 0; }
#endif

/* Cached in one atomic word (bit 31 marks it set): concurrent first calls all
 * compute the same value and store it whole, so there is no data race. */
uint32_t qc_cpu_features(void) {
    static _Atomic uint32_t cached = 0;
    uint32_t f = atomic_load_explicit(&cached, memory_order_relaxed);
    if (!(f & 0x80000000u)) {
        f = detect() | 0x80000000u;
        atomic_store_explicit(&cached, f, memory_order_relaxed);
    }
    return f & 0x7fffffffu;
}
