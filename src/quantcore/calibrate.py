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
from typing import Any, Callable, Dict, Iterator, Optional

import numpy as np

__all__ = ["LayerStats", "StatsCollector", "save_stats", "load_stats", "read_imatrix",
           "write_imatrix", "lookup"]

_META_KEY = "quantcore.calibration"
_FORMAT_VERSION = 1
_CHUNK_ROWS = 4096  # rows converted to float64 at a time in update()
_SYRK_BLOCK = 1024  # X.T X is accumulated in blocks of this many columns, lower triangle only


def _add_gram_lower(acc: np.ndarray, c: np.ndarray) -> None:
    """acc += c.T @ c on the lower block triangle (blocks of _SYRK_BLOCK; the
    diagonal blocks whole): about half the products of the full matrix."""
    k = c.shape[1]
    if k <= 2 * _SYRK_BLOCK:
        acc += c.T @ c
        return
    for i0 in range(0, k, _SYRK_BLOCK):
        i1 = min(i0 + _SYRK_BLOCK, k)
        acc[i0:i1, :i1] += c[:, i0:i1].T @ c[:, :i1]


def _symmetrize_lower(a: np.ndarray) -> None:
    """Copy the lower block triangle of `a` onto its upper one, in place."""
    k = a.shape[0]
    for i0 in range(0, k, _SYRK_BLOCK):
        i1 = min(i0 + _SYRK_BLOCK, k)
        a[i0:i1, i1:] = a[i1:, i0:i1].T


def _float_rows(x: Any, k: Optional[int], what: str) -> np.ndarray:
    """x as a float16/32/64 ndarray of shape (rows, k) (a view where possible)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor (torch is not imported)
        x = x.detach().cpu()
        if str(getattr(x, "dtype", "")) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    a = np.asarray(x)
    if a.dtype.kind != "f" or a.dtype.itemsize not in (2, 4, 8):
        raise TypeError(f"{what} must have dtype float16, float32 or float64, got {a.dtype}")
    if a.ndim < 1:
        raise ValueError(f"{what} must have ndim >= 1 (..., in_features), got a 0-d array")
    if k is not None and a.shape[-1] != k:
        raise ValueError(f"{what} must have shape (..., {k}) (in_features={k}), got {a.shape}")
    return a.reshape(-1, a.shape[-1])


class LayerStats:
    """Second moments of one linear layer's inputs, accumulated in float64.

    ``LayerStats(in_features, hessian=True)`` starts empty; ``update(x)`` adds
    the rows of ``x`` (shape ``(..., in_features)``, float16/32/64, NumPy or
    torch).  It keeps ``count`` (rows seen), the per-channel sums of squares
    (``importance * count``) and, with ``hessian=True``, the full
    ``in_features x in_features`` matrix ``X.T @ X`` that method="gptq" needs
    (method="mse" needs only the diagonal, so ``hessian=False`` saves the
    quadratic memory).  NaN or Inf in an input raises ValueError and leaves the
    statistics unchanged.
    """

    __slots__ = ("_k", "_n", "_sum_sq", "_xtx", "_sym")

    def __init__(self, in_features: int, hessian: bool = True) -> None:
        if isinstance(in_features, bool) or not isinstance(in_features, (int, np.integer)) \
                or in_features < 1:
            raise ValueError(f"in_features must be a positive int, got {in_features!r}")
        if not isinstance(hessian, bool):
            raise TypeError(f"hessian must be True or False, got {hessian!r}")
        self._k = int(in_features)
        self._n = 0
        self._sum_sq = np.zeros(self._k, np.float64)
        self._xtx: Optional[np.ndarray] = np.zeros((self._k, self._k), np.float64) if hessian else None
        self._sym = True  # whether the upper triangle of _xtx is up to date

    # ---- construction from stored values ------------------------------------------------
    @classmethod
    def from_arrays(cls, sum_sq: Any, count: int, xtx: Any = None) -> "LayerStats":
        """Statistics from their sums: `sum_sq` (in_features,) the per-channel
        sums of squares, `count` the number of rows, `xtx` the optional
        ``X.T @ X`` (in_features, in_features).  Values are checked (finite,
        non-negative squares, a symmetric `xtx` whose diagonal is `sum_sq`) and
        copied."""
        s = np.array(sum_sq, dtype=np.float64)
        if s.ndim != 1 or s.size == 0:
            raise ValueError(f"sum_sq must be a non-empty 1-D array, got shape {s.shape}")
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise ValueError(f"count must be a non-negative int, got {count!r}")
        if not np.all(np.isfinite(s)):
            raise ValueError("sum_sq holds NaN or Inf")
        if np.any(s < 0):
            raise ValueError("sum_sq holds negative values (sums of squares cannot be negative)")
        self = cls(s.size, hessian=False)
        self._sum_sq = s
        self._n = int(count)
        if xtx is not None:
            h = np.array(xtx, dtype=np.float64)
            if h.shape != (s.size, s.size):
                raise ValueError(f"xtx must have shape {(s.size, s.size)}, got {h.shape}")
            if not np.all(np.isfinite(h)):
                raise ValueError("xtx holds NaN or Inf")
            scale = max(float(np.abs(s).max()), 1e-300)
            if not np.allclose(h, h.T, rtol=1e-10, atol=1e-12 * scale) or \
                    not np.allclose(np.diag(h), s, rtol=1e-10, atol=1e-12 * scale):
                raise ValueError("xtx must be symmetric with sum_sq on its diagonal")
            self._xtx = h
        if self._n == 0 and (np.any(s) or (self._xtx is not None and np.any(self._xtx))):
            raise ValueError("count is 0 but the sums are not")
        return self

    @classmethod
    def from_importance(cls, importance: Any, count: int = 1) -> "LayerStats":
        """Diagonal-only statistics from a per-input-channel importance vector
        (mean squares, e.g. from another tool), as if seen over `count` rows."""
        imp = np.asarray(importance, dtype=np.float64)
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"count must be a positive int, got {count!r}")
        return cls.from_arrays(imp * count, count)

    # ---- attributes -------------------------------------------------------------------------
    @property
    def in_features(self) -> int:
        """Width of the layer's inputs (the weight's last axis)."""
        return self._k

    @property
    def count(self) -> int:
        """Number of input rows (tokens) accumulated."""
        return self._n

    @property
    def has_hessian(self) -> bool:
        """Whether the full ``X.T @ X`` is kept (method="gptq" needs it)."""
        return self._xtx is not None

    @property
    def sum_sq(self) -> np.ndarray:
        """Per-channel sums of squares (float64, read-only view)."""
        v = self._sum_sq.view()
        v.setflags(write=False)
        return v

    def _full_xtx(self) -> np.ndarray:
        """The stored X.T X with both triangles up to date (not a copy)."""
        assert self._xtx is not None
        if not self._sym:
            _symmetrize_lower(self._xtx)
            self._sym = True
        return self._xtx

    @property
    def xtx(self) -> Optional[np.ndarray]:
        """``X.T @ X`` summed over all rows (float64, read-only view), or None."""
        if self._xtx is None:
            return None
        v = self._full_xtx().view()
        v.setflags(write=False)
        return v

    @property
    def importance(self) -> np.ndarray:
        """Mean square of each input channel (the diagonal of ``hessian``; what
        llama.cpp's imatrix stores), float64; zeros before any update."""
        return self._sum_sq / self._n if self._n else np.zeros(self._k)

    @property
    def hessian(self) -> Optional[np.ndarray]:
        """``X.T @ X / count`` (float64, a new array), or None without the full matrix."""
        if self._xtx is None:
            return None
        return self._full_xtx() / self._n if self._n else np.zeros((self._k, self._k))

    # ---- accumulation -------------------------------------------------------------------------
    def update(self, x: Any, weights: Any = None) -> "LayerStats":
        """Add the rows of `x` (shape ``(..., in_features)``); returns self.

        `weights` (shape ``x.shape[:-1]``, finite, >= 0) weighs each row's
        contribution, e.g. ``1 / tokens`` of its sentence so that every sentence
        counts alike however long it is; ``count`` still counts rows, so weights
        averaging 1 keep ``importance`` a mean square."""
        a = _float_rows(x, self._k, "x")
        rows = a.shape[0]
        wts = None
        if weights is not None:
            wts = np.asarray(weights, dtype=np.float64)
            want = tuple(np.shape(x))[:-1]
            if wts.shape != want:
                raise ValueError(f"weights must have shape {want} (x's shape without the last "
                                 f"axis), got {wts.shape}")
            wts = wts.reshape(-1)
            if not np.all(np.isfinite(wts)) or np.any(wts < 0):
                raise ValueError("weights must be finite and >= 0")
        if rows == 0:
            return self
        for r0 in range(0, rows, _CHUNK_ROWS):  # all checked before anything is added
            fin = np.isfinite(a[r0:r0 + _CHUNK_ROWS])
            if not fin.all():
                bad = np.argwhere(~fin)[0]
                raise ValueError(f"x holds NaN or Inf (row {r0 + int(bad[0])}, column "
                                 f"{int(bad[1])}); statistics unchanged")
        for r0 in range(0, rows, _CHUNK_ROWS):
            c = a[r0:r0 + _CHUNK_ROWS].astype(np.float64)
            if wts is not None:
                c *= np.sqrt(wts[r0:r0 + _CHUNK_ROWS])[:, None]
            self._sum_sq += np.einsum("ij,ij->j", c, c)
            if self._xtx is not None:
                _add_gram_lower(self._xtx, c)
                self._sym = self._sym and self._k <= 2 * _SYRK_BLOCK
        self._n += rows
        return self

    def merge(self, other: "LayerStats") -> "LayerStats":
        """A new LayerStats holding both: the same as one pass over both sets of
        inputs.  Both must have the same width; the result keeps the full matrix
        only when both have it (merging a diagonal-only one drops it)."""
        if not isinstance(other, LayerStats):
            raise TypeError(f"other must be a LayerStats, got {type(other).__name__}")
        if other._k != self._k:
            raise ValueError(f"cannot merge statistics of width {other._k} into width {self._k}")
        out = LayerStats(self._k, hessian=False)
        out._n = self._n + other._n
        out._sum_sq = self._sum_sq + other._sum_sq
        if self._xtx is not None and other._xtx is not None:
            out._xtx = self._full_xtx() + other._full_xtx()
        return out

    def without_hessian(self) -> "LayerStats":
        """A diagonal-only copy (what method="mse" and imatrix files use)."""
        return LayerStats.from_arrays(self._sum_sq, self._n)

    def copy(self) -> "LayerStats":
        """An independent copy."""
        out = LayerStats(self._k, hessian=False)
        out._n, out._sum_sq = self._n, self._sum_sq.copy()
        out._xtx = None if self._xtx is None else self._full_xtx().copy()
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LayerStats):
            return NotImplemented
        if (self._k, self._n, self.has_hessian) != (other._k, other._n, other.has_hessian):
            return False
        same = np.array_equal(self._sum_sq, other._sum_sq)
        if self._xtx is not None:
            same = same and np.array_equal(self._full_xtx(), other._full_xtx())
        return bool(same)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        kind = "X^T X" if self.has_hessian else "diagonal"
        return f"LayerStats(in_features={self._k}, count={self._n}, {kind})"

    def _check_width(self, k: int, name: str) -> None:
        if self._k != k:
            raise ValueError(f"calibration for {name}: statistics of width {self._k} for a weight "
                             f"with {k} input features (last axis); pass the statistics of that "
                             f"layer's inputs")


class _Observed:
    """A callable that records its input in a collector, then calls the layer."""

    __slots__ = ("_collector", "_name", "_layer")

    def __init__(self, collector: "StatsCollector", name: str, layer: Callable) -> None:
        self._collector, self._name, self._layer = collector, name, layer

    def __call__(self, x: Any, *args: Any, **kw: Any) -> Any:
        self._collector.observe(self._name, x)
        return self._layer(x, *args, **kw)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._layer, attr)


class StatsCollector(Mapping):
    """name -> LayerStats, filled from a model's forward passes.

    A NumPy forward calls ``collector.observe(name, x)`` with each linear
    layer's input (``mask=`` keeps only some rows, e.g. real tokens, not
    padding), or its layers are replaced by ``collector.wrap(name, layer)``
    (a callable that records ``x`` and returns ``layer(x)``).  Each name's
    statistics start at its first observation (``hessian`` says whether they
    keep the full ``X.T @ X``).  The collector is a read-only mapping; ``dict(c)``
    or ``c.stats`` gives a plain dict for ``quantize_model(...,
    calibration=...)`` or ``save_stats``.
    """

    def __init__(self, hessian: bool = True) -> None:
        if not isinstance(hessian, bool):
            raise TypeError(f"hessian must be True or False, got {hessian!r}")
        self._hessian = hessian
        self._stats: Dict[str, LayerStats] = {}

    def observe(self, name: str, x: Any, mask: Any = None, weights: Any = None) -> None:
        """Add the rows of `x` (``(..., in_features)``) to `name`'s statistics;
        with `mask` (bool or 0/1, shape ``x.shape[:-1]``) only rows where it is
        true; `weights` (same shape) as in ``LayerStats.update``."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        a = _float_rows(x, None, f"input of {name!r}")
        xs = tuple(np.shape(x))[:-1]
        w = None
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != xs:
                raise ValueError(f"weights must have shape {xs} (x's shape without the last axis), "
                                 f"got {w.shape}")
            w = w.reshape(-1)
        if mask is not None:
            m = np.asarray(mask)
            if m.shape != xs:
                raise ValueError(f"mask must have shape {xs} (x's shape without the last axis), "
                                 f"got {m.shape}")
            keep = m.reshape(-1) != 0
            a = a[keep]
            w = None if w is None else w[keep]
        st = self._stats.get(name)
        if st is None:
            st = self._stats[name] = LayerStats(a.shape[1], hessian=self._hessian)
        elif st.in_features != a.shape[1]:
            raise ValueError(f"input of {name!r} has width {a.shape[1]}, earlier ones {st.in_features}")
        st.update(a, w)

    def wrap(self, name: str, layer: Callable) -> Callable:
        """`layer` with its input recorded under `name` on every call
        (attributes of the layer stay reachable through the wrapper)."""
        if not callable(layer):
            raise TypeError(f"layer must be callable, got {type(layer).__name__}")
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        return _Observed(self, name, layer)

    @property
    def stats(self) -> Dict[str, LayerStats]:
        """A plain dict name -> LayerStats (the collector's own objects)."""
        return dict(self._stats)

    def __getitem__(self, name: str) -> LayerStats:
        return self._stats[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._stats)

    def __len__(self) -> int:
        return len(self._stats)

    def __repr__(self) -> str:
        return f"StatsCollector({len(self._stats)} layers)"


def lookup(calibration: Mapping, name: str) -> Optional[LayerStats]:
    """The statistics for weight `name` in a name -> LayerStats mapping: the
    entry of that exact name, else of the name without its ``.weight`` suffix
    (module names, as ``collect_stats`` gives them), else None."""
    st = calibration.get(name)
    if st is None and name.endswith(".weight"):
        st = calibration.get(name[:-len(".weight")])
    if st is not None and not isinstance(st, LayerStats):
        raise TypeError(f"calibration[{name!r}] must be a LayerStats, got {type(st).__name__}")
    return st


# ---- quantizing with statistics ----------------------------------------------------------

_IMPORTANCE_SUPPORTED: Optional[bool] = None


def _importance_supported() -> bool:
    """Whether the compiled core takes per-column importances in its mse search."""
    global _IMPORTANCE_SUPPORTED
    if _IMPORTANCE_SUPPORTED is None:
        from . import _ext
        try:
            _ext.quantize_2d(np.zeros((1, 2), np.float32), _ext.KIND_SYM8, 0, False, False, "probe",
                             True, importance=np.ones(2, np.float32))
            _IMPORTANCE_SUPPORTED = True
        except TypeError:
            _IMPORTANCE_SUPPORTED = False
    return _IMPORTANCE_SUPPORTED


def _importance_vector(stats: LayerStats) -> np.ndarray:
    """The per-input-channel weights that method="mse" minimises its error with:
    the statistics' mean squares, float32."""
    imp = stats.importance
    return np.ascontiguousarray(imp, dtype=np.float32)


def _quantize_calibrated(array: Any, config: Any, calibration: Any, what: str = "array"):
    """The body of ``QuantizedTensor.quantize(..., calibration=...)`` and of
    method="gptq" (errors name `what`)."""
    from . import _ext
    from .tensor import QuantizedTensor, _as_float_array, _rows_view
    if config.method == "gptq":
        if calibration is None:
            raise ValueError(
                f"{what}: method='gptq' needs calibration statistics of the layer's inputs: pass "
                f"calibration=LayerStats (from quantcore.calibrate.StatsCollector, "
                f"quantcore.torch.collect_stats or quantcore.calibrate.load_stats), or use "
                f"method='absmax' or 'mse'")
        from .gptq import gptq_quantize
        return gptq_quantize(array, calibration, config, name=what)
    if config.method != "mse":
        raise ValueError(f"{what}: calibration is used by method='mse' and method='gptq'; "
                         f"config.method is {config.method!r}")
    if not isinstance(calibration, LayerStats):
        raise TypeError(f"calibration for {what} must be a quantcore.calibrate.LayerStats, "
                        f"got {type(calibration).__name__}")
    a = _as_float_array(array, what)
    calibration._check_width(a.shape[-1], what)
    if calibration.count == 0:
        raise ValueError(f"calibration for {what}: the statistics hold no rows (count 0)")
    if not _importance_supported():
        raise NotImplementedError("this build of quantcore's C core has no importance-weighted "
                                  "mse search (quantize_2d(..., importance=)); rebuild quantcore")
    group = (config.group_size or 0) if config.granularity == "group" else 0
    data, scales, zeros = _ext.quantize_2d(
        _rows_view(a), config.kind, group, config.granularity == "tensor",
        config.scale_dtype == "float16", what, True, importance=_importance_vector(calibration))
    return QuantizedTensor._make(data, scales, zeros, tuple(a.shape), a.dtype, config)


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
    ``quantcore.calibration``.  `metadata` adds str -> str entries.  Written to
    a temporary file and renamed into place."""
    import tempfile
    from safetensors.numpy import save_file
    st = _check_mapping(stats)
    flat: Dict[str, np.ndarray] = {}
    for name, s in st.items():
        for part, arr in (("sum_sq", s._sum_sq), ("count", np.array([s._n], np.int64)),
                          ("xtx", None if s._xtx is None else s._full_xtx())):
            if arr is None:
                continue
            key = f"{name}.{part}"
            if key in flat:
                raise ValueError(f"stats: {name!r} would store {key!r}, which another layer uses")
            flat[key] = np.ascontiguousarray(arr)
    header: Dict[str, str] = {}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"metadata must map str to str, got {k!r}: {type(v).__name__}")
        if k == _META_KEY:
            raise ValueError(f"metadata key {_META_KEY!r} is reserved")
        header[k] = v
    header[_META_KEY] = json.dumps({"version": _FORMAT_VERSION, "layers": list(st)})
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".quantcore-", suffix=".tmp",
                               dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        save_file(flat, tmp, metadata=header)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_stats(path: Any) -> Dict[str, LayerStats]:
    """Read a file written by ``save_stats`` (name -> LayerStats, in saved order).
    A file that is not one, or holds inconsistent values, raises ValueError."""
    from .files import read_header
    path = os.fspath(path)
    header = read_header(path)
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
    used: set = set()
    with open(path, "rb") as f:
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
    p = os.fspath(path)
    with open(p, "rb") as f:
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
    with open(path, "rb") as f:
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
    with open(p, "wb") as f:
        f.write(b"".join(chunks))
