"""Calibration statistics: what a layer's inputs look like, for method="mse" and "gptq".

A linear layer ``y = x @ W.T`` with weight error ``dW`` has output error
``x @ dW.T``; over a set of inputs its squared norm is ``tr(dW H dW.T)`` with
``H = X.T @ X`` the inputs' second moments.  ``LayerStats`` accumulates that
matrix (and its diagonal, the per-input-channel mean square that llama.cpp calls
the importance matrix) over any number of batches, in float64, without keeping
the activations:

* ``LayerStats(in_features)`` then ``stats.update(x)`` for each batch of inputs
  ``(..., in_features)``; ``a.merge(b)`` combines two (same as one pass over
  both sets of inputs); ``stats.hessian`` (``X.T X / rows``), ``stats.importance``
  (its diagonal), ``stats.count`` (rows seen).
* ``StatsCollector``: a name -> LayerStats mapping that a NumPy forward feeds
  (``collector.observe(name, x)``) or that wraps callables
  (``collector.wrap(name, layer)``).  For PyTorch models see
  ``quantcore.torch.collect_stats``.
* ``save_stats(path, stats)`` / ``load_stats(path)``: a safetensors file.
* ``read_imatrix(path)`` / ``write_imatrix(path, stats)``: llama.cpp's importance
  matrix files (its GGUF layout, and the older ``.dat`` one), diagonal only.

The statistics go to ``quantize(w, config, calibration=stats)``,
``quantize_model(weights, config, calibration={name: stats})`` and
``quantcore.torch.quantize_module(model, config, calibration=stats)``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from typing import Any, Dict, Optional

import numpy as np

from ._layerstats import LayerStats, StatsCollector, lookup

__all__ = ["LayerStats", "StatsCollector", "save_stats", "load_stats", "read_imatrix",
           "write_imatrix", "lookup"]

_META_KEY = "quantcore.calibration"
_FORMAT_VERSION = 1


# ---- files: quantcore's own ------------------------------------------------------------------

def _check_mapping(stats: Any) -> Dict[str, LayerStats]:
    if not isinstance(stats, Mapping):
        raise TypeError(f"stats must be a mapping of name -> LayerStats, got {type(stats).__name__}")
    out = {}
    for name, st in stats.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"stats keys must be non-empty str, got {name!r}")
        if not isinstance(st, LayerStats):
            raise TypeError(f"stats[{name!r}] must be a LayerStats, got {type(st).__name__}")
        out[name] = st
    if not out:
        raise ValueError("stats is empty: nothing to save")
    return out


def save_stats(path: Any, stats: Mapping, metadata: Optional[Mapping] = None) -> None:
    """Write name -> LayerStats to a safetensors file: ``<name>.sum_sq`` (F64,
    in_features), ``<name>.count`` (I64, 1) and, where kept, ``<name>.xtx`` (F64,
    in_features x in_features); the names in order under the metadata key
    ``quantcore.calibration``.  `metadata` adds str -> str entries.  Written as
    ``quantcore.save`` writes (a complete file or none)."""
    from .files import save
    st = _check_mapping(stats)
    flat: Dict[str, np.ndarray] = {}
    for name, s in st.items():
        for part, arr in (("sum_sq", s._sum_sq), ("count", np.array([s.count], np.int64)),
                          ("xtx", None if s._xtx is None else s._full_xtx())):
            if arr is None:
                continue
            key = f"{name}.{part}"
            if key in flat:
                raise ValueError(f"stats: {name!r} would store {key!r}, which another layer uses")
            flat[key] = arr
    header: Dict[str, str] = {}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"metadata must map str to str, got {k!r}: {type(v).__name__}")
        if k == _META_KEY:
            raise ValueError(f"metadata key {_META_KEY!r} is reserved")
        header[k] = v
    header[_META_KEY] = json.dumps({"version": _FORMAT_VERSION, "layers": list(st)})
    save(path, flat, metadata=header)


def load_stats(path: Any) -> Dict[str, LayerStats]:
    """Read a file written by ``save_stats`` (name -> LayerStats, in saved order).
    A file that is not one, or holds inconsistent values, raises ValueError."""
    from . import _io
    from .files import Header
    path = os.fspath(path)
    with _io.open_regular(path) as f:
        header = Header(path, f)
        return _read_stats(path, header, f)


def _read_stats(path: str, header: Any, f: Any) -> Dict[str, LayerStats]:
    raw = header.metadata.get(_META_KEY)
    if raw is None:
        raise ValueError(f"{path}: not a calibration file (no {_META_KEY!r} metadata); "
                         f"write one with quantcore.calibrate.save_stats")
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"{path}: {_META_KEY} metadata is not JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("version") != _FORMAT_VERSION or \
            not isinstance(meta.get("layers"), list) or \
            not all(isinstance(n, str) and n for n in meta["layers"]):
        raise ValueError(f"{path}: {_META_KEY} metadata must be {{'version': {_FORMAT_VERSION}, "
                         f"'layers': [names]}}")
    out: Dict[str, LayerStats] = {}
    used: set = {"__metadata__"}
    for name in meta["layers"]:
        parts: Dict[str, np.ndarray] = {}
        for part, dtype, required in (("sum_sq", "F64", True), ("count", "I64", True),
                                      ("xtx", "F64", False)):
            entry = header.entries.get(f"{name}.{part}")
            if entry is None:
                if required:
                    raise ValueError(f"{path}: layer {name!r} has no tensor {name}.{part}")
                continue
            if entry.dtype != dtype:
                raise ValueError(f"{path}: {name}.{part} must be {dtype}, got {entry.dtype}")
            parts[part] = header.read(f, entry)
            used.add(entry.name)
        cnt = parts["count"]
        if cnt.shape != (1,) or cnt[0] < 0:
            raise ValueError(f"{path}: {name}.count must hold one non-negative count, got {cnt!r}")
        try:
            out[name] = LayerStats.from_arrays(parts["sum_sq"], int(cnt[0]), parts.get("xtx"))
        except ValueError as e:
            raise ValueError(f"{path}: layer {name!r}: {e}") from None
    extra = set(header.entries) - used
    if extra:
        raise ValueError(f"{path}: tensors {sorted(extra)[:5]} belong to no listed layer")
    return out


# ---- files: llama.cpp's importance matrix ---------------------------------------------------

def _imatrix_entry(name: str, sums: np.ndarray, counts: np.ndarray, path: str) -> LayerStats:
    """One entry of an imatrix file: per-matrix sums (n_mat, k) and counts (n_mat,).
    Stacked experts (n_mat > 1) are summed into one set of statistics."""
    if not np.all(np.isfinite(sums)) or np.any(sums < 0):
        raise ValueError(f"{path}: {name}: sums of squares must be finite and non-negative")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError(f"{path}: {name}: counts must be finite and non-negative")
    n = int(np.rint(counts.sum()))
    total = sums.sum(axis=0)
    if n == 0 and np.any(total):
        raise ValueError(f"{path}: {name}: count is 0 but the sums are not")
    return LayerStats.from_arrays(total, n)


def read_imatrix(path: Any, chunk_size: int = 512) -> Dict[str, LayerStats]:
    """llama.cpp's importance matrix file as name -> diagonal-only LayerStats.

    Both of llama-imatrix's layouts are read (the kind is told by the file's
    first bytes):

    * GGUF (``general.type = "imatrix"``): for each weight, ``<name>.in_sum2``
      (sums of squared inputs, one row per stacked matrix) and ``<name>.counts``
      (rows seen per matrix); ``<name>.in_sum`` is ignored.
    * the older ``.dat``: int32 entry count; per entry an int32 name length, the
      name, int32 ``ncall``, int32 value count and the float32 values (mean
      squares times ``ncall``); then int32 chunk count and the dataset name.
      The row count is not stored: it is taken as ``ncall * chunk_size`` (the
      tool's default context, 512), which only matters when merging.

    Names are the GGUF weight names (``blk.0.attn_q.weight``).  Expert tensors
    (several matrices per entry) get one set of statistics summed over experts.
    """
    from . import _io
    p = os.fsdecode(os.fspath(path))
    with _io.open_regular(p) as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return _read_imatrix_gguf(p)
    return _read_imatrix_dat(p, chunk_size)


def _read_imatrix_gguf(path: str) -> Dict[str, LayerStats]:
    from . import gguf
    meta = gguf.load_metadata(path)
    kind = meta.get("general.type")
    if kind is not None and kind != "imatrix":
        raise ValueError(f"{path}: a GGUF file of type {kind!r}, not an imatrix")
    tensors = gguf.load(path)
    sums: Dict[str, np.ndarray] = {}
    counts: Dict[str, np.ndarray] = {}
    for tname, arr in tensors.items():
        for suffix, into in ((".in_sum2", sums), (".counts", counts)):
            if tname.endswith(suffix):
                if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
                    raise ValueError(f"{path}: {tname} must be an F32 tensor")
                into[tname[:-len(suffix)]] = arr
    if not sums:
        raise ValueError(f"{path}: no <name>.in_sum2 tensors: not an imatrix file")
    out: Dict[str, LayerStats] = {}
    for name in sorted(sums):
        s = sums[name]
        c = counts.get(name)
        if c is None:
            raise ValueError(f"{path}: {name}.in_sum2 has no {name}.counts")
        s2 = s.reshape(-1, s.shape[-1]) if s.ndim >= 1 else s.reshape(1, 1)
        c1 = c.reshape(-1)
        if c1.size != s2.shape[0]:
            raise ValueError(f"{path}: {name}: {c1.size} counts for {s2.shape[0]} matrices of sums")
        out[name] = _imatrix_entry(name, s2.astype(np.float64), c1.astype(np.float64), path)
    extra = set(counts) - set(sums)
    if extra:
        raise ValueError(f"{path}: counts without sums for {sorted(extra)[:5]}")
    return out


class _Reader:
    def __init__(self, data: bytes, path: str) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"{self.path}: truncated imatrix file while reading {what} "
                             f"(byte {self.pos} of {len(self.data)})")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def i32(self, what: str) -> int:
        return struct.unpack("<i", self.take(4, what))[0]


def _read_imatrix_dat(path: str, chunk_size: int) -> Dict[str, LayerStats]:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    from . import _io
    with _io.open_regular(path) as f:
        data = f.read()
    r = _Reader(data, path)
    n = r.i32("the entry count")
    if n < 1 or n > len(data) // 16:
        raise ValueError(f"{path}: not an imatrix file (GGUF or .dat): entry count {n}")
    out: Dict[str, LayerStats] = {}
    for i in range(n):
        ln = r.i32(f"the name length of entry {i}")
        if ln < 1 or ln > 4096:
            raise ValueError(f"{path}: entry {i}: name length {ln} (corrupt file)")
        try:
            name = r.take(ln, f"the name of entry {i}").decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{path}: entry {i}: the name is not UTF-8") from None
        ncall = r.i32(f"ncall of {name}")
        nval = r.i32(f"the value count of {name}")
        if nval < 1 or ncall < 0:
            raise ValueError(f"{path}: {name}: {nval} values, ncall {ncall} (corrupt file)")
        vals = np.frombuffer(r.take(4 * nval, f"the values of {name}"), "<f4").astype(np.float64)
        if name in out:
            raise ValueError(f"{path}: entry {name!r} appears twice")
        rows = ncall * chunk_size
        if ncall == 0:
            if np.any(vals):
                raise ValueError(f"{path}: {name}: ncall is 0 but the values are not")
            sums = vals
        else:
            sums = vals / ncall * rows
        out[name] = _imatrix_entry(name, sums.reshape(1, -1), np.array([float(rows)]), path)
    return out


def write_imatrix(path: Any, stats: Mapping, format: str = "gguf", chunk_size: int = 512,
                  dataset: str = "") -> None:
    """Write name -> LayerStats as llama.cpp's importance matrix, for
    ``llama-quantize --imatrix``: ``format="gguf"`` (needs the ``gguf`` package;
    ``<name>.in_sum2`` and ``<name>.counts`` per layer, ``general.type =
    "imatrix"``, ``imatrix.chunk_size``, ``imatrix.chunk_count``,
    ``imatrix.datasets``) or ``"dat"`` (the older layout, mean squares times
    ``ncall = ceil(count / chunk_size)``).  Names should be the GGUF weight
    names (``blk.0.attn_q.weight``).  Only the diagonal is written."""
    st = _check_mapping(stats)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if not isinstance(dataset, str):
        raise TypeError(f"dataset must be a str, got {type(dataset).__name__}")
    if format not in ("gguf", "dat"):
        raise ValueError(f"format must be 'gguf' or 'dat', got {format!r}")
    for name, s in st.items():
        if s.count == 0:
            raise ValueError(f"stats[{name!r}] holds no rows (count 0)")
    p = os.fspath(path)
    max_count = max(s.count for s in st.values())
    if format == "gguf":
        from . import gguf
        tensors: Dict[str, np.ndarray] = {}
        for name in sorted(st):
            s = st[name]
            tensors[f"{name}.in_sum2"] = s._sum_sq.astype(np.float32).reshape(1, -1)
            tensors[f"{name}.counts"] = np.array([[float(s.count)]], np.float32)
        meta: Dict[str, Any] = {"general.type": "imatrix",
                                "imatrix.chunk_count": max_count // chunk_size,
                                "imatrix.chunk_size": chunk_size}
        if dataset:
            meta["imatrix.datasets"] = [dataset]
        gguf.save(p, tensors, metadata=meta)
        return
    chunks = []
    names = sorted(st)
    chunks.append(struct.pack("<i", len(names)))
    for name in names:
        s = st[name]
        b = name.encode("utf-8")
        ncall = -(-s.count // chunk_size)
        vals = (s.importance * ncall).astype("<f4")
        chunks.append(struct.pack("<i", len(b)) + b + struct.pack("<ii", ncall, s.in_features))
        chunks.append(vals.tobytes())
    chunks.append(struct.pack("<i", max_count // chunk_size))
    db = dataset.encode("utf-8")
    chunks.append(struct.pack("<i", len(db)) + db)
    from . import _io
    with _io.replacing(p) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"".join(chunks))
