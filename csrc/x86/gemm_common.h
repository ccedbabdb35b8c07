/*
 * gemm_common.h -- ISA-independent helpers of the tiled GEMM kernels
 * (gemm_avx2.c, gemm_avx512.c, and their shared driver gemm_driver.inc): tile
 * sizing, group boundaries, prefetches, aligned scratch, and the packed
 * activation tile the I8 microkernels read.  Plain C, no intrinsics beyond
 * prefetch, so each ISA file includes it inside its own `#if defined(QC_HAVE_X86)`
 * section.
 */
#ifndef QC_GEMM_COMMON_H
#define QC_GEMM_COMMON_H

#include <stdlib.h>
#include <string.h>
#if defined(_WIN32)
#include <malloc.h>
#endif

#if defined(__GNUC__) || defined(__clang__)
#define QC_INLINE inline __attribute__((always_inline))
#define QC_ALIGNED(n) __attribute__((aligned(n)))
#else
#define QC_INLINE __forceinline
#define QC_ALIGNED(n) __declspec(align(n))
#endif

/* Is block b the first of its scale group (or of the range)? */
static QC_INLINE int new_group(const qc_wview *v, int64_t b, int64_t b0) {
    return b == b0 || (v->gshift >= 0 && (b & ((1 << v->gshift) - 1)) == 0);
}

/* Rows for the next microkernel call out of rem left, at most mr_max: the last
 * 2 * mr_max rows are split in two near-equal calls rather than a full one and
 * a thin one (thin calls run at a fraction of the speed). */
static inline int next_mr(int64_t rem, int mr_max) {
    if (rem >= 2 * mr_max)
        return mr_max;
    return rem > mr_max ? (int)((rem + 1) / 2) : (int)rem;
}

/* Size of the M tiles: m rows split into near-equal tiles of at most ~mc rows,
 * rounded up to a multiple of mr. */
static inline int64_t m_tile(int64_t m, int64_t mc, int mr) {
    int64_t t = (m + mc - 1) / mc;
    int64_t s = (m + t - 1) / t;
    return (s + mr - 1) / mr * mr;
}

/* Prefetch the line holding p into L2 / L1.  asm statements: GCC drops a
 * function made of _mm_prefetch calls alone as if it had no effect (it is pure
 * to IPA). */
static QC_INLINE void prefetch_l2(const void *p) {
#if defined(__GNUC__)
    __asm__ volatile("prefetcht1 %0" : : "m"(*(const char *)p));
#else
    _mm_prefetch((const char *)p, _MM_HINT_T1);
#endif
}
static QC_INLINE void prefetch_l1(const void *p) {
#if defined(__GNUC__)
    __asm__ volatile("prefetcht0 %0" : : "m"(*(const char *)p));
#else
    _mm_prefetch((const char *)p, _MM_HINT_T0);
#endif
}

/* 64-byte aligned scratch (aligned loads and stores on panels and tiles). */
static void *scratch(size_t bytes) {
#if defined(_WIN32)
    return _aligned_malloc(bytes ? bytes : 64, 64);
#else
    void *p = NULL;
    return posix_memalign(&p, 64, bytes ? bytes : 64) == 0 ? p : NULL;
#endif
}

static void scratch_free(void *p) {
#if defined(_WIN32)
    _aligned_free(p);
#else
    free(p);
#endif
}

static const uint8_t qc_zero_bytes[64] QC_ALIGNED(64) = {0};

/* `len` (<= 64) bytes of a row starting at `off`, through a zeroed copy in tmp
 * when the row ends inside them (NULL row: zeros), so that nothing past the
 * row's rb bytes is read. */
static QC_INLINE const uint8_t *row_bytes_at(const uint8_t *row, int64_t rb, int64_t off, int len,
                                             uint8_t *tmp) {
    if (!row)
        return qc_zero_bytes;
    if (off + len <= rb)
        return row + off;
    memset(tmp, 0, (size_t)len);
    if (off < rb)
        memcpy(tmp, row + off, (size_t)(rb - off));
    return tmp;
}

/* A K tile of activation rows packed for an I8 microkernel: row r at x + r * ld
 * bytes, in the order of the ISA's weight panels; where the ISA asks for them
 * (I_XT_SUMS), per row r and block b cmp[r * kb + b] = -comp * sum(aq) (the
 * integer start of a SYM block's dot) and sx[r] = the sum of the blocks' xs. */
typedef struct {
    uint8_t *x;
    int64_t ld, kb;
    int32_t *cmp;
    float *sx;
} qc_xtile;

/* An I8 microkernel: y[mr x nc] (+ accum) = rows r.. of the x tile against one
 * weight panel over nblk blocks; xd / xs: the rows' block scales and sums (ldb
 * floats apart); codes / sc: the packed panel and its per-block parameters. */
typedef void (*qc_i8_micro_fn)(int mr, int64_t nblk, const qc_xtile *xt, int64_t r,
                               const float *xd, const float *xs, int64_t ldb,
                               const uint8_t *codes, const float *sc, float *y, int64_t ldy,
                               int accum, int nc);

#endif /* QC_GEMM_COMMON_H */
