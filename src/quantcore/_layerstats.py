"""LayerStats and StatsCollector: second moments of a linear layer's inputs.

The public names live in ``quantcore.calibrate`` (which adds the file formats);
this module imports nothing else of quantcore, so that ``QuantizedTensor`` and
``quantcore.metrics`` can use the statistics without an import cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterator, Optional

import numpy as np

__all__ = ["LayerStats", "StatsCollector", "lookup"]

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
