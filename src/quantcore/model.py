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

__all__ = ["ModelCompressionMetrics", "QuantizedModel", "quantize_model", "quantize_gguf",
           "recipe_formats", "choose_formats", "quantizable", "RECIPES", "TARGET_FORMATS"]

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
        self._formats: Dict[str, str] = {}

    # ---- adding layers -------------------------------------------------------------------
    def add_layer(self, name: str, metrics: CompressionMetrics, *,
                  format: Optional[str] = None) -> None:
        """Record `metrics` for layer `name` (a non-empty str not used yet);
        `format` (e.g. ``"q4_k"``) labels the layer in the table's ``format``
        column (shown when some layer has a label)."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        if not name:
            raise ValueError("name must not be empty")
        if not isinstance(metrics, CompressionMetrics):
            raise TypeError(f"metrics must be a CompressionMetrics, got {type(metrics).__name__}")
        if name in self._layers:
            raise ValueError(f"name {name!r} is already a layer of this model")
        if format is not None and not isinstance(format, str):
            raise TypeError(f"format must be a str or None, got {type(format).__name__}")
        self._layers[name] = metrics
        if format is not None:
            self._formats[name] = format

    def format_of(self, name: str) -> Optional[str]:
        """The format label of layer `name` (None when it has none)."""
        self[name]  # KeyError naming the layer
        return self._formats.get(name)

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
        return (list(self._layers.items()) == list(other._layers.items())
                and self._formats == other._formats)

    __hash__ = None  # type: ignore[assignment]

    # ---- export ----------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        """``{"layers": {name: metrics.to_dict()}, "totals": {...}}``, and
        ``"formats": {name: label}`` when some layer has a format label."""
        extra = {"formats": dict(self._formats)} if self._formats else {}
        return {**extra,
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
        unknown = set(d) - {"layers", "totals", "formats"}
        if unknown:
            raise ValueError(f"unknown model metrics keys: {sorted(map(str, unknown))}")
        formats = d.get("formats", {})
        if not isinstance(formats, dict) or not set(formats) <= set(d["layers"]):
            raise ValueError("model metrics 'formats' must be a dict of layer name -> label")
        out = cls()
        for name, m in d["layers"].items():
            out.add_layer(name, CompressionMetrics.from_dict(m), format=formats.get(name))
        return out

    _COLUMNS = ("layer", "params", "orig bits", "eff bits", "ratio", "sparsity", "MSE",
                "max abs err", "SNR dB")

    def _calibrated(self) -> bool:
        return any(m.calibrated_error is not None for m in self._layers.values())

    def _columns(self) -> Tuple[str, ...]:
        cols = self._COLUMNS[:1] + (("format",) if self._formats else ()) + self._COLUMNS[1:]
        return cols + (("calib err",) if self._calibrated() else ())

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
            if self._formats:
                row.insert(1, self._formats.get(name, "-"))
            return row

        rows = [fmt(m, name) for name, m in self._layers.items()]
        n = self.total_parameters()
        rows.append(["total", f"{n:,}", f"{self.average_original_bits():.4g}",
                     f"{self.average_effective_bits():.4g}",
                     f"{self.model_compression_ratio():.3g}",
                     f"{(sum(m.sparsity * m.n_parameters for m in self._layers.values()) / n) if n else 0.0:.3f}",
                     f"{self.mean_quantization_mse():.3e}", "", ""] + ([""] if calib else []))
        if self._formats:
            rows[-1].insert(1, "")
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
                   progress: bool = True, calibration: Optional[Mapping] = None,
                   recipe: Optional[str] = None,
                   target_bits: Optional[float] = None) -> QuantizedModel:
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

    `recipe` (``"q4_k_s"``, ``"q4_k_m"``, ``"q5_k_s"``, ``"q5_k_m"``,
    ``"q6_k"``) chooses each tensor's format by llama.cpp's rules for
    LLaMA-style GGUF names (:func:`recipe_formats`); `target_bits` (4.5 to
    8.5) chooses among Q4_K, Q5_K, Q6_K and Q8_0 by measured error so that the
    quantized tensors average at most that many bits per weight with the least
    sum of relative errors (:func:`choose_formats`; every candidate format is
    tried on every tensor).  Either replaces `config` and `overrides`; the
    metrics then label each layer with its format.
    """
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a mapping of name -> array, got {type(weights).__name__}")
    planned = recipe is not None or target_bits is not None
    if planned:
        if recipe is not None and target_bits is not None:
            raise ValueError("give recipe or target_bits, not both")
        if config is not None or overrides:
            raise ValueError(f"{'recipe' if recipe is not None else 'target_bits'} chooses "
                             f"every tensor's format: drop config and overrides")
        if recipe is not None:
            _check_recipe(recipe)
        else:
            _check_target_bits(target_bits)
        config = QuantConfig.q4_k()
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
    plan: Optional[Dict[str, Optional[str]]] = None
    if planned:
        shapes: Dict[str, Tuple[int, ...]] = {}
        for name, value in items:
            if isinstance(value, QuantizedTensor):
                continue
            a = to_numpy(value, f"weights[{name!r}]")
            if a.dtype.kind == "f" and a.ndim >= 2 and a.size > 0 and \
                    (inc is None or _matches(name, inc)) and not _matches(name, exc):
                shapes[name] = a.shape
        if recipe is not None:
            plan = recipe_formats(shapes, recipe)
        else:
            assert target_bits is not None
            plan = _plan_target(
                [(n, to_numpy(weights[n], f"weights[{n!r}]")) for n, shp in shapes.items()
                 if quantizable(n, shp)], float(target_bits), calibration)
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
                if plan is not None:
                    fmt = plan.get(name)
                    cfg = None if fmt in (None, "f16") else _format_config(fmt)
                    if fmt == "f16":
                        out[name] = a16 = a.astype(np.float16)
                        metrics.add_layer(name, _cast_metrics(a, a16), format="f16")
                        if bar is not None:
                            bar.update(1)
                        continue
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
                metrics.add_layer(name, m, format=cfg.format if plan is not None else None)
            else:
                out[name] = a
                if a.dtype.kind == "f" and a.size > 0:
                    bits = 8.0 * a.dtype.itemsize
                    metrics.add_layer(name, CompressionMetrics(
                        int(a.size), bits, bits, float(np.count_nonzero(a == 0)) / a.size, 0.0),
                        format=a.dtype.name if plan is not None else None)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return QuantizedModel(out, metrics)


# ---- llama.cpp's K-quant recipes --------------------------------------------------------

RECIPES = ("q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")
_RECIPE_BASE = {"q4_k_s": "q4_k", "q4_k_m": "q4_k", "q5_k_s": "q5_k", "q5_k_m": "q5_k",
                "q6_k": "q6_k"}
# llama.cpp's llama_ftype values, written to general.file_type
_RECIPE_FILE_TYPE = {"q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18}
_FORMAT_FILE_TYPE = {"q8_0": 7, "q4_0": 2, "q4_1": 3, "q4_k": 15, "q5_k": 17, "q6_k": 18,
                     "f16": 1}
_KQUANTS = ("q4_k", "q5_k", "q6_k")
# name parts llama.cpp never quantizes (besides 1-D tensors and names not ending in "weight")
_NEVER = ("_norm.weight", "ffn_gate_inp.weight", "pos_embd", "token_types")
TARGET_FORMATS = ("q4_k", "q5_k", "q6_k", "q8_0")
_TARGET_FALLBACK = ("q4_0", "q4_1", "q8_0")  # rows a multiple of 32 but not of 256


def _format_config(fmt: str) -> QuantConfig:
    return getattr(QuantConfig, fmt)()


def _check_recipe(recipe: Any) -> str:
    if not isinstance(recipe, str):
        raise TypeError(f"recipe must be a str, one of {', '.join(RECIPES)}; got "
                        f"{type(recipe).__name__}")
    r = recipe.lower()
    if r not in _RECIPE_BASE:
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    return r


def _check_target_bits(target_bits: Any) -> float:
    if isinstance(target_bits, bool) or not isinstance(target_bits, (int, float, np.integer,
                                                                     np.floating)):
        raise TypeError(f"target_bits must be a number of bits per weight, got "
                        f"{type(target_bits).__name__} {target_bits!r}")
    t = float(target_bits)
    if not math.isfinite(t) or not 4.5 <= t <= 8.5:
        raise ValueError(f"target_bits must lie in [4.5, 8.5] bits per weight (between the "
                         f"smallest format, Q4_K, and Q8_0), got {target_bits!r}")
    return t


def quantizable(name: str, shape: Sequence[int]) -> bool:
    """Whether llama.cpp's quantizer would quantize a tensor of this name and
    NumPy shape: ndim >= 2, a name ending in ``weight`` and not a norm, an
    expert router (``ffn_gate_inp``) or a positional / token-type embedding."""
    return (len(tuple(shape)) >= 2 and name.endswith("weight")
            and not any(p in name for p in _NEVER))


def _use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's layers that get more bits in the *_M recipes: the first and
    last eighth, and every third layer in between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fallback(fmt: str, row: int) -> str:
    """The format for a row length the chosen one cannot hold: llama.cpp falls
    back from Q4_K / Q5_K / Q6_K to Q5_0 / Q5_1 / Q8_0 (and to F16 when the
    row is not a multiple of 32); quantcore has no Q5_0/Q5_1 and uses Q8_0."""
    block = 256 if fmt in _KQUANTS else 32
    if row % block == 0:
        return fmt
    return "q8_0" if row % 32 == 0 else "f16"


def recipe_formats(shapes: Mapping[str, Sequence[int]], recipe: str) -> Dict[str, Optional[str]]:
    """The format llama.cpp's recipe gives each tensor: ``{name: fmt}`` in the
    order of `shapes` (``{name: NumPy shape}``, the model's tensors in file
    order), fmt one of ``"q4_k"``, ``"q5_k"``, ``"q6_k"``, ``"q8_0"``,
    ``"f16"`` or None (kept as it is: norms, 1-D tensors, see
    :func:`quantizable`).

    `recipe` is one of :data:`RECIPES`.  The rules, for LLaMA-style GGUF
    names: ``output.weight`` (or ``token_embd.weight`` when there is no
    ``output.weight``) gets Q6_K; in Q4_K_M and Q5_K_M, ``attn_v`` and
    ``ffn_down`` get Q6_K in the first and last eighth of their layers and in
    every third layer between; in Q4_K_S they get Q5_K in the first 4 (attn_v)
    or the first eighth (ffn_down) layers; a fused ``attn_qkv`` gets Q5_K
    (Q4_K_M) or Q6_K (Q5_K_M); everything else gets the recipe's base type.
    A row length that is not a multiple of 256 falls back to Q8_0 (F16 when
    not a multiple of 32).  Layers are counted in the order of `shapes`, as
    llama.cpp counts them."""
    r = _check_recipe(recipe)
    if not isinstance(shapes, Mapping):
        raise TypeError(f"shapes must be a mapping of name -> shape, got {type(shapes).__name__}")
    base = _RECIPE_BASE[r]
    names = [n for n, shp in shapes.items() if quantizable(n, shp)]
    n_v = sum("attn_v.weight" in n for n in names)
    n_down = sum("ffn_down" in n for n in names)
    has_output = "output.weight" in shapes
    i_v = i_down = 0
    out: Dict[str, Optional[str]] = {}
    for name, shp in shapes.items():
        if not quantizable(name, shp):
            out[name] = None
            continue
        row = int(tuple(shp)[-1])
        fmt = base
        if name == "output.weight" or (not has_output and name == "token_embd.weight"):
            fmt = "q6_k" if row % 256 == 0 else "q8_0"
        elif name == "token_embd.weight":
            pass
        elif "attn_v.weight" in name:
            if r in ("q4_k_m", "q5_k_m") and _use_more_bits(i_v, n_v):
                fmt = "q6_k"
            elif r == "q4_k_s" and i_v < 4:
                fmt = "q5_k"
            i_v += 1
        elif "ffn_down" in name:
            if r in ("q4_k_m", "q5_k_m") and _use_more_bits(i_down, n_down):
                fmt = "q6_k"
            elif r == "q4_k_s" and i_down < n_down // 8:
                fmt = "q5_k"
            i_down += 1
        elif "attn_qkv.weight" in name:
            fmt = {"q4_k_m": "q5_k", "q5_k_m": "q6_k"}.get(r, fmt)
        out[name] = _fallback(fmt, row)
    return out


def _candidates(row: int) -> Tuple[str, ...]:
    if row % 256 == 0:
        return TARGET_FORMATS
    if row % 32 == 0:
        return _TARGET_FALLBACK
    return ()


def _relative_error(a: np.ndarray, qt: QuantizedTensor, importance: Optional[np.ndarray]) -> float:
    """sum(imp * (w - q)^2) / sum(imp * w^2) over the tensor (imp = 1 without importance)."""
    w = a.reshape(-1, a.shape[-1]).astype(np.float64)
    d = qt.dequantize().reshape(w.shape).astype(np.float64) - w
    imp = np.ones(w.shape[1]) if importance is None else np.asarray(importance, np.float64)
    num = float(np.sum((d * d) @ imp))
    den = float(np.sum((w * w) @ imp))
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


def choose_formats(errors: Mapping[str, Tuple[int, Mapping[str, Tuple[float, float]]]],
                   target_bits: float) -> Dict[str, str]:
    """Pick one format per tensor so that the average bits per weight is at
    most `target_bits` and the sum of the tensors' relative errors is least.

    `errors` maps each tensor to ``(n_parameters, {fmt: (bits per weight,
    relative error)})``.  A knapsack solved by dynamic programming: the bits
    above every tensor's smallest format are counted in steps of 1/(256 T)
    of the bits to spare (T tensors; costs rounded up, so the result always
    fits), then what the rounding left is spent on the single upgrades that
    still fit, largest error decrease first.  The result is never worse than
    one format for every tensor, where that fits.  A target below the
    smallest formats' average raises ValueError."""
    opts: Dict[str, List[Tuple[float, float, str]]] = {}
    for name, (n, per) in errors.items():
        o = sorted((float(b) * n, float(e), f) for f, (b, e) in per.items())
        if not o:
            raise ValueError(f"tensor {name!r} has no format to choose from")
        opts[name] = o
    total_n = sum(n for n, _ in errors.values())
    if total_n == 0:
        return {}
    budget = float(target_bits) * total_n * (1 + 1e-12)
    lowest = sum(o[0][0] for o in opts.values())
    if lowest > budget:
        raise ValueError(f"target_bits={target_bits!r} is below the smallest average these "
                         f"tensors can have ({lowest / total_n:.4f} bits per weight, every "
                         f"tensor in its smallest format)")
    names = list(opts)
    spare = budget - lowest
    units = 256 * len(names)
    step = spare / units if spare > 0 else 1.0
    dp = np.zeros(units + 1)
    picks = []
    for name in names:
        o = opts[name]
        new = np.full(units + 1, np.inf)
        arg = np.zeros(units + 1, np.int8)
        for k, (b, e, _) in enumerate(o):
            c = math.ceil((b - o[0][0]) / step - 1e-9) if spare > 0 else (0 if b == o[0][0] else units + 1)
            if c > units:
                continue
            cand = np.full(units + 1, np.inf)
            cand[c:] = dp[:units + 1 - c] + e
            better = cand < new
            new[better] = cand[better]
            arg[better] = k
        dp = new
        picks.append(arg)
    u = units
    choice: Dict[str, Tuple[float, float, str]] = {}
    for name, arg in zip(reversed(names), reversed(picks)):
        o = opts[name]
        k = int(arg[u])
        choice[name] = o[k]
        if spare > 0:
            u -= math.ceil((o[k][0] - o[0][0]) / step - 1e-9)
    used = sum(c[0] for c in choice.values())
    while True:  # what the rounding left: the best single upgrade that fits, repeatedly
        best = None
        for name, o in opts.items():
            cb, ce, _ = choice[name]
            for p in o:
                if p[1] < ce and used - cb + p[0] <= budget and (best is None or
                                                                 ce - p[1] > best[0]):
                    best = (ce - p[1], name, p)
        if best is None:
            break
        _, name, p = best
        used += p[0] - choice[name][0]
        choice[name] = p
    total = sum(c[1] for c in choice.values())
    common = set.intersection(*(set(f for _, _, f in o) for o in opts.values()))
    for f in sorted(common):
        pick = {name: next(p for p in o if p[2] == f) for name, o in opts.items()}
        if sum(p[0] for p in pick.values()) <= budget and \
                sum(p[1] for p in pick.values()) < total:
            choice, total = pick, sum(p[1] for p in pick.values())
    return {name: c[2] for name, c in choice.items()}


def _cast_metrics(a: np.ndarray, a16: np.ndarray) -> CompressionMetrics:
    d = a16.astype(np.float64) - a.astype(np.float64)
    return CompressionMetrics(int(a.size), 8.0 * a.dtype.itemsize, 16.0,
                              float(np.count_nonzero(a == 0)) / a.size, float(np.mean(d * d)))


def _importance(calibration: Optional[Mapping], name: str, row: int,
                where: str) -> Optional[np.ndarray]:
    if calibration is None:
        return None
    from ._layerstats import lookup
    st = lookup(calibration, name)
    if st is None:
        return None
    imp = np.asarray(st.importance, dtype=np.float32)
    if imp.shape != (row,):
        raise ValueError(f"{where}: the importance of {name!r} has {imp.size} values, the "
                         f"tensor's rows {row}")
    return imp


def _plan_target(items: Sequence[Tuple[str, Any]], target_bits: float,
                 calibration: Optional[Mapping], where: str = "calibration",
                 progress: Any = None) -> Dict[str, Optional[str]]:
    """{name: fmt} for `target_bits`: every candidate format tried on every tensor
    (an item's array may be a function returning it, read when its turn comes)."""
    errors: Dict[str, Tuple[int, Dict[str, Tuple[float, float]]]] = {}
    for name, item in items:
        a = np.asarray(item() if callable(item) else item, dtype=np.float32)
        row = a.shape[-1]
        imp = _importance(calibration, name, row, where)
        per: Dict[str, Tuple[float, float]] = {}
        for fmt in _candidates(row) or ("f16",):
            if fmt == "f16":
                d = a.astype(np.float16).astype(np.float64) - a
                w = 1.0 if imp is None else imp.astype(np.float64)
                den = float(np.sum(a.astype(np.float64) ** 2 * w))
                per[fmt] = (16.0, float(np.sum(d * d * w)) / den if den > 0 else 0.0)
                continue
            try:
                qt = QuantizedTensor._quantize(a, _format_config(fmt), repr(name),
                                               importance=imp if fmt in _KQUANTS else None)
            except (ValueError, TypeError) as e:
                raise type(e)(f"weights[{name!r}]: {e}") from None
            per[fmt] = (qt.effective_bits, _relative_error(a, qt, imp))
        errors[name] = (int(a.size), per)
        if progress is not None:
            progress(name)
    chosen: Dict[str, Optional[str]] = dict(choose_formats(errors, target_bits))
    return chosen


# ---- GGUF files ---------------------------------------------------------------------------

_FLOAT_TYPES = {0: "F32", 1: "F16", 28: "F64", 30: "BF16"}


def _gguf_metadata(reader: Any, path: str) -> Dict[str, Any]:
    """The file's key/value pairs as ``gguf.save`` takes them, each with its exact type."""
    from gguf import GGUFValueType as VT
    out: Dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):  # the reader's own entries: version and counts
            continue
        vt = VT(field.types[0])
        try:
            val = field.contents()
        except UnicodeDecodeError:
            raise ValueError(f"{path}: metadata {key!r} holds text that is not UTF-8") from None
        if vt == VT.ARRAY:
            sub = VT(field.types[-1]) if len(field.types) == 2 else VT.ARRAY
            out[key] = (val, VT.ARRAY, sub) if sub != VT.ARRAY else (val, VT.ARRAY)
        else:
            out[key] = (val, vt)
    return out


def quantize_gguf(src: Any, dst: Any, *, recipe: Optional[str] = None,
                  target_bits: Optional[float] = None, imatrix: Optional[Mapping] = None,
                  imatrix_file: Optional[str] = None, allow_requantize: bool = False,
                  progress: bool = True) -> ModelCompressionMetrics:
    """Quantize a GGUF model file `src` into a new GGUF file `dst`, as
    llama.cpp's ``llama-quantize`` does; returns the per-tensor metrics (each
    layer labelled with its format).

    `recipe` (one of :data:`RECIPES`) picks each weight's format by
    llama.cpp's rules (:func:`recipe_formats`); `target_bits` picks it by
    measured error instead (see :func:`quantize_model`).  Every metadata key
    of `src` is kept with its value and type, except ``general.file_type``
    (set to llama.cpp's file type of the recipe; with `target_bits`, the type
    llama.cpp would guess from the format holding the most weights) and
    ``general.quantization_version`` (2); with `imatrix_file`,
    ``quantize.imatrix.file`` and ``quantize.imatrix.entries_count`` are
    added, as llama.cpp adds them.  Tensors that are not quantized (norms,
    1-D tensors, integer tensors) are copied byte for byte, and so is a weight
    already in the format chosen for it.

    F32, F16, BF16 and F64 weights are quantized; a weight already in another
    quantized type raises ValueError unless `allow_requantize` (then it is
    dequantized and quantized again, losing some accuracy twice, as
    llama.cpp's ``--allow-requantize``).

    `imatrix`: a mapping of weight name -> LayerStats, e.g. a llama.cpp
    importance-matrix file read by ``quantcore.calibrate.read_imatrix`` (GGUF
    or the legacy ``.dat``); its mean squares are the importance of the
    K-quant weights of the same name.  Weights it has no entry for are
    quantized without one, with one warning listing them.  `imatrix_file`
    (the file's name) is recorded in the metadata and named in messages.  The file is written
    atomically (a temporary file renamed over `dst` when complete)."""
    import os
    import warnings
    from . import _io
    from . import gguf as qgguf
    if recipe is None and target_bits is None:
        raise ValueError("give recipe (one of " + ", ".join(RECIPES) + ") or target_bits")
    if recipe is not None and target_bits is not None:
        raise ValueError("give recipe or target_bits, not both")
    r = _check_recipe(recipe) if recipe is not None else None
    t = _check_target_bits(target_bits) if target_bits is not None else None
    if not isinstance(allow_requantize, bool):
        raise TypeError(f"allow_requantize must be True or False, got {allow_requantize!r}")
    sp, dp = os.fsdecode(os.fspath(src)), os.fsdecode(os.fspath(dst))
    _io.stat_regular(sp)
    _io.check_output(dp)
    if _io.same_file(sp, dp):
        raise ValueError(f"{dp} is the input file; quantizing does not replace its input: "
                         f"give another output path")
    qgguf.load_metadata(sp)  # quantcore's bounds-checked parse: a clear error for a bad file
    if imatrix is not None and not isinstance(imatrix, Mapping):
        raise TypeError(f"imatrix must be a mapping of weight name -> LayerStats (e.g. "
                        f"quantcore.calibrate.read_imatrix(path)), got {type(imatrix).__name__}")
    if imatrix_file is not None and not isinstance(imatrix_file, str):
        raise TypeError(f"imatrix_file must be a str, got {type(imatrix_file).__name__}")
    calibration: Optional[Mapping] = imatrix
    ipath: Optional[str] = imatrix_file if imatrix is not None else None
    import gguf as gg
    reader = gg.GGUFReader(sp, "r")
    meta = _gguf_metadata(reader, sp)
    arch = meta.pop("general.architecture", (None,))[0]
    if not isinstance(arch, str) or not arch:
        raise ValueError(f"{sp}: no general.architecture key: not a model file")
    tensors = list(reader.tensors)
    shapes = {ti.name: tuple(int(d) for d in reversed(ti.shape.tolist())) for ti in tensors}
    by_name = {ti.name: ti for ti in tensors}

    def floats(ti: Any) -> np.ndarray:
        raw = np.asarray(ti.data).view(np.uint8).reshape(-1)
        info = qgguf._TensorInfo(ti.name, tuple(reversed(shapes[ti.name])), int(ti.tensor_type),
                                 0, raw.size)
        v = qgguf._convert(info, raw, "auto", sp)
        return v.dequantize() if isinstance(v, QuantizedTensor) else np.asarray(v, np.float32)

    def check_type(name: str, fmt: Optional[str]) -> None:
        ti = by_name[name]
        tt = int(ti.tensor_type)
        if fmt is None or tt in _FLOAT_TYPES or _type_format(tt) == fmt:
            return
        if not allow_requantize:
            raise ValueError(f"{sp}: tensor {name!r} is already {ti.tensor_type.name}; "
                             f"quantizing it again loses accuracy twice: pass "
                             f"allow_requantize=True (--allow-requantize) to dequantize and "
                             f"requantize it")

    bar = None
    if progress and tensors:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(tensors), desc="quantizing", unit="tensor", leave=False,
                       disable=None)
        except ImportError:
            bar = None
    try:
        if r is not None:
            plan = recipe_formats(shapes, r)
            for name, fmt in plan.items():
                check_type(name, fmt)
        else:
            assert t is not None
            cand = [n for n, shp in shapes.items() if quantizable(n, shp)]
            for name in cand:
                check_type(name, "")
            if bar is not None:
                bar.set_description("measuring")
                bar.reset(total=len(cand))
            plan = {n: None for n in shapes}
            lazy = [(n, lambda n=n: floats(by_name[n])) for n in cand]
            plan.update(_plan_target(lazy, t, calibration, ipath or "imatrix",
                                     progress=(lambda _n: bar.update(1)) if bar else None))
            if bar is not None:
                bar.set_description("quantizing")
                bar.reset(total=len(tensors))
        missing = [n for n, f in plan.items() if f in _KQUANTS and calibration is not None
                   and _importance(calibration, n, shapes[n][-1], ipath or "imatrix") is None]
        if missing:
            warnings.warn(f"{ipath or 'imatrix'}: no importance for {len(missing)} of "
                          f"{sum(f in _KQUANTS for f in plan.values())} K-quant tensors "
                          f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); "
                          f"they are quantized without", UserWarning, stacklevel=2)
        out: Dict[str, Any] = {}
        metrics = ModelCompressionMetrics()
        for ti in tensors:
            name, tt = ti.name, int(ti.tensor_type)
            fmt = plan.get(name)
            raw = np.asarray(ti.data).view(np.uint8).reshape(-1)
            if bar is not None:
                bar.set_postfix_str(name if len(name) <= 40 else "..." + name[-37:],
                                    refresh=False)
            keep = fmt is None or (fmt == "f16" and tt == 1) or _type_format(tt) == fmt
            if keep:
                out[name] = qgguf._RawTensor(raw, tt, shapes[name])
                _copied_metrics(metrics, name, ti, raw, shapes[name], sp)
            elif fmt == "f16":
                a = floats(ti)
                out[name] = a16 = a.astype(np.float16)
                metrics.add_layer(name, _cast_metrics(a, a16), format="f16")
            else:
                assert fmt is not None
                a = floats(ti)
                imp = _importance(calibration, name, a.shape[-1], ipath or "imatrix") \
                    if fmt in _KQUANTS else None
                try:
                    qt = QuantizedTensor._quantize(a, _format_config(fmt), repr(name),
                                                   importance=imp)
                except (ValueError, TypeError) as e:
                    raise type(e)(f"{sp}: tensor {name!r}: {e}") from None
                out[name] = qt
                metrics.add_layer(name, qt.metrics(a), format=fmt)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    from gguf import GGUFValueType as VT
    meta.pop("general.quantization_version", None)  # save writes 2, as llama.cpp does
    if r is not None:
        ftype = _RECIPE_FILE_TYPE[r]
    else:
        weight: Dict[str, int] = {}
        for name, fmt in plan.items():
            if fmt is not None:
                weight[fmt] = weight.get(fmt, 0) + math.prod(shapes[name])
        ftype = _FORMAT_FILE_TYPE[max(weight, key=lambda f: weight[f])] if weight else 1
    meta["general.file_type"] = (ftype, VT.UINT32)
    if ipath is not None and calibration is not None:
        meta["quantize.imatrix.file"] = (ipath, VT.STRING)
        meta["quantize.imatrix.entries_count"] = (len(calibration), VT.INT32)
    qgguf.save(dp, out, metadata=meta, arch=arch)
    return metrics


def _type_format(ggml_type: int) -> Optional[str]:
    return {8: "q8_0", 2: "q4_0", 3: "q4_1", 12: "q4_k", 13: "q5_k", 14: "q6_k"}.get(ggml_type)


def _copied_metrics(metrics: ModelCompressionMetrics, name: str, ti: Any, raw: np.ndarray,
                    shape: Tuple[int, ...], path: str) -> None:
    """Metrics of a tensor copied as it is (integer tensors are not parameters)."""
    from . import gguf as qgguf
    tt = int(ti.tensor_type)
    n = math.prod(shape)
    if n == 0 or tt in (24, 25, 26, 27):
        return
    label = ti.tensor_type.name.lower()
    if tt in _FLOAT_TYPES:
        bits = 8.0 * raw.size / n
        info = qgguf._TensorInfo(name, tuple(reversed(shape)), tt, 0, raw.size)
        a = qgguf._convert(info, raw, "auto", path)
        metrics.add_layer(name, CompressionMetrics(
            n, bits, bits, float(np.count_nonzero(a == 0)) / n, 0.0), format=label)
    else:
        bits = 8.0 * raw.size / n
        metrics.add_layer(name, CompressionMetrics(n, bits, bits, 0.0, 0.0), format=label)
