"""Compression metrics of one tensor: CompressionMetrics, and ``tensor_metrics``
that measures a quantized tensor (``QuantizedTensor.metrics``).

CompressionMetrics has five core fields (n_parameters, original_bits_per_param,
effective_bits_per_param, sparsity, quantization_mse) and three constructors
for float32 weights (quantized_only, pruned_only, quantized_and_pruned);
``max_abs_error`` and ``snr_db`` are extra fields, ``None`` where nothing was
measured.  ``QuantizedTensor.metrics(reference)`` measures a real tensor (see
``tensor_metrics``).  A whole model's metrics are
``quantcore.model.ModelCompressionMetrics``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ._arrays import as_float_array

__all__ = ["CompressionMetrics", "tensor_metrics", "calibrated_error", "cosine_similarity",
           "relative_error", "kl_divergence", "top1_agreement", "compare_outputs", "OutputComparison"]

_FLOAT32_BITS = 32.0
_MAX_COUNT = 2**63 - 1  # no tensor holds more elements than an int64 counts


def _check_count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value}")
    if value > _MAX_COUNT:
        raise ValueError(f"{what} must be at most 2**63 - 1, got {_short(value)}")
    return value


def _short(value: int) -> str:
    """`value` in digits, or its size when it is too long to print."""
    if value.bit_length() < 200:
        return str(value)
    return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"


def _check_real(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a real number, got {type(value).__name__} {value!r}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{what} must be a real number a float can hold, got "
                         f"{_short(int(value))}") from None
    if math.isnan(value):
        raise ValueError(f"{what} must not be NaN")
    return value


def _check_nonneg(value: Any, what: str) -> float:
    value = _check_real(value, what)
    if not (0.0 <= value < math.inf):
        raise ValueError(f"{what} must be finite and >= 0, got {value}")
    return value


def check_bits(value: Any, what: str) -> float:
    """`value` as a float, once it is a finite number of bits > 0 (TypeError or
    ValueError naming `what` otherwise)."""
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

    Fields:

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
    counts or bits, a count above 2**63 - 1, a number no float holds, sparsity
    outside [0, 1], NaN, a negative or infinite MSE) raise ValueError naming
    the field; wrong types raise TypeError.
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

    # ---- constructors for float32 weights ----------------------------------------------
    @classmethod
    def quantized_only(cls, n_parameters: int, quant_bits: float, quant_mse: float, *,
                       max_abs_error: Optional[float] = None,
                       snr_db: Optional[float] = None) -> "CompressionMetrics":
        """float32 weights quantized to `quant_bits` bits each: original 32,
        effective `quant_bits`, sparsity 0, MSE `quant_mse`."""
        return cls(_check_count(n_parameters, "n_parameters"), _FLOAT32_BITS,
                   check_bits(quant_bits, "quant_bits"), 0.0,
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
        bits = check_bits(quant_bits, "quant_bits")
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
    deq = qt.dequantize()
    n = qt.size
    eff = 8.0 * qt.nbytes / n
    orig = 8.0 * qt.dtype.itemsize
    if reference is None:
        sparsity = float(np.count_nonzero(deq == 0)) / n
        return CompressionMetrics(n, orig, eff, sparsity, 0.0)
    ref = as_float_array(reference, "reference")
    if ref.shape != qt.shape:
        raise ValueError(f"reference must have shape {qt.shape}, got {ref.shape}")
    # float64 sums over cache-sized chunks (no full-size float64 temporaries).
    # Plain ufunc sums, not np.dot: BLAS threads woken right after the kernels'
    # threads can compete with them for the cores (docs/performance.md).
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
    from ._layerstats import LayerStats
    if not isinstance(stats, LayerStats):
        raise TypeError(f"stats must be a quantcore.calibrate.LayerStats, got {type(stats).__name__}")
    w = as_float_array(weight, "weight")
    dq = quantized.dequantize() if hasattr(quantized, "dequantize") else \
        as_float_array(quantized, "quantized")
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
    ref = as_float_array(reference, "reference")
    out = as_float_array(output, "output")
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
