#include "../kernels.h"
const qc_kq_linear_kernels qc_kq_linear_avx512 = {0};
