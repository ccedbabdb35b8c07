/* quant_neon.c -- NEON versions (aarch64); filled in below the guard. */
#include "../kernels.h"
#if defined(QC_HAVE_NEON)
#error "NEON kernels not written yet"
#endif
