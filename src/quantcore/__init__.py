"""quantcore: fast CPU int8/int4 quantization kernels with a NumPy-first API.

Hot paths are C kernels (a scalar reference, AVX2, AVX-512 and NEON variants)
behind one dispatch table chosen at import; see ``quantcore.show_config()``.
"""

from ._version import __version__
from . import _ext  # noqa: F401  (the compiled core; fails loudly if the build is missing)
from . import calibrate, gguf, gptq, matmulnbits  # noqa: F401  (the submodules, as attributes)
from .config import QuantConfig
from .files import load, save
from .linear import QuantizedLinear
from .metrics import CompressionMetrics
from .model import ModelCompressionMetrics, QuantizedModel, quantize_model
from .prune import prune_magnitude
from .runtime import (available_isas, get_include, get_isa, get_num_threads, info, set_isa,
                      set_num_threads, show_config)
from .tensor import QuantizedTensor, pack_int4, quantize, unpack_int4

__all__ = [
    "QuantConfig", "QuantizedTensor", "QuantizedLinear", "quantize", "pack_int4", "unpack_int4",
    "set_num_threads", "get_num_threads", "info", "show_config", "set_isa", "get_isa",
    "available_isas", "get_include", "__version__",
    "CompressionMetrics", "ModelCompressionMetrics", "prune_magnitude", "quantize_model",
    "QuantizedModel", "save", "load",
]

from .runtime import _apply_environment as _apply_env

_apply_env()
del _apply_env
