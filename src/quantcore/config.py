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


def _choices(values) -> str:
    return ", ".join(repr(v) for v in values)


@dataclass(frozen=True)
class QuantConfig:
    """How a tensor is quantized.

    Parameters
    ----------
    bits : 8 or 4
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
    format : None, "q8_0", "q4_0" or "q4_1"
        A GGUF block format (set by the presets of the same names): it fixes
        bits, symmetry, group 32 and float16 scales, and makes the tensor
        exportable to GGUF bit for bit.

    The quantization rules are GGUF's for every format (see the README):
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
        bits = self.bits
        if isinstance(bits, bool) or not isinstance(bits, int) or bits not in (8, 4):
            raise ValueError(f"bits must be 8 or 4, got {bits!r}")
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
            except TypeError:
                pass
        if sd not in _SCALE_DTYPES:
            raise ValueError(f"scale_dtype must be one of {_choices(_SCALE_DTYPES)}, got {self.scale_dtype!r}")
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
            if fmt not in _GGUF_FORMATS:
                raise ValueError(f"format must be None or one of {_choices(_GGUF_FORMATS)}, got {fmt!r}")
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
    def kind(self) -> int:
        """The C kernel family (see csrc/include/quantcore.h)."""
        if self.format == "q4_1":
            return _ext.KIND_MIN4
        if self.bits == 8:
            return _ext.KIND_SYM8 if self.symmetric else _ext.KIND_ASYM8
        return _ext.KIND_SYM4 if self.symmetric else _ext.KIND_ASYM4

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
