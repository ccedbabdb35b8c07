"""A pure-NumPy oracle of quantcore's quantize, dequantize and int4 packing.

This is the test suite's reading of the rules in ``csrc/formats.h`` and
``csrc/include/quantcore.h``, written with NumPy and nothing from quantcore, so
that every kernel set (scalar, AVX2, ...) can be held against it bit for bit.

Arithmetic is float32 throughout (NumPy 2 keeps float32 when a Python scalar
meets a float32 array), each product and sum rounded on its own (NumPy never
fuses a multiply and an add), exactly as the C code with ``-ffp-contract=off``:

* stats of a group: min, max and the signed element of largest magnitude (the
  first one on ties);
* ``d`` from the stats (SYM8: amax/127, SYM4: amax_signed/-8, MIN4: (max-min)/15,
  ASYM8/ASYM4: (hi-lo)/qmax with the range widened to include 0); a zero ``d``
  is +0 except for SYM4, which keeps the sign of ``amax_signed / -8`` (as GGUF);
* ``id = 1/d`` once per group, 0 when ``d == 0``; when ``1/d`` overflows the
  group is stored as zeros (``d = id = 0``);
* codes: SYM8 ``round_away(clip(x*id, -127, 127))``; ASYM ``clip(round_away(
  clip(x*id, -qmax, qmax)) + z, 0, qmax)`` with ``z = clip(round_away(-lo*id),
  0, qmax)``; SYM4 ``trunc(clip(x*id + 8.5, 0, 15))``; MIN4 ``trunc(clip((x-m)*id
  + 0.5, 0, 15))``;
* a scale (or Q4_1 minimum) that the storage dtype cannot hold is an error:
  above 65504 in magnitude for float16, infinite for float32 (a range wider
  than float32's max, e.g. max - min of +-3e38); float16 storage rounds the
  float32 value to nearest even;
* dequantize: SYM8 ``d*q``, ASYM ``d*(q-z)``, SYM4 ``d*(q-8)``, MIN4 ``d*q + m``.

Layout: ``data`` is ``rows x row_bytes``, 4-bit codes with element 2i in the low
nibble of byte i (ONNX Runtime order); ``scales``/``zeros`` are ``rows x
n_groups`` (``1 x 1`` per tensor).  GGUF block conversion is at the end.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import numpy as np

F32 = np.float32

# Same numbering as qc_kind (checked against quantcore._ext in conftest.py).
SYM8, ASYM8, SYM4, ASYM4, MIN4 = range(5)
KIND_NAMES = {SYM8: "sym8", ASYM8: "asym8", SYM4: "sym4", ASYM4: "asym4", MIN4: "min4"}
BITS = {SYM8: 8, ASYM8: 8, SYM4: 4, ASYM4: 4, MIN4: 4}
QMAX = {SYM8: 127, ASYM8: 255, SYM4: 15, ASYM4: 15, MIN4: 15}
HAS_INT_ZERO = (ASYM8, ASYM4)
F16_MAX = 65504.0
F32_MAX = float(np.finfo(np.float32).max)


class OracleError(ValueError):
    """The input is one that quantcore must reject."""


class NonFinite(OracleError):
    def __init__(self, row: int, col: int):
        super().__init__(f"NaN or Inf at row {row}, column {col}")
        self.row, self.col = row, col


class ScaleOverflow(OracleError):
    """A scale (or Q4_1 minimum) that the scale dtype cannot hold."""

    def __init__(self, row: int, col: int):
        super().__init__(f"scale does not fit the scale dtype at row {row}, column {col}")
        self.row, self.col = row, col


Float16Overflow = ScaleOverflow  # the float16 case, by its old name


class Quantized(NamedTuple):
    data: np.ndarray              # (rows, row_bytes) int8 (SYM8) or uint8
    scales: np.ndarray            # (rows, ng) or (1, 1), float32 or float16
    zeros: Optional[np.ndarray]   # uint8 zero points, MIN4 minima (scale dtype), or None


# ---- geometry ---------------------------------------------------------------------
def row_bytes(kind: int, cols: int) -> int:
    return (cols + 1) // 2 if BITS[kind] == 4 else cols


def num_groups(cols: int, group: int) -> int:
    return 1 if group <= 0 or group >= cols else -(-cols // group)


def group_len(cols: int, group: int, per_tensor: bool) -> int:
    return cols if per_tensor or group <= 0 or group > cols else group


# ---- float32 helpers -----------------------------------------------------------------
def round_away(v: np.ndarray) -> np.ndarray:
    """C's roundf (half away from zero) of float32 values of magnitude < 2**22.
    Done in float64, where |v| + 0.5 and its floor are exact."""
    v64 = np.asarray(v, dtype=np.float32).astype(np.float64)
    return (np.sign(v64) * np.floor(np.abs(v64) + 0.5)).astype(np.float32)


def to_f32_2d(x) -> np.ndarray:
    """The rows x cols float32 matrix quantcore sees (float16 exact, float64 rounded
    to nearest, as a C cast)."""
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise TypeError(f"oracle wants floats, got {a.dtype}")
    a = a.astype(np.float32)  # float64 -> float32 overflows to inf: rejected below
    return np.ascontiguousarray(a.reshape(-1, a.shape[-1]))


def first_nonfinite(x: np.ndarray) -> Optional[Tuple[int, int]]:
    bad = ~np.isfinite(x)
    if not bad.any():
        return None
    r, c = np.argwhere(bad)[0]
    return int(r), int(c)


# ---- the rules of formats.h ------------------------------------------------------------
class Params(NamedTuple):
    d: np.ndarray   # float32, as computed
    id: np.ndarray  # float32
    m: np.ndarray   # float32 (MIN4), else 0
    z: np.ndarray   # int32 (ASYM, SYM4 = 8), else 0


def stats(xg: np.ndarray):
    """min, max and signed absmax (first on ties) along the last axis."""
    mn = xg.min(axis=-1)
    mx = xg.max(axis=-1)
    # a zero minimum is -0.0 exactly when the group holds -0.0 and no +0.0 (the Q4_1
    # rule of csrc/api.c; NumPy's own choice is unspecified when both are present)
    zero = xg == 0
    neg = np.signbit(xg)
    neg_zero_min = (mn == 0) & (zero & neg).any(axis=-1) & ~(zero & ~neg).any(axis=-1)
    mn = np.where(mn == 0, np.where(neg_zero_min, F32(-0.0), F32(0.0)), mn).astype(xg.dtype)
    idx = np.abs(xg).argmax(axis=-1)
    amax_signed = np.take_along_axis(xg, idx[..., None], axis=-1)[..., 0]
    return mn, mx, amax_signed


def params_from_stats(kind: int, mn, mx, amax_signed) -> Params:
    mn = np.asarray(mn, dtype=F32)
    mx = np.asarray(mx, dtype=F32)
    amax_signed = np.asarray(amax_signed, dtype=F32)
    zero = np.zeros_like(mn)
    m = zero.copy()
    lo = zero
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if kind == SYM8:
            d = np.abs(amax_signed) / F32(127)
        elif kind == SYM4:
            d = amax_signed / F32(-8)
        elif kind == MIN4:
            d = (mx - mn) / F32(15)
            m = mn.copy()
        else:
            lo = np.where(mn < 0, mn, F32(0)).astype(F32)
            hi = np.where(mx > 0, mx, F32(0)).astype(F32)
            d = (hi - lo) / F32(QMAX[kind])
        d = np.asarray(d, dtype=F32)
        if kind != SYM4:
            d = np.where(d == 0, F32(0), d).astype(F32)  # canonical +0
        idv = np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0)).astype(F32)
        bad = ~(np.abs(idv) < np.inf)
        d = np.where(bad, F32(0), d).astype(F32)
        idv = np.where(bad, F32(0), idv).astype(F32)
        # keep d * (largest code) finite: the formats.h nudge for scales near FLT_MAX/reach
        reach = F32({SYM8: 127, SYM4: 8, ASYM8: 255}.get(kind, 15))
        big = np.isfinite(d) & (np.abs(d) * reach > F32(F32_MAX))
        if np.any(big):
            lim = F32(F32_MAX) / reach
            while lim * reach > F32(F32_MAX):
                lim = np.nextafter(lim, F32(0))
            d = np.where(big, np.copysign(lim, d), d).astype(F32)
            idv = np.where(big, F32(1) / np.where(big, d, F32(1)), idv).astype(F32)
        if kind in HAS_INT_ZERO:
            zf = round_away(-lo * idv)
            z = np.clip(zf, 0, QMAX[kind]).astype(np.int32)
        elif kind == SYM4:
            z = np.full(d.shape, 8, dtype=np.int32)
        else:
            z = np.zeros(d.shape, dtype=np.int32)
    return Params(d, idv, m, z)


def codes(kind: int, xg: np.ndarray, p: Params) -> np.ndarray:
    """int32 codes of xg (..., n) with params shaped (...)."""
    idv = p.id[..., None]
    with np.errstate(over="ignore", invalid="ignore"):
        if kind == SYM8:
            v = np.clip(xg * idv, -127, 127).astype(F32)
            return round_away(v).astype(np.int32)
        if kind in HAS_INT_ZERO:
            qmax = QMAX[kind]
            v = np.clip(xg * idv, -qmax, qmax).astype(F32)
            q = round_away(v).astype(np.int32) + p.z[..., None]
            return np.clip(q, 0, qmax)
        if kind == SYM4:
            v = (xg * idv + F32(8.5)).astype(F32)
            return np.trunc(np.clip(v, 0, 15)).astype(np.int32)
        if kind == MIN4:
            v = ((xg - p.m[..., None]) * idv + F32(0.5)).astype(F32)
            return np.trunc(np.clip(v, 0, 15)).astype(np.int32)
    raise ValueError(f"unknown kind {kind}")


def _store(v: np.ndarray, scale_f16: bool) -> np.ndarray:
    return v.astype(np.float16) if scale_f16 else v.astype(F32)


def quantize(x, kind: int, group: int = 0, per_tensor: bool = False,
             scale_f16: bool = False) -> Quantized:
    """Oracle of qc_quantize on the rows x cols float32 view of x (last axis = cols)."""
    x = to_f32_2d(x)
    rows, cols = x.shape
    where = first_nonfinite(x)
    if where is not None:
        raise NonFinite(*where)
    q = np.empty((rows, cols), dtype=np.int32)
    if per_tensor:
        flat = x.reshape(1, -1)
        p = params_from_stats(kind, *stats(flat))
        if kind == MIN4:  # per tensor, a zero minimum is stored as +0.0
            p = p._replace(m=np.where(p.m == 0, F32(0), p.m).astype(F32)) if hasattr(p, "_replace") \
                else Params(p.d, p.id, np.where(p.m == 0, F32(0), p.m).astype(F32), p.z)
        q[...] = codes(kind, flat, p).reshape(rows, cols)
        d, m, z = p.d.reshape(1, 1), p.m.reshape(1, 1), p.z.reshape(1, 1)
        group_cols = np.zeros((1, 1), dtype=np.int64)
    else:
        g = group_len(cols, group, False)
        nfull, tail = divmod(cols, g)
        ds, ms, zs = [], [], []
        if nfull:
            xg = x[:, : nfull * g].reshape(rows, nfull, g)
            p = params_from_stats(kind, *stats(xg))
            q[:, : nfull * g] = codes(kind, xg, p).reshape(rows, nfull * g)
            ds.append(p.d), ms.append(p.m), zs.append(p.z)
        if tail:
            xg = x[:, nfull * g:].reshape(rows, 1, tail)
            p = params_from_stats(kind, *stats(xg))
            q[:, nfull * g:] = codes(kind, xg, p).reshape(rows, tail)
            ds.append(p.d), ms.append(p.m), zs.append(p.z)
        d = np.concatenate(ds, axis=1)
        m = np.concatenate(ms, axis=1)
        z = np.concatenate(zs, axis=1)
        group_cols = np.broadcast_to(np.arange(d.shape[1]) * g, d.shape)
    lim = F16_MAX if scale_f16 else F32_MAX
    over = ~((np.abs(d) <= lim) & (np.abs(m) <= lim))
    if np.any(over):
        r, gi = np.argwhere(over)[0]
        raise ScaleOverflow(int(r), int(group_cols[r, gi]))
    scales = _store(d, scale_f16)
    if kind in HAS_INT_ZERO:
        zeros = z.astype(np.uint8)
    elif kind == MIN4:
        zeros = _store(m, scale_f16)
    else:
        zeros = None
    if kind == SYM8:
        data = q.astype(np.int8)
    elif kind == ASYM8:
        data = q.astype(np.uint8)
    else:
        data = pack_int4(q.astype(np.uint8))
    return Quantized(data, scales, zeros)


def _expand(p: np.ndarray, rows: int, cols: int, group: int, per_tensor: bool) -> np.ndarray:
    """Per-group parameters (rows x ng, or 1 x 1) -> one per element (rows x cols)."""
    if per_tensor:
        return np.broadcast_to(p.reshape(1, 1), (rows, cols))
    g = group_len(cols, group, False)
    return np.repeat(p, g, axis=1)[:, :cols]


def dequantize(data: np.ndarray, scales: np.ndarray, zeros: Optional[np.ndarray], kind: int,
               rows: int, cols: int, group: int = 0, per_tensor: bool = False) -> np.ndarray:
    """Oracle of qc_dequantize: float32 rows x cols."""
    data = np.asarray(data).reshape(rows, row_bytes(kind, cols))
    if BITS[kind] == 4:
        q = unpack_int4(data.astype(np.uint8, copy=False), cols).astype(np.int32)
    elif kind == SYM8:
        q = data.view(np.int8).astype(np.int32)
    else:
        q = data.view(np.uint8).astype(np.int32)
    srows, ng = (1, 1) if per_tensor else (rows, num_groups(cols, group))
    d = _expand(np.asarray(scales).reshape(srows, ng).astype(F32), rows, cols, group, per_tensor)
    with np.errstate(over="ignore", invalid="ignore"):
        if kind == SYM8:
            return (d * q.astype(F32)).astype(F32)
        if kind == SYM4:
            return (d * (q - 8).astype(F32)).astype(F32)
        if kind in HAS_INT_ZERO:
            z = _expand(np.asarray(zeros).reshape(srows, ng).astype(np.int32), rows, cols,
                        group, per_tensor)
            return (d * (q - z).astype(F32)).astype(F32)
        if kind == MIN4:
            m = _expand(np.asarray(zeros).reshape(srows, ng).astype(F32), rows, cols, group,
                        per_tensor)
            return ((d * q.astype(F32)).astype(F32) + m).astype(F32)
    raise ValueError(f"unknown kind {kind}")


# ---- int4 packing (ONNX Runtime order) ------------------------------------------------
def pack_int4(values) -> np.ndarray:
    """(..., n) ints in [-8, 15] -> (..., ceil(n/2)) uint8, element 2i low nibble."""
    v = np.asarray(values).astype(np.int64) & 0xF
    n = v.shape[-1]
    if n % 2:
        v = np.concatenate([v, np.zeros(v.shape[:-1] + (1,), dtype=v.dtype)], axis=-1)
    return (v[..., 0::2] | (v[..., 1::2] << 4)).astype(np.uint8)


def unpack_int4(packed, n: int, signed: bool = False) -> np.ndarray:
    """Inverse of pack_int4: (..., ceil(n/2)) uint8 -> (..., n) uint8 or int8."""
    p = np.asarray(packed).astype(np.int64)
    both = np.stack([p & 0xF, p >> 4], axis=-1).reshape(p.shape[:-1] + (-1,))[..., :n]
    if signed:
        return np.where(both >= 8, both - 16, both).astype(np.int8)
    return both.astype(np.uint8)


# ---- GGUF blocks ------------------------------------------------------------------------
GGUF_BLOCK = 32
GGUF_TYPE_SIZE = {"q8_0": 34, "q4_0": 18, "q4_1": 20}


def to_gguf_blocks(fmt: str, data: np.ndarray, scales: np.ndarray,
                   zeros: Optional[np.ndarray]) -> np.ndarray:
    """quantcore's (data, scales, zeros) of a q8_0/q4_0/q4_1 tensor, rows x K with
    K % 32 == 0, -> GGUF block bytes (rows x K/32*type_size uint8): fp16 d
    [, fp16 m], then 32 int8 codes (Q8_0) or 16 bytes holding element j in the low
    nibble and j+16 in the high nibble."""
    scales = np.asarray(scales)
    nb = scales.shape[-1]
    scales = scales.reshape(-1, nb)
    rows = scales.shape[0]
    assert scales.dtype == np.float16, scales.dtype
    parts = [scales.reshape(rows, nb, 1).view(np.uint8)]
    if fmt == "q4_1":
        parts.append(np.asarray(zeros).reshape(rows, nb, 1).view(np.uint8))
    k = nb * GGUF_BLOCK
    if fmt == "q8_0":
        q = np.asarray(data).reshape(rows, nb, GGUF_BLOCK).view(np.uint8)
    else:
        c = unpack_int4(np.asarray(data).reshape(rows, k // 2), k).reshape(rows, nb, GGUF_BLOCK)
        q = (c[..., :16] | (c[..., 16:] << 4)).astype(np.uint8)
    parts.append(q)
    return np.concatenate(parts, axis=-1).reshape(rows, nb * GGUF_TYPE_SIZE[fmt])


def from_gguf_blocks(fmt: str, blocks: np.ndarray, k: int):
    """Inverse of to_gguf_blocks: (data rows x row_bytes, scales rows x nb float16,
    zeros rows x nb float16 or None)."""
    nb = k // GGUF_BLOCK
    b = np.asarray(blocks, dtype=np.uint8).reshape(-1, nb, GGUF_TYPE_SIZE[fmt])
    rows = b.shape[0]
    scales = np.ascontiguousarray(b[..., 0:2]).view(np.float16).reshape(rows, nb)
    zeros = None
    off = 2
    if fmt == "q4_1":
        zeros = np.ascontiguousarray(b[..., 2:4]).view(np.float16).reshape(rows, nb)
        off = 4
    qs = b[..., off:]
    if fmt == "q8_0":
        data = np.ascontiguousarray(qs).view(np.int8).reshape(rows, k)
    else:
        c = np.concatenate([qs & 0xF, qs >> 4], axis=-1).reshape(rows, k)
        data = pack_int4(c)
    return data, scales, zeros
