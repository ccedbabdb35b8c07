"""``quantcore bench``: quantcore against its peers, timed in one run.

The package is a registry of *cases* (this module) and the modules that fill
and run it:

* :mod:`.quantize`: the ``quantize`` and ``dequantize`` cases;
* :mod:`.linear`: the ``linear`` case (``QuantizedLinear.forward``);
* :mod:`.kquant`: the ``kquant`` and ``kquantize`` cases (K-quant linear and
  quantize against ggml);
* :mod:`.peers`: the implementations compared against (a NumPy baseline of the
  same rules, gguf's reference, PyTorch, ONNX Runtime) and their names;
* :mod:`.machine`: what the run learns about the machine (cache sizes, the
  memory-bandwidth probe, the CPU);
* :mod:`.timing`: how a call is timed;
* :mod:`.report`: the tables, the JSON document and the plot;
* :mod:`.run`: the command itself (imports the case modules, which register
  themselves here).

Each row of the report is one case at one config and shape: quantcore's call
and each peer's call, timed in the same process one after the other, on the same
input, at the same thread count.

Adding a case
-------------
Decorate ``prepare(ctx, config_name, shape) -> Prepared`` with
:func:`register_case` in a module that :mod:`.run` imports.  ``prepare`` does
all the setup outside the timed call and returns the timed quantcore callable,
the bytes and FLOPs it stands for (GB/s, GFLOP/s) and its peers (callables, or a
note saying why a peer has none for that row); raising NotImplementedError
skips the row, while a Prepared whose ``fn`` is None (``unavailable`` says why)
keeps the row with ``n/a`` for quantcore and its peers timed.  ``grid(ctx)``
lists the (config, shape) pairs the case runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .timing import Timing

__all__ = [
    "BenchError", "Peer", "Prepared", "Case", "CASES", "register_case", "BenchContext",
    "Result", "make_weights", "parse_shapes", "format_shape", "gbps",
]


class BenchError(RuntimeError):
    """A benchmark request that cannot be carried out (bad shape, missing package, ...)."""


@dataclass
class Peer:
    """One peer of a row: `fn` is timed like quantcore's call; when `fn` is None,
    `note` says why (empty: the peer has no such operation for this row).  Peers
    with the same `key` are timed once per run; `keep` stores the peer's last
    result in the context under `key` for a later case's setup."""
    name: str
    fn: Optional[Callable[[], Any]] = None
    note: str = ""
    key: Optional[Hashable] = None
    keep: bool = False


@dataclass
class Prepared:
    """A row ready to time: everything allocated, only calls left.

    `check(quantcore_result, {peer: result})` runs after timing and returns
    values for the JSON (``checks``; quantcore's result is None when `fn` is);
    `ceiling` times, like the row, a read of the same bytes (see
    :mod:`.machine`) for the row's %bw.  `fn` None: quantcore cannot run this
    row (`unavailable` says why); its peers are still timed."""
    fn: Optional[Callable[[], Any]]
    nbytes: int = 0
    flops: int = 0
    peers: List[Peer] = field(default_factory=list)
    check: Optional[Callable[[Any, Dict[str, Any]], Dict[str, Any]]] = None
    keep_key: Optional[Hashable] = None
    ceiling: Optional[Callable[[], Timing]] = None
    unavailable: str = ""


@dataclass
class Case:
    """A kind of report row (see :func:`register_case`)."""
    op: str
    prepare: Callable[["BenchContext", str, Tuple[int, ...]], Prepared]
    peers: Tuple[str, ...] = ("numpy",)
    what: str = ""
    bytes_label: str = ""
    flops: bool = False
    grid: Optional[Callable[["BenchContext"], Iterable[Tuple[str, Tuple[int, ...]]]]] = None
    show_bw: bool = False
    exact_peer: Optional[str] = None
    mkn: bool = False
    peer_ms: bool = False
    mweights: bool = False
    loadable: bool = False

    def pairs(self, ctx: "BenchContext") -> List[Tuple[str, Tuple[int, ...]]]:
        """The (config, shape) pairs this case runs in `ctx`."""
        if self.grid is not None:
            return list(self.grid(ctx))
        return [(c, s) for s in ctx.shapes for c in ctx.configs]


#: op name -> Case, in report order (filled by the case modules as they are imported).
CASES: Dict[str, Case] = {}


def register_case(op: str, *, peers: Sequence[str] = ("numpy",), what: str = "",
                  bytes_label: str = "", flops: bool = False, grid: Optional[Callable] = None,
                  show_bw: bool = False, exact_peer: Optional[str] = None,
                  mkn: bool = False, peer_ms: bool = False, mweights: bool = False,
                  loadable: bool = False) -> Callable:
    """Decorator: register ``prepare(ctx, config_name, shape) -> Prepared`` as case `op`.

    `peers` names the peer columns in order (see :data:`.peers.PEERS`); `what`
    says in a few words what is timed; `bytes_label` what GB/s counts; `flops`
    adds a GFLOP/s column; `grid` lists the pairs to run (default: every selected
    config on every selected shape); `show_bw` adds the %bw column; `exact_peer`
    names a peer whose result the row's ``check`` compares bit for bit; `mkn`
    says the shapes are (M, K, N) of a matmul (rows grouped by K and N);
    `peer_ms` adds each peer's milliseconds beside its ratio; `mweights` adds a
    column of million weights per second (``nbytes`` counting float32 weights);
    `loadable` lets ``--load`` run the case.
    """
    def deco(prepare: Callable) -> Callable:
        CASES[op] = Case(op, prepare, tuple(peers), what, bytes_label, flops, grid, show_bw,
                         exact_peer, mkn, peer_ms, mweights, loadable)
        return prepare
    return deco


class BenchContext:
    """What the rows of one run share: the settings, peer timings taken once,
    results kept for a later setup, notes for the report and a cache for setup
    work (layers, sessions) that lives as long as the run."""

    def __init__(self, shapes: Sequence[Tuple[int, ...]], configs: Sequence[str], threads: int,
                 repeats: int = 5, warmup: int = 1, peer_budget_s: float = 0.5,
                 quick: bool = False, custom_shapes: bool = False, load: bool = False):
        self.quick = quick
        self.load = load  # --load: single-call samples, a busy core, a quiet 1-thread baseline
        self.custom_shapes = custom_shapes  # --shapes given: they also set the linear (N, K)
        self.shapes = [tuple(s) for s in shapes]
        self.configs = list(configs)
        self.threads = threads
        self.repeats = repeats
        self.warmup = warmup
        self.peer_budget_s = peer_budget_s
        self.peer_timings: Dict[Hashable, Timing] = {}
        self.kept: Dict[Hashable, Any] = {}
        self.cache: Dict[Hashable, Any] = {}
        self.notes: List[str] = []

    def note(self, text: str) -> None:
        """Add a line to the report's notes (once)."""
        if text not in self.notes:
            self.notes.append(text)

    def kept_or(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The result kept under `key` by an earlier row (handed over once), else ``make()``."""
        return self.kept.pop(key) if key in self.kept else make()

    def cached(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """``make()``, once per run and `key`."""
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]


@dataclass
class Result:
    """One measured row: quantcore's timing (None: quantcore cannot run the row,
    `unavailable` says why), each peer's (or why there is none), the checks, and
    the timing of the read probe over the same bytes.  Rows measured under
    ``--load`` also hold `quiet_1t`, quantcore's timing on one thread with the
    machine left quiet, and `load` is True."""
    op: str
    config: str
    shape: Tuple[int, ...]
    threads: int
    timing: Optional[Timing]
    nbytes: int
    flops: int
    peers: Dict[str, dict]            # name -> {"timing": Timing or None, "note": str}
    checks: Dict[str, Any] = field(default_factory=dict)
    ceiling: Optional[Timing] = None
    unavailable: str = ""
    quiet_1t: Optional[Timing] = None
    load: bool = False

    @property
    def _t(self) -> float:
        return self.timing.median if self.timing is not None else float("nan")

    @property
    def ms(self) -> float:
        """Median milliseconds per call (nan: quantcore did not run)."""
        return self._t * 1e3

    @property
    def p90_ms(self) -> float:
        """The 90th percentile of quantcore's samples in milliseconds (nan: none)."""
        t = self.timing
        return t.p90 * 1e3 if t is not None and t.p90 is not None else float("nan")

    @property
    def gbps(self) -> float:
        """Bytes counted per call over the median time, in GB/s."""
        return gbps(self.nbytes, self._t) if self.nbytes else float("nan")

    @property
    def gflops(self) -> float:
        """Floating-point operations per call over the median time, in GFLOP/s."""
        return self.flops / self._t / 1e9 if self.flops else float("nan")

    @property
    def mweights(self) -> float:
        """Million weights per second, where ``nbytes`` counts float32 weights."""
        return self.nbytes / 4 / self._t / 1e6 if self.nbytes else float("nan")

    @property
    def bandwidth_fraction(self) -> float:
        """The read probe's median time over quantcore's for the same bytes: the
        fraction of the reachable read bandwidth the row streams (nan: no probe)."""
        if self.ceiling is None:
            return float("nan")
        return self.ceiling.median / self._t

    @property
    def p90_over_quiet_1t(self) -> float:
        """``--load``: quantcore's p90 under load over its quiet 1-thread median."""
        if self.quiet_1t is None:
            return float("nan")
        return self.p90_ms / (self.quiet_1t.median * 1e3)

    def speedup(self, peer: str) -> float:
        """Peer time / quantcore time (nan when either was not timed)."""
        p = self.peers.get(peer)
        if not p or p.get("timing") is None:
            return float("nan")
        return p["timing"].median / self._t

    def to_dict(self) -> dict:
        """The row as plain JSON values."""
        peers = {}
        for name, p in self.peers.items():
            t = p.get("timing")
            peers[name] = {"ms": t.median * 1e3 if t else None,
                           "p90_ms": t.p90 * 1e3 if t and t.p90 is not None else None,
                           "speedup": _num(self.speedup(name)),
                           "note": p.get("note") or None,
                           **({"timing": t.to_dict()} if t else {})}
        d = {"op": self.op, "config": self.config, "shape": list(self.shape),
             "threads": self.threads, "ms": _num(self.ms), "p90_ms": _num(self.p90_ms),
             "gbps": _num(self.gbps), "gflops": _num(self.gflops), "nbytes": self.nbytes,
             "flops": self.flops,
             "timing": self.timing.to_dict() if self.timing is not None else None,
             "unavailable": self.unavailable or None,
             "peers": peers, "checks": self.checks,
             "probe_gbps": (_num(gbps(self.nbytes, self.ceiling.median))
                            if self.ceiling is not None else None),
             "bandwidth_fraction": _num(self.bandwidth_fraction)}
        if CASES.get(self.op) is not None and CASES[self.op].mweights:
            d["mweights_per_s"] = _num(self.mweights)
        if self.load:
            d["load"] = {"busy_processes": 1,
                         "quiet_1thread": (self.quiet_1t.to_dict() if self.quiet_1t is not None
                                           else None),
                         "quiet_1thread_ms": (self.quiet_1t.median * 1e3
                                              if self.quiet_1t is not None else None),
                         "p90_over_quiet_1thread": _num(self.p90_over_quiet_1t)}
        return d


def _num(x: Optional[float]) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else x


def gbps(nbytes: float, seconds: float) -> float:
    """Gigabytes (1e9) per second; nan when `seconds` is not positive."""
    return nbytes / seconds / 1e9 if seconds > 0 else float("nan")


def format_shape(shape: Sequence[int]) -> str:
    """``(4096, 14336)`` -> ``"4096x14336"``."""
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
        shapes.append((vals[0], vals[1]))
    if not shapes:
        raise BenchError(f"--shapes: expected a comma-separated list like 4096x4096,14336x4096, "
                         f"got {text!r}")
    return shapes


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


def clear_weights() -> None:
    """Drop the cached weight buffers of :func:`make_weights`."""
    _WEIGHTS.clear()
