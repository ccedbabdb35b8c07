"""ONNX Runtime's ``com.microsoft.MatMulNBits`` weight layout: export and import.

``MatMulNBits`` computes ``Y = A @ dequantize(B).T`` (+ bias) for a weight of
``N`` output and ``K`` input features, quantized block-wise along K:

* ``B``: uint8 ``(N, n_blocks, blob_size)`` with ``n_blocks = ceil(K / block_size)``
  and ``blob_size = block_size * bits / 8``.  4-bit codes: element 2i in the low
  nibble of a byte, 2i+1 in the high nibble (quantcore's own order); the last
  block of a row is padded with zeros.
* ``scales``: ``(N, n_blocks)``, the dtype of A (float32 here).
* ``zero_points`` (optional): uint8 ``(N, ceil(n_blocks * bits / 8))``, packed
  like B (two 4-bit zero points per byte, each row padded to a whole byte).
  Absent, the zero point is ``2**(bits - 1)``: 8 for 4 bits, 128 for 8 bits.
* value: ``(q - zero_point) * scale``.

How quantcore's formats map (all exactly: the dequantized weights are the same
float32 numbers):

==========================  =====================================================
quantcore                   MatMulNBits
==========================  =====================================================
int4 symmetric (Q4_0 too)   B = our codes, no zero_points (default 8)
int4 asymmetric             B = our codes, zero_points = our zero points packed
int8 symmetric (Q8_0 too)   B = codes + 128 (``int8 ^ 0x80``), no zero_points
int8 asymmetric             B = our codes, zero_points = our zero points
per channel / per tensor    one block per row: block_size = the next power of
                            two >= max(K, 16); per tensor repeats the scale
Q4_1 (``d*q + m``)          does not map: its float minimum is no integer zero
                            point (a float one, ``-m/d``, would not be exact and
                            does not exist where d == 0); ``encode`` raises
                            ValueError
==========================  =====================================================

``QuantizedTensor.to_matmulnbits()`` and ``QuantizedTensor.from_matmulnbits(...)``
are the usual way in and out; ``encode`` and ``decode`` here work on the stored
arrays themselves.  ``make_model`` builds the one-node ONNX model (needs the
``onnx`` package) that the benchmark and the tests run through onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, TypedDict

import numpy as np

from . import _ext
from ._arrays import to_numpy
from .config import QuantConfig

__all__ = ["MatMulNBitsWeights", "MatMulNBitsAttributes", "encode", "decode", "make_model"]


class MatMulNBitsAttributes(TypedDict):
    """The node attributes that describe the weight (``accuracy_level`` is not one)."""
    K: int
    N: int
    bits: int
    block_size: int


@dataclass(frozen=True)
class MatMulNBitsWeights:
    """The inputs and attributes of a ``com.microsoft.MatMulNBits`` node.

    ``B``, ``scales`` and ``zero_points`` (None: the op's default zero point) are
    new arrays in the op's layout; ``K``, ``N``, ``bits`` and ``block_size`` are
    its attributes.  ``attributes()`` gives them as a dict for
    ``onnx.helper.make_node``; ``make_model()`` builds a runnable one-node model.
    """

    B: np.ndarray
    scales: np.ndarray
    zero_points: Optional[np.ndarray]
    K: int
    N: int
    bits: int
    block_size: int

    @property
    def nbytes(self) -> int:
        """Bytes of B, scales and zero points."""
        return int(self.B.nbytes + self.scales.nbytes +
                   (0 if self.zero_points is None else self.zero_points.nbytes))

    def attributes(self) -> MatMulNBitsAttributes:
        """``{"K": .., "N": .., "bits": .., "block_size": ..}``."""
        return {"K": self.K, "N": self.N, "bits": self.bits, "block_size": self.block_size}

    def as_dict(self) -> Dict[str, Any]:
        """All fields as a plain dict (arrays included)."""
        return {"B": self.B, "scales": self.scales, "zero_points": self.zero_points,
                **self.attributes()}

    def make_model(self, bias: Optional[np.ndarray] = None, accuracy_level: int = 0) -> Any:
        """A one-node ONNX model ``Y = A @ W.T (+ bias)``; see ``make_model``."""
        return make_model(self, bias=bias, accuracy_level=accuracy_level)


def _pow2_at_least(n: int) -> int:
    return 1 << max(4, (int(n) - 1).bit_length())


def _pack_nibbles(v: np.ndarray) -> np.ndarray:
    """(rows, n) values in [0, 15] -> (rows, ceil(n/2)) bytes, element 2i low."""
    rows, n = v.shape
    if n % 2:
        v = np.concatenate([v, np.zeros((rows, 1), np.uint8)], axis=1)
    return (v[:, 0::2] | (v[:, 1::2] << 4)).astype(np.uint8)


def _unpack_nibbles(b: np.ndarray, n: int) -> np.ndarray:
    out = np.empty((b.shape[0], 2 * b.shape[1]), np.uint8)
    out[:, 0::2] = b & 0x0F
    out[:, 1::2] = b >> 4
    return out[:, :n]


def encode(data: np.ndarray, scales: np.ndarray, zero_points: Optional[np.ndarray],
           shape: Tuple[int, ...], config: QuantConfig) -> MatMulNBitsWeights:
    """The MatMulNBits form of a quantized ``(N, K)`` weight given by its stored
    arrays in their 2-D form (codes ``(N, bytes per row)``, scales and zero points
    ``(N, n_groups)`` or ``(1, 1)`` per tensor), its `shape` and `config` (see the
    module docstring for which formats map).  Raises ValueError for Q4_1 and for
    shapes that are not 2-D."""
    if len(shape) != 2:
        raise ValueError(f"MatMulNBits holds a 2-D (N, K) weight; the tensor has shape {shape}")
    cfg = config
    kind = cfg.kind
    if kind == _ext.KIND_MIN4:
        raise ValueError(
            "Q4_1 (format='q4_1', x = d*q + m) does not map to MatMulNBits: the op computes "
            "(q - zero_point) * scale with an integer zero point, and Q4_1's float minimum m has "
            "none (a float zero point -m/d is not exact and does not exist where d == 0); "
            "quantize with QuantConfig.int4(symmetric=False) or QuantConfig.q4_0() instead")
    n, k = shape
    bits = cfg.bits
    if cfg.granularity == "group" and cfg.group_size is not None and cfg.group_size < k:
        bs = int(cfg.group_size)
    else:
        bs = _pow2_at_least(k)
    nb = -(-k // bs)
    blob = bs * bits // 8
    data = np.asarray(data)
    if kind == _ext.KIND_SYM8:
        codes = (data.view(np.uint8) ^ np.uint8(0x80))
    else:
        codes = data.view(np.uint8)
    flat = np.zeros((n, nb * blob), np.uint8)
    flat[:, :codes.shape[1]] = codes
    B = flat.reshape(n, nb, blob)

    scales = np.asarray(scales, dtype=np.float32)
    if cfg.granularity == "tensor":
        scales = np.broadcast_to(scales.reshape(1, 1), (n, 1))
    scales = np.array(scales.reshape(n, nb), dtype=np.float32, order="C")

    zp: Optional[np.ndarray] = None
    if kind in (_ext.KIND_ASYM8, _ext.KIND_ASYM4):
        z = np.asarray(zero_points, dtype=np.uint8)
        if cfg.granularity == "tensor":
            z = np.broadcast_to(z.reshape(1, 1), (n, 1))
        z = np.ascontiguousarray(z.reshape(n, nb))
        zp = _pack_nibbles(z) if bits == 4 else z.copy()
    return MatMulNBitsWeights(B=B, scales=scales, zero_points=zp, K=int(k), N=int(n),
                              bits=int(bits), block_size=bs)


def _int_attr(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{what} must be an int, got {type(v).__name__}")
    return int(v)


def decode(B: Any, scales: Any, zero_points: Any = None, *, K: int, N: int, bits: int = 4,
           block_size: int, compute: str = "auto"
           ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Tuple[int, int], QuantConfig]:
    """A MatMulNBits weight (the node's B, scales, zero_points and attributes) as
    the arrays, shape and config of the ``(N, K)`` QuantizedTensor holding the
    same values: ``(data, scales, zero_points, (N, K), config)``, what
    ``QuantizedTensor.from_arrays`` takes (``QuantizedTensor.from_matmulnbits``
    does that).

    * 4 bits without zero_points -> int4 symmetric (codes around 8);
      with uint8 zero_points -> int4 asymmetric.
    * 8 bits with zero_points -> int8 asymmetric; without them -> int8
      symmetric (``B ^ 0x80``), or int8 asymmetric with zero point 128 where a
      code is 0 (-128 is outside quantcore's symmetric range [-127, 127]).
    * One block per row (block_size >= K) gives per-channel scales, otherwise
      groups of block_size.  float32 scales stay float32, float16 stay float16.
    * Float zero points are accepted when they are integers in range (they are
      converted); bits other than 4 and 8 raise ValueError.

    B and zero_points may be given flat or in the op's 2-D/3-D shapes.
    """
    K = _int_attr(K, "K")
    N = _int_attr(N, "N")
    bits = _int_attr(bits, "bits")
    block_size = _int_attr(block_size, "block_size")
    if K < 1 or N < 1:
        raise ValueError(f"K and N must be positive, got K={K}, N={N}")
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8 (quantcore's formats), got {bits}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")
    nb = -(-K // block_size)
    blob = block_size * bits // 8

    B = to_numpy(B, "B")
    if B.dtype != np.uint8:
        raise TypeError(f"B must have dtype uint8, got {B.dtype}")
    if B.size != N * nb * blob:
        raise ValueError(f"B must hold N*n_blocks*blob_size = {N}*{nb}*{blob} = {N * nb * blob} "
                         f"bytes (shape ({N}, {nb}, {blob})) for K={K}, bits={bits}, "
                         f"block_size={block_size}; got shape {B.shape}")
    rows = B.reshape(N, nb * blob)

    scales = to_numpy(scales, "scales")
    if scales.dtype not in (np.float32, np.float16):
        raise TypeError(f"scales must have dtype float32 or float16, got {scales.dtype}")
    if scales.size != N * nb:
        raise ValueError(f"scales must hold N*n_blocks = {N * nb} values (shape ({N}, {nb})), "
                         f"got shape {scales.shape}")
    scales = np.ascontiguousarray(scales.reshape(N, nb))
    if not np.all(np.isfinite(scales)):
        raise ValueError("scales must be finite")

    z: Optional[np.ndarray] = None
    if zero_points is not None:
        zp = to_numpy(zero_points, "zero_points")
        if zp.dtype.kind == "f":
            zf = zp.astype(np.float64)
            if zp.size != N * nb:
                raise ValueError(f"float zero_points must hold N*n_blocks = {N * nb} values, "
                                 f"got shape {zp.shape}")
            if not np.all((zf == np.round(zf)) & (zf >= 0) & (zf <= (1 << bits) - 1)):
                raise ValueError(f"float zero_points must be integers in [0, {(1 << bits) - 1}] "
                                 f"for quantcore's asymmetric formats (a fractional zero point "
                                 f"has no quantcore format)")
            z = zf.astype(np.uint8).reshape(N, nb)
        elif zp.dtype == np.uint8:
            zbytes = -(-nb * bits // 8)
            if zp.size != N * zbytes:
                raise ValueError(f"zero_points must hold N*ceil(n_blocks*bits/8) = {N * zbytes} "
                                 f"bytes (shape ({N}, {zbytes})), got shape {zp.shape}")
            zp = zp.reshape(N, zbytes)
            z = _unpack_nibbles(zp, nb) if bits == 4 else np.array(zp, np.uint8)
        else:
            raise TypeError(f"zero_points must be uint8 (packed) or a float dtype, got {zp.dtype}")

    granularity = "channel" if nb == 1 else "group"
    group = None if nb == 1 else block_size
    sdt = "float16" if scales.dtype == np.float16 else "float32"
    if bits == 4:
        rb = (K + 1) // 2
        data = np.array(rows[:, :rb], np.uint8)
        if K % 2:
            data[:, -1] &= 0x0F  # quantcore keeps the padding nibble of an odd row zero
        symmetric = z is None
    else:
        data = np.array(rows[:, :K], np.uint8)
        symmetric = z is None and not np.any(data == 0)
        if symmetric:
            data = (data ^ np.uint8(0x80)).view(np.int8)
        elif z is None:
            z = np.full((N, nb), 128, np.uint8)
    cfg = QuantConfig(bits=bits, group_size=group, granularity=granularity, symmetric=symmetric,
                      scale_dtype=sdt, compute=compute)
    return data, scales, z, (N, K), cfg


def make_model(weights: MatMulNBitsWeights, bias: Optional[np.ndarray] = None,
               accuracy_level: int = 0, opset: int = 21) -> Any:
    """A one-node ONNX model: input ``A`` float32 ``(M, K)`` (M symbolic), output
    ``Y`` float32 ``(M, N)``, the weights as initializers.  Needs the ``onnx``
    package; run it with ``onnxruntime.InferenceSession(model.SerializeToString())``.
    ``accuracy_level=4`` lets ONNX Runtime quantize A to int8 blocks."""
    try:
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:  # pragma: no cover - exercised only without onnx
        raise ImportError("make_model needs the onnx package (pip install onnx)") from e
    if not isinstance(weights, MatMulNBitsWeights):
        raise TypeError(f"weights must be MatMulNBitsWeights, got {type(weights).__name__}")
    inputs = ["A", "B", "scales"]
    inits = [numpy_helper.from_array(weights.B, "B"),
             numpy_helper.from_array(weights.scales, "scales")]
    if weights.zero_points is not None:
        inputs.append("zero_points")
        inits.append(numpy_helper.from_array(weights.zero_points, "zero_points"))
    if bias is not None:
        b = np.asarray(bias, dtype=np.float32)
        if b.shape != (weights.N,):
            raise ValueError(f"bias must have shape ({weights.N},), got {b.shape}")
        inputs += [""] * (5 - len(inputs)) + ["bias"]
        inits.append(numpy_helper.from_array(b, "bias"))
    node = helper.make_node("MatMulNBits", inputs, ["Y"], domain="com.microsoft",
                            accuracy_level=int(accuracy_level), K=weights.K, N=weights.N,
                            bits=weights.bits, block_size=weights.block_size)
    graph = helper.make_graph(
        [node], "quantcore_matmulnbits",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", weights.K])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", weights.N])],
        initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid("com.microsoft", 1)])

