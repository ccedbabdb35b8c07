"""The code behind ``quantcore bench``: quantcore against its peers, in one run.

What it measures
----------------
Each row of the report is one *case*: an op (``quantize``, ``dequantize``; more
ops register themselves the same way), a config and a shape.  quantcore's call
and each peer's call are timed in the same process, one after the other, on the
same input, at the same quantcore thread count:

* ``numpy``: a vectorised NumPy implementation of the same quantization rule
  (absmax per group, divide, round, clip, cast, int4 nibble packing), written
  the way a careful NumPy user would (in-place ops, no Python loops).
* ``gguf``: the ``gguf`` package's NumPy reference (``gguf.quants.quantize`` /
  ``dequantize``) for the GGUF block formats q8_0, q4_0 and q4_1, when ``gguf``
  is importable.

NumPy and gguf run elementwise work on one thread whatever the thread count.

Timing: one warmup call, then ``repeats`` samples; the median is reported.  A
call shorter than 1 ms is repeated inside a sample (like ``timeit``), and slow
calls stop sampling after a time budget (half a second for peers; at least one
sample).  GB/s counts the
float32 side of the op: the input of ``quantize``, the output of ``dequantize``.
``dequantize`` writes into a preallocated float32 buffer for quantcore and the
NumPy baseline (``out=``), as a steady-state caller would; gguf's API allocates.

Adding a case
-------------
Register a :class:`Case` in :data:`CASES` (see :func:`register_case`).  Its
``prepare(ctx, config_name, shape)`` does all the setup outside the timed call
and returns a :class:`Prepared`: the timed quantcore callable, the bytes and
FLOPs it stands for (for GB/s and GFLOP/s) and its peers (callables, or a note
saying why a peer is absent).  ``grid(ctx)`` lists the (config, shape) pairs the
case runs; the default is every selected config on every selected weight shape.

The helpers here (:func:`make_weights`, :func:`numpy_quantize`,
:func:`numpy_dequantize`, :func:`numpy_pack_int4`, :data:`CONFIGS`,
:data:`SIZE_CLASSES`, ...) are also what the pytest-benchmark suite in
``bench/`` uses.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, Iterable, List, Optional, Sequence, TextIO, Tuple

import numpy as np

import quantcore as qc
from quantcore import _io
from quantcore.config import QuantConfig

__all__ = [
    "CONFIGS", "GGUF_TYPES", "GGUF_NEAREST", "SIZE_CLASSES", "DEFAULT_SHAPES", "QUICK_SHAPES",
    "CASES", "Case", "Prepared", "Peer", "Timing", "Result", "TargetResult", "BenchContext",
    "BenchError", "register_case", "measure", "make_weights", "parse_shapes", "format_shape",
    "numpy_quantize", "numpy_dequantize", "numpy_pack_int4", "numpy_unpack_int4",
    "gguf_module", "gbps", "run", "run_targets", "format_table", "format_targets",
    "to_json", "plot_speedups", "bench",
]


class BenchError(RuntimeError):
    """A benchmark request that cannot be carried out (bad shape, missing package, ...)."""


# ---------------------------------------------------------------------------------------
# What is benchmarked
# ---------------------------------------------------------------------------------------

#: Configs by the names the command line takes, in report order.
CONFIGS: Dict[str, QuantConfig] = {
    "int8": QuantConfig.int8(),
    "int4_g32": QuantConfig.int4(group_size=32),
    "q8_0": QuantConfig.q8_0(),
    "q4_0": QuantConfig.q4_0(),
    "q4_1": QuantConfig.q4_1(),
}

#: gguf's GGMLQuantizationType name for each GGUF block format.
GGUF_TYPES: Dict[str, str] = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1"}

#: The gguf format that does the same work as a quantcore config (same rule and
#: group; int8 per channel is compared with Q8_0, int4 g32 with Q4_0).  Used by
#: the targets section.
GGUF_NEAREST: Dict[str, str] = {"int8": "Q8_0", "int4_g32": "Q4_0", **GGUF_TYPES}

#: Weight shapes (rows, in_features) by the cache level their float32 bytes fit
#: (2 cores, 32 KiB L1d and 512 KiB L2 per core, 32 MiB L3): 8 KiB, 256 KiB,
#: 16 MiB and 256 MiB of float32.
SIZE_CLASSES: Dict[str, Tuple[int, int]] = {
    "L1": (8, 256),
    "L2": (64, 1024),
    "L3": (1024, 4096),
    "DRAM": (16384, 4096),
}

#: LLM layer shapes (out_features, in_features) of a Llama-3-8B / Mistral-7B
#: block (attention projection, MLP up/gate, MLP down), plus an L2-sized one.
DEFAULT_SHAPES: Tuple[Tuple[int, int], ...] = (
    SIZE_CLASSES["L2"], (4096, 4096), (14336, 4096), (4096, 14336))
QUICK_SHAPES: Tuple[Tuple[int, int], ...] = (SIZE_CLASSES["L2"], (1024, 4096))

DEFAULT_OPS = ("quantize", "dequantize", "linear")
DEFAULT_REPEATS = 5
QUICK_REPEATS = 3
PEER_BUDGET_S = 0.5       # a slow peer stops sampling after this much time (>= 1 sample)
QC_BUDGET_S = 2.0         # the same for quantcore (matters for QUANTCORE_ISA=scalar)
MIN_SAMPLE_S = 1e-3       # shorter calls are repeated inside one sample

# The single-thread figures the project aims at (SPEC.md, "Figures to reach").
TARGET_SHAPE = (4096, 4096)
TARGET_CONFIGS = ("int8", "int4_g32", "q8_0")
TARGET_GBPS = 1.0
TARGET_VS_GGUF = 20.0


def format_shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def parse_shapes(text: str) -> List[Tuple[int, int]]:
    """``"4096x4096,14336x4096"`` -> ``[(4096, 4096), (14336, 4096)]``."""
    shapes = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        dims = part.lower().replace("\u00d7", "x").split("x")
        try:
            vals = tuple(int(d) for d in dims)
        except ValueError:
            vals = ()
        if len(vals) != 2 or min(vals) < 1:
            raise BenchError(f"--shapes: expected ROWSxCOLS with positive sizes, like 4096x4096, "
                             f"got {part!r}")
        shapes.append(vals)
    if not shapes:
        raise BenchError(f"--shapes: expected a comma-separated list like 4096x4096,14336x4096, "
                         f"got {text!r}")
    return shapes


def gbps(nbytes: float, seconds: float) -> float:
    """Gigabytes (1e9) per second; nan when `seconds` is not positive."""
    return nbytes / seconds / 1e9 if seconds > 0 else float("nan")


_WEIGHTS: Dict[Tuple[int, int], np.ndarray] = {}


def make_weights(shape: Sequence[int], seed: int = 0, cache: bool = True) -> np.ndarray:
    """A C-contiguous float32 array of `shape`, standard normal (like a weight
    matrix).  Arrays of the same size share one buffer (cached per process when
    `cache`); treat the result as read-only."""
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    key = (n, seed)
    buf = _WEIGHTS.get(key) if cache else None
    if buf is None:
        buf = np.random.default_rng(seed).standard_normal(n, dtype=np.float32)
        buf.setflags(write=False)
        if cache:
            _WEIGHTS[key] = buf
    return buf.reshape(shape)


def clear_caches() -> None:
    """Drop the cached weight buffers."""
    _WEIGHTS.clear()


_GGUF: Any = None


def gguf_module() -> Any:
    """The ``gguf`` package, or None when it is not installed (imported once)."""
    global _GGUF
    if _GGUF is None:
        try:
            import gguf
            import gguf.quants  # noqa: F401
        except ImportError:
            _GGUF = False
        else:
            _GGUF = gguf
    return _GGUF or None


# ---------------------------------------------------------------------------------------
# The NumPy baseline: the same rules as quantcore (GGUF's), vectorised
# ---------------------------------------------------------------------------------------

def _np_kind(config: QuantConfig) -> str:
    if config.method != "absmax":
        raise NotImplementedError(f"no NumPy baseline for method={config.method!r}")
    if config.format == "q4_1":
        return "min4"
    if config.symmetric:
        return "sym8" if config.bits == 8 else "sym4"
    raise NotImplementedError("no NumPy baseline for asymmetric integer configs")


def _np_group(config: QuantConfig, shape: Tuple[int, int]) -> int:
    rows, k = shape
    if config.granularity == "group":
        g = config.group_size
        assert g is not None  # QuantConfig: granularity "group" always has a group size
        if k % g:
            raise NotImplementedError(f"the NumPy baseline needs in_features % {g} == 0")
        return g
    return k if config.granularity == "channel" else rows * k


def numpy_pack_int4(codes: np.ndarray) -> np.ndarray:
    """uint8 codes in [0, 15], last axis even -> packed uint8 (element 2i in the
    low nibble of byte i, 2i+1 in the high nibble), as quantcore packs."""
    lo = codes[..., 0::2]
    hi = codes[..., 1::2] << np.uint8(4)
    hi |= lo
    return hi


def numpy_unpack_int4(packed: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Inverse of :func:`numpy_pack_int4`: uint8 codes, last axis twice as long."""
    if out is None:
        out = np.empty(packed.shape[:-1] + (2 * packed.shape[-1],), np.uint8)
    np.bitwise_and(packed, np.uint8(0x0F), out=out[..., 0::2])
    np.right_shift(packed, np.uint8(4), out=out[..., 1::2])
    return out


def numpy_quantize(w: np.ndarray, config: QuantConfig
                   ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """NumPy version of ``quantcore.quantize`` for a 2-D float32 `w`: returns
    ``(data, scales, zero_points)`` laid out as quantcore stores them.

    Rounding is ``np.rint`` (half to even) where GGUF rounds half away from zero,
    so a code may differ by one at exact ties; the work done is the same.
    Symmetric 8-bit, symmetric 4-bit (Q4_0's ``d = max / -8``) and Q4_1 only;
    in_features a multiple of the group.
    """
    kind = _np_kind(config)
    rows, k = w.shape
    g = _np_group(config, (rows, k))
    x = w.reshape(-1, g)                                    # one group per row
    if kind == "sym8":
        amax = np.abs(x).max(axis=1, keepdims=True)
        d = amax / np.float32(127)
    else:
        mx = x.max(axis=1, keepdims=True)
        mn = x.min(axis=1, keepdims=True)
        if kind == "sym4":
            d = np.where(-mn > mx, mn, mx) / np.float32(-8)
        else:
            d = (mx - mn) / np.float32(15)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    if kind == "min4":
        q = x - mn
        q *= inv
    else:
        q = x * inv
    if kind == "sym4":
        q += np.float32(8)
    np.rint(q, out=q)
    if kind == "sym8":
        np.clip(q, -127, 127, out=q)
        data = q.astype(np.int8).reshape(rows, k)
    else:
        np.clip(q, 0, 15, out=q)
        data = numpy_pack_int4(q.astype(np.uint8).reshape(rows, k))
    sdt = np.float16 if config.scale_dtype == "float16" else np.float32
    sshape = (1, 1) if config.granularity == "tensor" else (rows, -1)
    scales = d.astype(sdt).reshape(sshape)
    if config.granularity == "channel":
        scales = scales.reshape(rows)
    zeros = mn.astype(sdt).reshape(scales.shape) if kind == "min4" else None
    return data, scales, zeros


def numpy_dequantize(data: np.ndarray, scales: np.ndarray, zero_points: Optional[np.ndarray],
                     config: QuantConfig, shape: Tuple[int, int],
                     out: Optional[np.ndarray] = None) -> np.ndarray:
    """NumPy version of ``QuantizedTensor.dequantize`` for what
    :func:`numpy_quantize` returns: float32 of `shape`, written into `out` when
    given."""
    kind = _np_kind(config)
    rows, k = shape
    g = _np_group(config, shape)
    if out is None:
        out = np.empty(shape, np.float32)
    o = out.reshape(-1, g)
    d = scales.reshape(-1, 1)
    if kind == "sym8":
        np.multiply(data.reshape(-1, g), d, out=o, dtype=np.float32)
        return out
    codes = numpy_unpack_int4(data.reshape(rows, -1))
    if kind == "sym4":
        np.subtract(codes.reshape(-1, g), np.float32(8), out=o, dtype=np.float32)
        o *= d
    else:
        if zero_points is None:
            raise ValueError("min4 dequantization needs zero_points (numpy_quantize returns them)")
        np.multiply(codes.reshape(-1, g), d, out=o, dtype=np.float32)
        o += zero_points.reshape(-1, 1)
    return out


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------

@dataclass
class Timing:
    """Seconds per call over `samples` samples of `number` calls each."""
    median: float
    min: float
    max: float
    samples: int
    number: int

    def to_dict(self) -> dict:
        return {"median_s": self.median, "min_s": self.min, "max_s": self.max,
                "samples": self.samples, "calls_per_sample": self.number}


SETTLE_S = 0.03  # pause before each measurement (see measure)


def measure(fn: Callable[[], Any], repeats: int = DEFAULT_REPEATS, warmup: int = 1,
            budget_s: Optional[float] = None, min_sample_s: float = MIN_SAMPLE_S
            ) -> Tuple[Timing, Any]:
    """Time ``fn()``: `warmup` calls (at least one, used to calibrate), then up to
    `repeats` samples (after a short pause, SETTLE_S), stopping early once `budget_s` seconds of samples have run
    (never fewer than one).  A call shorter than `min_sample_s` is repeated
    inside each sample.  The garbage collector is off while timing.  Returns the
    :class:`Timing` and the result of the last call."""
    repeats = max(1, int(repeats))
    perf = time.perf_counter
    # Let the thread pools of whatever ran before (quantcore's pool, or a
    # peer's: PyTorch's OpenMP, ONNX Runtime's pool) stop spinning and park, so
    # that each implementation is timed without the last one's idle spinners
    # competing for the cores.
    time.sleep(SETTLE_S)
    t_call = 0.0
    out = None
    for _ in range(max(1, int(warmup))):
        t0 = perf()
        out = fn()
        t_call = perf() - t0
    number = 1 if t_call >= min_sample_s else min(10000, math.ceil(min_sample_s / max(t_call, 1e-7)))
    samples: List[float] = []
    gc_on = gc.isenabled()
    gc.disable()
    try:
        start = perf()
        for _ in range(repeats):
            t0 = perf()
            for _ in range(number):
                out = fn()
            samples.append((perf() - t0) / number)
            if budget_s is not None and perf() - start >= budget_s:
                break
    finally:
        if gc_on:
            gc.enable()
    return Timing(statistics.median(samples), min(samples), max(samples), len(samples), number), out


# ---------------------------------------------------------------------------------------
# The case registry
# ---------------------------------------------------------------------------------------

@dataclass
class Peer:
    """One peer of a case: `fn` is timed like quantcore's call; when `fn` is None,
    `note` says why (e.g. "gguf not installed").  Peers with the same `key` are
    measured once per run (NumPy and gguf do not depend on quantcore's thread
    count).  `keep` stores the last result in the context under `key` for a later
    case's setup."""
    name: str
    fn: Optional[Callable[[], Any]] = None
    note: str = ""
    key: Optional[Hashable] = None
    keep: bool = False


@dataclass
class Prepared:
    """A case ready to time: everything allocated, only calls left."""
    fn: Callable[[], Any]
    nbytes: int = 0                   # bytes that GB/s counts
    flops: int = 0                    # floating-point operations of one call (0: not reported)
    peers: List[Peer] = field(default_factory=list)
    # check(quantcore_result, {peer name: peer result}) -> {name: value}, after timing
    check: Optional[Callable[[Any, Dict[str, Any]], Dict[str, Any]]] = None
    keep_key: Optional[Hashable] = None   # store quantcore's last result in the context


@dataclass
class Case:
    """A kind of benchmark row.  `prepare(ctx, config_name, shape)` returns a
    :class:`Prepared` (or raises NotImplementedError to skip that pair);
    `grid(ctx)` lists the (config_name, shape) pairs to run (default: every
    selected config on every selected shape).  `peers` names the peer columns
    of its table, in order; `bytes_label` says what GB/s counts; `flops`
    adds a GFLOP/s column."""
    op: str
    prepare: Callable[["BenchContext", str, Tuple[int, ...]], Prepared]
    peers: Tuple[str, ...] = ("numpy",)
    bytes_label: str = ""
    flops: bool = False
    grid: Optional[Callable[["BenchContext"], Iterable[Tuple[str, Tuple[int, ...]]]]] = None
    description: str = ""
    show_bw: bool = False             # a %bw column (GB/s against the measured bandwidth)

    def pairs(self, ctx: "BenchContext") -> List[Tuple[str, Tuple[int, ...]]]:
        if self.grid is not None:
            return list(self.grid(ctx))
        return [(c, s) for s in ctx.shapes for c in ctx.configs]


#: op name -> Case, in report order.
CASES: Dict[str, Case] = {}


def register_case(op: str, *, peers: Sequence[str] = ("numpy",), bytes_label: str = "",
                  flops: bool = False, grid: Optional[Callable] = None,
                  description: str = "", show_bw: bool = False) -> Callable:
    """Decorator: register ``prepare(ctx, config_name, shape) -> Prepared`` as the case `op`.

    A matmul case, for instance::

        @register_case("matmul", peers=("numpy", "torch"), bytes_label="GB/s of weights",
                       flops=True, grid=lambda ctx: [(c, (m, k, n)) for ...])
        def _prepare_matmul(ctx, config, shape):
            m, k, n = shape
            layer = QuantizedLinear.from_linear(ctx.weights((n, k)), config=ctx.config(config))
            x = ctx.weights((m, k)); out = np.empty((m, n), np.float32)
            return Prepared(lambda: layer.forward(x, out=out), nbytes=layer.nbytes,
                            flops=2 * m * k * n, peers=[Peer("numpy", ...), ...])
    """
    def deco(prepare: Callable) -> Callable:
        CASES[op] = Case(op, prepare, tuple(peers), bytes_label, flops, grid,
                         description or (prepare.__doc__ or "").strip().split("\n")[0],
                         show_bw)
        return prepare
    return deco


class BenchContext:
    """What the cases of one run share: settings, inputs, peer timings and
    results kept for later setup."""

    def __init__(self, shapes: Sequence[Tuple[int, ...]], configs: Sequence[str],
                 threads: int, repeats: int = DEFAULT_REPEATS, warmup: int = 1,
                 peer_budget_s: float = PEER_BUDGET_S, quick: bool = False,
                 custom_shapes: bool = False):
        self.quick = quick
        self.custom_shapes = custom_shapes  # --shapes given: they also set the linear (N, K)
        self.shapes = [tuple(s) for s in shapes]
        self.configs = list(configs)
        self.threads = threads
        self.repeats = repeats
        self.warmup = warmup
        self.peer_budget_s = peer_budget_s
        self.peer_timings: Dict[Hashable, Timing] = {}
        self.kept: Dict[Hashable, Any] = {}
        self.notes: List[str] = []

    def weights(self, shape: Sequence[int]) -> np.ndarray:
        return make_weights(shape)

    def config(self, name: str) -> QuantConfig:
        return CONFIGS[name]

    def gguf(self) -> Any:
        g = gguf_module()
        if g is None:
            self.note("gguf not installed (pip install gguf): its columns are empty")
        return g

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def kept_or(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The result kept under `key` by an earlier case (handed over once), else ``make()``."""
        return self.kept.pop(key) if key in self.kept else make()


@dataclass
class Result:
    """One measured row."""
    op: str
    config: str
    shape: Tuple[int, ...]
    threads: int
    timing: Timing
    nbytes: int
    flops: int
    peers: Dict[str, dict]            # name -> {"timing": Timing|None, "note": str}
    checks: Dict[str, Any] = field(default_factory=dict)

    @property
    def ms(self) -> float:
        return self.timing.median * 1e3

    @property
    def gbps(self) -> float:
        return gbps(self.nbytes, self.timing.median) if self.nbytes else float("nan")

    @property
    def gflops(self) -> float:
        return self.flops / self.timing.median / 1e9 if self.flops else float("nan")

    def speedup(self, peer: str) -> float:
        p = self.peers.get(peer)
        if not p or p.get("timing") is None:
            return float("nan")
        return p["timing"].median / self.timing.median

    def to_dict(self) -> dict:
        peers = {}
        for name, p in self.peers.items():
            t = p.get("timing")
            peers[name] = {"ms": t.median * 1e3 if t else None,
                           "speedup": _num(self.speedup(name)),
                           "note": p.get("note") or None,
                           **({"timing": t.to_dict()} if t else {})}
        return {"op": self.op, "config": self.config, "shape": list(self.shape),
                "threads": self.threads, "ms": self.ms, "gbps": _num(self.gbps),
                "gflops": _num(self.gflops), "nbytes": self.nbytes, "flops": self.flops,
                "timing": self.timing.to_dict(), "peers": peers, "checks": self.checks}


def _num(x: float) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else x


def _run_case(ctx: BenchContext, case: Case, config: str, shape: Tuple[int, ...]) -> Optional[Result]:
    try:
        prep = case.prepare(ctx, config, shape)
    except NotImplementedError as e:
        ctx.note(f"{case.op} {config} {format_shape(shape)} skipped: {e}")
        return None
    timing, out = measure(prep.fn, ctx.repeats, ctx.warmup, budget_s=QC_BUDGET_S)
    if prep.keep_key is not None:
        ctx.kept[prep.keep_key] = out
    peers: Dict[str, dict] = {}
    peer_out: Dict[str, Any] = {}
    for p in prep.peers:
        if p.fn is None:
            peers[p.name] = {"timing": None, "note": p.note}
            if p.note and p.note != "not installed":
                ctx.note(f"{p.name} n/a: {p.note}")
            continue
        if p.key is not None and p.key in ctx.peer_timings:
            peers[p.name] = {"timing": ctx.peer_timings[p.key], "note": p.note}
            continue
        t, pout = measure(p.fn, ctx.repeats, ctx.warmup, budget_s=ctx.peer_budget_s)
        peers[p.name] = {"timing": t, "note": p.note}
        peer_out[p.name] = pout
        if p.key is not None:
            ctx.peer_timings[p.key] = t
            if p.keep:
                ctx.kept[p.key] = pout
    checks = prep.check(out, peer_out) if prep.check is not None else {}
    del out, peer_out
    return Result(case.op, config, tuple(shape), ctx.threads, timing, prep.nbytes, prep.flops,
                  peers, checks)


# ---------------------------------------------------------------------------------------
# The cases: quantize and dequantize
# ---------------------------------------------------------------------------------------

def _gguf_type(gguf: Any, config: str) -> Any:
    return getattr(gguf.GGMLQuantizationType, GGUF_TYPES[config])


def _gguf_peer(ctx: BenchContext, op: str, config: str, shape: Tuple[int, int],
               make_fn: Callable[[Any, Any], Callable[[], Any]], keep: bool = False) -> Peer:
    if config not in GGUF_TYPES:
        return Peer("gguf", note="")
    gguf = ctx.gguf()
    if gguf is None:
        return Peer("gguf", note="not installed")
    if shape[-1] % 32:
        return Peer("gguf", note="gguf needs in_features % 32 == 0")
    return Peer("gguf", make_fn(gguf, _gguf_type(gguf, config)),
                key=("gguf", op, config, tuple(shape)), keep=keep)


@register_case("quantize", peers=("numpy", "gguf"), bytes_label="GB/s of float32 input")
def _prepare_quantize(ctx: BenchContext, config: str, shape: Tuple[int, int]) -> Prepared:
    """quantcore.quantize(w, config) on a float32 weight."""
    w = ctx.weights(shape)
    cfg = ctx.config(config)
    peers = []
    try:
        _np_group(cfg, shape), _np_kind(cfg)
        peers.append(Peer("numpy", lambda: numpy_quantize(w, cfg),
                          key=("numpy", "quantize", config, shape), keep=True))
    except NotImplementedError as e:
        peers.append(Peer("numpy", note=str(e)))
    peers.append(_gguf_peer(ctx, "quantize", config, shape,
                            lambda g, t: (lambda: g.quants.quantize(w, t)), keep=True))
    return Prepared(lambda: qc.quantize(w, cfg), nbytes=w.nbytes, peers=peers,
                    keep_key=("quantcore", "quantize", config, shape))


@register_case("dequantize", peers=("numpy", "gguf"), bytes_label="GB/s of float32 output")
def _prepare_dequantize(ctx: BenchContext, config: str, shape: Tuple[int, int]) -> Prepared:
    """QuantizedTensor.dequantize(out=buf) into a preallocated float32 buffer."""
    w = ctx.weights(shape)
    cfg = ctx.config(config)
    qt = ctx.kept_or(("quantcore", "quantize", config, shape), lambda: qc.quantize(w, cfg))
    out = np.empty(shape, np.float32)
    peers = []
    try:
        _np_group(cfg, shape), _np_kind(cfg)
        nq: Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]] = ctx.kept_or(
            ("numpy", "quantize", config, shape), lambda: numpy_quantize(w, cfg))
        ndata, nscales, nzeros = nq
        nout = np.empty(shape, np.float32)
        peers.append(Peer("numpy", lambda: numpy_dequantize(ndata, nscales, nzeros, cfg, shape,
                                                            out=nout),
                          key=("numpy", "dequantize", config, shape)))
    except NotImplementedError as e:
        peers.append(Peer("numpy", note=str(e)))

    def gguf_fn(g, t):
        blocks = ctx.kept_or(("gguf", "quantize", config, shape), lambda: g.quants.quantize(w, t))
        return lambda: g.quants.dequantize(blocks, t)
    gpeer = _gguf_peer(ctx, "dequantize", config, shape, gguf_fn)

    def check(res, peer_res):
        # quantize + dequantize round trip, bit for bit against gguf's reference
        if "gguf" not in peer_res:
            return {}
        ref = peer_res["gguf"]
        return {"gguf_bit_exact": bool(ref.shape == res.shape and
                                       np.array_equal(ref.view(np.uint32), res.view(np.uint32)))}
    peers.append(gpeer)
    return Prepared(lambda: qt.dequantize(out=out), nbytes=out.nbytes, peers=peers, check=check)


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------

def _check_names(ops: Sequence[str], configs: Sequence[str]) -> None:
    bad = [op for op in ops if op not in CASES]
    if bad:
        raise BenchError(f"--ops: unknown op {', '.join(map(repr, bad))}; choose from "
                         f"{', '.join(CASES)}")
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        raise BenchError(f"--configs: unknown config {', '.join(map(repr, bad))}; choose from "
                         f"{', '.join(CONFIGS)}")


def run(ops: Sequence[str] = ("quantize", "dequantize"), configs: Sequence[str] = tuple(CONFIGS),
        shapes: Sequence[Tuple[int, ...]] = DEFAULT_SHAPES, threads: Optional[int] = None,
        repeats: int = DEFAULT_REPEATS, warmup: int = 1,
        on_result: Optional[Callable[[Case, Optional[Result]], None]] = None,
        on_case_start: Optional[Callable[[Case], None]] = None,
        ctx: Optional[BenchContext] = None) -> Tuple[List[Result], BenchContext]:
    """Run the cases `ops` for every config and shape at `threads` (default:
    the current count) and return the results and the context (its ``notes``)."""
    _check_names(ops, configs)
    old = qc.get_num_threads()
    if threads is not None:
        qc.set_num_threads(threads)
    try:
        if ctx is None:
            ctx = BenchContext(shapes, configs, qc.get_num_threads(), repeats, warmup)
        results = []
        for op in ops:
            case = CASES[op]
            if on_case_start:
                on_case_start(case)
            for config, shape in case.pairs(ctx):
                r = _run_case(ctx, case, config, shape)
                if r is not None:
                    results.append(r)
                if on_result:
                    on_result(case, r)
        return results, ctx
    finally:
        qc.set_num_threads(old)


@dataclass
class TargetResult:
    """One line of the targets section (single-thread quantize)."""
    config: str
    shape: Tuple[int, int]
    gbps: float
    ms: float
    gguf_type: str
    gguf_ms: Optional[float]
    note: str = ""

    @property
    def vs_gguf(self) -> Optional[float]:
        return None if self.gguf_ms is None else self.gguf_ms / self.ms

    @property
    def gbps_pass(self) -> bool:
        return self.gbps >= TARGET_GBPS

    @property
    def gguf_pass(self) -> Optional[bool]:
        return None if self.vs_gguf is None else self.vs_gguf >= TARGET_VS_GGUF

    def to_dict(self) -> dict:
        return {"config": self.config, "shape": list(self.shape), "threads": 1,
                "gbps": self.gbps, "ms": self.ms, "target_gbps": TARGET_GBPS,
                "gbps_pass": self.gbps_pass, "gguf_type": self.gguf_type,
                "gguf_ms": self.gguf_ms, "vs_gguf": self.vs_gguf,
                "target_vs_gguf": TARGET_VS_GGUF, "vs_gguf_pass": self.gguf_pass,
                "note": self.note or None}


def run_targets(repeats: int = DEFAULT_REPEATS, warmup: int = 1,
                ctx: Optional[BenchContext] = None) -> List[TargetResult]:
    """Single-thread quantize of :data:`TARGET_SHAPE` for :data:`TARGET_CONFIGS`
    against gguf's reference for the nearest format (SPEC: >= 1 GB/s of float32
    input per core, >= 20x gguf).  Reuses gguf timings already taken in `ctx`."""
    shape = TARGET_SHAPE
    w = make_weights(shape)
    gguf = gguf_module()
    timings: Dict[Hashable, Timing] = ctx.peer_timings if ctx is not None else {}
    out = []
    old = qc.get_num_threads()
    qc.set_num_threads(1)
    try:
        for name in TARGET_CONFIGS:
            cfg = CONFIGS[name]
            t, _ = measure(lambda: qc.quantize(w, cfg), repeats, warmup, budget_s=QC_BUDGET_S)
            gtype = GGUF_NEAREST[name]
            gms, note = None, ""
            if gguf is None:
                note = "gguf not installed"
            else:
                fmt = gtype.lower()
                key = ("gguf", "quantize", fmt, shape)
                if key not in timings:
                    gt = getattr(gguf.GGMLQuantizationType, gtype)
                    timings[key], _ = measure(lambda: gguf.quants.quantize(w, gt), repeats, warmup,
                                              budget_s=PEER_BUDGET_S)
                gms = timings[key].median * 1e3
            out.append(TargetResult(name, shape, gbps(w.nbytes, t.median), t.median * 1e3,
                                    gtype, gms, note))
    finally:
        qc.set_num_threads(old)
    return out


# ---------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------

def _fmt(x: Optional[float], spec: str, missing: str = "-") -> str:
    return missing if x is None or not math.isfinite(x) else format(x, spec)


def _fmt_ms(ms: Optional[float]) -> str:
    if ms is None or not math.isfinite(ms):
        return "-"
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


class _Table:
    """A fixed-width table printed row by row (rows appear as they are measured)."""

    def __init__(self, case: Case, results_have_flops: bool = False):
        results_have_flops = results_have_flops or case.flops
        self.case = case
        cols = [("op", 10, "<"), ("config", 8, "<"), ("shape", 11, "<"),
                ("quantcore ms", 12, ">"), ("GB/s", 7, ">")]
        if results_have_flops:
            cols.append(("GFLOP/s", 8, ">"))
        for p in case.peers:
            cols += [(f"{p} ms", 9, ">"), ("speedup", 8, ">")]
        if "gguf" in case.peers:
            cols.append(("= gguf", 6, ">"))
        self.bw = case.show_bw
        if self.bw:
            cols.insert(6 if results_have_flops else 5, ("%bw", 4, ">"))
        self.cols = cols
        self.flops = results_have_flops

    def _line(self, cells: Sequence[str]) -> str:
        return "  ".join(format(c, f"{a}{w}") for c, (_, w, a) in zip(cells, self.cols)).rstrip()

    def header(self) -> str:
        title = f"{self.case.op}" + (f" ({self.case.bytes_label})" if self.case.bytes_label else "")
        head = self._line([c[0] for c in self.cols])
        return f"{title}\n{head}\n{'-' * len(head)}"

    def row(self, r: Result) -> str:
        cells = [r.op, r.config, format_shape(r.shape), _fmt_ms(r.ms), _fmt(r.gbps, ".2f")]
        if self.flops:
            cells.append(_fmt(r.gflops, ".1f"))
        if self.bw:
            bw = r.checks.get("bandwidth_gbps")
            cells.append(f"{100 * r.gbps / bw:.0f}%" if bw else "")
        for p in self.case.peers:
            info = r.peers.get(p, {})
            t = info.get("timing")
            if t is None:
                note = info.get("note", "")
                cells += ["n/a" if note and note != "not installed" else "-", ""]
            else:
                cells += [_fmt_ms(t.median * 1e3), _fmt(r.speedup(p), ".1f") + "x"]
        if "gguf" in self.case.peers:
            ex = r.checks.get("gguf_bit_exact")
            cells.append("" if ex is None else "yes" if ex else "NO")
        return self._line(cells)


def format_table(results: Sequence[Result]) -> str:
    """The report tables, one per op, as text."""
    parts = []
    for op, case in CASES.items():
        rows = [r for r in results if r.op == op]
        if not rows:
            continue
        t = _Table(case, any(r.flops for r in rows))
        parts.append("\n".join([t.header()] + [t.row(r) for r in rows]))
    return "\n\n".join(parts)


def format_targets(targets: Sequence[TargetResult]) -> str:
    """The targets section: PASS/MISS against the single-thread figures."""
    if not targets:
        return ""
    shape = format_shape(targets[0].shape)
    lines = [f"targets (quantize {shape}, 1 thread; >= {TARGET_GBPS:g} GB/s of float32 input per "
             f"core, >= {TARGET_VS_GGUF:g}x gguf's NumPy reference)"]
    for t in targets:
        g = f"{t.gbps:6.2f} GB/s ({_fmt_ms(t.ms)} ms)  {'PASS' if t.gbps_pass else 'MISS'}"
        if t.gguf_ms is None:
            v = f"vs gguf {t.gguf_type}: n/a ({t.note})"
        else:
            v = (f"vs gguf {t.gguf_type} ({_fmt_ms(t.gguf_ms)} ms): {t.vs_gguf:6.1f}x  "
                 f"{'PASS' if t.gguf_pass else 'MISS'}")
        lines.append(f"  {t.config:<9} {g}   {v}")
    return "\n".join(lines)


def to_json(results: Sequence[Result], targets: Sequence[TargetResult] = (),
            settings: Optional[dict] = None, notes: Sequence[str] = ()) -> dict:
    """Everything as a JSON-ready dict: ``quantcore.info()``, the date, the
    host, the settings, the results, the targets and the notes."""
    g = gguf_module()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "quantcore": qc.info(),
        "host": {"platform": platform.platform(), "processor": platform.processor() or None,
                 "cpu_count": os.cpu_count(), "load_average_1min": _load_average(),
                 "numpy": np.__version__,
                 "gguf": getattr(g, "__version__", "installed") if g else None},
        "settings": settings or {},
        "results": [r.to_dict() for r in results],
        "targets": [t.to_dict() for t in targets],
        "notes": list(notes),
    }


def plot_speedups(results: Sequence[Result], path: str) -> None:
    """A bar chart of quantcore's speedup over each peer, saved to `path` (PNG).
    Needs matplotlib (:class:`BenchError` when it is not installed)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("--plot needs matplotlib, which is not installed "
                         "(pip install matplotlib, or pip install 'quantcore[bench]')") from None
    rows = [r for r in results if any(r.peers.get(p, {}).get("timing") for p in r.peers)]
    if not rows:
        raise BenchError("--plot: no peer was measured, nothing to plot")
    peers = []
    for r in rows:
        for p in r.peers:
            if r.peers[p].get("timing") is not None and p not in peers:
                peers.append(p)
    ops = list(dict.fromkeys(r.op for r in rows))
    width = 0.8 / len(peers)
    most = max(sum(r.op == op for r in rows) for op in ops)
    fig, axes = plt.subplots(len(ops), 1, squeeze=False,
                             figsize=(max(8.0, 0.42 * most + 2), 3.6 * len(ops) + 0.6))
    threads = rows[0].threads
    for ax, op in zip(axes[:, 0], ops):
        sub = [r for r in rows if r.op == op]
        x = np.arange(len(sub))
        for i, p in enumerate(peers):
            vals = [r.speedup(p) for r in sub]
            ax.bar(x + (i - (len(peers) - 1) / 2) * width,
                   [v if math.isfinite(v) else 0 for v in vals], width, label=f"vs {p}",
                   color=f"C{i}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("speedup (x, log)")
        ax.set_title(f"{op}", loc="left", fontsize=10)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{r.config}\n{format_shape(r.shape)}" for r in sub], fontsize=7)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"quantcore {qc.__version__}: speedup over peers, same run ({threads} thread"
                 f"{'s' if threads != 1 else ''}; NumPy and gguf on one; median of repeats)",
                 fontsize=10)
    fig.tight_layout()
    try:
        with _io.replacing(path) as tmp:
            fig.savefig(tmp, dpi=120, format=os.path.splitext(path)[1][1:].lower() or "png")
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None)
        raise BenchError(f"--plot: cannot write {path!r}: {why}" if why
                         else f"--plot: {e}") from None
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------
# The command: quantcore bench
# ---------------------------------------------------------------------------------------

def _load_average() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _check_writable(path: str, what: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise BenchError(f"{what}: directory {d!r} does not exist")
    if not os.access(d, os.W_OK):
        raise BenchError(f"{what}: directory {d!r} is not writable")
    try:
        _io.check_output(path)
    except (OSError, ValueError) as e:
        raise BenchError(f"{what}: {e}") from None


def bench(*, shapes: Optional[Sequence[Tuple[int, ...]]] = None, configs: Optional[Sequence[str]] = None,
          ops: Optional[Sequence[str]] = None, threads: Optional[int] = None,
          repeats: Optional[int] = None, quick: bool = False, targets: bool = True,
          json_path: Optional[str] = None, plot_path: Optional[str] = None,
          stream: TextIO = sys.stdout) -> dict:
    """Run the benchmark, print the report to `stream`, write the JSON and the
    plot when asked; returns the JSON dict.  What ``quantcore bench`` calls."""
    if threads is not None and threads < 1:
        raise BenchError(f"--threads must be >= 1, got {threads}")
    if repeats is not None and repeats < 1:
        raise BenchError(f"--repeats must be >= 1, got {repeats}")
    if plot_path is not None:
        import importlib.util
        if importlib.util.find_spec("matplotlib") is None:
            raise BenchError("--plot needs matplotlib, which is not installed "
                             "(pip install matplotlib, or pip install 'quantcore[bench]')")
        _check_writable(plot_path, "--plot")
    if json_path is not None:
        _check_writable(json_path, "--json")
    custom_shapes = bool(shapes)
    shapes = list(shapes) if shapes else list(QUICK_SHAPES if quick else DEFAULT_SHAPES)
    configs = list(configs) if configs else list(CONFIGS)
    ops = list(ops) if ops else list(DEFAULT_OPS)
    _check_names(ops, configs)
    repeats = repeats or (QUICK_REPEATS if quick else DEFAULT_REPEATS)
    nthreads = threads or qc.get_num_threads()
    ctx = BenchContext(shapes, configs, nthreads, repeats, 1, quick=quick,
                       custom_shapes=custom_shapes)

    def say(text: str = "") -> None:
        print(text, file=stream, flush=True)

    inf = qc.info()
    say(f"quantcore {inf['version']} bench: isa {inf['isa']}, {nthreads} thread"
        f"{'s' if nthreads != 1 else ''} (pool {inf['thread_pool']}), numpy "
        f"{np.__version__}, median of {repeats} after a warmup")
    load = _load_average()
    if load is not None:
        ncpu = os.cpu_count() or 1
        busy = load >= 0.5 * ncpu
        say(f"load average {load:.2f} on {ncpu} cores" +
            (": other work is running, timings will be noisy" if busy else ""))
    tables: Dict[str, _Table] = {}

    def start(case: Case) -> None:
        tables[case.op] = _Table(case)
        say("")
        say(tables[case.op].header())

    def row(case: Case, r: Optional[Result]) -> None:
        if r is not None:
            say(tables[case.op].row(r))

    t0 = time.perf_counter()
    try:
        with bench_linear.blas_threads(nthreads):
            results, ctx = run(ops, configs, shapes, threads, repeats, on_result=row,
                               on_case_start=start, ctx=ctx)
    finally:
        bench_linear.clear()
    say("")
    say("speedup = peer ms / quantcore ms (same input, same run); NumPy quantize/dequantize and "
        "gguf run on one thread")
    if "linear" in ops:
        say(f"linear: NumPy matmul, PyTorch and ONNX Runtime run at {nthreads} thread(s) like "
            f"quantcore" + ("" if bench_linear.have_threadpoolctl()
                            else " (NumPy's BLAS unpinned: threadpoolctl not installed)"))
        say(bench_linear.LINEAR_NOTE)
    if any("gguf" in CASES[op].peers for op in ops):
        say("= gguf: dequantize(quantize(w)) bit-identical to gguf's reference")
    for n in ctx.notes:
        say(f"note: {n}")
    tres: List[TargetResult] = []
    if targets:
        say("")
        tres = run_targets(repeats, ctx=ctx)
        say(format_targets(tres))
    say(f"\n({time.perf_counter() - t0:.1f} s)")
    settings = {"ops": ops, "configs": configs, "shapes": [list(s) for s in shapes],
                "threads": ctx.threads, "repeats": repeats, "warmup": 1, "quick": quick,
                "peer_budget_s": PEER_BUDGET_S, "load_average_at_start": load}
    doc = to_json(results, tres, settings, ctx.notes)
    if json_path is not None:
        try:
            with _io.replacing(json_path) as tmp, open(tmp, "w") as f:
                json.dump(doc, f, indent=2)
                f.write("\n")
        except (OSError, ValueError) as e:
            why = getattr(e, "strerror", None)
            raise BenchError(f"--json: cannot write {json_path!r}: {why}" if why
                             else f"--json: {e}") from None
        say(f"wrote {json_path}")
    if plot_path is not None:
        plot_speedups(results, plot_path)
        say(f"wrote {plot_path}")
    return doc


# The linear-layer case lives in its own module; importing it registers it.
from quantcore import bench_linear  # noqa: E402,F401
