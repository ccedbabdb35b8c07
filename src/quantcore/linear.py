"""QuantizedLinear: y = x @ W.T + bias with W quantized, computed by fused C kernels."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from . import _ext
from ._arrays import as_float_array, check_out, to_numpy
from .config import QuantConfig
from .tensor import QuantizedTensor

__all__ = ["QuantizedLinear"]

_MAX_SCALE = 1e30  # largest weight scale (or Q4_1 minimum) the linear kernels take
_F32_TINY = float(np.finfo(np.float32).tiny)
_F32_MAX = float(np.finfo(np.float32).max)
_KIND_NAMES = {_ext.KIND_SYM8: "int8", _ext.KIND_ASYM8: "uint8", _ext.KIND_SYM4: "int4",
               _ext.KIND_ASYM4: "uint4", _ext.KIND_MIN4: "q4_1"}


def _to_f32_rows(a2: np.ndarray):
    """float64 (or wider) rows as float32, each row whose largest |x| lies outside
    float32's normal range scaled by 2**-s first (exact in float64): returns the
    rows and s (int array, None when every s is 0)."""
    with np.errstate(over="raise", under="raise"):
        try:
            return np.array(a2, dtype=np.float32, order="C", copy=True), None
        except FloatingPointError:
            pass
    with np.errstate(invalid="ignore"):
        amax = np.max(np.where(np.isfinite(a2), np.abs(a2), 0), axis=1)
    s = np.where((amax > _F32_MAX) | ((amax > 0) & (amax < _F32_TINY)), np.frexp(amax)[1], 0)
    s = s.astype(np.int32)
    scaled = np.ldexp(a2, -s[:, None]) if s.any() else a2
    with np.errstate(over="ignore", under="ignore"):
        return np.array(scaled, dtype=np.float32, order="C", copy=True), (s if s.any() else None)


class QuantizedLinear:
    """A linear layer whose weight is a QuantizedTensor of shape (out_features, in_features).

    ``forward(x)`` computes ``x @ W.T + bias`` for x of shape ``(..., in_features)``
    in one pass over the packed weights (no float copy of W is ever made):

    * ``compute="float32"``: activations stay float32; the result equals
      ``x @ dequantize(W).T`` up to float rounding.
    * ``compute="int8"``: each row of x is quantized on the fly in blocks of 32
      (as GGUF Q8_0) and the dot products run in integer SIMD, one float
      multiply per block.  Error bound per output, from the activation rounding:
      ``sum_b (da_b / 2) * sum_{k in b} |W[n, k]|`` with ``da_b = max|x_b| / 127``
      (see ``int8_error_bound``), plus float rounding.
    * ``compute="auto"`` (default): int8 where the weight format allows it (whole
      rows, or groups that are multiples of 32); its bound is far below the
      weight quantization error.  Rows of x holding NaN or Inf are summed in
      float64 over the dequantized weights, so they give the NaN or +-inf IEEE
      arithmetic gives and other rows stay clean.

    Module surface (as a PyTorch-like framework's linear layer): ``parameters()``
    lists the trainable arrays (the float bias; the packed weight's integer codes
    are not trainable), ``train()`` / ``eval()`` set ``training``, which changes
    nothing in ``forward`` (the layer has no dropout or batch statistics).

    Prepacked weights: with int8 compute on x86 builds the layer holds its
    weight in the packed kernels' own layout (rows interleaved in panels of 32,
    four codes per 32-bit lane, scales beside their panel: the same bytes,
    rearranged, so ``nbytes`` is unchanged), packed once at construction; one
    kernel then serves every batch size, reading the weights once per call.
    ``weight_quantized``, pickling and the exporters rebuild the public row
    layout on demand.  ``prepack=False`` keeps the row layout, as do float32
    compute, K-quant weights, in_features not a multiple of 32, fewer than 32
    out_features, and non-x86 builds: there few rows (fewer than 8) take a GEMV
    path that streams the weights once per call, more a tiled GEMM path where
    the build has one.  ``kernel`` names the kernel of the last call.  Threads: see ``quantcore.set_num_threads``;
    the GIL is released, and concurrent calls on one layer are safe.

    Exactness: quantize, dequantize and int4 packing give the same bits on every
    ISA, and so do the int8 activation codes and integer dot products.  For one
    ISA and path (``kernel_for(m)``) a row's output bits do not depend on the
    thread count or on the other rows of x.  Across ISAs, and between GEMV and
    GEMM, outputs differ by float rounding: each is within
    ``(K + 64) * 2**-24 * sum_k |x_k| * (|d q_k| + |c|)`` of the exact value
    (w = d q + c; int8 compute: for the quantized activations, |x_k| read as
    |x_k| + max|x_b| / 254).
    Large and tiny magnitudes: a row that would overflow float32 inside the
    kernels (or is tiny, max |x| < 2**-40) is computed on x scaled by a power
    of two and scaled back, so outputs are finite wherever x @ dequantize(W).T
    is representable in float32 (weight scales up to 1e30 are accepted).
    """

    __slots__ = ("_wq", "_wmeta", "_prepack", "_bias", "_bias_ro", "_qw", "_mode", "_last_m", "training",
                 "__weakref__")
    training: bool

    def __init__(self, weight_q: QuantizedTensor, bias: Any = None, *, prepack: bool = True) -> None:
        if not isinstance(weight_q, QuantizedTensor):
            raise TypeError(f"weight_q must be a QuantizedTensor, got {type(weight_q).__name__}")
        if weight_q.ndim != 2:
            raise ValueError(f"weight_q must be 2-D (out_features, in_features), got shape {weight_q.shape}")
        n, k = weight_q.shape
        cfg = weight_q.config
        group = cfg.effective_group_size
        stored = weight_q._storage()
        if cfg.ktype is not None:
            pass  # K-quants: float16 super-block scales, rows checked by the tensor
        elif group and group < k and group % 32:
            raise ValueError(f"QuantizedLinear needs group_size >= 32 (got {group}); "
                             f"quantize the weight with group_size=32 or more")
        # Rows of x are rescaled where the kernels' sums would overflow, but some
        # kernels also form weight-only products (d times an integer block dot,
        # 128 d) that no rescaling of x shrinks: beyond ~3e32 those overflow.
        checked = () if cfg.ktype is not None else (
            ("scales", stored.scales),
            ("zero_points", stored.zero_points if cfg.kind == _ext.KIND_MIN4 else None))
        for what, arr in checked:
            if arr is not None:
                big = max(abs(float(arr.max())), abs(float(arr.min())))  # no temporary copy
                if big > _MAX_SCALE:
                    raise ValueError(f"weight_q has {what} up to {big:.3g}; QuantizedLinear needs "
                                     f"|{what}| <= {_MAX_SCALE:g} (its kernels would overflow float32)")
        if not isinstance(prepack, (bool, np.bool_)):
            raise TypeError(f"prepack must be True or False, got {prepack!r}")
        self._prepack = bool(prepack)
        self._wq: Optional[QuantizedTensor] = weight_q  # None once packed: rebuilt on demand
        self._wmeta = (weight_q.shape, weight_q.dtype, cfg)
        self._bias: Optional[np.ndarray] = None   # the layer's own copy: parameters() hands it out
        self._bias_ro: Optional[np.ndarray] = None  # a read-only view of it: the `bias` attribute
        self.training = True
        if bias is not None:
            b = as_float_array(bias, "bias")
            if b.shape != (n,):
                raise ValueError(f"bias must have shape ({n},), got {b.shape}")
            if not np.all(np.isfinite(b)):
                raise ValueError("bias contains NaN or Inf")
            b = np.array(b, dtype=np.float32, order="C")
            self._bias = b
            self._bias_ro = b.view()
            self._bias_ro.setflags(write=False)
        if cfg.ktype is not None:  # the super-blocks alone: scales and mins are inside
            self._qw = _ext.QWeight(stored.data, None, None, _ext.KIND_Q4_K + cfg.ktype, n, k,
                                    0, False)
        self._mode = _ext.COMPUTE_F32 if cfg.compute == "float32" else _ext.COMPUTE_I8
        if cfg.ktype is None:
            self._qw = _ext.QWeight(stored.data, stored.scales, stored.zero_points, cfg.kind, n,
                                    k, group, cfg.granularity == "tensor",
                                    bool(prepack) and self._mode == _ext.COMPUTE_I8)
            if self._qw.packed:
                self._wq = None
        self._last_m = 1

    @classmethod
    def from_linear(cls, weight: Any, bias: Any = None,
                    config: Optional[QuantConfig] = None) -> "QuantizedLinear":
        """Quantize a float weight of shape (out_features, in_features), or any
        object with ``.weight`` and ``.bias`` (such as a ``torch.nn.Linear``)."""
        if config is None:
            config = QuantConfig.int8()
        if not isinstance(config, QuantConfig):
            raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
        if hasattr(weight, "weight") and not isinstance(weight, np.ndarray):
            module = weight
            weight = module.weight
            if bias is None:
                bias = getattr(module, "bias", None)
        w = as_float_array(weight, "weight")
        if w.ndim != 2:
            raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {w.shape}")
        return cls(QuantizedTensor._quantize(w, config, "weight"), bias)

    # ---- attributes ---------------------------------------------------------------
    @property
    def in_features(self) -> int:
        """Input features k (the weight's second dimension)."""
        return self._wmeta[0][1]

    @property
    def out_features(self) -> int:
        """Output features n (the weight's first dimension)."""
        return self._wmeta[0][0]

    @property
    def weight_quantized(self) -> QuantizedTensor:
        """The quantized weight, shape (out_features, in_features), in the public row
        layout (for a prepacked layer, rebuilt from the packed copy at each access:
        keep the result rather than asking again in a loop)."""
        if self._wq is not None:
            return self._wq
        shape, dtype, cfg = self._wmeta
        data, scales, zeros = self._qw.unpack()
        return QuantizedTensor._make(data, scales, zeros, shape, dtype, cfg)

    @property
    def prepacked(self) -> bool:
        """True when the layer holds its weight in the packed kernels' layout."""
        return bool(self._qw.packed)

    @property
    def bias(self) -> Optional[np.ndarray]:
        """float32 bias (a read-only view; ``parameters()`` gives the writable one) or None."""
        return self._bias_ro

    @property
    def config(self) -> QuantConfig:
        """The weight's QuantConfig."""
        return self._wmeta[2]

    @property
    def compute(self) -> str:
        """The compute path in use: "float32" or "int8"."""
        return "int8" if self._mode == _ext.COMPUTE_I8 else "float32"

    def kernel_for(self, m: int) -> str:
        """Name of the kernel a forward with m rows runs, e.g. ``gemv_i8_int4_avx2``."""
        path = "packed" if self._qw.packed else \
            "gemm" if self._qw.uses_gemm(int(m), self._mode) else "gemv"
        comp = "i8" if self._mode == _ext.COMPUTE_I8 else "f32"
        c = self.config
        what = c.format if c.ktype is not None else _KIND_NAMES[c.kind]
        return f"{path}_{comp}_{what}_{_ext.current_isa()}"

    @property
    def kernel(self) -> str:
        """Name of the kernel the last forward ran (or a one-row forward would)."""
        return self.kernel_for(self._last_m)

    @property
    def nbytes(self) -> int:
        """Bytes the layer holds: packed weight, scales, zero points and bias."""
        return self._qw.nbytes + (0 if self._bias is None else self._bias.nbytes)

    def num_parameters(self) -> int:
        """Weights plus bias elements (as the float layer would count them)."""
        return self.in_features * self.out_features + (0 if self._bias is None else self._bias.size)

    def memory_savings_bytes(self) -> int:
        """float32 weight bytes minus all quantized weight storage (scales and zero points included)."""
        return 4 * self.in_features * self.out_features - self._qw.nbytes

    def dequantized_weight(self) -> np.ndarray:
        """The float32 weight the layer computes with (a new array each call)."""
        return self.weight_quantized.dequantize()

    def metrics(self, reference: Any = None) -> Any:
        """CompressionMetrics of the weight (the bias is not counted):
        ``self.weight_quantized.metrics(reference)``, with `reference` the float
        weight (out_features, in_features) or None."""
        if reference is not None and not isinstance(reference, np.ndarray):
            reference = as_float_array(reference, "reference")
        return self.weight_quantized.metrics(reference)

    def int8_error_bound(self, x: Any) -> np.ndarray:
        """Per-output bound of |int8-compute result - float32-compute result| due to
        the activation rounding (float rounding not included), shape (..., out)."""
        x2, lead = self._rows(x)
        k = self.in_features
        kp = -(-k // 32) * 32
        xp = np.zeros((x2.shape[0], kp), np.float64)
        xp[:, :k] = x2
        half = np.abs(xp).reshape(x2.shape[0], kp // 32, 32).max(-1) / 127.0 / 2.0  # (m, nb)
        wabs = np.zeros((self.out_features, kp), np.float64)
        wabs[:, :k] = np.abs(self.dequantized_weight())
        wsum = wabs.reshape(self.out_features, -1, 32).sum(-1)  # (n, nb)
        return (half @ wsum.T).reshape(lead + (self.out_features,))

    # ---- forward ------------------------------------------------------------------
    def _rows(self, x: Any, shifts: bool = False):
        a = to_numpy(x, "x", "an array of floats")
        if a.dtype.kind != "f":
            raise TypeError(f"x must be a float array, got dtype {a.dtype}")
        if a.ndim < 1:
            raise ValueError("x must have ndim >= 1, got a 0-d array")
        if a.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape (..., in_features={self.in_features}), got {a.shape}")
        lead = a.shape[:-1]
        a2 = a.reshape(-1, self.in_features)
        s = None
        if a2.dtype != np.float32 or a2.strides[-1] != 4 or not a2.flags.aligned or (a2.shape[0] > 1 and (a2.strides[0] < 4 * self.in_features or a2.strides[0] % 4)):
            # a copy (np.ascontiguousarray would keep a misaligned contiguous array)
            if not shifts or a2.dtype.itemsize <= 4:
                a2 = np.array(a2, dtype=np.float32, order="C", copy=True)
            else:
                a2, s = _to_f32_rows(a2)
        return (a2, lead, s) if shifts else (a2, lead)

    def forward(self, x: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
        """``x @ W.T + bias`` for x of shape (..., in_features), any float dtype and
        strides; returns float32 (..., out_features), written into `out` when given
        (float32, that shape, rows contiguous).

        `out` may share memory with `x` (``forward(x, out=x)`` when in_features ==
        out_features, or overlapping views): x is read in full before `out` is
        written, so the result is the same as without overlap.  float64 rows
        beyond float32's range are scaled by a power of two before rounding to
        float32 (and the result scaled back), so they are computed too."""
        x2, lead, shift = self._rows(x, shifts=True)
        m = x2.shape[0]
        shape = lead + (self.out_features,)
        y = np.empty(shape, dtype=np.float32) if out is None else check_out(out, shape)
        if m == 0:
            return y
        y2 = y.reshape(m, self.out_features)  # a view: y is C-contiguous
        self._qw.forward(x2, self._bias, y2, self._mode)
        if shift is not None:  # rows of x scaled by 2**-shift: again without bias, scaled back
            rows = np.flatnonzero(shift)
            part = np.empty((rows.size, self.out_features), np.float32)
            self._qw.forward(np.ascontiguousarray(x2[rows]), None, part, self._mode)
            with np.errstate(over="ignore"):
                part = np.ldexp(part.astype(np.float64), shift[rows, None]).astype(np.float32)
            if self._bias is not None:
                part += self._bias
            y2[rows] = part
        self._last_m = m
        return y

    __call__ = forward

    # ---- module surface -----------------------------------------------------------
    def parameters(self) -> List[np.ndarray]:
        """The layer's trainable parameters: ``[bias]`` (float32, shape
        ``(out_features,)``) when it has a bias, else ``[]``.

        The packed weight is not a parameter: its codes are integers and its
        scales belong to them.  The bias returned is the layer's own array, not a
        copy, so an in-place update (``p -= lr * grad``) changes what ``forward``
        adds; ``frozen_parameters()`` gives read-only copies instead."""
        return [] if self._bias is None else [self._bias]

    def frozen_parameters(self) -> List[np.ndarray]:
        """Read-only copies of ``parameters()``: nothing done to them reaches the layer."""
        out = []
        for p in self.parameters():
            c = p.copy()
            c.setflags(write=False)
            out.append(c)
        return out

    def trainable_params_count(self) -> int:
        """Number of scalars in ``parameters()`` (``out_features`` with a bias, else 0)."""
        return sum(p.size for p in self.parameters())

    def train(self, mode: bool = True) -> "QuantizedLinear":
        """Set training mode (``mode=True``, the default of a new layer) or
        evaluation mode (``False``); returns the layer, so calls chain.

        ``forward`` computes exactly the same in both modes: the layer has no
        dropout or batch statistics.  The mode is kept by pickling and copying,
        and is not shown by ``repr`` (as in PyTorch)."""
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"mode must be True or False, got {mode!r}")
        self.training = bool(mode)
        return self

    def eval(self) -> "QuantizedLinear":
        """Evaluation mode: ``train(False)``; returns the layer."""
        return self.train(False)

    # ---- Python protocols ---------------------------------------------------------
    def __reduce__(self):
        args = (self.weight_quantized, self._bias) + (() if self._prepack else (False,))
        return (_restore, args, {"training": self.training})

    def __setstate__(self, state: Dict[str, Any]) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("training", True), bool):
            raise TypeError(f"QuantizedLinear state must be a dict with a bool 'training', got {state!r}")
        self.training = state.get("training", True)

    def __repr__(self) -> str:
        c = self.config
        what = c.format or f"int{c.bits}"
        return (f"QuantizedLinear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self._bias is not None}, weight={what}, compute={self.compute!r}, "
                f"kernel={self.kernel!r})")


def _restore(weight_q: QuantizedTensor, bias: Optional[np.ndarray], prepack: bool = True) -> QuantizedLinear:
    """Unpickling: the layer again from its row-layout weight (packed anew)."""
    return QuantizedLinear(weight_q, bias, prepack=prepack)
