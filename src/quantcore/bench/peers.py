"""The implementations ``quantcore bench`` compares quantcore against, and their
names in the report.

* a NumPy baseline of quantcore's own rules (GGUF's), vectorised the way a
  careful NumPy user would write them: :func:`numpy_quantize`,
  :func:`numpy_dequantize`, :func:`numpy_pack_int4`, :func:`numpy_unpack_int4`;
* the optional packages (gguf, PyTorch, ONNX Runtime, ggml-python), imported
  once when a case asks for them (:func:`gguf_module`, :func:`torch_module`,
  :func:`ort_module`, :func:`ggml_module`); :func:`blas_threads` pins NumPy's
  BLAS to the run's thread count where threadpoolctl is installed;
* ggml's own K-quant kernels through ggml-python: :func:`ggml_quantize`
  (``ggml_quantize_chunk``) and :class:`GgmlMatmul` (a one-node ``ggml_mul_mat``
  graph on a ggml thread pool).

:data:`PEERS` holds each peer's column label, what it is and how to install it.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any, ContextManager, Dict, List, Optional, Tuple

import numpy as np

from ..config import QuantConfig

__all__ = ["PeerInfo", "PEERS", "installed", "gguf_module", "torch_module", "ort_module",
           "ggml_module", "ggml_quantize", "GgmlThreads", "GgmlMatmul", "GGML_TYPES",
           "blas_threads", "have_threadpoolctl", "numpy_quantize", "numpy_dequantize",
           "numpy_pack_int4", "numpy_unpack_int4", "numpy_supports"]


@dataclass(frozen=True)
class PeerInfo:
    """A peer's column label in the report, what it is, the modules it needs,
    how to install them and whether ``pip install 'quantcore[bench]'`` does."""
    label: str
    description: str
    modules: Tuple[str, ...] = ()
    install: str = ""
    in_bench_extra: bool = True


PEERS: Dict[str, PeerInfo] = {
    "numpy": PeerInfo("np", "NumPy: the same rule vectorised (quantize, dequantize); "
                            "float32 x @ W.T (linear)"),
    "gguf": PeerInfo("gguf", "the gguf package's NumPy reference (Q8_0, Q4_0, Q4_1)",
                     ("gguf",), "pip install gguf"),
    "naive": PeerInfo("naive", "NumPy: dequantize the packed weights, then matmul"),
    "torch": PeerInfo("pt", "PyTorch float32 F.linear", ("torch",), "pip install torch"),
    "torch_i8": PeerInfo("pt8", "PyTorch dynamic int8 (quantize_dynamic, fbgemm)", ("torch",),
                         "pip install torch"),
    "ort_a0": PeerInfo("ort0", "ONNX Runtime MatMulNBits over the same codes, accuracy_level 0 "
                               "(float32 compute)", ("onnxruntime", "onnx"),
                       "pip install onnxruntime onnx"),
    "ort_a4": PeerInfo("ort4", "the same, accuracy_level 4 (int8 compute)",
                       ("onnxruntime", "onnx"), "pip install onnxruntime onnx"),
    "ggml": PeerInfo("ggml", "ggml itself through ggml-python: ggml_mul_mat of the same K-quant "
                             "bytes on a ggml thread pool of the same size (linear); "
                             "ggml_quantize_chunk, one thread (quantize)", ("ggml",),
                     "pip install cmake ninja scikit-build-core && pip install "
                     "--no-build-isolation ggml-python", in_bench_extra=False),
}


def installed(peer: str) -> bool:
    """Whether the packages `peer` needs are installed (nothing is imported)."""
    return all(importlib.util.find_spec(m) is not None for m in PEERS[peer].modules)


_MODULES: Dict[str, Any] = {}


def _import(name: str, *submodules: str) -> Any:
    if name not in _MODULES:
        try:
            mod = importlib.import_module(name)
            for sub in submodules:
                importlib.import_module(sub)
        except Exception:  # missing, or broken in this environment
            mod = None
        _MODULES[name] = mod
    return _MODULES[name]


def gguf_module() -> Any:
    """The ``gguf`` package (with ``gguf.quants``), or None when it is not installed."""
    return _import("gguf", "gguf.quants")


def torch_module() -> Any:
    """``torch``, or None when it is not installed."""
    return _import("torch")


def ort_module() -> Any:
    """``onnxruntime`` (with ``onnx``, which builds the models), or None."""
    return _import("onnxruntime", "onnx")


def ggml_module() -> Any:
    """``ggml`` (ggml-python, with its CPU backend initialised), or None when it is
    not installed or its shared libraries do not load."""
    mod = _import("ggml")
    if mod is not None and "ggml:cpu_init" not in _MODULES:
        try:
            mod.ggml_cpu_init()  # idempotent; the CPU backend's tables
            _MODULES["ggml:cpu_init"] = True
        except Exception:  # an older ggml-python without the CPU backend split
            _MODULES["ggml"] = mod = None
    return mod


#: ggml's type name for each K-quant format.
GGML_TYPES: Dict[str, str] = {"q4_k": "GGML_TYPE_Q4_K", "q5_k": "GGML_TYPE_Q5_K",
                              "q6_k": "GGML_TYPE_Q6_K"}
_GGML_SUPER = 256   # values per K-quant super-block


def ggml_quantize(ggml: Any, fmt: str, w: np.ndarray, out: Optional[np.ndarray] = None
                  ) -> np.ndarray:
    """ggml's bytes for the 2-D float32 `w` in K-quant `fmt` (``ggml_quantize_chunk``,
    one thread): uint8 of shape (rows, row bytes), written into `out` when given."""
    rows, k = w.shape
    if k % _GGML_SUPER:  # ggml aborts the process on this: say it first
        raise ValueError(f"ggml quantizes {fmt} rows of a multiple of {_GGML_SUPER}, got {k}")
    t = getattr(ggml, GGML_TYPES[fmt])
    rb = int(ggml.ggml_row_size(t, k))
    w = np.ascontiguousarray(w, dtype=np.float32)
    if out is None:
        out = np.empty((rows, rb), np.uint8)
    assert out.shape == (rows, rb) and out.flags.c_contiguous and out.dtype == np.uint8
    written = ggml.ggml_quantize_chunk(t, w.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                       out.ctypes.data, 0, rows, k, None)
    if written != out.nbytes:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {out.nbytes}")
    return out


class GgmlThreads:
    """A ggml CPU thread pool of `n` threads, kept for the run (as llama.cpp keeps
    one), freed by :meth:`close` or when collected."""

    def __init__(self, ggml: Any, n: int):
        self._ggml = ggml
        self.n = int(n)
        params = ggml.ggml_threadpool_params_default(self.n)
        self.pool = ggml.ggml_threadpool_new(ctypes.byref(params))
        if not self.pool:
            raise RuntimeError("ggml_threadpool_new failed")

    def close(self) -> None:
        """Stop and free the pool (idempotent)."""
        if getattr(self, "pool", None):
            self._ggml.ggml_threadpool_free(self.pool)
            self.pool = None

    def __del__(self) -> None:
        self.close()


class GgmlMatmul:
    """``y = x @ W.T`` by ggml: a graph of one ``ggml_mul_mat`` node over a K-quant
    weight of (N, K) holding `blocks` (ggml's bytes, (N, row bytes)) and a float32
    activation of (M, K), computed on `threads` (:class:`GgmlThreads`).
    :meth:`__call__` copies `x` in, computes, and returns ggml's output buffer as an
    (M, N) float32 view (valid until the next call)."""

    def __init__(self, ggml: Any, fmt: str, blocks: np.ndarray, m: int, k: int,
                 threads: GgmlThreads):
        t = getattr(ggml, GGML_TYPES[fmt])
        n = blocks.shape[0]
        if k % _GGML_SUPER or blocks.shape != (n, int(ggml.ggml_row_size(t, k))):
            raise ValueError(f"blocks of shape {blocks.shape} do not hold a {fmt} weight of "
                             f"{n}x{k}")
        self._ggml = ggml
        self.m, self.k, self.n = m, k, n
        self.threads = threads
        mem = (blocks.nbytes + 4 * (m * k + m * n) + 8 * int(ggml.ggml_tensor_overhead()) +
               int(ggml.ggml_graph_overhead()) + (1 << 20))
        self.ctx = ggml.ggml_init(ggml.ggml_init_params(mem_size=mem, mem_buffer=None,
                                                        no_alloc=False))
        if not self.ctx:
            raise MemoryError(f"ggml_init could not allocate {mem} bytes")
        w = ggml.ggml_new_tensor_2d(self.ctx, t, k, n)
        self._x = ggml.ggml_new_tensor_2d(self.ctx, ggml.GGML_TYPE_F32, k, m)
        y = ggml.ggml_mul_mat(self.ctx, w, self._x)
        self.graph = ggml.ggml_new_graph(self.ctx)
        ggml.ggml_build_forward_expand(self.graph, y)
        ctypes.memmove(ggml.ggml_get_data(w), blocks.ctypes.data, blocks.nbytes)
        self.plan = ggml.ggml_graph_plan(self.graph, threads.n, threads.pool)
        self._work = np.empty(max(64, int(self.plan.work_size)), np.uint8)
        self.plan.work_data = self._work.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        self._xptr = ggml.ggml_get_data(self._x)
        self.out = np.ctypeslib.as_array(
            ctypes.cast(ggml.ggml_get_data(y), ctypes.POINTER(ctypes.c_float)), shape=(m, n))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Compute ``x @ W.T`` for a C-contiguous float32 `x` of (M, K)."""
        assert x.shape == (self.m, self.k) and x.dtype == np.float32 and x.flags.c_contiguous
        ctypes.memmove(self._xptr, x.ctypes.data, x.nbytes)
        status = self._ggml.ggml_graph_compute(self.graph, ctypes.byref(self.plan))
        if status != 0:
            raise RuntimeError(f"ggml_graph_compute returned status {status}")
        return self.out

    def close(self) -> None:
        """Free the ggml context (idempotent)."""
        if getattr(self, "ctx", None):
            self.out = np.empty((0, 0), np.float32)
            self._ggml.ggml_free(self.ctx)
            self.ctx = None

    def __del__(self) -> None:
        self.close()


def have_threadpoolctl() -> bool:
    """Whether threadpoolctl is installed (it pins NumPy's BLAS threads)."""
    return importlib.util.find_spec("threadpoolctl") is not None


def blas_threads(n: int) -> ContextManager[Any]:
    """Limit NumPy's BLAS to `n` threads (threadpoolctl), so that NumPy's matmul
    runs at quantcore's thread count; a no-op without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


# ---- the NumPy baseline: quantcore's rules (GGUF's), vectorised -------------------------

def numpy_supports(config: QuantConfig, shape: Tuple[int, int]) -> Optional[str]:
    """None when the NumPy baseline covers `config` at `shape`, else why not."""
    try:
        _np_kind(config)
        _np_group(config, shape)
    except NotImplementedError as e:
        return str(e)
    return None


def _np_kind(config: QuantConfig) -> str:
    if config.method != "absmax":
        raise NotImplementedError(f"no NumPy baseline for method={config.method!r}")
    if config.format == "q4_1":
        return "min4"
    if config.symmetric:
        return "sym8" if config.bits == 8 else "sym4"
    raise NotImplementedError("no NumPy baseline for asymmetric integer configs")


def _np_group(config: QuantConfig, shape: Tuple[int, int]) -> int:
    rows, k = shape
    if config.granularity == "group":
        g = config.group_size
        assert g is not None  # QuantConfig: granularity "group" always has a group size
        if k % g:
            raise NotImplementedError(f"the NumPy baseline needs in_features % {g} == 0")
        return g
    return k if config.granularity == "channel" else rows * k


def numpy_pack_int4(codes: np.ndarray) -> np.ndarray:
    """uint8 codes in [0, 15], last axis even -> packed uint8 (element 2i in the
    low nibble of byte i, 2i+1 in the high nibble), as quantcore packs."""
    lo = codes[..., 0::2]
    hi = codes[..., 1::2] << np.uint8(4)
    hi |= lo
    return hi


def numpy_unpack_int4(packed: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Inverse of :func:`numpy_pack_int4`: uint8 codes, last axis twice as long."""
    if out is None:
        out = np.empty(packed.shape[:-1] + (2 * packed.shape[-1],), np.uint8)
    np.bitwise_and(packed, np.uint8(0x0F), out=out[..., 0::2])
    np.right_shift(packed, np.uint8(4), out=out[..., 1::2])
    return out


def numpy_quantize(w: np.ndarray, config: QuantConfig
                   ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """NumPy version of ``quantcore.quantize`` for a 2-D float32 `w`: returns
    ``(data, scales, zero_points)`` laid out as quantcore stores them.

    Rounding is ``np.rint`` (half to even) where GGUF rounds half away from zero,
    so a code may differ by one at exact ties; the work done is the same.
    Symmetric 8-bit, symmetric 4-bit (Q4_0's ``d = max / -8``) and Q4_1 only;
    in_features a multiple of the group.
    """
    kind = _np_kind(config)
    rows, k = w.shape
    g = _np_group(config, (rows, k))
    x = w.reshape(-1, g)                                    # one group per row
    if kind == "sym8":
        amax = np.abs(x).max(axis=1, keepdims=True)
        d = amax / np.float32(127)
    else:
        mx = x.max(axis=1, keepdims=True)
        mn = x.min(axis=1, keepdims=True)
        if kind == "sym4":
            d = np.where(-mn > mx, mn, mx) / np.float32(-8)
        else:
            d = (mx - mn) / np.float32(15)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    if kind == "min4":
        q = x - mn
        q *= inv
    else:
        q = x * inv
    if kind == "sym4":
        q += np.float32(8)
    np.rint(q, out=q)
    if kind == "sym8":
        np.clip(q, -127, 127, out=q)
        data = q.astype(np.int8).reshape(rows, k)
    else:
        np.clip(q, 0, 15, out=q)
        data = numpy_pack_int4(q.astype(np.uint8).reshape(rows, k))
    sdt = np.float16 if config.scale_dtype == "float16" else np.float32
    sshape = (1, 1) if config.granularity == "tensor" else (rows, -1)
    scales = d.astype(sdt).reshape(sshape)
    if config.granularity == "channel":
        scales = scales.reshape(rows)
    zeros = mn.astype(sdt).reshape(scales.shape) if kind == "min4" else None
    return data, scales, zeros


def numpy_dequantize(data: np.ndarray, scales: np.ndarray, zero_points: Optional[np.ndarray],
                     config: QuantConfig, shape: Tuple[int, int],
                     out: Optional[np.ndarray] = None) -> np.ndarray:
    """NumPy version of ``QuantizedTensor.dequantize`` for what
    :func:`numpy_quantize` returns: float32 of `shape`, written into `out` when
    given."""
    kind = _np_kind(config)
    rows, k = shape
    g = _np_group(config, shape)
    if out is None:
        out = np.empty(shape, np.float32)
    o = out.reshape(-1, g)
    d = scales.reshape(-1, 1)
    if kind == "sym8":
        np.multiply(data.reshape(-1, g), d, out=o, dtype=np.float32)
        return out
    codes = numpy_unpack_int4(data.reshape(rows, -1))
    if kind == "sym4":
        np.subtract(codes.reshape(-1, g), np.float32(8), out=o, dtype=np.float32)
        o *= d
    else:
        if zero_points is None:
            raise ValueError("min4 dequantization needs zero_points (numpy_quantize returns them)")
        np.multiply(codes.reshape(-1, g), d, out=o, dtype=np.float32)
        o += zero_points.reshape(-1, 1)
    return out
