"""QuantizedTensor and the int4 packing helpers (a thin layer over quantcore._ext)."""

from __future__ import annotations

import math
import operator
from typing import Any, NamedTuple, Optional, Tuple, cast

import numpy as np

from . import _ext, matmulnbits
from ._arrays import as_float_array, check_out
from .config import QuantConfig
from .matmulnbits import MatMulNBitsWeights
from ._layerstats import LayerStats
from .metrics import CompressionMetrics, tensor_metrics

__all__ = ["QuantizedTensor", "quantize", "pack_int4", "unpack_int4"]


class Storage(NamedTuple):
    """A QuantizedTensor's arrays as the kernels take them (read-only, 2-D): codes
    ``(rows, bytes per row)``, scales ``(rows, n_groups)`` or ``(1, 1)`` per tensor,
    zero points shaped like scales or None.  See ``QuantizedTensor._storage``."""
    data: np.ndarray
    scales: np.ndarray
    zero_points: Optional[np.ndarray]


def _check_fits_float32(rows: np.ndarray, what: str) -> None:
    """Quantization runs in float32: when the first value of the 2-D float64
    `rows` that is not finite in float32 is a finite float64 value too large for
    float32, say so (instead of the kernels' "NaN or Inf")."""
    with np.errstate(over="ignore", invalid="ignore"):
        bad = ~np.isfinite(rows.astype(np.float32))
    if not bad.any():
        return
    r, c = (int(i) for i in np.argwhere(bad)[0])
    v = float(rows[r, c])
    if np.isfinite(v):
        raise ValueError(f"{what} holds {v!r} at row {r}, column {c}, which does not fit "
                         f"float32 (largest {float(np.finfo(np.float32).max):.7g}); quantcore "
                         f"quantizes in float32: rescale the data")


def _check_calibration(calibration: Any, config: QuantConfig, k: int, what: str) -> LayerStats:
    """The LayerStats to quantize `what` (last axis `k`) with, checked against `config`."""
    if calibration is None:
        raise ValueError(
            f"{what}: method='gptq' needs calibration statistics of the layer's inputs: pass "
            f"calibration=LayerStats (from quantcore.calibrate.StatsCollector, "
            f"quantcore.torch.collect_stats or quantcore.calibrate.load_stats), or use "
            f"method='absmax' or 'mse'")
    if config.method == "absmax" and config.ktype is None:
        raise ValueError(f"{what}: calibration is used by method='mse', method='gptq' and the "
                         f"K-quant formats; config.method is 'absmax'")
    if not isinstance(calibration, LayerStats):
        raise TypeError(f"calibration for {what} must be a quantcore.calibrate.LayerStats, "
                        f"got {type(calibration).__name__}")
    calibration._check_width(k, what)
    if calibration.count == 0:
        raise ValueError(f"calibration for {what}: the statistics hold no rows (count 0)")
    return calibration


def _rows_view(a: np.ndarray) -> np.ndarray:
    """(rows, last axis) view of `a`, or a copy where no view exists."""
    k = a.shape[-1]
    return a.reshape(-1, k) if a.ndim != 2 else a


class QuantizedTensor:
    """A tensor quantized along its last axis.

    Build one with ``QuantizedTensor.quantize(array, config)`` (or
    ``quantcore.quantize``).  The packed codes, scales and zero points are
    read-only NumPy arrays; ``dequantize()`` (or ``np.asarray(qt)``) gives float32
    back.  Rows are all axes but the last.

    K-quant formats (``QuantConfig.q4_k()``, ``.q5_k()``, ``.q6_k()``) store
    ggml's super-blocks verbatim in ``data``; their ``scales`` and
    ``zero_points`` are decoded from it on each access (see docs/kquants.md).
    """

    __slots__ = ("_data", "_scales", "_zeros", "_shape", "_dtype", "_config")
    _data: np.ndarray           # (rows, row bytes) codes
    _scales: np.ndarray         # (rows, n_groups), (1, 1) per tensor
    _zeros: Optional[np.ndarray]
    _shape: Tuple[int, ...]
    _dtype: np.dtype
    _config: QuantConfig

    # ---- construction -----------------------------------------------------------
    @classmethod
    def quantize(cls, array: Any, config: Optional[QuantConfig] = None, *,
                 importance: Any = None, calibration: Any = None) -> "QuantizedTensor":
        """Quantize a float16/32/64 array (ndim >= 1, any strides) with `config`
        (default ``QuantConfig.int8()``).  The input is never modified.  NaN or Inf
        raises ValueError.  ``config.method == "mse"`` searches each group's
        parameters for the least squared error (never above absmax's, group by
        group); the storage layout is the same.

        K-quant formats (``QuantConfig.q4_k()``, ``.q5_k()``, ``.q6_k()``) need a
        last axis that is a multiple of 256 (ValueError otherwise) and give
        ggml's bytes exactly.  `importance` (one float >= 0 per element of the
        last axis, e.g. a llama.cpp imatrix column) takes ggml's imatrix path
        for the K-quants and weights each column's squared error in the
        method="mse" search; other configs take no importance.

        `calibration`: a ``quantcore.calibrate.LayerStats`` of the inputs this
        weight multiplies (its last axis is their width).  Its per-channel mean
        squares serve as `importance` (method="mse", K-quants); method="gptq"
        (which needs it, with the full ``X.T X``) chooses the codes with GPTQ.
        Either way the result is an ordinary tensor of the config's format."""
        if config is None:
            config = QuantConfig.int8()
        if not isinstance(config, QuantConfig):
            raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
        return cls._quantize(array, config, "array", importance, calibration)

    @classmethod
    def _quantize(cls, array: Any, config: QuantConfig, what: str,
                  importance: Any = None, calibration: Any = None) -> "QuantizedTensor":
        """quantize() with errors naming the argument `what`."""
        a = as_float_array(array, what)
        if calibration is not None or config.method == "gptq":
            stats = _check_calibration(calibration, config, a.shape[-1], what)
            if importance is not None:
                raise ValueError(f"{what}: give importance or calibration, not both (the "
                                 f"statistics' mean squares are the importance)")
            if config.method == "gptq":
                return cls._quantize_gptq(a, config, what, stats)
            importance = np.asarray(stats.importance, dtype=np.float32)
        if config.ktype is not None:
            return cls._quantize_kquant(a, config, what, importance)
        if importance is not None and config.method != "mse":
            raise ValueError(f"importance is used by the K-quant formats (q4_k, q5_k, q6_k) and "
                             f"by method='mse'; this config is {config!r}")
        kw = {} if importance is None else {"importance": importance}
        try:
            data, scales, zeros = _ext.quantize_2d(
                _rows_view(a), config.kind, config.effective_group_size,
                config.granularity == "tensor", config.scale_dtype == "float16", what,
                config.method == "mse", **kw)
        except ValueError:
            if a.dtype == np.float64:
                _check_fits_float32(_rows_view(a), what)
            raise
        return cls._make(data, scales, zeros, tuple(a.shape), a.dtype, config)

    @classmethod
    def _quantize_kquant(cls, a: np.ndarray, config: QuantConfig, what: str,
                         importance: Any) -> "QuantizedTensor":
        k = a.shape[-1]
        ktype = cast(int, config.ktype)
        if k % 256:
            raise ValueError(f"{what}: format {config.format!r} needs the last axis to be a "
                             f"multiple of 256 (ggml's super-block), got shape {a.shape}")
        imp = None
        if importance is not None:
            imp = as_float_array(importance, "importance")
            if imp.shape != (k,):
                raise ValueError(f"importance must have shape ({k},), one value per element of "
                                 f"the last axis of {what} (shape {a.shape}), got {imp.shape}")
            if not np.all(np.isfinite(imp)) or np.any(imp < 0):
                i = int(np.flatnonzero(~(np.isfinite(imp) & (imp >= 0)))[0])
                raise ValueError(f"importance must be finite and >= 0, found {imp[i]!r} at "
                                 f"index {i}")
        data = _ext.quantize_kquant(_rows_view(a), ktype, imp, what)
        return cls._make(data, _ext.aligned_empty((data.shape[0], 0), np.float32), None,
                         tuple(a.shape), a.dtype, config)

    @classmethod
    def _quantize_gptq(cls, a: np.ndarray, config: QuantConfig, what: str,
                       stats: LayerStats) -> "QuantizedTensor":
        from .gptq import gptq_arrays
        k = a.shape[-1]
        if not stats.has_hessian:
            raise ValueError(f"calibration for {what}: method='gptq' needs the full input matrix "
                             f"X^T X (LayerStats(..., hessian=True)); these statistics hold only "
                             f"its diagonal (an importance vector): use method='mse' with them")
        w2 = _rows_view(a)
        fin = np.isfinite(w2)
        if not fin.all():
            bad = np.argwhere(~fin)[0]
            raise ValueError(f"{what} holds NaN or Inf (row {int(bad[0])}, column {int(bad[1])})")
        codes, scales, zeros = gptq_arrays(w2, stats._full_xtx(), config,
                                           act_order=config.act_order, damp=config.damp)
        if config.kind == _ext.KIND_SYM8:
            data = codes.astype(np.int8)
        elif config.bits == 8:
            data = codes.astype(np.uint8)
        else:
            data = _ext.pack_int4_2d(codes.astype(np.uint8), False)
        return cls.from_arrays(data, scales, zeros, tuple(a.shape), config, a.dtype)

    @classmethod
    def _make(cls, data, scales, zeros, shape, dtype, config) -> "QuantizedTensor":
        self = object.__new__(cls)
        for arr in (data, scales, zeros):
            if arr is not None:
                arr.setflags(write=False)
        self._data, self._scales, self._zeros = data, scales, zeros
        self._shape, self._dtype, self._config = shape, np.dtype(dtype), config
        return self

    @classmethod
    def from_arrays(cls, data: np.ndarray, scales: Optional[np.ndarray],
                    zero_points: Optional[np.ndarray], shape: Tuple[int, ...],
                    config: QuantConfig, dtype: Any = np.float32) -> "QuantizedTensor":
        """Rebuild a tensor from its stored arrays (as ``data``, ``scales`` and
        ``zero_points`` return them, or in their 2-D (rows, ...) form).  Every
        shape and dtype is checked; the arrays are copied.  K-quant formats need
        only ``data`` (ggml's super-blocks): scales and zero_points may be None
        (or must equal the values decoded from data)."""
        if not isinstance(config, QuantConfig):
            raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
        try:
            shape = tuple(operator.index(s) for s in shape)  # ints only: no 8.5 -> 8
        except TypeError:
            raise TypeError(f"shape must be a tuple of ints, got {shape!r}") from None
        if len(shape) < 1 or any(s < 1 for s in shape):
            raise ValueError(f"shape must have ndim >= 1 and positive sizes, got {shape}")
        if math.prod(shape) >= 2**62:
            raise ValueError(f"shape {shape} has more than 2**62 elements")
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"dtype must be a float dtype, got {dtype}")
        k = shape[-1]
        rows = math.prod(shape[:-1])
        if config.ktype is not None:
            return cls._from_arrays_kquant(data, scales, zero_points, shape, config, dtype)
        kind = config.kind
        per_tensor = config.granularity == "tensor"
        ng = _ext.num_groups(k, config.effective_group_size)
        srows, sng = (1, 1) if per_tensor else (rows, ng)
        sdt = np.dtype(config.scale_dtype)

        lead = shape[:-1]
        pshape: Tuple[int, ...]
        if per_tensor:
            pshape = ()
        elif config.granularity == "channel":
            pshape = lead
        else:
            pshape = lead + (sng,)

        def take(arr, what, dt, want, public):
            if not isinstance(arr, np.ndarray):
                raise TypeError(f"{what} must be a numpy array, got {type(arr).__name__}")
            if arr.dtype != dt:
                raise TypeError(f"{what} must have dtype {dt}, got {arr.dtype}")
            if arr.shape not in (tuple(want), tuple(public)):
                raise ValueError(f"{what} must have shape {tuple(public)} (or {tuple(want)}) for "
                                 f"shape {shape} and {config!r}, got {arr.shape}")
            out = _ext.aligned_empty(tuple(want), dt)  # a copy, cache-line aligned
            out[...] = arr.reshape(want)
            return out

        rb = _ext.row_bytes(kind, k)
        data = take(data, "data", np.dtype(np.int8 if kind == _ext.KIND_SYM8 else np.uint8),
                    (rows, rb), lead + (rb,))
        if kind == _ext.KIND_SYM8 and np.any(data == -128):
            raise ValueError("data: symmetric int8 codes must lie in [-127, 127], found -128")
        scales = take(scales, "scales", sdt, (srows, sng), pshape)
        if not np.all(np.isfinite(scales)):
            raise ValueError("scales must be finite")
        if kind in (_ext.KIND_ASYM8, _ext.KIND_ASYM4):
            zeros = take(zero_points, "zero_points", np.dtype(np.uint8), (srows, sng), pshape)
            if kind == _ext.KIND_ASYM4 and np.any(zeros > 15):
                raise ValueError("zero_points must lie in [0, 15] for 4-bit formats")
        elif kind == _ext.KIND_MIN4:
            zeros = take(zero_points, "zero_points", sdt, (srows, sng), pshape)
            if not np.all(np.isfinite(zeros)):
                raise ValueError("zero_points must be finite")
        else:
            if zero_points is not None:
                raise ValueError(f"zero_points must be None for a symmetric config, got an array")
            zeros = None
        return cls._make(data, scales, zeros, shape, dtype, config)

    @classmethod
    def _from_arrays_kquant(cls, data, scales, zero_points, shape, config, dtype):
        k = shape[-1]
        rows = math.prod(shape[:-1])
        ktype = cast(int, config.ktype)
        if k % 256:
            raise ValueError(f"shape: format {config.format!r} needs the last axis to be a "
                             f"multiple of 256 (ggml's super-block), got {shape}")
        rb = _ext.kquant_row_bytes(ktype, k)
        lead = shape[:-1]
        if not isinstance(data, np.ndarray):
            raise TypeError(f"data must be a numpy array, got {type(data).__name__}")
        if data.dtype != np.uint8:
            raise TypeError(f"data must have dtype uint8, got {data.dtype}")
        if data.shape not in ((rows, rb), lead + (rb,)):
            raise ValueError(f"data must have shape {lead + (rb,)} (or {(rows, rb)}) for shape "
                             f"{shape} and {config!r}, got {data.shape}")
        d = _ext.aligned_empty((rows, rb), np.uint8)
        d[...] = data.reshape(rows, rb)
        bs = {_ext.KTYPE_Q4_K: 144, _ext.KTYPE_Q5_K: 176, _ext.KTYPE_Q6_K: 210}[ktype]
        blocks = d.reshape(-1, bs)
        halves = blocks[:, bs - 2:] if ktype == _ext.KTYPE_Q6_K else blocks[:, :4]
        h = np.ascontiguousarray(halves).view("<u2")
        if np.any((h & 0x7C00) == 0x7C00):
            b = int(np.argwhere((h & 0x7C00) == 0x7C00)[0][0])
            nb = k // 256
            raise ValueError(f"data: the float16 super-block scale of row {b // nb}, block "
                             f"{b % nb} is not finite")
        self = cls._make(d, _ext.aligned_empty((rows, 0), np.float32), None, shape, dtype, config)
        # scales / zero_points are derived from data: given, they must be the derived ones
        for what, given, want in (("scales", scales, self.scales),
                                  ("zero_points", zero_points, self.zero_points)):
            if given is None:
                continue
            if want is None:
                raise ValueError(f"zero_points must be None for {config.format!r} (symmetric), "
                                 f"got an array")
            g = np.asarray(given)
            if g.shape not in (want.shape, (rows, want.size // rows)) or g.dtype != np.float32 \
                    or g.reshape(want.shape).tobytes() != want.tobytes():
                raise ValueError(f"{what} of a {config.format!r} tensor are derived from data; "
                                 f"pass None (or exactly the float32 values the tensor reports)")
        return self

    def _kquant_params(self):
        rows, k = self._data.shape[0], self._shape[-1]
        return _ext.kquant_params(self._data, cast(int, self._config.ktype), rows, k)
    def _storage(self) -> Storage:
        """The stored arrays in their 2-D kernel form (package use: QuantizedLinear,
        the GGUF and MatMulNBits converters); ``data``, ``scales`` and
        ``zero_points`` are the same arrays shaped like the tensor."""
        return Storage(self._data, self._scales, self._zeros)

    # ---- attributes ---------------------------------------------------------------
    @property
    def shape(self) -> Tuple[int, ...]:
        """Shape of the original float tensor."""
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        """dtype of the array that was quantized."""
        return self._dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions of the original tensor."""
        return len(self._shape)

    @property
    def config(self) -> QuantConfig:
        """The QuantConfig this tensor was quantized with."""
        return self._config

    @property
    def bits(self) -> int:
        """Bits per stored code: 8 or 4 (5 or 6 for the q5_k and q6_k formats)."""
        return self._config.bits

    @property
    def group_size(self) -> Optional[int]:
        """Elements per scale group along the last axis, or None when the granularity is not per-group."""
        return self._config.group_size

    @property
    def symmetric(self) -> bool:
        """True when codes are centred on zero (no zero point)."""
        return self._config.symmetric

    @property
    def granularity(self) -> str:
        """Where scales live: 'per_tensor', 'per_channel' or 'per_group'."""
        return cast(str, self._config.granularity)  # resolved by QuantConfig.__post_init__

    def _param_shape(self) -> Tuple[int, ...]:
        g = self._config.granularity
        if self._config.ktype is not None:
            return self._shape[:-1] + (self._shape[-1] // cast(int, self._config.group_size),)
        if g == "tensor":
            return ()
        if g == "channel":
            return self._shape[:-1]
        return self._shape[:-1] + (self._scales.shape[1],)

    @property
    def data(self) -> np.ndarray:
        """Packed codes, read-only: int8 (8-bit symmetric) or uint8, shape
        ``shape[:-1] + (bytes per row,)``; 4-bit rows hold element 2i in the low
        nibble of byte i."""
        return self._data.reshape(self._shape[:-1] + (self._data.shape[1],))

    @property
    def scales(self) -> np.ndarray:
        """Scales, read-only: shape () per tensor, ``shape[:-1]`` per channel,
        ``shape[:-1] + (n_groups,)`` per group.  K-quants: the float32 effective
        scale ``d * sc`` of each sub-block (32 values; Q6_K 16), decoded from
        ``data`` on each access (not counted in ``nbytes``)."""
        if self._config.ktype is not None:
            sc = self._kquant_params()[0]
            sc.setflags(write=False)
            return sc.reshape(self._param_shape())
        return self._scales.reshape(self._param_shape())

    @property
    def zero_points(self) -> Optional[np.ndarray]:
        """Integer zero points (uint8) for asymmetric formats, the float16 group
        minima for Q4_1, or None; shaped like ``scales``.  Q4_K / Q5_K: the
        float32 value of code 0 of each sub-block, ``-(dmin * m)`` (so a value is
        ``scale * q + zero_point``), decoded from ``data``; Q6_K: None."""
        if self._config.ktype is not None:
            off = self._kquant_params()[1]
            if off is None:
                return None
            off.setflags(write=False)
            return off.reshape(self._param_shape())
        return None if self._zeros is None else self._zeros.reshape(self._param_shape())

    @property
    def nbytes(self) -> int:
        """Bytes of all storage: codes, scales and zero points (K-quants: the
        super-blocks, which hold them all)."""
        return int(self._data.nbytes + self._scales.nbytes +
                   (0 if self._zeros is None else self._zeros.nbytes))

    @property
    def size(self) -> int:
        """Number of parameters."""
        return math.prod(self._shape)

    @property
    def effective_bits(self) -> float:
        """Storage bits per parameter, scales and zero points included (4.5 for int4
        with float16 scales per 32, 5.0 with float32 scales)."""
        return 8.0 * self.nbytes / self.size

    # ---- values -------------------------------------------------------------------
    def dequantize(self, out: Optional[np.ndarray] = None) -> np.ndarray:
        """float32 array of ``shape``; written into `out` (C-contiguous float32 of
        that shape) when given."""
        k = self._shape[-1]
        rows = self._data.shape[0]
        target = None if out is None else check_out(out, self._shape).reshape(rows, k)
        if self._config.ktype is not None:
            res = _ext.dequantize_kquant(self._data, cast(int, self._config.ktype), rows, k, target)
            return out if out is not None else res.reshape(self._shape)
        res = _ext.dequantize_2d(self._data, self._scales, self._zeros, self._config.kind,
                                 rows, k, self._config.effective_group_size,
                                 self._config.granularity == "tensor", target)
        return out if out is not None else res.reshape(self._shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self.dequantize()
        return a if dtype is None else a.astype(dtype, copy=False)

    def mse(self, reference: Any) -> float:
        """Mean squared error of the dequantized values against `reference`."""
        ref = as_float_array(reference, "reference")
        if ref.shape != self._shape:
            raise ValueError(f"reference must have shape {self._shape}, got {ref.shape}")
        diff = self.dequantize().astype(np.float64) - ref.astype(np.float64)
        return float(np.mean(diff * diff))

    def metrics(self, reference: Any = None) -> CompressionMetrics:
        """CompressionMetrics of this tensor: effective bits from the real storage
        (codes, scales and zero points), and with `reference` (the float array
        that was quantized) the MSE, max abs error, SNR in dB and the sparsity
        (fraction of exact zeros) measured against it.  Without a reference the
        dequantized values stand in for it: MSE 0, the error fields None.  See
        ``quantcore.metrics.tensor_metrics``."""
        return tensor_metrics(self, reference)

    # ---- other layouts -----------------------------------------------------------
    def to_matmulnbits(self) -> MatMulNBitsWeights:
        """This (N, K) weight in ONNX Runtime's ``com.microsoft.MatMulNBits`` layout:
        B, scales, zero_points (or None), K, N, bits, block_size (see
        ``quantcore.matmulnbits`` for how each format maps).  Q4_1 and tensors
        that are not 2-D raise ValueError."""
        return matmulnbits.encode(self._data, self._scales, self._zeros, self._shape,
                                  self._config)

    @classmethod
    def from_matmulnbits(cls, B: Any, scales: Any, zero_points: Any = None, *, K: int, N: int,
                         bits: int = 4, block_size: int, compute: str = "auto") -> "QuantizedTensor":
        """The (N, K) tensor a MatMulNBits node's weight inputs and attributes hold:
        B, scales and zero_points as the node has them (flat or in the op's
        shapes), its K, N, bits and block_size attributes; ``compute`` is the
        config's (see ``quantcore.matmulnbits.decode`` for how each maps)."""
        return cls.from_arrays(*matmulnbits.decode(B, scales, zero_points, K=K, N=N, bits=bits,
                                                   block_size=block_size, compute=compute))

    # ---- Python protocols ---------------------------------------------------------
    def __reduce__(self):
        scales = None if self._config.ktype is not None else self._scales  # K: all in data
        return (_rebuild, (self._config.to_dict(), self._shape, self._dtype.str,
                           self._data, scales, self._zeros))

    def __copy__(self) -> "QuantizedTensor":
        return self  # immutable: a copy may share storage

    def __deepcopy__(self, memo) -> "QuantizedTensor":
        return QuantizedTensor._make(self._data.copy(), self._scales.copy(),
                                     None if self._zeros is None else self._zeros.copy(),
                                     self._shape, self._dtype, self._config)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantizedTensor):
            return NotImplemented
        if (self._config, self._shape, self._dtype) != (other._config, other._shape, other._dtype):
            return False
        if (self._zeros is None) != (other._zeros is None):
            return False
        same = lambda a, b: a.tobytes() == b.tobytes()  # noqa: E731 (bitwise, -0.0 != 0.0)
        return (same(self._data, other._data) and same(self._scales, other._scales) and
                (self._zeros is None or same(self._zeros, other._zeros)))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        c = self._config
        what = c.format or f"int{c.bits}"
        gran = f"group_size={c.group_size}" if c.granularity == "group" else f"granularity={c.granularity!r}"
        sym = "symmetric" if c.symmetric else "asymmetric"
        return (f"QuantizedTensor({what}, shape={self._shape}, dtype={self._dtype.name}, {gran}, "
                f"{sym}, scale_dtype={c.scale_dtype}, nbytes={self.nbytes}, "
                f"bits_per_param={self.effective_bits:.3g})")


def _rebuild(config, shape, dtype, data, scales, zeros):
    return QuantizedTensor.from_arrays(data, scales, zeros, shape, QuantConfig.from_dict(config),
                                       np.dtype(dtype))


def quantize(array: Any, config: Optional[QuantConfig] = None, *,
             importance: Any = None, calibration: Any = None) -> QuantizedTensor:
    """Same as ``QuantizedTensor.quantize(array, config, importance=importance,
    calibration=calibration)``."""
    return QuantizedTensor.quantize(array, config, importance=importance, calibration=calibration)


def pack_int4(values: Any) -> np.ndarray:
    """Pack int4 values along the last axis: element 2i in the low nibble of byte i,
    2i+1 in the high nibble (ONNX Runtime's order); an odd last axis ends with a
    zero high nibble.

    int8 values must lie in [-8, 7] (stored as two's complement nibbles), uint8
    values in [0, 15].  Other integer dtypes are read as unsigned when no value is
    negative, else as signed.  Returns uint8 of shape ``shape[:-1] + (ceil(n/2),)``.
    """
    v = np.asarray(values)
    if v.dtype.kind not in "iu":
        raise TypeError(f"values must be an integer array, got dtype {v.dtype}")
    if v.ndim < 1:
        raise ValueError("values must have ndim >= 1, got a 0-d array")
    if v.dtype == np.int8:
        signed = True
    elif v.dtype == np.uint8:
        signed = False
    else:
        signed = bool(v.size) and int(v.min()) < 0
        lo, hi = (-8, 7) if signed else (0, 15)
        bad = np.flatnonzero((v < lo) | (v > hi))
        if len(bad):
            where = np.unravel_index(bad[0], v.shape)
            raise ValueError(f"values must lie in [-8, 7] (signed int4) or [0, 15] (unsigned int4); "
                             f"found {v[where]} at index {tuple(int(i) for i in where)}")
        v = v.astype(np.int8 if signed else np.uint8)
    n = v.shape[-1]
    oshape = v.shape[:-1] + ((n + 1) // 2,)
    if v.size == 0:
        return np.zeros(oshape, np.uint8)
    out = _ext.pack_int4_2d(v.reshape(-1, n), signed)
    return out.reshape(oshape)


def unpack_int4(packed: Any, n: int, signed: bool = False) -> np.ndarray:
    """Inverse of pack_int4: the first `n` int4 values of each row of `packed`
    (uint8, last axis ``ceil(n/2)`` bytes), as uint8 in [0, 15], or int8 in
    [-8, 7] when `signed`."""
    p = np.asarray(packed)
    if p.dtype != np.uint8:
        raise TypeError(f"packed must have dtype uint8, got {p.dtype}")
    if p.ndim < 1:
        raise ValueError("packed must have ndim >= 1, got a 0-d array")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    n = int(n)
    if p.shape[-1] != (n + 1) // 2:
        raise ValueError(f"packed has {p.shape[-1]} bytes in its last axis; n={n} needs {(n + 1) // 2}")
    oshape = p.shape[:-1] + (n,)
    if p.size == 0 or n == 0:
        return np.zeros(oshape, np.int8 if signed else np.uint8)
    out = _ext.unpack_int4_2d(p.reshape(-1, p.shape[-1]), n, bool(signed))
    return out.reshape(oshape)
