"""QuantConfig: what to quantize to, immutable and hashable."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from . import _ext

__all__ = ["QuantConfig"]

_GRANULARITIES = ("channel", "group", "tensor")
_SCALE_DTYPES = ("float32", "float16")
_METHODS = ("absmax", "mse", "gptq")
_COMPUTES = ("auto", "float32", "int8")
# GGUF block formats: name -> (bits, symmetric); all have group 32 and float16 scales.
_GGUF_FORMATS = {"q8_0": (8, True), "q4_0": (4, True), "q4_1": (4, False)}
# GGUF K-quants: name -> (bits, symmetric, sub-block); super-blocks of 256 with
# float16 super-block scales (ggml's block_q4_K, block_q5_K, block_q6_K).
_K_FORMATS = {"q4_k": (4, False, 32), "q5_k": (5, False, 32), "q6_k": (6, True, 16)}
_K_TYPES = {"q4_k": _ext.KTYPE_Q4_K, "q5_k": _ext.KTYPE_Q5_K, "q6_k": _ext.KTYPE_Q6_K}
_FORMATS = (*_GGUF_FORMATS, *_K_FORMATS)


def _choices(values) -> str:
    return ", ".join(repr(v) for v in values)


@dataclass(frozen=True)
class QuantConfig:
    """How a tensor is quantized.

    Parameters
    ----------
    bits : 8 or 4 (5 and 6 with the K-quant formats q5_k, q6_k)
    group_size : None or a power of two in [16, 2**31]
        Elements per scale along the last axis (the input features of a
        ``(out_features, in_features)`` weight).  Giving it implies
        ``granularity="group"``.  A last axis that is not a multiple of it works:
        the tail group covers what is left of the row.
    symmetric : bool
        Symmetric codes around zero, or asymmetric with a zero point per scale
        (an integer zero point, as ONNX Runtime and PyTorch store it; GGUF Q4_1
        stores the group minimum instead).
    granularity : "channel", "group" or "tensor"
        One scale per row, per group of ``group_size``, or for the whole tensor.
        Default: "group" when ``group_size`` is given, else "channel".
    scale_dtype : "float32" or "float16"
        How scales (and Q4_1 minima) are stored.  Scales are computed in float32
        and rounded once for storage, as GGUF does.
    method : "absmax", "mse" or "gptq"
        How each scale is chosen: "absmax" by the GGUF rules below (fast,
        bit-exact with gguf); "mse" by a search, in C, for the parameters with
        the least squared error as stored (never worse than absmax, group by
        group; same storage layout, so the GGUF presets stay GGUF blocks;
        roughly 10-20x slower than absmax); given calibration statistics, the
        error weighted by each input channel's importance.  "gptq" chooses the
        codes against calibration statistics of the layer's inputs (GPTQ, see
        ``quantcore.gptq``; quantizing needs ``calibration=``); same formats.
    compute : "auto", "float32" or "int8"
        The matmul path of a QuantizedLinear built with this config.
    act_order : bool
        method="gptq" only: quantize the input channels in order of decreasing
        importance (GPTQ's "activation order"); the groups keep their scales
        from the original weights, so the layout stays the plain row layout.
    damp : float in [0, 1]
        method="gptq": the fraction of the mean diagonal of the inputs' second
        moments added to that diagonal before factorizing it (default 0.01).
    format : None, "q8_0", "q4_0", "q4_1", "q4_k", "q5_k" or "q6_k"
        A GGUF block format (set by the presets of the same names): it fixes
        bits, symmetry, group 32 and float16 scales, and makes the tensor
        exportable to GGUF bit for bit.  The K-quants ``q4_k``, ``q5_k`` and
        ``q6_k`` are ggml's super-blocks of 256 values (sub-blocks of 32, 32
        and 16; 4.5, 5.5 and 6.5625 bits per weight), quantized exactly as
        ggml quantizes them; they need a last axis that is a multiple of 256
        and ``method="absmax"`` (they have their own search); see
        docs/kquants.md.

    The quantization rules are GGUF's for every format (see docs/formats.md):
    8-bit symmetric codes are ``round(x / (amax / 127))`` in [-127, 127]; 4-bit
    symmetric uses ``d = max / -8`` with codes 0..15 around 8 (Q4_0); asymmetric
    integer formats widen the range to include 0 and round the zero point.
    """

    bits: int = 8
    group_size: Optional[int] = None
    symmetric: bool = True
    granularity: Optional[str] = None
    scale_dtype: str = "float32"
    method: str = "absmax"
    compute: str = "auto"
    format: Optional[str] = None
    act_order: bool = False
    damp: float = 0.01

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        # the named fields take strings: any other type (a list, say) is named here
        # before the checks below compare or hash it
        for name, choices, optional in (("granularity", _GRANULARITIES, True),
                                        ("method", _METHODS, False),
                                        ("compute", _COMPUTES, False),
                                        ("format", tuple(_GGUF_FORMATS), True)):
            v = getattr(self, name)
            if not isinstance(v, str) and not (optional and v is None):
                raise ValueError(f"{name} must be {'None or ' if optional else ''}one of "
                                 f"{_choices(choices)}, got {type(v).__name__} {v!r}"[:300])
        bits = self.bits
        kfmt = self.format if isinstance(self.format, str) and self.format in _K_FORMATS else None
        if isinstance(bits, bool) or not isinstance(bits, int) or bits not in (8, 4) and not (
                kfmt is not None and bits == _K_FORMATS[kfmt][0]):
            raise ValueError(f"bits must be 8 or 4 (5 and 6 only with format='q5_k' or 'q6_k'), "
                             f"got {bits!r}")
        gs = self.group_size
        if gs is not None:
            if isinstance(gs, bool) or not isinstance(gs, int):
                raise ValueError(f"group_size must be None or an int, got {gs!r}")
            if gs < 16 or gs & (gs - 1) or gs > 2**31:
                raise ValueError(f"group_size must be a power of two in [16, 2**31] (e.g. 32, 64, 128), got {gs}")
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"symmetric must be True or False, got {self.symmetric!r}")
        gran = self.granularity
        if gran is None:
            gran = "group" if gs is not None else "channel"
        if gran not in _GRANULARITIES:
            raise ValueError(f"granularity must be one of {_choices(_GRANULARITIES)}, got {gran!r}")
        if gran == "group" and gs is None:
            gs = 32
        if gran != "group" and gs is not None:
            raise ValueError(f"group_size={gs} needs granularity='group', got granularity={gran!r}")
        set_("granularity", gran)
        set_("group_size", gs)
        sd = self.scale_dtype
        if not isinstance(sd, str):
            try:
                import numpy as np
                sd = np.dtype(sd).name
            except Exception:  # not a dtype at all: named below
                sd = None
        if sd not in _SCALE_DTYPES:
            raise ValueError(f"scale_dtype must be one of {_choices(_SCALE_DTYPES)}, got "
                             f"{self.scale_dtype!r}"[:300])
        set_("scale_dtype", sd)
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {_choices(_METHODS)}, got {self.method!r}")
        if not isinstance(self.act_order, bool):
            raise ValueError(f"act_order must be True or False, got {self.act_order!r}")
        if self.act_order and self.method != "gptq":
            raise ValueError(f"act_order=True needs method='gptq', got method={self.method!r}")
        dm = self.damp
        if isinstance(dm, bool) or not isinstance(dm, (int, float)) or not 0.0 <= dm <= 1.0:
            raise ValueError(f"damp must be a float in [0, 1] (a fraction of the mean diagonal), "
                             f"got {dm!r}")
        set_("damp", float(dm))
        if self.compute not in _COMPUTES:
            raise ValueError(f"compute must be one of {_choices(_COMPUTES)}, got {self.compute!r}")
        fmt = self.format
        if fmt is not None:
            if fmt not in _FORMATS:
                raise ValueError(f"format must be None or one of {_choices(_FORMATS)}, got {fmt!r}")
            if fmt in _K_FORMATS:
                want_bits, want_sym, want_group = _K_FORMATS[fmt]
                fixed = {"bits": want_bits, "symmetric": want_sym, "granularity": "group",
                         "group_size": want_group, "scale_dtype": "float16", "method": "absmax"}
            else:
                want_bits, want_sym = _GGUF_FORMATS[fmt]
                fixed = {"bits": want_bits, "symmetric": want_sym, "granularity": "group",
                         "group_size": 32, "scale_dtype": "float16"}
            for name, want in fixed.items():
                if getattr(self, name) != want:
                    raise ValueError(
                        f"format={fmt!r} fixes {name}={want!r}, got {name}={getattr(self, name)!r}; "
                        f"pass format=None for a quantcore format")

    # ---- presets -------------------------------------------------------------
    @classmethod
    def int8(cls, **kw: Any) -> "QuantConfig":
        """int8, one scale per output channel (row), symmetric."""
        return cls(**{"bits": 8, **kw})

    @classmethod
    def int4(cls, group_size: Optional[int] = 32, **kw: Any) -> "QuantConfig":
        """int4, one scale per group of `group_size` along each row, symmetric
        (``granularity="channel"`` or ``"tensor"`` drops the group size)."""
        if kw.get("granularity") in ("channel", "tensor"):
            group_size = None
        return cls(**{"bits": 4, "group_size": group_size, **kw})

    @classmethod
    def _gguf(cls, fmt: str, kw: dict) -> "QuantConfig":
        bits, sym = _GGUF_FORMATS[fmt]
        base = {"bits": bits, "symmetric": sym, "group_size": 32, "granularity": "group",
                "scale_dtype": "float16", "format": fmt}
        return cls(**{**base, **kw})

    @classmethod
    def q8_0(cls, **kw: Any) -> "QuantConfig":
        """GGUF Q8_0: int8 blocks of 32 with a float16 scale (bit-exact with gguf)."""
        return cls._gguf("q8_0", kw)

    @classmethod
    def q4_0(cls, **kw: Any) -> "QuantConfig":
        """GGUF Q4_0: int4 blocks of 32 with a float16 scale (bit-exact with gguf)."""
        return cls._gguf("q4_0", kw)

    @classmethod
    def q4_1(cls, **kw: Any) -> "QuantConfig":
        """GGUF Q4_1: int4 blocks of 32 with float16 scale and minimum (bit-exact with gguf)."""
        return cls._gguf("q4_1", kw)

    @classmethod
    def _kquant(cls, fmt: str, kw: dict) -> "QuantConfig":
        bits, sym, group = _K_FORMATS[fmt]
        base = {"bits": bits, "symmetric": sym, "group_size": group, "granularity": "group",
                "scale_dtype": "float16", "format": fmt}
        return cls(**{**base, **kw})

    @classmethod
    def q4_k(cls, **kw: Any) -> "QuantConfig":
        """GGUF Q4_K: super-blocks of 256 values, eight sub-blocks of 32 with 6-bit
        scales and mins, 4-bit codes; 4.5 bits per weight (bit-exact with ggml).
        The last axis must be a multiple of 256."""
        return cls._kquant("q4_k", kw)

    @classmethod
    def q5_k(cls, **kw: Any) -> "QuantConfig":
        """GGUF Q5_K: as Q4_K with 5-bit codes; 5.5 bits per weight (bit-exact with
        ggml).  The last axis must be a multiple of 256."""
        return cls._kquant("q5_k", kw)

    @classmethod
    def q6_k(cls, **kw: Any) -> "QuantConfig":
        """GGUF Q6_K: super-blocks of 256 values, sixteen sub-blocks of 16 with int8
        scales, symmetric 6-bit codes; 6.5625 bits per weight (bit-exact with
        ggml).  The last axis must be a multiple of 256."""
        return cls._kquant("q6_k", kw)

    # ---- derived ---------------------------------------------------------------
    def replace(self, **changes: Any) -> "QuantConfig":
        """A copy with `changes` applied (validated like the constructor).

        Changing group_size alone switches granularity to "group" (or back to
        "channel" when set to None); choosing granularity "channel" or "tensor"
        drops the group size.
        """
        if "group_size" in changes and "granularity" not in changes:
            gs = changes["group_size"]
            changes["granularity"] = "group" if gs is not None else (
                "channel" if self.granularity == "group" else self.granularity)
        if changes.get("granularity") in ("channel", "tensor") and "group_size" not in changes:
            changes["group_size"] = None
        if changes.get("granularity") == "group" and "group_size" not in changes and self.group_size is None:
            changes["group_size"] = 32
        return dataclasses.replace(self, **changes)

    @property
    def effective_group_size(self) -> int:
        """Elements per scale along a row as the kernels take it: ``group_size``
        for granularity "group", 0 (the whole row, or the whole tensor) otherwise."""
        return (self.group_size or 0) if self.granularity == "group" else 0

    @property
    def kind(self) -> int:
        """The C kernel family (see csrc/include/quantcore.h); the K-quant formats
        have none (ValueError; see ``ktype``)."""
        if self.format in _K_FORMATS:
            raise ValueError(f"format={self.format!r} is a K-quant super-block format, which "
                             f"has no quantcore kernel family (QuantConfig.kind); dequantize() "
                             f"the tensor or export it to GGUF")
        if self.format == "q4_1":
            return _ext.KIND_MIN4
        if self.bits == 8:
            return _ext.KIND_SYM8 if self.symmetric else _ext.KIND_ASYM8
        return _ext.KIND_SYM4 if self.symmetric else _ext.KIND_ASYM4

    @property
    def ktype(self) -> Optional[int]:
        """The K-quant type of the C layer (``_ext.KTYPE_Q4_K`` ...) for format
        q4_k, q5_k or q6_k; None for every other config."""
        return _K_TYPES.get(self.format) if self.format is not None else None

    def to_dict(self) -> dict:
        """Plain dict of the fields (JSON-friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        """Inverse of to_dict; unknown keys raise ValueError."""
        if not isinstance(d, dict):
            raise TypeError(f"config must be a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown QuantConfig fields: {sorted(unknown)}")
        return cls(**d)
