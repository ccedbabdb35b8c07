"""QuantizedTensor and the int4 packing helpers (a thin layer over quantcore._ext)."""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any, Optional, Tuple, cast

import numpy as np

from . import _ext
from .config import QuantConfig

if TYPE_CHECKING:  # pragma: no cover
    from .metrics import CompressionMetrics
    from .matmulnbits import MatMulNBitsWeights

__all__ = ["QuantizedTensor", "quantize", "pack_int4", "unpack_int4"]


def _as_float_array(array: Any, what: str = "array") -> np.ndarray:
    """A float16/32/64 ndarray of ndim >= 1 with at least one element (never a copy
    of an ndarray unless its dtype needs converting)."""
    if isinstance(array, np.ndarray):
        a = array
    else:
        if hasattr(array, "detach") and hasattr(array, "numpy"):  # a torch tensor
            array = array.detach().cpu().numpy()
        try:
            a = np.asarray(array)
        except Exception as e:  # ragged lists and the like
            raise TypeError(f"{what} must be an array of floats: {e}") from None
    if a.dtype.kind != "f" or a.dtype.itemsize not in (2, 4, 8):
        raise TypeError(f"{what} must have dtype float16, float32 or float64, got {a.dtype}")
    if a.ndim < 1:
        raise ValueError(f"{what} must have ndim >= 1, got a 0-d array")
    if a.size == 0:
        raise ValueError(f"{what} is empty (shape {a.shape}); nothing to quantize")
    return a


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
                 calibration: Any = None) -> "QuantizedTensor":
        """Quantize a float16/32/64 array (ndim >= 1, any strides) with `config`
        (default ``QuantConfig.int8()``).  The input is never modified.  NaN or Inf
        raises ValueError.  ``config.method == "mse"`` searches each group's
        parameters for the least squared error (never above absmax's, group by
        group); the storage layout is the same.

        `calibration`: a ``quantcore.calibrate.LayerStats`` of the inputs this
        weight multiplies (its last axis is their width).  method="mse" then
        weights each input channel's error by its importance (mean square);
        method="gptq" (which needs it, with the full ``X.T X``) chooses the
        codes with GPTQ.  Either way the result is an ordinary tensor of the
        config's format."""
        if config is None:
            config = QuantConfig.int8()
        if not isinstance(config, QuantConfig):
            raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
        return cls._quantize(array, config, "array", calibration)

    @classmethod
    def _quantize(cls, array: Any, config: QuantConfig, what: str,
                  calibration: Any = None) -> "QuantizedTensor":
        """quantize() with errors naming the argument `what`."""
        if calibration is not None or config.method == "gptq":
            from .calibrate import _quantize_calibrated
            return _quantize_calibrated(array, config, calibration, what)
        a = _as_float_array(array, what)
        group = (config.group_size or 0) if config.granularity == "group" else 0
        data, scales, zeros = _ext.quantize_2d(
            _rows_view(a), config.kind, group, config.granularity == "tensor",
            config.scale_dtype == "float16", what, config.method == "mse")
        return cls._make(data, scales, zeros, tuple(a.shape), a.dtype, config)

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
    def from_arrays(cls, data: np.ndarray, scales: np.ndarray, zero_points: Optional[np.ndarray],
                    shape: Tuple[int, ...], config: QuantConfig,
                    dtype: Any = np.float32) -> "QuantizedTensor":
        """Rebuild a tensor from its stored arrays (as ``data``, ``scales`` and
        ``zero_points`` return them, or in their 2-D (rows, ...) form).  Every
        shape and dtype is checked; the arrays are copied."""
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
        kind = config.kind
        per_tensor = config.granularity == "tensor"
        group = (config.group_size or 0) if config.granularity == "group" else 0
        ng = _ext.num_groups(k, group)
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

    # ---- attributes ---------------------------------------------------------------
    @property
    def shape(self) -> Tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        """dtype of the array that was quantized."""
        return self._dtype

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def config(self) -> QuantConfig:
        return self._config

    @property
    def bits(self) -> int:
        return self._config.bits

    @property
    def group_size(self) -> Optional[int]:
        return self._config.group_size

    @property
    def symmetric(self) -> bool:
        return self._config.symmetric

    @property
    def granularity(self) -> str:
        return cast(str, self._config.granularity)  # resolved by QuantConfig.__post_init__

    def _param_shape(self) -> Tuple[int, ...]:
        g = self._config.granularity
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
        ``shape[:-1] + (n_groups,)`` per group."""
        return self._scales.reshape(self._param_shape())

    @property
    def zero_points(self) -> Optional[np.ndarray]:
        """Integer zero points (uint8) for asymmetric formats, the float16 group
        minima for Q4_1, or None; shaped like ``scales``."""
        return None if self._zeros is None else self._zeros.reshape(self._param_shape())

    @property
    def nbytes(self) -> int:
        """Bytes of all storage: codes, scales and zero points."""
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
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
            if out.dtype != np.float32:
                raise TypeError(f"out must have dtype float32, got {out.dtype}")
            if out.shape != self._shape:
                raise ValueError(f"out must have shape {self._shape}, got {out.shape}")
            if not out.flags.c_contiguous:
                raise ValueError("out must be C-contiguous")
            if not out.flags.writeable:
                raise ValueError("out must be writeable")
            target = out.reshape(rows, k)
        else:
            target = None
        res = _ext.dequantize_2d(self._data, self._scales, self._zeros, self._config.kind,
                                 rows, k, self._group(), self._config.granularity == "tensor",
                                 target)
        return out if out is not None else res.reshape(self._shape)

    def _group(self) -> int:
        return (self._config.group_size or 0) if self._config.granularity == "group" else 0

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self.dequantize()
        return a if dtype is None else a.astype(dtype, copy=False)

    def mse(self, reference: Any) -> float:
        """Mean squared error of the dequantized values against `reference`."""
        ref = _as_float_array(reference, "reference")
        if ref.shape != self._shape:
            raise ValueError(f"reference must have shape {self._shape}, got {ref.shape}")
        diff = self.dequantize().astype(np.float64) - ref.astype(np.float64)
        return float(np.mean(diff * diff))

    def metrics(self, reference: Any = None) -> "CompressionMetrics":
        """CompressionMetrics of this tensor: effective bits from the real storage
        (codes, scales and zero points), and with `reference` (the float array
        that was quantized) the MSE, max abs error, SNR in dB and the sparsity
        (fraction of exact zeros) measured against it.  Without a reference the
        dequantized values stand in for it: MSE 0, the error fields None.  See
        ``quantcore.metrics.tensor_metrics``."""
        from .metrics import tensor_metrics
        return tensor_metrics(self, reference)

    # ---- other layouts -----------------------------------------------------------
    def to_matmulnbits(self) -> "MatMulNBitsWeights":
        """This (N, K) weight in ONNX Runtime's ``com.microsoft.MatMulNBits`` layout:
        B, scales, zero_points (or None), K, N, bits, block_size (see
        ``quantcore.matmulnbits``).  Q4_1 raises ValueError (it does not map)."""
        from .matmulnbits import to_matmulnbits
        return to_matmulnbits(self)

    @classmethod
    def from_matmulnbits(cls, B: Any, scales: Any, zero_points: Any = None, *, K: int, N: int,
                         bits: int = 4, block_size: int, compute: str = "auto") -> "QuantizedTensor":
        """The (N, K) tensor a MatMulNBits node's weight inputs and attributes hold
        (see ``quantcore.matmulnbits.from_matmulnbits``)."""
        from .matmulnbits import from_matmulnbits
        return from_matmulnbits(B, scales, zero_points, K=K, N=N, bits=bits,
                                block_size=block_size, compute=compute)

    # ---- Python protocols ---------------------------------------------------------
    def __reduce__(self):
        return (_rebuild, (self._config.to_dict(), self._shape, self._dtype.str,
                           self._data, self._scales, self._zeros))

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
             calibration: Any = None) -> QuantizedTensor:
    """Same as ``QuantizedTensor.quantize(array, config, calibration=calibration)``."""
    return QuantizedTensor.quantize(array, config, calibration=calibration)


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
