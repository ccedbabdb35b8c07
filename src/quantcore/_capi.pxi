# The C API table for other extensions: a PyCapsule named "quantcore._ext._C_API"
# holding a `const qc_api *` (csrc/include/quantcore_api.h, csrc/api_table.c).
from cpython.pycapsule cimport PyCapsule_New

cdef extern from *:
    """
    #define QC_API_TABLE_ONLY /* the table type only: _ext calls the kernels directly */
    #include "quantcore_api.h"
    const qc_api *qc_api_table(void);
    """
    ctypedef struct qc_api:
        uint32_t version
        uint32_t size
    const qc_api *qc_api_table()

_C_API = PyCapsule_New(<void *>qc_api_table(), "quantcore._ext._C_API", NULL)
C_API_VERSION = qc_api_table().version
