# cython: language_level=3
"""quantcore._ext: the one compiled module (C kernels + a thin Cython boundary).

Split by concept into include files; see _runtime.pxi (CPU, ISA, threads),
_quant.pxi (quantize, dequantize, int4 packing), _kquant.pxi (the
GGUF K-quants), _linear.pxi (linear layers)
and _capi.pxi (the C API table other extensions call through).  Each wrapper
validates its arrays, then calls C with the GIL released and turns a status
code into an exception that names the argument.
"""
cimport numpy as cnp
import numpy as np

from quantcore._kernels cimport *

cnp.import_array()

include "_errors.pxi"
include "_runtime.pxi"
include "_quant.pxi"
include "_kquant.pxi"
include "_linear.pxi"
include "_capi.pxi"
