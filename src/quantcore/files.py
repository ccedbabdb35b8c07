"""safetensors files: ``save(path, tensors)`` and ``load(path)``.

Layout of a quantcore file (any safetensors reader opens it):

* a QuantizedTensor ``name`` is stored as ordinary tensors ``name.qdata``
  (packed codes, ``qt.data``: I8 or U8), ``name.scales`` (F32 or F16,
  ``qt.scales``) and, for asymmetric formats, ``name.zeros``
  (``qt.zero_points``: U8, or F16 minima for Q4_1); a K-quant tensor (Q4_K,
  Q5_K, Q6_K) is ``name.qdata`` alone, ggml's super-blocks (U8);
* a plain array is stored as itself under its own name;
* ``__metadata__["quantcore"]`` is JSON: ``{"version": 1, "order": [names],
  "tensors": {name: {"shape": [...], "dtype": "float32", "config": {...}}},
  "metrics": {...} (optional)}``, the configs as ``QuantConfig.to_dict()``.

Reading never trusts the file: the 8-byte header length is checked against
the file size before the header is read (and capped at 100 MiB), the JSON is
parsed strictly (duplicate keys, unknown keys, wrong types rejected), every
tensor's dtype, shape and offsets must agree and tile the data area exactly,
the parts of each quantized tensor must have the dtypes and shapes its config
implies, and tensors are rebuilt through ``QuantizedTensor.from_arrays`` (which
checks the values).  Anything wrong raises ValueError saying what and where; a
missing file raises FileNotFoundError.  Only regular files are opened (a FIFO,
device or directory is a ValueError, never a hang), no allocation exceeds the
file's size, and a file whose tensors cannot fit in the machine's memory is
refused before any is read.

Writing goes through quantcore._io.replacing: a temporary file beside the
target, synced and renamed over it once complete (docs/hardening.md).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, BinaryIO, Dict, List, Optional, Tuple

import numpy as np

from . import _ext, _io
from ._arrays import from_torch
from .config import QuantConfig
from .model import ModelCompressionMetrics, QuantizedModel
from .tensor import QuantizedTensor

if TYPE_CHECKING:  # pragma: no cover (typing.TypeGuard is 3.10+; only mypy reads it)
    from typing_extensions import TypeGuard

__all__ = ["save", "load", "read_header", "FORMAT_VERSION"]

FORMAT_VERSION = 1
META_KEY = "quantcore"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
_MAX_NDIM = 64
_MAX_DIM = 1 << 48
_MAX_INT_DIGITS = 100  # far beyond any real count or offset (2**64 has 20 digits)
PARTS = ("qdata", "scales", "zeros")

# safetensors dtype -> (itemsize, numpy dtype or None when NumPy has none)
_DTYPES: Dict[str, Tuple[int, Optional[np.dtype]]] = {
    "F64": (8, np.dtype("<f8")), "F32": (4, np.dtype("<f4")), "F16": (2, np.dtype("<f2")),
    "BF16": (2, None), "I64": (8, np.dtype("<i8")), "U64": (8, np.dtype("<u8")),
    "I32": (4, np.dtype("<i4")), "U32": (4, np.dtype("<u4")), "I16": (2, np.dtype("<i2")),
    "U16": (2, np.dtype("<u2")), "I8": (1, np.dtype("i1")), "U8": (1, np.dtype("u1")),
    "BOOL": (1, np.dtype("?")), "F8_E4M3": (1, None), "F8_E5M2": (1, None),
    "C64": (8, np.dtype("<c8")),
}
_NP_TO_ST = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64",
             "uint64": "U64", "int32": "I32", "uint32": "U32", "int16": "I16", "uint16": "U16",
             "int8": "I8", "uint8": "U8", "bool": "BOOL", "complex64": "C64"}


class _Entry:
    """One tensor of the header, validated."""
    __slots__ = ("name", "dtype", "shape", "begin", "end")

    def __init__(self, name: str, dtype: str, shape: Tuple[int, ...], begin: int, end: int):
        self.name, self.dtype, self.shape, self.begin, self.end = name, dtype, shape, begin, end


def _strict_json(text: str, what: str) -> Any:
    def pairs(items):
        d = {}
        for k, v in items:
            if k in d:
                raise ValueError(f"{what}: duplicate key {k!r}")
            d[k] = v
        return d

    def constant(c):
        raise ValueError(f"{what}: {c} is not allowed")

    def integer(digits):
        if len(digits.lstrip("-")) > _MAX_INT_DIGITS:
            raise ValueError(f"{what}: an integer of {len(digits.lstrip('-'))} digits; "
                             f"integers here have at most {_MAX_INT_DIGITS}")
        return int(digits)

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant,
                          parse_int=integer)
    except RecursionError:
        raise ValueError(f"{what}: JSON nested too deeply") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} is not valid JSON: {e}") from None


def _int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


class Header:
    """The validated header of a safetensors file: ``entries`` (name -> _Entry,
    in the header's order), ``metadata`` (str -> str), ``data_start`` and
    ``file_size``."""

    def __init__(self, path: str, f: Optional[BinaryIO] = None) -> None:
        self.path = path
        if f is None:
            with _io.open_regular(path) as f:
                self._read(f)
        else:
            self._read(f)

    def _read(self, f: BinaryIO) -> None:
        path = self.path
        f.seek(0)
        self.file_size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: truncated: {self.file_size} bytes, a safetensors file "
                             f"starts with an 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > self.file_size - 8:
            raise ValueError(f"{path}: corrupt or truncated: the header claims {n} bytes, "
                             f"the file has {self.file_size - 8} after the length")
        if n > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: header of {n} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
        if n < 2:
            raise ValueError(f"{path}: corrupt: header length {n} is too small for a JSON object")
        raw = f.read(n)
        if len(raw) != n:
            raise ValueError(f"{path}: truncated while reading the header")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: the header is not UTF-8: {e}") from None
        if not text.startswith("{"):
            raise ValueError(f"{path}: not a safetensors file (the header does not start with '{{')")
        obj = _strict_json(text, f"{path}: header")
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: the header must be a JSON object")
        self.data_start = 8 + n
        buffer_len = self.file_size - self.data_start
        meta = obj.pop("__metadata__", None)
        if meta is None:
            meta = {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ValueError(f"{path}: __metadata__ must map str to str")
        self.metadata: Dict[str, str] = meta
        self.entries: Dict[str, _Entry] = {}
        for name, spec in obj.items():
            self.entries[name] = self._entry(name, spec, buffer_len)
        # the tensors must tile the data area exactly, as the safetensors format requires
        pos = 0
        for ent in sorted(self.entries.values(), key=lambda x: (x.begin, x.end)):
            if ent.begin != pos:
                what = "overlaps another tensor" if ent.begin < pos else f"leaves a gap at byte {pos}"
                raise ValueError(f"{path}: corrupt: tensor {ent.name!r} at offset {ent.begin} {what}")
            pos = ent.end
        if pos != buffer_len:
            raise ValueError(f"{path}: corrupt or truncated: the tensors cover {pos} bytes of "
                             f"data, the file holds {buffer_len}")

    def _entry(self, name: str, spec: Any, buffer_len: int) -> _Entry:
        where = f"{self.path}: tensor {name!r}"
        if not name:
            raise ValueError(f"{self.path}: a tensor has an empty name")
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: entry must be an object")
        keys = set(spec)
        if keys != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"{where}: entry must have the keys dtype, shape, data_offsets; "
                             f"got {sorted(keys)}")
        dtype, shape, offs = spec["dtype"], spec["shape"], spec["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise ValueError(f"{where}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or len(shape) > _MAX_NDIM or \
                not all(_int(s) and 0 <= s <= _MAX_DIM for s in shape):
            raise ValueError(f"{where}: shape must be a list of at most {_MAX_NDIM} "
                             f"ints in [0, 2^48], got {shape!r}"[:300])
        if not isinstance(offs, list) or len(offs) != 2 or not all(_int(o) for o in offs):
            raise ValueError(f"{where}: data_offsets must be [begin, end] ints, got {offs!r}"[:300])
        begin, end = offs
        if not 0 <= begin <= end <= buffer_len:
            raise ValueError(f"{where}: data_offsets [{begin}, {end}] lie outside the "
                             f"{buffer_len} bytes of data (corrupt or truncated file)")
        nbytes = math.prod(shape) * _DTYPES[dtype][0]
        if end - begin != nbytes:
            raise ValueError(f"{where}: {dtype} of shape {tuple(shape)} needs {nbytes} bytes, "
                             f"data_offsets span {end - begin}")
        return _Entry(name, dtype, tuple(shape), begin, end)

    def read(self, f, e: _Entry) -> np.ndarray:
        """The tensor `e` as a new, writeable NumPy array (BF16 widened to float32)."""
        size, dt = _DTYPES[e.dtype]
        if dt is None and e.dtype != "BF16":
            raise ValueError(f"{self.path}: tensor {e.name!r} has dtype {e.dtype}, which NumPy "
                             f"cannot hold")
        try:
            buf = np.empty(e.end - e.begin, np.uint8)
        except MemoryError:
            raise ValueError(f"{self.path}: tensor {e.name!r} needs {e.end - e.begin:,} bytes of "
                             f"memory, more than this machine could allocate") from None
        f.seek(self.data_start + e.begin)
        got = f.readinto(buf.data) if buf.size else 0
        if got != buf.size:
            raise ValueError(f"{self.path}: truncated while reading tensor {e.name!r}")
        if e.dtype == "BF16":
            wide = np.zeros(buf.size // 2, np.dtype("<u4"))
            wide[:] = buf.view("<u2")
            arr = (wide << 16).view("<f4")
        elif e.dtype == "BOOL":
            arr = buf != 0
        else:
            assert dt is not None  # only BF16 and the F8 kinds lack a NumPy dtype, rejected above
            arr = buf.view(dt)
        try:
            arr = arr.reshape(e.shape)
        except ValueError as err:  # a zero-size shape NumPy cannot index (dims overflow)
            raise ValueError(f"{self.path}: tensor {e.name!r}: shape {e.shape}: {err}") from None
        if arr.dtype.byteorder == ">":  # not on little-endian hosts
            arr = arr.astype(arr.dtype.newbyteorder("="))
        return arr


def read_header(path: Any) -> Header:
    """Read and validate the header of a safetensors file (no tensor data is read).
    Errors as for :func:`load`."""
    return Header(os.fspath(path))


# ---- the quantcore layout --------------------------------------------------------------

def _expected_parts(shape: Tuple[int, ...], cfg: QuantConfig) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """part -> (safetensors dtype, shape) for a QuantizedTensor of `shape` and `cfg`."""
    k = shape[-1]
    lead = shape[:-1]
    if cfg.ktype is not None:  # K-quants: ggml's super-blocks hold scales and mins too
        rb = _ext.kquant_row_bytes(cfg.ktype, k)
        if rb == 0:
            raise ValueError(f"shape {shape}: format {cfg.format!r} needs a last axis that is a "
                             f"multiple of 256")
        return {"qdata": ("U8", lead + (rb,))}
    kind = cfg.kind
    rb = _ext.row_bytes(kind, k)
    if cfg.granularity == "tensor":
        pshape: Tuple[int, ...] = ()
    elif cfg.granularity == "channel":
        pshape = lead
    else:
        assert cfg.group_size is not None  # QuantConfig: granularity "group" always has one
        pshape = lead + (_ext.num_groups(k, cfg.group_size),)
    sdt = "F16" if cfg.scale_dtype == "float16" else "F32"
    parts = {"qdata": ("I8" if kind == _ext.KIND_SYM8 else "U8", lead + (rb,)),
             "scales": (sdt, pshape)}
    if kind in (_ext.KIND_ASYM8, _ext.KIND_ASYM4):
        parts["zeros"] = ("U8", pshape)
    elif kind == _ext.KIND_MIN4:
        parts["zeros"] = (sdt, pshape)
    return parts


class Layout:
    """What a file holds once the quantcore metadata is checked against the
    header: ``order`` of names, ``quantized`` (name -> (shape, dtype, config,
    {part: _Entry})), ``plain`` (name -> _Entry), ``metrics`` (or None) and
    ``is_quantcore``."""

    def __init__(self, header: Header) -> None:
        self.header = header
        path = header.path
        self.quantized: Dict[str, Tuple[Tuple[int, ...], str, QuantConfig, Dict[str, _Entry]]] = {}
        self.metrics: Optional[ModelCompressionMetrics] = None
        raw = header.metadata.get(META_KEY)
        self.is_quantcore = raw is not None
        if raw is None:
            self.plain = dict(header.entries)
            self.order = list(header.entries)
            return
        where = f"{path}: quantcore metadata"
        meta = _strict_json(raw, where)
        if not isinstance(meta, dict):
            raise ValueError(f"{where} must be a JSON object")
        unknown = set(meta) - {"version", "order", "tensors", "metrics"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        version = meta.get("version")
        if not _int(version) or version < 1:
            raise ValueError(f"{where}: version must be a positive int, got {version!r}")
        if version > FORMAT_VERSION:
            raise ValueError(f"{where}: format version {version} is newer than this quantcore "
                             f"reads ({FORMAT_VERSION}); upgrade quantcore")
        tensors = meta.get("tensors")
        if not isinstance(tensors, dict):
            raise ValueError(f"{where}: 'tensors' must be an object")
        claimed: Dict[str, str] = {}
        for name, spec in tensors.items():
            self.quantized[name] = self._quantized(name, spec, claimed)
        self.plain = {}
        for name, e in header.entries.items():
            if name in claimed:
                continue
            if name in self.quantized:
                raise ValueError(f"{path}: tensor {name!r} is both a plain tensor and a quantized one")
            self.plain[name] = e
        order = meta.get("order")
        want = set(self.quantized) | set(self.plain)
        if not isinstance(order, list) or not all(isinstance(n, str) for n in order) or \
                len(order) != len(want) or set(order) != want:
            raise ValueError(f"{where}: 'order' must list each of the {len(want)} tensors once")
        self.order = order
        if meta.get("metrics") is not None:
            try:
                self.metrics = _decode_metrics(meta["metrics"])
            except (TypeError, ValueError, KeyError) as e:
                raise ValueError(f"{where}: bad metrics: {e}") from None

    def _quantized(self, name: str, spec: Any, claimed: Dict[str, str]):
        where = f"{self.header.path}: quantized tensor {name!r}"
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: entry must be an object")
        if set(spec) != {"shape", "dtype", "config"}:
            raise ValueError(f"{where}: entry must have the keys shape, dtype, config; "
                             f"got {sorted(spec)}")
        shape, dtype, cfgd = spec["shape"], spec["dtype"], spec["config"]
        if not isinstance(shape, list) or not 1 <= len(shape) <= _MAX_NDIM or \
                not all(_int(s) and s >= 1 for s in shape):
            raise ValueError(f"{where}: shape must be a list of positive ints, got {shape!r}"[:300])
        shape = tuple(shape)
        # the codes take at least half a byte per value, and they lie in the file
        if math.prod(shape) > 2 * self.header.file_size:
            raise ValueError(f"{where}: shape {shape} claims more values than the "
                             f"{self.header.file_size}-byte file can hold"[:300])
        if dtype not in ("float16", "float32", "float64"):
            raise ValueError(f"{where}: dtype must be float16, float32 or float64, got {dtype!r}")
        if not isinstance(cfgd, dict):
            raise ValueError(f"{where}: config must be an object")
        try:
            cfg = QuantConfig.from_dict(cfgd)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: bad config: {e}") from None
        entries: Dict[str, _Entry] = {}
        for part, (sdt, pshape) in _expected_parts(shape, cfg).items():
            key = f"{name}.{part}"
            ent = self.header.entries.get(key)
            if ent is None:
                raise ValueError(f"{where}: tensor {key!r} is missing from the file")
            if ent.dtype != sdt or ent.shape != pshape:
                raise ValueError(f"{where}: {key!r} must be {sdt} of shape {pshape} for shape "
                                 f"{shape} and its config, got {ent.dtype} of shape {ent.shape}")
            if key in claimed:
                raise ValueError(f"{where}: {key!r} is already part of {claimed[key]!r}")
            claimed[key] = name
            entries[part] = ent
        extra = f"{name}.zeros"
        if "zeros" not in entries and extra in self.header.entries:
            raise ValueError(f"{where}: {extra!r} is stored but its config "
                             f"({'symmetric' if cfg.symmetric else cfg.format}) has no zero points")
        return shape, dtype, cfg, entries


def load(path: Any) -> QuantizedModel:
    """Read a safetensors file written by ``save`` (or any safetensors file).

    Returns a QuantizedModel: name -> QuantizedTensor for quantized tensors,
    name -> ndarray for plain ones (BF16 is widened to float32, exactly), in
    the order they were saved, with ``metrics`` when the file recorded them.
    A corrupt, truncated or hostile file raises ValueError, and so does a path
    that is not a regular file (a directory, FIFO or device) and a file whose
    tensors need more memory than the machine has; a missing file raises
    FileNotFoundError.
    """
    path = os.fspath(path)
    with _io.open_regular(path) as f:
        header = Header(path, f)
        layout = Layout(header)
        # every tensor is read into memory: refuse at once a file that cannot fit
        _io.check_fits(header.file_size - header.data_start, path, "the tensor data")
        out: Dict[str, Any] = {}
        for name in layout.order:
            if name in layout.plain:
                out[name] = header.read(f, layout.plain[name])
                continue
            shape, dtype, cfg, entries = layout.quantized[name]
            arrays = {part: header.read(f, e) for part, e in entries.items()}
            try:
                out[name] = QuantizedTensor.from_arrays(arrays["qdata"], arrays.get("scales"),
                                                        arrays.get("zeros"), shape, cfg,
                                                        np.dtype(dtype))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}: quantized tensor {name!r}: {e}") from None
    return QuantizedModel(out, layout.metrics)


# ---- writing ----------------------------------------------------------------------------

def _plain_array(value: Any, name: str) -> np.ndarray:
    value = from_torch(value)
    if not isinstance(value, np.ndarray):
        raise TypeError(f"tensors[{name!r}] must be a QuantizedTensor or a numpy array, "
                        f"got {type(value).__name__}")
    if value.dtype.name not in _NP_TO_ST:
        raise TypeError(f"tensors[{name!r}] has dtype {value.dtype}, which safetensors cannot "
                        f"store (use one of {', '.join(sorted(_NP_TO_ST))})")
    dt = value.dtype.newbyteorder("<") if value.dtype.itemsize > 1 else value.dtype
    if value.flags.c_contiguous and value.dtype == dt:
        return value
    return np.array(value, dtype=dt, order="C")  # (np.ascontiguousarray makes 0-d arrays 1-d)


def save(path: Any, tensors: Mapping, metadata: Optional[Mapping] = None) -> None:
    """Write `tensors` (name -> QuantizedTensor or ndarray; a QuantizedModel
    also records its ``metrics``) to a safetensors file at `path`.

    Quantized tensors become ``name.qdata``, ``name.scales`` and (asymmetric)
    ``name.zeros``; their shape, dtype and config go to the JSON metadata under
    ``"quantcore"``.  `metadata` adds str -> str entries of your own.

    Everything is checked before any file is touched.  The file is written to
    a temporary name beside `path`, flushed to disk and renamed over `path`
    only once complete, so a failure (an exception, a full disk) leaves an
    existing file as it was and no temporary file behind.  `path` must be a
    regular file or not exist: a directory, FIFO or device raises ValueError,
    a read-only file PermissionError; a symlink is followed (the file it
    points to is replaced).  A new file gets 0666 less the umask; a replaced
    one keeps its permission bits.
    """
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of name -> tensor, got {type(tensors).__name__}")
    path = os.fspath(path)
    flat: Dict[str, np.ndarray] = {}
    owner: Dict[str, str] = {}
    qmeta: Dict[str, Any] = {}
    order: List[str] = []

    def put(key: str, arr: np.ndarray, whose: str) -> None:
        if key in flat:
            raise ValueError(f"tensors: {whose!r} would be stored as {key!r}, which "
                             f"{owner[key]!r} already uses; rename one of them")
        flat[key], owner[key] = arr, whose

    for name, value in tensors.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"tensors keys must be non-empty str, got {name!r}")
        if name == "__metadata__":
            raise ValueError("tensors: the name '__metadata__' is reserved by safetensors")
        order.append(name)
        if isinstance(value, QuantizedTensor):
            qmeta[name] = {"shape": list(value.shape), "dtype": value.dtype.name,
                           "config": value.config.to_dict()}
            parts = {"qdata": value.data, "scales": value.scales, "zeros": value.zero_points}
            if value.config.ktype is not None:  # the super-blocks hold scales and mins
                parts = {"qdata": value.data}
            for part, arr in parts.items():
                if arr is not None:
                    put(f"{name}.{part}", _plain_array(arr, name), name)
        else:
            put(name, _plain_array(value, name), name)
    for name in qmeta:  # a plain tensor may not take a quantized tensor's own name
        if name in flat:
            raise ValueError(f"tensors: {name!r} is a quantized tensor and also a stored name")
    meta: Dict[str, Any] = {"version": FORMAT_VERSION, "order": order, "tensors": qmeta}
    metrics = getattr(tensors, "metrics", None)
    if isinstance(metrics, ModelCompressionMetrics):
        meta["metrics"] = _encode_metrics(metrics)
    header_meta: Dict[str, str] = {}
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a mapping of str -> str, got {type(metadata).__name__}")
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"metadata must map str to str, got {k!r}: {type(v).__name__}")
            if k == META_KEY:
                raise ValueError(f"metadata key {META_KEY!r} is reserved for quantcore")
            header_meta[k] = v
    header_meta[META_KEY] = json.dumps(meta, separators=(",", ":"), allow_nan=False)

    header, arrays = _safetensors_header(flat, header_meta)
    with _io.replacing(path) as tmp:
        with open(tmp, "wb") as f:
            _write_safetensors(f, header, arrays)


def _utf8(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} {text!r} is not valid UTF-8 text: {e.reason}") from None


def _safetensors_header(flat: Dict[str, np.ndarray],
                        metadata: Dict[str, str]) -> Tuple[bytes, List[np.ndarray]]:
    """The header bytes of a safetensors file holding `flat` (length prefix and
    padding included) and the arrays in the order their bytes follow it.
    The tensors are laid out widest dtype first, then by name, so that every
    tensor starts at a multiple of its item size."""
    for k, v in metadata.items():
        _utf8(k, "metadata key")
        _utf8(v, f"metadata[{k!r}]")
    names = sorted(flat, key=lambda k: (-flat[k].dtype.itemsize, k))
    header: Dict[str, Any] = {"__metadata__": metadata}
    pos = 0
    for name in names:
        _utf8(name, "tensor name")
        a = flat[name]
        header[name] = {"dtype": _NP_TO_ST[a.dtype.name], "shape": list(a.shape),
                        "data_offsets": [pos, pos + a.nbytes]}
        pos += a.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    if len(raw) > MAX_HEADER_BYTES:
        raise ValueError(f"the safetensors header would take {len(raw):,} bytes, more than the "
                         f"{MAX_HEADER_BYTES:,} readers accept (too many tensors or too much "
                         f"metadata)")
    return struct.pack("<Q", len(raw)) + raw, [flat[n] for n in names]


def _write_safetensors(f: BinaryIO, header: bytes, arrays: List[np.ndarray]) -> None:
    """Write the header, then each array's bytes (no copies: C-contiguous
    little-endian arrays are written from their own memory)."""
    f.write(header)
    for a in arrays:
        if a.nbytes:
            f.write(a.reshape(-1).view(np.uint8).data)


def _encode_metrics(metrics: ModelCompressionMetrics) -> Dict[str, Any]:
    """Layers as JSON-safe dicts: an infinite snr_db (exact layers) becomes the
    string "inf" (or "-inf"), which JSON can hold."""
    layers = {}
    for name, m in metrics:
        d = m.to_dict()
        if d.get("snr_db") is not None and math.isinf(d["snr_db"]):
            d["snr_db"] = "inf" if d["snr_db"] > 0 else "-inf"
        layers[name] = d
    return {"layers": layers}


def _decode_metrics(d: Any) -> ModelCompressionMetrics:
    if not isinstance(d, dict) or set(d) != {"layers"} or not isinstance(d["layers"], dict):
        raise ValueError("metrics must be an object with one key, 'layers'")
    layers = {}
    for name, m in d["layers"].items():
        if isinstance(m, dict) and m.get("snr_db") in ("inf", "-inf"):
            m = dict(m, snr_db=float(m["snr_db"]))
        layers[name] = m
    return ModelCompressionMetrics.from_dict({"layers": layers})
