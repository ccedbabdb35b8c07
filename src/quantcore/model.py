"""Whole models: quantize a mapping of name -> weight array (``quantize_model``),
the result (``QuantizedModel``) and its per-layer metrics (``ModelCompressionMetrics``)."""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Mapping
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._arrays import as_float_array, to_numpy
from .config import QuantConfig
from .metrics import CompressionMetrics, check_bits
from .tensor import QuantizedTensor

__all__ = ["ModelCompressionMetrics", "QuantizedModel", "quantize_model"]

Patterns = Union[None, str, Iterable[str]]


def _default_config(bits: int) -> Optional[QuantConfig]:
    if bits == 8:
        return QuantConfig.int8()
    if bits == 4:
        return QuantConfig.int4(group_size=32)
    return None


class ModelCompressionMetrics:
    """Per-layer CompressionMetrics of a model, in insertion order.

    ``for name, m in model_metrics`` iterates over the layers; ``len()``,
    ``name in``, ``[name]`` work as on a dict.  Totals are parameter-weighted:
    ``average_effective_bits() = total_compressed_bits / total_parameters`` and
    ``mean_quantization_mse() = sum(n_i * mse_i) / sum(n_i)`` (the MSE over all
    the model's parameters).  ``str()`` is a text table, ``to_markdown()`` the
    same as Markdown; when some layer was quantized with calibration
    statistics, the table has a ``calib err`` column beside the weight errors:
    that layer's relative output error on its calibration inputs
    (``CompressionMetrics.calibrated_error``; "-" for the others).
    """

    def __init__(self) -> None:
        self._layers: Dict[str, CompressionMetrics] = {}

    # ---- adding layers -------------------------------------------------------------------
    def add_layer(self, name: str, metrics: CompressionMetrics) -> None:
        """Record `metrics` for layer `name` (a non-empty str not used yet)."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        if not name:
            raise ValueError("name must not be empty")
        if not isinstance(metrics, CompressionMetrics):
            raise TypeError(f"metrics must be a CompressionMetrics, got {type(metrics).__name__}")
        if name in self._layers:
            raise ValueError(f"name {name!r} is already a layer of this model")
        self._layers[name] = metrics

    def add_quantized_layer(self, name: str, weights: Any, quant_bits: float,
                            quantization_mse: Optional[float] = None, *,
                            config: Any = None) -> CompressionMetrics:
        """Record layer `name` with float `weights` quantized to `quant_bits` bits
        (``CompressionMetrics.quantized_only``); returns the metrics added.

        When `quantization_mse` is None it is measured by quantizing `weights`
        with `config` (default: ``QuantConfig.int8()`` for 8 bits,
        ``QuantConfig.int4(group_size=32)`` for 4; other bit widths need
        `quantization_mse` or `config`).  Empty weights raise ValueError.
        """
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        if name in self._layers:
            raise ValueError(f"name {name!r} is already a layer of this model")
        w = as_float_array(weights, "weights")
        bits = check_bits(quant_bits, "quant_bits")
        if quantization_mse is None:
            if config is None:
                config = _default_config(int(bits)) if bits in (4.0, 8.0) else None
                if config is None:
                    raise ValueError(f"quant_bits={quant_bits!r}: give quantization_mse or a config "
                                     f"(quantcore quantizes to 8 or 4 bits)")
            quantization_mse = QuantizedTensor.quantize(w, config).mse(w)
        m = CompressionMetrics.quantized_only(int(w.size), bits, quantization_mse)
        self.add_layer(name, m)
        return m

    # ---- totals ----------------------------------------------------------------------------
    def total_parameters(self) -> int:
        """Sum of the layers' n_parameters."""
        return sum(m.n_parameters for m in self._layers.values())

    def total_original_bits(self) -> float:
        """Sum of the layers' original bits."""
        return sum(m.total_original_bits() for m in self._layers.values())

    def total_compressed_bits(self) -> float:
        """Sum of the layers' compressed bits (codes, scales and zero points)."""
        return sum(m.total_compressed_bits() for m in self._layers.values())

    def model_compression_ratio(self) -> float:
        """Total original bits / total compressed bits; ``inf`` when nothing is
        stored (no layers, or every layer at 0 bits)."""
        comp = self.total_compressed_bits()
        return math.inf if comp == 0 else self.total_original_bits() / comp

    def mean_quantization_mse(self) -> float:
        """Parameter-weighted mean of the layers' MSE (0.0 with no parameters)."""
        n = self.total_parameters()
        if n == 0:
            return 0.0
        return sum(m.n_parameters * m.quantization_mse for m in self._layers.values()) / n

    def average_effective_bits(self) -> float:
        """Parameter-weighted mean of the effective bits (0.0 with no parameters)."""
        n = self.total_parameters()
        return 0.0 if n == 0 else self.total_compressed_bits() / n

    def average_original_bits(self) -> float:
        """Parameter-weighted mean of the original bits (0.0 with no parameters)."""
        n = self.total_parameters()
        return 0.0 if n == 0 else self.total_original_bits() / n

    # ---- mapping-like access ------------------------------------------------------------------
    def __iter__(self) -> Iterator[Tuple[str, CompressionMetrics]]:
        return iter(list(self._layers.items()))

    def __len__(self) -> int:
        return len(self._layers)

    def __contains__(self, name: object) -> bool:
        return name in self._layers

    def __getitem__(self, name: str) -> CompressionMetrics:
        try:
            return self._layers[name]
        except KeyError:
            raise KeyError(f"no layer named {name!r}") from None

    def names(self) -> List[str]:
        """Layer names in the order they were added."""
        return list(self._layers)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelCompressionMetrics):
            return NotImplemented
        return list(self._layers.items()) == list(other._layers.items())

    __hash__ = None  # type: ignore[assignment]

    # ---- export ----------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        """``{"layers": {name: metrics.to_dict()}, "totals": {...}}``."""
        return {
            "layers": {name: m.to_dict() for name, m in self._layers.items()},
            "totals": {
                "n_layers": len(self._layers),
                "total_parameters": self.total_parameters(),
                "total_original_bits": self.total_original_bits(),
                "total_compressed_bits": self.total_compressed_bits(),
                "model_compression_ratio": self.model_compression_ratio(),
                "average_effective_bits": self.average_effective_bits(),
                "mean_quantization_mse": self.mean_quantization_mse(),
            },
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelCompressionMetrics":
        """Rebuild from ``to_dict()`` output (the totals are recomputed, not trusted)."""
        if not isinstance(d, dict) or not isinstance(d.get("layers"), dict):
            raise ValueError("model metrics must be a dict with a 'layers' dict")
        unknown = set(d) - {"layers", "totals"}
        if unknown:
            raise ValueError(f"unknown model metrics keys: {sorted(map(str, unknown))}")
        out = cls()
        for name, m in d["layers"].items():
            out.add_layer(name, CompressionMetrics.from_dict(m))
        return out

    _COLUMNS = ("layer", "params", "orig bits", "eff bits", "ratio", "sparsity", "MSE",
                "max abs err", "SNR dB")

    def _calibrated(self) -> bool:
        return any(m.calibrated_error is not None for m in self._layers.values())

    def _columns(self) -> Tuple[str, ...]:
        return self._COLUMNS + (("calib err",) if self._calibrated() else ())

    def _rows(self) -> List[List[str]]:
        calib = self._calibrated()

        def snr(v):
            return "-" if v is None else f"{v:.2f}"

        def fmt(m: CompressionMetrics, name: str) -> List[str]:
            row = [name, f"{m.n_parameters:,}", f"{m.original_bits_per_param:g}",
                   f"{m.effective_bits_per_param:.4g}", f"{m.compression_ratio():.3g}",
                   f"{m.sparsity:.3f}", f"{m.quantization_mse:.3e}",
                   "-" if m.max_abs_error is None else f"{m.max_abs_error:.3e}", snr(m.snr_db)]
            if calib:
                row.append("-" if m.calibrated_error is None else f"{m.calibrated_error:.3e}")
            return row

        rows = [fmt(m, name) for name, m in self._layers.items()]
        n = self.total_parameters()
        rows.append(["total", f"{n:,}", f"{self.average_original_bits():.4g}",
                     f"{self.average_effective_bits():.4g}",
                     f"{self.model_compression_ratio():.3g}",
                     f"{(sum(m.sparsity * m.n_parameters for m in self._layers.values()) / n) if n else 0.0:.3f}",
                     f"{self.mean_quantization_mse():.3e}", "", ""] + ([""] if calib else []))
        return rows

    def __str__(self) -> str:
        rows = self._rows()
        cols = self._columns()
        table = [list(cols)] + rows
        widths = [max(len(r[i]) for r in table) for i in range(len(cols))]

        def line(r):
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths))).rstrip()

        rule = "  ".join("-" * w for w in widths)
        out = [line(table[0]), rule] + [line(r) for r in rows[:-1]] + [rule, line(rows[-1])]
        return "\n".join(out)

    def to_markdown(self) -> str:
        """The table of ``str()`` as Markdown, the totals as the last row."""
        rows = self._rows()
        rows[-1][0] = "**total**"
        cols = self._columns()
        head = "| " + " | ".join(cols) + " |"
        align = "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"
        body = ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        return "\n".join([head, align] + body)

    def __repr__(self) -> str:
        return (f"ModelCompressionMetrics(layers={len(self._layers)}, "
                f"total_parameters={self.total_parameters()}, "
                f"model_compression_ratio={self.model_compression_ratio():.4g}, "
                f"average_effective_bits={self.average_effective_bits():.4g}, "
                f"mean_quantization_mse={self.mean_quantization_mse():.4g})")



class QuantizedModel(Mapping):
    """A read-only mapping name -> QuantizedTensor or ndarray, in the order of
    the model it came from, with ``metrics`` (a ModelCompressionMetrics, or None
    when unknown, e.g. a file saved without them)."""

    __slots__ = ("_tensors", "metrics")

    def __init__(self, tensors: Mapping, metrics: Optional[ModelCompressionMetrics] = None) -> None:
        self._tensors: Dict[str, Any] = dict(tensors)
        if metrics is not None and not isinstance(metrics, ModelCompressionMetrics):
            raise TypeError(f"metrics must be a ModelCompressionMetrics or None, "
                            f"got {type(metrics).__name__}")
        self.metrics = metrics

    def __getitem__(self, name: str) -> Any:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def quantized(self) -> Dict[str, QuantizedTensor]:
        """The QuantizedTensor entries only."""
        return {k: v for k, v in self._tensors.items() if isinstance(v, QuantizedTensor)}

    @property
    def nbytes(self) -> int:
        """Bytes of all tensors as stored (packed, scales, zero points, plain arrays)."""
        return sum(int(v.nbytes) for v in self._tensors.values())

    def dequantize(self) -> Dict[str, np.ndarray]:
        """name -> float32 array for quantized entries, the others as they are."""
        return {k: v.dequantize() if isinstance(v, QuantizedTensor) else v
                for k, v in self._tensors.items()}

    def __repr__(self) -> str:
        nq = sum(isinstance(v, QuantizedTensor) for v in self._tensors.values())
        return (f"QuantizedModel({len(self._tensors)} tensors, {nq} quantized, "
                f"nbytes={self.nbytes})")


def _patterns(p: Patterns, what: str) -> Optional[tuple]:
    if p is None:
        return None
    if isinstance(p, str):
        return (p,)
    try:
        out = tuple(p)
    except TypeError:
        raise TypeError(f"{what} must be a glob pattern or a list of them, got "
                        f"{type(p).__name__}") from None
    for x in out:
        if not isinstance(x, str):
            raise TypeError(f"{what} must hold str glob patterns, got {type(x).__name__} {x!r}")
    return out


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)




def _uses_calibration(cfg: QuantConfig) -> bool:
    return cfg.method != "absmax" or cfg.ktype is not None


def _check_calibration(calibration: Any, weights: Mapping, config: QuantConfig, ovr) -> None:
    """Reject a calibration mapping that no quantized tensor can use."""
    from ._layerstats import LayerStats, lookup
    if not isinstance(calibration, Mapping):
        raise TypeError(f"calibration must be a mapping of layer name -> LayerStats, "
                        f"got {type(calibration).__name__}")
    for k, v in calibration.items():
        if not isinstance(k, str):
            raise TypeError(f"calibration keys must be str layer names, got {k!r}")
        if not isinstance(v, LayerStats):
            raise TypeError(f"calibration[{k!r}] must be a LayerStats, got {type(v).__name__}")
    if not any(_uses_calibration(c) for c in [config] + [c for _, c in ovr if c is not None]):
        raise ValueError("calibration is used by method='mse', method='gptq' and the K-quant "
                         "formats; the config (and every override) has method='absmax'")
    if calibration and not any(lookup(calibration, n) is not None for n in weights):
        some = ", ".join(repr(n) for n in list(calibration)[:3])
        wn = ", ".join(repr(n) for n in list(weights)[:3])
        raise ValueError(f"calibration matches no weight: its names ({some}, ...) are neither "
                         f"weight names nor weight names without '.weight' ({wn}, ...)")


def quantize_model(weights: Mapping, config: Optional[QuantConfig] = None, *,
                   include: Patterns = None, exclude: Patterns = None,
                   overrides: Optional[Mapping] = None,
                   progress: bool = True, calibration: Optional[Mapping] = None) -> QuantizedModel:
    """Quantize the matrices of a model.

    `weights` maps names to arrays (NumPy arrays or torch tensors, e.g. a
    ``state_dict()`` or ``quantcore.load(...)``).  A tensor is quantized when it
    is a float array of ndim >= 2, its name matches `include` (default: every
    name) and no `exclude` pattern; everything else (biases, norms, integer
    buffers, excluded names) passes through unchanged.  Patterns are
    case-sensitive globs (``fnmatch``: ``*``, ``?``, ``[...]``), one or a list.

    `config` (default ``QuantConfig.int4(group_size=32)``) applies to every
    quantized tensor unless `overrides` maps a pattern to another config, e.g.
    ``{"lm_head*": QuantConfig.int8()}``; the first matching pattern (in the
    mapping's order) wins, and a None there keeps the tensor in float.

    Returns a QuantizedModel (a mapping, in the input's order) whose
    ``metrics`` has one CompressionMetrics per float tensor: quantized ones as
    ``QuantizedTensor.metrics(reference)`` (real storage bits, MSE, max abs
    error, SNR against the original), float ones passed through at their own
    bits with MSE 0, so the totals describe the whole model (integer buffers
    are not parameters and are left out).  Values that already are
    QuantizedTensors are kept as they are (``metrics()`` without a reference).
    `progress` shows a tqdm bar on stderr when tqdm is installed and stderr is
    a terminal.  Errors name the tensor.

    `calibration` maps layer names to ``quantcore.calibrate.LayerStats`` (from
    ``StatsCollector``, ``quantcore.torch.collect_stats``, ``load_stats`` or
    ``read_imatrix``); a weight ``name`` uses the entry ``name`` or, failing
    that, ``name`` without its ``.weight`` suffix.  Configs with method="gptq"
    need an entry for every tensor they quantize; method="mse" and the K-quant
    formats use one where there is one (as the importance) and quantize plainly
    elsewhere; method="absmax" ignores them.  Calibrated layers get
    ``calibrated_error`` in their metrics (see
    ``quantcore.metrics.calibrated_error``).
    """
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a mapping of name -> array, got {type(weights).__name__}")
    if config is None:
        config = QuantConfig.int4(group_size=32)
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
    inc = _patterns(include, "include")
    exc = _patterns(exclude, "exclude") or ()
    ovr = []
    if overrides is not None:
        if not isinstance(overrides, Mapping):
            raise TypeError(f"overrides must be a mapping of pattern -> QuantConfig, "
                            f"got {type(overrides).__name__}")
        for pat, ocfg in overrides.items():
            if not isinstance(pat, str):
                raise TypeError(f"overrides keys must be str glob patterns, got {pat!r}")
            if ocfg is not None and not isinstance(ocfg, QuantConfig):
                raise TypeError(f"overrides[{pat!r}] must be a QuantConfig or None, "
                                f"got {type(ocfg).__name__}")
            ovr.append((pat, ocfg))
    for name in weights:
        if not isinstance(name, str):
            raise TypeError(f"weights keys must be str, got {type(name).__name__} {name!r}")
    if calibration is not None:
        _check_calibration(calibration, weights, config, ovr)

    items = list(weights.items())
    bar = None
    if progress and items:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            bar = tqdm(total=len(items), desc="quantizing", unit="tensor", leave=False,
                       disable=None)  # None: no bar when stderr is not a terminal
    out: Dict[str, Any] = {}
    metrics = ModelCompressionMetrics()
    try:
        for name, value in items:
            if bar is not None:
                bar.set_postfix_str(name if len(name) <= 40 else "..." + name[-37:], refresh=False)
            if isinstance(value, QuantizedTensor):  # already quantized: kept as it is
                out[name] = value
                metrics.add_layer(name, value.metrics())
                if bar is not None:
                    bar.update(1)
                continue
            a = to_numpy(value, f"weights[{name!r}]")
            cfg: Optional[QuantConfig] = None
            if a.dtype.kind == "f" and a.ndim >= 2 and a.size > 0 and \
                    (inc is None or _matches(name, inc)) and not _matches(name, exc):
                cfg = config
                for pat, c in ovr:
                    if fnmatch.fnmatchcase(name, pat):
                        cfg = c
                        break
            if cfg is not None:
                st = None
                if calibration is not None and _uses_calibration(cfg):
                    from ._layerstats import lookup
                    st = lookup(calibration, name)
                if st is None and cfg.method == "gptq":
                    where = "calibration=None" if calibration is None else (
                        f"calibration has no entry {name!r}" +
                        (f" or {name[:-7]!r}" if name.endswith(".weight") else ""))
                    raise ValueError(f"weights[{name!r}]: method='gptq' needs calibration "
                                     f"statistics of this layer's inputs and {where}; pass "
                                     f"calibration={{name: LayerStats}}, or exclude the tensor or "
                                     f"give it another config in overrides")
                try:
                    if st is None and cfg.method != "gptq":
                        qt = QuantizedTensor.quantize(a, cfg)
                    else:
                        qt = QuantizedTensor._quantize(a, cfg, repr(name), calibration=st)
                    m = qt.metrics(a)
                    if st is not None:
                        from .metrics import calibrated_error
                        m = dataclasses.replace(m, calibrated_error=calibrated_error(a, qt, st))
                except (ValueError, TypeError) as e:
                    raise type(e)(f"weights[{name!r}]: {e}") from None
                out[name] = qt
                metrics.add_layer(name, m)
            else:
                out[name] = a
                if a.dtype.kind == "f" and a.size > 0:
                    bits = 8.0 * a.dtype.itemsize
                    metrics.add_layer(name, CompressionMetrics(
                        int(a.size), bits, bits, float(np.count_nonzero(a == 0)) / a.size, 0.0))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return QuantizedModel(out, metrics)
