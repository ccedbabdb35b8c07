"""Whole models: quantize a mapping of name -> weight array (``quantize_model``)."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping
from typing import Any, Dict, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from .config import QuantConfig
from .metrics import CompressionMetrics, ModelCompressionMetrics
from .tensor import QuantizedTensor

__all__ = ["QuantizedModel", "quantize_model"]

Patterns = Union[None, str, Iterable[str]]


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


def _to_array(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch, never imported here
        value = value.detach().cpu()
        if str(getattr(value, "dtype", "")) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except Exception as e:
        raise TypeError(f"weights[{name!r}] is not an array: {e}") from None


def _check_calibration(calibration: Any, weights: Mapping, config: QuantConfig, ovr) -> None:
    """Reject a calibration mapping that no quantized tensor can use."""
    from .calibrate import LayerStats, lookup
    if not isinstance(calibration, Mapping):
        raise TypeError(f"calibration must be a mapping of layer name -> LayerStats, "
                        f"got {type(calibration).__name__}")
    for k, v in calibration.items():
        if not isinstance(k, str):
            raise TypeError(f"calibration keys must be str layer names, got {k!r}")
        if not isinstance(v, LayerStats):
            raise TypeError(f"calibration[{k!r}] must be a LayerStats, got {type(v).__name__}")
    methods = {config.method} | {c.method for _, c in ovr if c is not None}
    if methods == {"absmax"}:
        raise ValueError("calibration is used by method='mse' and method='gptq'; the config "
                         "(and every override) has method='absmax'")
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
    need an entry for every tensor they quantize; method="mse" uses one where
    there is one (importance-weighted) and the plain search elsewhere;
    method="absmax" ignores them.  Calibrated layers get
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
            a = _to_array(value, name)
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
                if calibration is not None and cfg.method != "absmax":
                    from .calibrate import lookup
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
                        qt = QuantizedTensor._quantize(a, cfg, repr(name), st)
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
