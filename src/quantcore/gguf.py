"""GGUF files: load Q8_0/Q4_0/Q4_1 and Q4_K/Q5_K/Q6_K tensors as QuantizedTensor (no
requantizing), save them.

``load(path)`` returns ``{name: QuantizedTensor | ndarray}`` in file order:

* Q8_0, Q4_0, Q4_1 -> QuantizedTensor with ``QuantConfig.q8_0()``/``q4_0()``/
  ``q4_1()``: the blocks are converted to quantcore's arrays (float16 ``d`` [and
  ``m``] become ``scales`` [and ``zero_points``]; 4-bit codes move from GGUF's
  block order, element j low and j+16 high nibble, to quantcore's element 2i
  low and 2i+1 high), so ``QuantizedLinear(load(p)[name])`` runs on exactly the
  numbers llama.cpp would use;
* Q4_K, Q5_K, Q6_K -> QuantizedTensor with ``QuantConfig.q4_k()``/``q5_k()``/
  ``q6_k()`` whose ``data`` are the file's super-blocks, byte for byte (no
  float32 expansion);
* F32, F16, F64 -> ndarray of that dtype; BF16 -> float32; I8..I64 -> the integer
  dtype;
* any other type (Q2_K, Q3_K, IQ*, ...) -> float32 through
  ``gguf.quants.dequantize`` (needs the ``gguf`` package).

Shapes are NumPy's: GGUF lists dimensions innermost first (``ne[0]`` is the
row length), so a GGUF ``[4096, 14336]`` tensor is ``(14336, 4096)`` here, and
blocks run along the last axis as quantcore's groups do.

``save(path, tensors)`` writes a GGUF v3 file with ``gguf.GGUFWriter`` (needs
the ``gguf`` package): QuantizedTensors in a GGUF block format become Q8_0/Q4_0/
Q4_1 tensors whose bytes are those of ``gguf.quants.quantize`` for the same
weights, K-quant ones Q4_K/Q5_K/Q6_K tensors holding their super-blocks as they
are; float/int arrays are stored as they are.

The reader is quantcore's own and needs only NumPy: it checks every length,
count and offset against the file size before reading, so a truncated or
corrupt file raises ``ValueError`` saying what is wrong and where (never a crash,
a hang or a huge allocation).  Little-endian files only (big-endian GGUF files
raise ValueError).
"""

from __future__ import annotations

import math
import os
import struct
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple, Union

import numpy as np

from . import _io
from ._arrays import from_torch
from .config import QuantConfig
from .tensor import QuantizedTensor

__all__ = ["load", "save", "load_metadata", "to_blocks", "from_blocks", "GGUF_TYPES"]


class _RawTensor(NamedTuple):
    """A tensor that ``save`` writes byte for byte: `data` (uint8, the file's
    bytes of the tensor), `ggml_type` (a GGML type id) and `shape` (NumPy order)."""
    data: np.ndarray
    ggml_type: int
    shape: Tuple[int, ...]

PathLike = Union[str, "os.PathLike[str]"]

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 8  # ggml uses 4; a few more tolerated, beyond that the header is corrupt
_MAX_DEPTH = 8  # nested metadata arrays

# GGML tensor types quantcore reads without the gguf package: id -> (name, block, bytes/block)
GGUF_TYPES: Dict[int, Tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    8: ("Q8_0", 32, 34), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4),
    27: ("I64", 1, 8), 28: ("F64", 1, 8), 30: ("BF16", 1, 2),
}
_PLAIN = {0: "<f4", 1: "<f2", 24: "i1", 25: "<i2", 26: "<i4", 27: "<i8", 28: "<f8"}
_BLOCK_FORMATS = {8: "q8_0", 2: "q4_0", 3: "q4_1", 12: "q4_k", 13: "q5_k", 14: "q6_k"}
_FORMAT_TYPES = {v: k for k, v in _BLOCK_FORMATS.items()}
_BLOCK = 32
_TYPE_SIZE = {"q8_0": 34, "q4_0": 18, "q4_1": 20}
_K_BLOCK = 256  # K-quant super-blocks: QuantizedTensor.data holds them verbatim
_K_TYPE_SIZE = {"q4_k": 144, "q5_k": 176, "q6_k": 210}

# metadata value types: id -> struct code (None: string / array)
_VALUE_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
              10: "<Q", 11: "<q", 12: "<d"}
_VALUE_NP = {0: "u1", 1: "i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "u1",
             10: "<u8", 11: "<i8", 12: "<f8"}


def _gguf():
    try:
        import gguf  # noqa: F401
        import gguf.quants  # noqa: F401
        return gguf
    except ImportError as e:
        raise ImportError("this needs the gguf package (pip install 'quantcore[gguf]' or "
                          "pip install gguf)") from e


# ---- blocks <-> quantcore arrays -------------------------------------------------------
def _format_of(qt: QuantizedTensor) -> Optional[str]:
    """The GGUF block format a QuantizedTensor's arrays are, or None."""
    c = qt.config
    if c.format is not None:
        return c.format
    if c.granularity == "group" and c.group_size == _BLOCK and c.scale_dtype == "float16":
        if c.bits == 8 and c.symmetric:
            return "q8_0"
        if c.bits == 4 and c.symmetric:
            return "q4_0"
    return None


def to_blocks(qt: QuantizedTensor) -> np.ndarray:
    """The GGUF block bytes of a Q8_0/Q4_0/Q4_1 QuantizedTensor: uint8 of shape
    ``shape[:-1] + (K/32 * type_size,)`` (34, 18 or 20 bytes per block of 32),
    exactly what ``gguf.quants.quantize`` produces for the same weights.  The
    last axis must be a multiple of 32.  Q4_K/Q5_K/Q6_K: a copy of ``qt.data``
    (K/256 super-blocks of 144, 176 or 210 bytes per row)."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"qt must be a QuantizedTensor, got {type(qt).__name__}")
    fmt = _format_of(qt)
    if fmt is None:
        raise ValueError(f"GGUF stores Q8_0, Q4_0 and Q4_1 (groups of 32, float16 scales) and "
                         f"the K-quants; this tensor is {qt.config!r}: quantize with "
                         f"QuantConfig.q8_0(), .q4_0(), .q4_1(), .q4_k(), .q5_k() or .q6_k()")
    if fmt in _K_TYPE_SIZE:
        return np.array(qt.data)
    k = qt.shape[-1]
    if k % _BLOCK:
        raise ValueError(f"GGUF block formats need the last axis to be a multiple of 32, got "
                         f"shape {qt.shape}")
    rows = math.prod(qt.shape[:-1])
    nb = k // _BLOCK
    stored = qt._storage()
    d = np.asarray(stored.scales).astype("<f2").view(np.uint8).reshape(rows, nb, 2)
    parts: List[np.ndarray] = [d]
    if fmt == "q4_1":
        parts.append(np.asarray(stored.zero_points).astype("<f2").view(np.uint8).reshape(rows, nb, 2))
    data = np.asarray(stored.data)
    if fmt == "q8_0":
        parts.append(data.view(np.uint8).reshape(rows, nb, _BLOCK))
    else:
        p = data.reshape(rows, nb, 16)       # byte i: element 2i (low), 2i+1 (high)
        lo = np.empty((rows, nb, 16), np.uint8)  # GGUF byte j: element j (low) ...
        hi = np.empty((rows, nb, 16), np.uint8)  # ... and element j + 16 (high)
        lo[..., 0::2], lo[..., 1::2] = p[..., :8] & 0x0F, p[..., :8] >> 4
        hi[..., 0::2], hi[..., 1::2] = p[..., 8:] & 0x0F, p[..., 8:] >> 4
        parts.append(lo | (hi << 4))
    out = np.concatenate(parts, axis=-1)
    return out.reshape(qt.shape[:-1] + (nb * _TYPE_SIZE[fmt],))


def from_blocks(blocks: Any, fmt: str, shape: Iterable[int], compute: str = "auto",
                name: str = "blocks") -> QuantizedTensor:
    """A QuantizedTensor of `shape` (NumPy order, last axis a multiple of 32)
    from GGUF block bytes of format ``"q8_0"``, ``"q4_0"`` or ``"q4_1"``; the
    inverse of ``to_blocks``.  Scales that are not finite and Q8_0 codes of
    -128 (outside quantcore's int8 range) raise ValueError.  ``"q4_k"``,
    ``"q5_k"``, ``"q6_k"``: the super-blocks become the tensor's ``data``
    unchanged (last axis a multiple of 256)."""
    if fmt not in _TYPE_SIZE and fmt not in _K_TYPE_SIZE:
        raise ValueError(f"fmt must be one of 'q8_0', 'q4_0', 'q4_1', 'q4_k', 'q5_k', 'q6_k', "
                         f"got {fmt!r}")
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"{name}: shape must have ndim >= 1 and positive sizes, got {shape}")
    if fmt in _K_TYPE_SIZE:
        return _from_k_blocks(blocks, fmt, shape, compute, name)
    k = shape[-1]
    if k % _BLOCK:
        raise ValueError(f"{name}: {fmt.upper()} rows must be a multiple of 32 long, got {k}")
    rows = math.prod(shape[:-1])
    nb = k // _BLOCK
    ts = _TYPE_SIZE[fmt]
    b = np.asarray(blocks)
    if b.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 bytes, got {b.dtype}")
    if b.size != rows * nb * ts:
        raise ValueError(f"{name}: {fmt.upper()} of shape {shape} needs {rows * nb * ts} bytes, "
                         f"got {b.size}")
    b = b.reshape(rows, nb, ts)
    scales = np.ascontiguousarray(b[..., 0:2]).view("<f2").astype(np.float16).reshape(rows, nb)
    zeros = None
    q0 = 2
    if fmt == "q4_1":
        zeros = np.ascontiguousarray(b[..., 2:4]).view("<f2").astype(np.float16).reshape(rows, nb)
        q0 = 4
    if fmt == "q8_0":
        data = np.ascontiguousarray(b[..., 2:]).view(np.int8).reshape(rows, k)
        if np.any(data == -128):
            r, c = np.argwhere(data == -128)[0]
            raise ValueError(f"{name}: Q8_0 code -128 at row {r}, column {c}; quantcore's int8 "
                             f"codes lie in [-127, 127] (as ggml's quantizer writes them)")
    else:
        qs = b[..., q0:]
        lo, hi = qs & 0x0F, qs >> 4
        data = np.empty((rows, nb, 16), np.uint8)
        data[..., :8] = lo[..., 0::2] | (lo[..., 1::2] << 4)
        data[..., 8:] = hi[..., 0::2] | (hi[..., 1::2] << 4)
        data = data.reshape(rows, k // 2)
    for what, arr in (("scales (d)", scales), ("minima (m)", zeros)):
        if arr is not None and not np.all(np.isfinite(arr)):
            r, c = np.argwhere(~np.isfinite(arr))[0]
            raise ValueError(f"{name}: {fmt.upper()} block {c} of row {r} has a non-finite "
                             f"{what}: {arr[r, c]}")
    cfg = getattr(QuantConfig, fmt)(compute=compute)
    return QuantizedTensor.from_arrays(data, scales, zeros, shape, cfg)


def _from_k_blocks(blocks: Any, fmt: str, shape: Tuple[int, ...], compute: str,
                   name: str) -> QuantizedTensor:
    k = shape[-1]
    if k % _K_BLOCK:
        raise ValueError(f"{name}: {fmt.upper()} rows must be a multiple of 256 long, got {k}")
    rows = math.prod(shape[:-1])
    rb = k // _K_BLOCK * _K_TYPE_SIZE[fmt]
    b = np.asarray(blocks)
    if b.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 bytes, got {b.dtype}")
    if b.size != rows * rb:
        raise ValueError(f"{name}: {fmt.upper()} of shape {shape} needs {rows * rb} bytes, "
                         f"got {b.size}")
    cfg = getattr(QuantConfig, fmt)(compute=compute)
    try:
        return QuantizedTensor.from_arrays(b.reshape(rows, rb), None, None, shape, cfg)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


# ---- the reader -------------------------------------------------------------------------
class _Header:
    """A bounds-checked walk over a GGUF header held in a memoryview."""

    def __init__(self, mv: memoryview, path: str):
        self.mv, self.pos, self.size, self.path = mv, 0, len(mv), path

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{self.path}: corrupt or truncated GGUF file: {what} "
                          f"(at byte {self.pos} of {self.size})")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{what} needs {n} bytes, {self.size - self.pos} left")

    def scalar(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        v = struct.unpack_from(fmt, self.mv, self.pos)[0]
        self.pos += n
        return v

    def string(self, what: str) -> str:
        n = self.scalar("<Q", f"length of {what}")
        self.need(n, what)
        raw = bytes(self.mv[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _VALUE_FMT:
            v = self.scalar(_VALUE_FMT[vtype], what)
            return bool(v) if vtype == 7 else v
        if vtype == 8:
            return self.string(what)
        if vtype == 9:
            if depth >= _MAX_DEPTH:
                raise self.fail(f"{what}: arrays nested deeper than {_MAX_DEPTH}")
            itype = self.scalar("<I", f"element type of {what}")
            count = self.scalar("<Q", f"length of {what}")
            if itype in _VALUE_FMT:
                n = struct.calcsize(_VALUE_FMT[itype])
                self.need(count * n, f"{count} elements of {what}")
                a = np.frombuffer(self.mv, dtype=_VALUE_NP[itype], count=count, offset=self.pos)
                self.pos += count * n
                a = a.astype(a.dtype.newbyteorder("="))
                return a.astype(bool) if itype == 7 else a
            if itype not in (8, 9):
                raise self.fail(f"{what}: unknown array element type {itype}")
            self.need(count * 8, f"{count} elements of {what}")  # each at least 8 bytes
            return [self.value(itype, f"{what}[{i}]", depth + 1) for i in range(count)]
        raise self.fail(f"{what}: unknown metadata value type {vtype}")


class _TensorInfo:
    __slots__ = ("name", "dims", "type", "offset", "nbytes")

    def __init__(self, name, dims, ttype, offset, nbytes):
        self.name, self.dims, self.type, self.offset, self.nbytes = name, dims, ttype, offset, nbytes

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(reversed(self.dims))


def _type_sizes(ttype: int) -> Optional[Tuple[str, int, int]]:
    if ttype in GGUF_TYPES:
        return GGUF_TYPES[ttype]
    try:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
        t = GGMLQuantizationType(ttype)
        bs, ts = GGML_QUANT_SIZES[t]
        return (t.name, bs, ts)
    except Exception:  # gguf absent or the id unknown to it
        return None


def _parse(mv: memoryview, path: str):
    h = _Header(mv, path)
    if h.size < 24:
        raise h.fail("shorter than a GGUF header (24 bytes)")
    if bytes(mv[:4]) != _MAGIC:
        raise ValueError(f"{path}: not a GGUF file (magic {bytes(mv[:4])!r}, expected b'GGUF')")
    h.pos = 4
    version = h.scalar("<I", "version")
    if version & 0xFFFF == 0 and version != 0:
        raise ValueError(f"{path}: a big-endian GGUF file; quantcore reads little-endian files only")
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    n_tensors = h.scalar("<Q", "tensor count")
    n_kv = h.scalar("<Q", "metadata count")
    # every metadata entry takes >= 8+4+1 bytes and every tensor info >= 8+4+8+4+8
    if n_kv * 13 > h.size or n_tensors * 32 > h.size:
        raise h.fail(f"{n_tensors} tensors and {n_kv} metadata entries cannot fit")
    meta: Dict[str, Any] = {}
    for i in range(n_kv):
        key = h.string(f"key of metadata entry {i}")
        if key in meta:
            raise h.fail(f"metadata key {key!r} appears twice")
        vtype = h.scalar("<I", f"type of {key!r}")
        meta[key] = h.value(vtype, f"metadata {key!r}")
    alignment = meta.get("general.alignment", _DEFAULT_ALIGNMENT)
    if (isinstance(alignment, bool) or not isinstance(alignment, int) or alignment < 1
            or alignment & (alignment - 1)):
        raise h.fail(f"general.alignment must be a power of two, got {alignment!r}")
    infos: List[_TensorInfo] = []
    names = set()
    for i in range(n_tensors):
        name = h.string(f"name of tensor {i}")
        if name in names:
            raise h.fail(f"tensor {name!r} appears twice")
        names.add(name)
        nd = h.scalar("<I", f"dimension count of {name!r}")
        if not 1 <= nd <= _MAX_DIMS:
            raise h.fail(f"tensor {name!r} has {nd} dimensions (1..{_MAX_DIMS} expected)")
        dims = [h.scalar("<Q", f"dimensions of {name!r}") for _ in range(nd)]
        ttype = h.scalar("<I", f"type of {name!r}")
        offset = h.scalar("<Q", f"data offset of {name!r}")
        sizes = _type_sizes(ttype)
        if sizes is None:
            raise h.fail(f"tensor {name!r} has unknown type id {ttype}"
                         + ("" if _has_gguf() else " (install gguf for types beyond "
                            "F32/F16/BF16/F64/I8-I64/Q8_0/Q4_0/Q4_1)"))
        tname, bs, ts = sizes
        if any(d == 0 for d in dims):
            raise h.fail(f"tensor {name!r} has a zero dimension: {dims}")
        if dims[0] % bs:
            raise h.fail(f"tensor {name!r} ({tname}) has rows of {dims[0]}, not a multiple of "
                         f"its block of {bs}")
        n_elem = math.prod(dims)
        nbytes = n_elem // bs * ts
        if offset % alignment:
            raise h.fail(f"tensor {name!r}: data offset {offset} is not a multiple of the "
                         f"alignment {alignment}")
        infos.append(_TensorInfo(name, dims, ttype, offset, nbytes))
    data_start = -(-h.pos // alignment) * alignment
    for t in infos:
        end = data_start + t.offset + t.nbytes
        if end > h.size:
            raise ValueError(f"{path}: corrupt or truncated GGUF file: tensor {t.name!r} "
                             f"({GGUF_TYPES.get(t.type, ('type %d' % t.type,))[0]}, shape "
                             f"{t.shape}) lies at bytes {data_start + t.offset}..{end} but the "
                             f"file has {h.size} bytes")
    return meta, infos, data_start


def _has_gguf() -> bool:
    try:
        import gguf  # noqa: F401
        return True
    except ImportError:
        return False


def _open(path: PathLike):
    p = os.fspath(path)
    if not isinstance(p, str):
        p = os.fsdecode(p)
    with _io.open_regular(p) as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ValueError(f"{p}: empty file, not a GGUF file")
        return p, np.memmap(f, dtype=np.uint8, mode="r")


def load_metadata(path: PathLike) -> Dict[str, Any]:
    """The metadata key/value pairs of a GGUF file (numeric arrays as ndarrays,
    string arrays as lists of str)."""
    p, mm = _open(path)
    with memoryview(mm) as mv:
        return _parse(mv, p)[0]


def load(path: PathLike, names: Optional[Iterable[str]] = None,
         compute: str = "auto") -> Dict[str, Union[QuantizedTensor, np.ndarray]]:
    """Read the tensors of a GGUF file: ``{name: QuantizedTensor}`` for Q8_0, Q4_0,
    Q4_1, Q4_K, Q5_K and Q6_K tensors (converted, not requantized; `compute` goes
    into their configs), ``{name: ndarray}`` for the others (see the module
    docstring).

    `names` picks some tensors (unknown names raise KeyError).  A truncated or
    corrupt file raises ValueError.  The arrays are copies: the file is closed
    when this returns."""
    p, mm = _open(path)
    with memoryview(mm) as mv:
        meta, infos, start = _parse(mv, p)
        by_name = {t.name: t for t in infos}
        if names is not None:
            names = list(names)
            missing = [n for n in names if n not in by_name]
            if missing:
                raise KeyError(f"{p}: no tensors named {missing}; the file has "
                               f"{list(by_name)[:10]}{'...' if len(by_name) > 10 else ''}")
            infos = [by_name[n] for n in names]
    # the tensors are copied out of the file (types that are dequantized grow to
    # float32): refuse at once what cannot fit
    _io.check_fits(sum(4 * math.prod(t.dims) if t.type not in GGUF_TYPES or t.type == 30
                       else t.nbytes for t in infos), p, "the tensors")
    out: Dict[str, Union[QuantizedTensor, np.ndarray]] = {}
    for t in infos:
        raw = np.asarray(mm[start + t.offset:start + t.offset + t.nbytes])
        try:
            out[t.name] = _convert(t, raw, compute, p)
        except MemoryError:
            raise ValueError(f"{p}: tensor {t.name!r} ({t.nbytes:,} bytes in the file) needs "
                             f"more memory than this machine could allocate") from None
    del mm
    return out


def _convert(t: _TensorInfo, raw: np.ndarray, compute: str, path: str):
    shape = t.shape
    what = f"{path}: tensor {t.name!r}"
    if t.type in _BLOCK_FORMATS:
        return from_blocks(raw, _BLOCK_FORMATS[t.type], shape, compute=compute, name=what)
    if t.type in _PLAIN:
        dt = np.dtype(_PLAIN[t.type])
        return raw.view(dt).astype(dt.newbyteorder("="), copy=True).reshape(shape)
    if t.type == 30:  # BF16: the high half of a float32
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    gguf = _gguf()
    from gguf.constants import GGMLQuantizationType
    qtype = GGMLQuantizationType(t.type)
    _, bs, ts = _type_sizes(t.type)  # type: ignore[misc]
    byte_shape = shape[:-1] + (shape[-1] // bs * ts,)
    try:
        return np.asarray(gguf.quants.dequantize(np.array(raw).reshape(byte_shape), qtype),
                          dtype=np.float32).reshape(shape)
    except NotImplementedError:
        raise ValueError(f"{what}: type {qtype.name} cannot be read (gguf {getattr(gguf, '__version__', '')} "
                         f"has no dequantizer for it)") from None


# ---- the writer -------------------------------------------------------------------------
def save(path: PathLike, tensors: Mapping[str, Any], metadata: Optional[Mapping[str, Any]] = None,
         arch: str = "quantcore") -> None:
    """Write `tensors` (``{name: QuantizedTensor | ndarray}``) to a GGUF v3 file.

    QuantizedTensors must be in a GGUF block format (``QuantConfig.q8_0()``,
    ``.q4_0()``, ``.q4_1()``, or the same parameters) with a last axis that is
    a multiple of 32; they are written as Q8_0/Q4_0/Q4_1 blocks, byte for byte
    what ``gguf.quants.quantize`` gives for the same weights.  K-quant tensors
    (``QuantConfig.q4_k()``, ``.q5_k()``, ``.q6_k()``) are written as Q4_K/Q5_K/
    Q6_K tensors holding their super-blocks unchanged.  Arrays of
    float16/32/64 and int8/16/32/64 are written as F16/F32/F64/I8..I64.

    `metadata`: extra key/value pairs; a value is a str, a bool, an int (UINT32
    when it fits in [0, 2**32), else INT64), a float (FLOAT32), a non-empty list
    of one of those kinds (ints as INT32, or INT64 when one does not fit), or
    ``(value, gguf.GGUFValueType.X)`` for an exact type (``(list,
    GGUFValueType.ARRAY, GGUFValueType.X)`` for an array of X).  A
    ``general.alignment`` entry also sets the alignment of the tensor data.
    ``general.architecture`` is `arch`.  Needs the ``gguf`` package.

    Every tensor and every metadata value is checked before any file is
    touched: a value its type cannot hold (an int outside UINT32 given as
    ``(v, UINT32)``, an int typed STRING, a float beyond FLOAT32, a mixed
    list) raises ValueError or TypeError naming the key.  The file is then
    written as :func:`quantcore.save` writes: to a temporary file beside
    `path`, renamed over it only once complete (the same rules for what
    `path` may be)."""
    gguf = _gguf()
    from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of name -> QuantizedTensor or array, "
                        f"got {type(tensors).__name__}")
    if not tensors:
        raise ValueError("tensors is empty: nothing to save")
    prepared: List[Tuple[str, np.ndarray, Any]] = []
    for name, t in tensors.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"tensor names must be non-empty str, got {name!r}")
        _check_text(name, "tensor name")
        if isinstance(t, _RawTensor):
            qt = GGMLQuantizationType(t.ggml_type)
            bs, ts = gguf.constants.GGML_QUANT_SIZES[qt]
            raw = np.ascontiguousarray(t.data, dtype=np.uint8)
            shape = tuple(t.shape)
            if not shape or shape[-1] % bs or raw.size != math.prod(shape) // bs * ts:
                raise ValueError(f"tensor {name!r}: {raw.size} bytes do not hold a {qt.name} "
                                 f"tensor of shape {shape}")
            prepared.append((name, raw.reshape(shape[:-1] + (shape[-1] // bs * ts,)), qt))
        elif isinstance(t, QuantizedTensor):
            fmt = _format_of(t)
            if fmt is None:
                raise ValueError(f"tensor {name!r}: GGUF stores Q8_0, Q4_0 and Q4_1 (groups of "
                                 f"32, float16 scales) and the K-quants; this tensor is "
                                 f"{t.config!r}: quantize with QuantConfig.q8_0(), .q4_0(), "
                                 f".q4_1(), .q4_k(), .q5_k() or .q6_k()")
            if t.shape[-1] % _BLOCK:
                raise ValueError(f"tensor {name!r}: GGUF block formats need the last axis to "
                                 f"be a multiple of 32, got shape {t.shape}")
            prepared.append((name, to_blocks(t), getattr(GGMLQuantizationType, fmt.upper())))
        else:
            a = from_torch(t)
            if not isinstance(a, np.ndarray):
                raise TypeError(f"tensor {name!r} must be a QuantizedTensor or a numpy array, "
                                f"got {type(t).__name__}")
            if a.dtype.str.lstrip("<>=|") not in ("f2", "f4", "f8", "i1", "i2", "i4", "i8"):
                raise TypeError(f"tensor {name!r}: GGUF arrays are float16/32/64 or int8/16/32/64, "
                                f"got {a.dtype}")
            if a.ndim < 1 or a.size == 0:
                raise ValueError(f"tensor {name!r} must be a non-empty array of ndim >= 1, got "
                                 f"shape {a.shape}")
            prepared.append((name, np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("=")), None))
    if not isinstance(arch, str) or not arch:
        raise TypeError(f"arch must be a non-empty str, got {arch!r}")
    _check_text(arch, "arch")
    entries = _metadata_entries(GGUFValueType, metadata)
    alignment = _DEFAULT_ALIGNMENT
    for key, val, _, _ in entries:
        if key == "general.alignment":
            if not _is_int(val) or val < 1 or val & (val - 1):
                raise ValueError(f"metadata 'general.alignment' must be a power of two, got {val!r}")
            alignment = val
    p = os.fspath(path)
    with _io.replacing(p) as tmp:
        w = GGUFWriter(tmp, arch)
        w.data_alignment = alignment
        try:
            w.add_quantization_version(2)
            for key, val, vtype, sub in entries:
                w.add_key_value(key, val, vtype, sub_type=sub)
            for name, arr, qtype in prepared:
                if qtype is None:
                    w.add_tensor(name, arr)
                else:
                    w.add_tensor(name, arr, raw_shape=arr.shape, raw_dtype=qtype)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
        finally:
            w.close()


_INT_RANGES = {"UINT8": (0, 2**8 - 1), "INT8": (-2**7, 2**7 - 1),
               "UINT16": (0, 2**16 - 1), "INT16": (-2**15, 2**15 - 1),
               "UINT32": (0, 2**32 - 1), "INT32": (-2**31, 2**31 - 1),
               "UINT64": (0, 2**64 - 1), "INT64": (-2**63, 2**63 - 1)}
_FLOAT32_MAX = 3.4028234663852886e38


def _check_text(text: Any, what: str) -> None:
    if isinstance(text, str):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{what} {text!r} is not valid UTF-8 text: {e.reason}") from None


def _plain(v: Any) -> Any:
    """NumPy scalars and arrays as Python ones (lists for arrays)."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _element_type(VT, items: List[Any], where: str, widen: bool):
    """The GGUF type of a list's elements: the gguf package's rule (str or bytes
    STRING, float FLOAT32, bool BOOL, int INT32, list ARRAY), every element of
    one kind; `widen`: ints that do not all fit INT32 become INT64."""
    if not items:
        raise ValueError(f"{where}: an empty array has no element type")
    kinds: List[Tuple[Any, Any]] = [((str, bytes, bytearray), VT.STRING), (bool, VT.BOOL),
                                    (float, VT.FLOAT32), (int, VT.INT32), (list, VT.ARRAY)]
    for cls, vt in kinds:
        if isinstance(items[0], cls) and not (cls is int and isinstance(items[0], bool)):
            break
    else:
        raise TypeError(f"{where}[0]: unsupported element type {type(items[0]).__name__} "
                        f"(str, bool, int, float or list)")
    for i, x in enumerate(items):
        if not isinstance(x, cls) or (cls is int and isinstance(x, bool)):
            raise TypeError(f"{where}[{i}]: {type(x).__name__} in an array of "
                            f"{type(items[0]).__name__}: GGUF arrays hold one type")
    if vt == VT.INT32 and widen:
        lo, hi = _INT_RANGES["INT32"]
        if not all(lo <= x <= hi for x in items):
            vt = VT.INT64
    return vt


def _check_value(VT, where: str, val: Any, vt, sub=None) -> None:
    """Raise TypeError/ValueError naming `where` unless `val` packs as `vt`."""
    name = getattr(vt, "name", str(vt))
    if name in _INT_RANGES:
        if not _is_int(val):
            raise TypeError(f"{where}: {name} needs an int, got {type(val).__name__} {val!r}"[:300])
        lo, hi = _INT_RANGES[name]
        if not lo <= val <= hi:
            raise ValueError(f"{where}: {val} does not fit {name} [{lo}, {hi}]"[:300])
    elif vt in (VT.FLOAT32, VT.FLOAT64):
        if isinstance(val, bool) or not isinstance(val, (int, float)):
            raise TypeError(f"{where}: {name} needs a float, got {type(val).__name__} {val!r}"[:300])
        try:
            f = float(val)
        except OverflowError:
            raise ValueError(f"{where}: {val} does not fit {name}"[:300]) from None
        try:
            struct.pack("<f" if vt == VT.FLOAT32 else "<d", f)
        except OverflowError:
            raise ValueError(f"{where}: {val!r} does not fit FLOAT32 (largest {_FLOAT32_MAX:.7g}); "
                             f"give (value, GGUFValueType.FLOAT64)") from None
    elif vt == VT.BOOL:
        if not isinstance(val, bool):
            raise TypeError(f"{where}: BOOL needs True or False, got {type(val).__name__} {val!r}"[:300])
    elif vt == VT.STRING:
        if not isinstance(val, (str, bytes, bytearray)):
            raise TypeError(f"{where}: STRING needs a str, got {type(val).__name__} {val!r}"[:300])
        _check_text(val, where)
    elif vt == VT.ARRAY:
        if not isinstance(val, list):
            raise TypeError(f"{where}: ARRAY needs a list, got {type(val).__name__}")
        if sub is None:
            sub = _element_type(VT, val, where, widen=False)
        for i, x in enumerate(val):
            _check_value(VT, f"{where}[{i}]", x, sub)
    else:
        raise ValueError(f"{where}: unknown GGUF value type {vt!r}")


def _metadata_entries(VT, metadata: Optional[Mapping[str, Any]]):
    """[(key, value, type, element type)] for GGUFWriter.add_key_value, every
    value checked against its type (nothing is written here)."""
    if metadata is None:
        return []
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping of str -> value, got {type(metadata).__name__}")
    out = []
    for key, val in metadata.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"metadata keys must be non-empty str, got {key!r}")
        _check_text(key, "metadata key")
        where = f"metadata {key!r}"
        sub = None
        if isinstance(val, tuple) and len(val) in (2, 3) and isinstance(val[1], VT) and \
                (len(val) == 2 or (val[1] == VT.ARRAY and isinstance(val[2], VT))):
            vt = val[1]
            v = _plain(val[0])
            if vt == VT.ARRAY:
                if not isinstance(v, list):
                    raise TypeError(f"{where}: ARRAY needs a list, got {type(val[0]).__name__}")
                sub = val[2] if len(val) == 3 else _element_type(VT, v, where, widen=False)
        elif isinstance(val, (bool, np.bool_)):
            v, vt = bool(val), VT.BOOL
        elif isinstance(val, (int, np.integer)):
            v = int(val)
            vt = VT.UINT32 if 0 <= v < 2 ** 32 else VT.INT64
        elif isinstance(val, (float, np.floating)):
            v, vt = float(val), VT.FLOAT32
        elif isinstance(val, str):
            v, vt = val, VT.STRING
        elif isinstance(val, (list, np.ndarray)):
            v, vt = _plain(val), VT.ARRAY
            sub = _element_type(VT, v, where, widen=True)
        else:
            raise TypeError(f"{where}: unsupported value type {type(val).__name__}")
        _check_value(VT, where, v, vt, sub)
        out.append((key, v, vt, sub))
    return out
