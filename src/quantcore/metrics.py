"""Compression metrics: one tensor (CompressionMetrics) and a whole model
(ModelCompressionMetrics).

CompressionMetrics keeps the seed's contract field for field (n_parameters,
original_bits_per_param, effective_bits_per_param, sparsity, quantization_mse)
and its three constructors; ``max_abs_error`` and ``snr_db`` are extra fields,
``None`` where nothing was measured.  ``QuantizedTensor.metrics(reference)``
measures a real tensor (see ``tensor_metrics``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

__all__ = ["CompressionMetrics", "ModelCompressionMetrics", "calibrated_error", "cosine_similarity",
           "relative_error", "kl_divergence", "top1_agreement", "compare_outputs", "OutputComparison"]

_FLOAT32_BITS = 32.0


def _check_count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value}")
    return value


def _check_real(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{what} must not be NaN")
    return value


def _check_nonneg(value: Any, what: str) -> float:
    value = _check_real(value, what)
    if not (0.0 <= value < math.inf):
        raise ValueError(f"{what} must be finite and >= 0, got {value}")
    return value


def _check_bits(value: Any, what: str) -> float:
    value = _check_real(value, what)
    if not (0.0 < value < math.inf):
        raise ValueError(f"{what} must be finite and > 0, got {value}")
    return value


def _check_sparsity(value: Any, what: str = "sparsity") -> float:
    value = _check_real(value, what)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must lie in [0, 1], got {value}")
    return value


@dataclass(frozen=True)
class CompressionMetrics:
    """How much a tensor was compressed and how much error that cost.

    Fields (the seed's contract):

    * ``n_parameters``: number of weights.
    * ``original_bits_per_param``: bits per weight before compression (32 for float32).
    * ``effective_bits_per_param``: bits per weight after compression.
    * ``sparsity``: fraction of weights that are zero (pruned), in [0, 1].
    * ``quantization_mse``: mean squared error of the quantized weights (0 when
      there was no quantization).

    Extra fields, ``None`` when not measured: ``max_abs_error`` (largest
    absolute error), ``snr_db`` (``10 log10(sum(w^2) / sum((w - w_hat)^2))``;
    ``inf`` for an exact reconstruction) and ``calibrated_error`` (the layer's
    relative output error on its calibration inputs, ``calibrated_error()``;
    set when the layer was quantized with calibration statistics).

    ``CompressionMetrics()`` is all zeros.  Out-of-range values (negative
    counts or bits, sparsity outside [0, 1], NaN, a negative or infinite MSE)
    raise ValueError naming the field; wrong types raise TypeError.
    """

    n_parameters: int = 0
    original_bits_per_param: float = 0.0
    effective_bits_per_param: float = 0.0
    sparsity: float = 0.0
    quantization_mse: float = 0.0
    max_abs_error: Optional[float] = None
    snr_db: Optional[float] = None
    calibrated_error: Optional[float] = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("n_parameters", _check_count(self.n_parameters, "n_parameters"))
        set_("original_bits_per_param",
             _check_nonneg(self.original_bits_per_param, "original_bits_per_param"))
        set_("effective_bits_per_param",
             _check_nonneg(self.effective_bits_per_param, "effective_bits_per_param"))
        set_("sparsity", _check_sparsity(self.sparsity))
        set_("quantization_mse", _check_nonneg(self.quantization_mse, "quantization_mse"))
        if self.max_abs_error is not None:
            set_("max_abs_error", _check_nonneg(self.max_abs_error, "max_abs_error"))
        if self.snr_db is not None:
            set_("snr_db", _check_real(self.snr_db, "snr_db"))
        if self.calibrated_error is not None:
            set_("calibrated_error", _check_nonneg(self.calibrated_error, "calibrated_error"))

    # ---- the seed's constructors ------------------------------------------------------
    @classmethod
    def quantized_only(cls, n_parameters: int, quant_bits: float, quant_mse: float, *,
                       max_abs_error: Optional[float] = None,
                       snr_db: Optional[float] = None) -> "CompressionMetrics":
        """float32 weights quantized to `quant_bits` bits each: original 32,
        effective `quant_bits`, sparsity 0, MSE `quant_mse`."""
        return cls(_check_count(n_parameters, "n_parameters"), _FLOAT32_BITS,
                   _check_bits(quant_bits, "quant_bits"), 0.0,
                   _check_nonneg(quant_mse, "quant_mse"), max_abs_error, snr_db)

    @classmethod
    def pruned_only(cls, n_parameters: int, sparsity: float) -> "CompressionMetrics":
        """float32 weights with a fraction `sparsity` pruned (stored sparsely):
        effective ``32 * (1 - sparsity)``, MSE 0."""
        s = _check_sparsity(sparsity)
        return cls(_check_count(n_parameters, "n_parameters"), _FLOAT32_BITS,
                   _FLOAT32_BITS * (1.0 - s), s, 0.0)

    @classmethod
    def quantized_and_pruned(cls, n_parameters: int, quant_bits: float, sparsity: float,
                             quant_mse: float, *, max_abs_error: Optional[float] = None,
                             snr_db: Optional[float] = None) -> "CompressionMetrics":
        """float32 weights pruned to `sparsity` and the rest quantized to
        `quant_bits` bits: effective ``quant_bits * (1 - sparsity)``."""
        bits = _check_bits(quant_bits, "quant_bits")
        s = _check_sparsity(sparsity)
        return cls(_check_count(n_parameters, "n_parameters"), _FLOAT32_BITS, bits * (1.0 - s), s,
                   _check_nonneg(quant_mse, "quant_mse"), max_abs_error, snr_db)

    # ---- derived ------------------------------------------------------------------------
    def compression_ratio(self) -> float:
        """original / effective bits per parameter; ``inf`` when effective is 0
        (including the all-zeros default)."""
        if self.effective_bits_per_param == 0.0:
            return math.inf
        return self.original_bits_per_param / self.effective_bits_per_param

    def total_original_bits(self) -> float:
        """n_parameters x original_bits_per_param."""
        return self.n_parameters * self.original_bits_per_param

    def total_compressed_bits(self) -> float:
        """n_parameters x effective_bits_per_param."""
        return self.n_parameters * self.effective_bits_per_param

    def to_dict(self) -> Dict[str, Any]:
        """The fields as a plain dict (JSON-friendly except an infinite snr_db)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CompressionMetrics":
        """Inverse of to_dict; unknown keys raise ValueError."""
        if not isinstance(d, dict):
            raise TypeError(f"metrics must be a dict, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown CompressionMetrics fields: {sorted(map(str, unknown))}")
        return cls(**d)

    def __repr__(self) -> str:
        parts = [f"n_parameters={self.n_parameters}",
                 f"original_bits_per_param={self.original_bits_per_param:g}",
                 f"effective_bits_per_param={self.effective_bits_per_param:.6g}",
                 f"sparsity={self.sparsity:.6g}",
                 f"quantization_mse={self.quantization_mse:.6g}"]
        if self.max_abs_error is not None:
            parts.append(f"max_abs_error={self.max_abs_error:.6g}")
        if self.snr_db is not None:
            parts.append(f"snr_db={self.snr_db:.4g}")
        if self.calibrated_error is not None:
            parts.append(f"calibrated_error={self.calibrated_error:.4g}")
        parts.append(f"compression_ratio={self.compression_ratio():.4g}")
        return f"CompressionMetrics({', '.join(parts)})"


def tensor_metrics(qt: Any, reference: Any = None) -> CompressionMetrics:
    """Measure a QuantizedTensor (the body of ``QuantizedTensor.metrics``).

    * effective bits: the real storage, ``8 * qt.nbytes / qt.size`` (codes,
      scales and zero points; 4.5 for int4 g32 with float16 scales, 5.0 with
      float32).  Storage is dense, so pruned zeros are stored like any code and
      do not lower it (``CompressionMetrics.quantized_and_pruned`` gives the
      figure a sparse format would reach).
    * original bits: the itemsize of the array that was quantized (32 for float32,
      16 for float16).
    * with a `reference` (the float array that was quantized, same shape):
      ``quantization_mse``, ``max_abs_error`` and ``snr_db`` against it, and
      ``sparsity`` = fraction of exact zeros in it (pruned weights).
    * without one, the reference is the tensor's own dequantization: MSE 0,
      ``max_abs_error`` and ``snr_db`` None (not measured), sparsity = fraction
      of exact zeros in the dequantized values.
    """
    from .tensor import _as_float_array
    deq = qt.dequantize()
    n = qt.size
    eff = 8.0 * qt.nbytes / n
    orig = 8.0 * qt.dtype.itemsize
    if reference is None:
        sparsity = float(np.count_nonzero(deq == 0)) / n
        return CompressionMetrics(n, orig, eff, sparsity, 0.0)
    ref = _as_float_array(reference, "reference")
    if ref.shape != qt.shape:
        raise ValueError(f"reference must have shape {qt.shape}, got {ref.shape}")
    # float64 sums over cache-sized chunks (no full-size float64 temporaries).
    # Plain ufunc sums, not np.dot: OpenBLAS threads calling in right after the
    # kernels' OpenMP threads (still spinning) ran 100x slower here.
    flat_d = deq.reshape(-1)
    flat_r = ref.reshape(-1)
    err2 = sig2 = max_abs = 0.0
    zeros = 0
    step = 1 << 16
    for i in range(0, n, step):
        r = flat_r[i:i + step].astype(np.float64)
        e = flat_d[i:i + step].astype(np.float64)
        e -= r
        np.abs(e, out=e)
        max_abs = max(max_abs, float(e.max()))
        e *= e
        err2 += float(e.sum())
        zeros += int(np.count_nonzero(r == 0))
        r *= r
        sig2 += float(r.sum())
    if not (math.isfinite(err2) and math.isfinite(sig2)):
        raise ValueError("reference contains NaN or Inf")
    mse = err2 / n
    if err2 == 0.0:
        snr = math.inf
    elif sig2 == 0.0:
        snr = -math.inf
    else:
        snr = 10.0 * math.log10(sig2 / err2)
    return CompressionMetrics(n, orig, eff, zeros / n, mse, max_abs, snr)


_CALIB_BUDGET = 1 << 33  # multiply-adds spent on tr(dW H dW.T) before rows are sampled


def calibrated_error(weight: Any, quantized: Any, stats: Any) -> float:
    """How much of a linear layer's output on its calibration inputs the
    quantization changes: ``tr(dW H dW.T) / tr(W H W.T)`` with ``dW = W_hat - W``
    and ``H = X.T X`` from `stats` (a ``quantcore.calibrate.LayerStats``), i.e.
    ``||X dW.T||^2 / ||X W.T||^2`` summed over the calibration rows.  Statistics
    holding only the diagonal (an importance vector, e.g. an imatrix) give the
    same ratio with H's off-diagonal terms left out.  For very large layers
    (rows x in_features^2 beyond ~8.6e9) it is measured on evenly spaced rows of
    the weight.  0 for an exact quantization; 1.0 when W gives no output on the
    calibration inputs but W_hat does.

    `weight`: the float array that was quantized (..., in_features);
    `quantized`: its QuantizedTensor (or the dequantized array)."""
    from .calibrate import LayerStats
    from .tensor import _as_float_array
    if not isinstance(stats, LayerStats):
        raise TypeError(f"stats must be a quantcore.calibrate.LayerStats, got {type(stats).__name__}")
    w = _as_float_array(weight, "weight")
    dq = quantized.dequantize() if hasattr(quantized, "dequantize") else \
        _as_float_array(quantized, "quantized")
    if dq.shape != w.shape:
        raise ValueError(f"quantized must have the weight's shape {w.shape}, got {dq.shape}")
    k = w.shape[-1]
    stats._check_width(k, "weight")
    w2 = w.reshape(-1, k)
    d2 = dq.reshape(-1, k)
    rows = w2.shape[0]
    if stats.has_hessian:
        h = stats._full_xtx()
        take = max(1, min(rows, _CALIB_BUDGET // (k * k)))
        idx = np.unique(np.linspace(0, rows - 1, take).round().astype(np.int64))
        ws = w2[idx].astype(np.float64)
        ds = d2[idx].astype(np.float64) - ws
        num = float(np.einsum("ij,ij->", ds @ h, ds))
        den = float(np.einsum("ij,ij->", ws @ h, ws))
    else:
        imp = stats.importance
        num = den = 0.0
        for r0 in range(0, rows, 1024):
            ws = w2[r0:r0 + 1024].astype(np.float64)
            ds = d2[r0:r0 + 1024].astype(np.float64) - ws
            num += float(((ds * ds) @ imp).sum())
            den += float(((ws * ws) @ imp).sum())
    num = max(num, 0.0)
    if den <= 0.0:
        return 0.0 if num == 0.0 else 1.0
    return num / den


# ---- outputs -------------------------------------------------------------------------------

def _outputs(reference: Any, output: Any) -> Tuple[np.ndarray, np.ndarray]:
    from .tensor import _as_float_array
    ref = _as_float_array(reference, "reference")
    out = _as_float_array(output, "output")
    if ref.shape != out.shape:
        raise ValueError(f"output must have the reference's shape {ref.shape}, got {out.shape}")
    for what, a in (("reference", ref), ("output", out)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{what} holds NaN or Inf")
    k = ref.shape[-1]
    return ref.reshape(-1, k).astype(np.float64), out.reshape(-1, k).astype(np.float64)


def cosine_similarity(reference: Any, output: Any) -> np.ndarray:
    """Cosine similarity of matching rows (the last axis is the vector), float64,
    shaped like the inputs without their last axis.  Two zero rows count as
    1.0, one zero row as 0.0."""
    ref, out = _outputs(reference, output)
    num = np.einsum("ij,ij->i", ref, out)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    both0 = (np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(out, axis=1) == 0)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(both0, 1.0, 0.0))
    return np.clip(cos, -1.0, 1.0).reshape(np.shape(reference)[:-1])


def relative_error(reference: Any, output: Any) -> float:
    """``||output - reference|| / ||reference||`` over all elements (0.0 when both are zero,
    ``inf`` when only the reference is)."""
    ref, out = _outputs(reference, output)
    num = float(np.linalg.norm(out - ref))
    den = float(np.linalg.norm(ref))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def kl_divergence(reference_logits: Any, logits: Any) -> np.ndarray:
    """Per row (token), ``KL(P_ref || P)`` in nats between the softmax
    distributions of the reference logits and the quantized model's logits
    over the last axis (the vocabulary), as llama.cpp's KL-divergence tool
    measures it; float64, shaped like the inputs without their last axis."""
    ref, out = _outputs(reference_logits, logits)
    lp = _log_softmax(ref)
    lq = _log_softmax(out)
    kl = np.einsum("ij,ij->i", np.exp(lp), lp - lq)
    return np.maximum(kl, 0.0).reshape(np.shape(reference_logits)[:-1])


def top1_agreement(reference_logits: Any, logits: Any) -> float:
    """Fraction of rows (tokens) whose most likely entry (argmax over the last
    axis) is the same in both."""
    ref, out = _outputs(reference_logits, logits)
    return float(np.mean(ref.argmax(axis=1) == out.argmax(axis=1)))


@dataclass(frozen=True)
class OutputComparison:
    """A quantized model's outputs against the reference's (``compare_outputs``).

    ``n_rows``; ``cosine_mean`` / ``cosine_min`` (per row), ``relative_error``
    (``||out - ref|| / ||ref||``); for logits also ``kld_mean``,
    ``kld_median``, ``kld_p99``, ``kld_max`` (nats per token, KL(P_ref || P))
    and ``top1_agreement`` (fraction of tokens with the same argmax), else None.
    ``str()`` is a short report in the style of llama.cpp's KL-divergence tool."""

    n_rows: int
    cosine_mean: float
    cosine_min: float
    relative_error: float
    kld_mean: Optional[float] = None
    kld_median: Optional[float] = None
    kld_p99: Optional[float] = None
    kld_max: Optional[float] = None
    top1_agreement: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        """The fields as a plain dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __str__(self) -> str:
        lines = [f"rows: {self.n_rows}",
                 f"cosine similarity: mean {self.cosine_mean:.6f}, min {self.cosine_min:.6f}",
                 f"relative error: {self.relative_error:.4e}"]
        if self.kld_mean is not None:
            lines.append(f"KL divergence: mean {self.kld_mean:.6f}, median {self.kld_median:.6f}, "
                         f"99% {self.kld_p99:.6f}, max {self.kld_max:.6f}")
            lines.append(f"same top token: {100 * (self.top1_agreement or 0.0):.3f}%")
        return "\n".join(lines)


def compare_outputs(reference: Any, output: Any, logits: bool = False) -> OutputComparison:
    """Compare a quantized model's outputs with the reference model's on the
    same inputs (arrays ``(..., features)``; rows are all axes but the last):
    cosine similarity per row (mean and min), the relative error, and with
    ``logits=True`` (last axis = vocabulary) the KL divergence per token and
    the top-1 agreement."""
    cos = np.atleast_1d(cosine_similarity(reference, output))
    res: Dict[str, Any] = dict(n_rows=int(cos.size), cosine_mean=float(cos.mean()),
                               cosine_min=float(cos.min()),
                               relative_error=relative_error(reference, output))
    if logits:
        kl = np.atleast_1d(kl_divergence(reference, output))
        res.update(kld_mean=float(kl.mean()), kld_median=float(np.median(kl)),
                   kld_p99=float(np.percentile(kl, 99)), kld_max=float(kl.max()),
                   top1_agreement=top1_agreement(reference, output))
    return OutputComparison(**res)


def _default_config(bits: int):
    from .config import QuantConfig
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
        from .tensor import QuantizedTensor, _as_float_array
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        if name in self._layers:
            raise ValueError(f"name {name!r} is already a layer of this model")
        w = _as_float_array(weights, "weights")
        bits = _check_bits(quant_bits, "quant_bits")
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
        return sum(m.total_original_bits() for m in self._layers.values())

    def total_compressed_bits(self) -> float:
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
