# quantcore's C kernels for other Cython packages.
#
#     # cython: language_level=3
#     from quantcore.kernels cimport *
#     qc_import_api()           # once, at module level: fetches quantcore's table
#
#     cdef qc_qweight w         # ... fill it from a QuantizedTensor's arrays
#     with nogil:
#         st = qc_linear(&w, x, m, k, NULL, y, n, QC_COMPUTE_I8)
#
# Every function of csrc/include/quantcore.h is declared (see quantcore._kernels)
# and, through quantcore_api.h, called through the function table that
# quantcore._ext exports in a PyCapsule: nothing to link, and the caller shares
# quantcore's kernel set and thread count.  Build with
# include_dirs=[quantcore.get_include()]; Cython finds this file on sys.path.
# All functions are nogil and return a qc_status (or a plain value): they never
# raise; check the status yourself.
from quantcore._kernels cimport *

cdef extern from "quantcore_api.h":
    ctypedef struct qc_api:
        unsigned int version
        unsigned int size
    int QC_API_VERSION
    # Import quantcore._ext and fetch its table: 0, or -1 with ImportError set.
    int qc_import_api() except -1
