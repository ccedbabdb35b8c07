"""Running ``quantcore bench``: :func:`run` measures the rows of the selected
cases, :func:`bench` is the command (header, tables as rows arrive, legend,
notes, JSON and plot).

``--load`` (``bench(load=True)``) times the linear rows with one core kept busy by
another process (:func:`.machine.busy_core`, started before and stopped after
each row's loaded timings): quantcore's median on one thread with the machine
quiet first, then quantcore and each peer at the run's thread count under load,
one call per sample, for a median and a 90th percentile."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import textwrap
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple

import numpy as np

from .. import _io
from .._version import __version__
from ..runtime import get_num_threads, info, set_num_threads
from . import CASES, BenchContext, BenchError, Case, Prepared, Result, clear_weights
from . import quantize  # noqa: F401,I001  (the cases register themselves, in report order)
from . import linear  # noqa: F401
from . import kquant  # noqa: F401
from .machine import BusyCoreError, busy_core, cache_sizes, cpu_name, load_average
from .peers import blas_threads, have_threadpoolctl
from .quantize import CONFIGS, default_shapes, quick_shapes
from .report import WIDTH, LoadTable, Table, legend, plot_speedups, present_peers, to_json
from .timing import (DEFAULT_REPEATS, LOAD_BUDGET_S, LOAD_REPEATS, PEER_BUDGET_S, QC_BUDGET_S,
                     MIN_SAMPLE_S, QUICK_REPEATS, Timing, measure)

__all__ = ["run", "bench", "DEFAULT_OPS", "LOAD_OPS", "LOAD_SKIPPED_PEERS"]

DEFAULT_OPS = ("quantize", "dequantize", "linear", "kquant", "kquantize")
# Report order whatever order the case modules were first imported in (a caller may
# import one of them before this module).
for _op in DEFAULT_OPS:
    CASES[_op] = CASES.pop(_op)
LOAD_OPS = ("linear",)            # what --load runs unless --ops names others
LOAD_SKIPPED_PEERS = ("naive",)   # not timed under --load (a strawman, and the table's width)


def _check_names(ops: Sequence[str], configs: Sequence[str]) -> None:
    bad = [op for op in ops if op not in CASES]
    if bad:
        raise BenchError(f"--ops: unknown op {', '.join(map(repr, bad))}; choose from "
                         f"{', '.join(CASES)}")
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        raise BenchError(f"--configs: unknown config {', '.join(map(repr, bad))}; choose from "
                         f"{', '.join(CONFIGS)}")


def _time_peers(ctx: BenchContext, prep: Prepared) -> Tuple[Dict[str, dict], Dict[str, Any]]:
    peers: Dict[str, dict] = {}
    peer_out: Dict[str, Any] = {}
    budget, min_sample = (LOAD_BUDGET_S, 0.0) if ctx.load else (ctx.peer_budget_s, MIN_SAMPLE_S)
    for p in prep.peers:
        if ctx.load and p.name in LOAD_SKIPPED_PEERS:
            continue
        if p.fn is None:
            peers[p.name] = {"timing": None, "note": p.note}
            if p.note and p.note != "not installed":
                ctx.note(f"{p.name}: {p.note}")
            continue
        if p.key is not None and p.key in ctx.peer_timings:
            peers[p.name] = {"timing": ctx.peer_timings[p.key], "note": p.note}
            continue
        t, pout = measure(p.fn, ctx.repeats, ctx.warmup, budget_s=budget,
                          min_sample_s=min_sample)
        peers[p.name] = {"timing": t, "note": p.note}
        peer_out[p.name] = pout
        if p.key is not None:
            ctx.peer_timings[p.key] = t
            if p.keep:
                ctx.kept[p.key] = pout
    return peers, peer_out


def _run_case(ctx: BenchContext, case: Case, config: str, shape: Tuple[int, ...]
              ) -> Optional[Result]:
    try:
        prep = case.prepare(ctx, config, shape)
    except NotImplementedError as e:
        ctx.note(f"{case.op} {config} {'x'.join(map(str, shape))} skipped: {e}")
        return None
    if ctx.load:
        return _run_loaded(ctx, case, config, shape, prep)
    timing: Optional[Timing] = None
    out: Any = None
    if prep.fn is not None:
        timing, out = measure(prep.fn, ctx.repeats, ctx.warmup, budget_s=QC_BUDGET_S)
    if prep.keep_key is not None and prep.fn is not None:
        ctx.kept[prep.keep_key] = out
    peers, peer_out = _time_peers(ctx, prep)
    checks = prep.check(out, peer_out) if prep.check is not None else {}
    del out, peer_out
    ceiling: Optional[Timing] = None
    if prep.ceiling is not None and prep.fn is not None:
        ceiling = prep.ceiling()
    return Result(case.op, config, tuple(shape), ctx.threads, timing, prep.nbytes, prep.flops,
                  peers, checks, ceiling, unavailable=prep.unavailable)


def _run_loaded(ctx: BenchContext, case: Case, config: str, shape: Tuple[int, ...],
                prep: Prepared) -> Result:
    """One row under ``--load``: quantcore alone on one thread with the machine
    quiet, then quantcore and its peers with one core kept busy."""
    quiet: Optional[Timing] = None
    if prep.fn is not None:
        set_num_threads(1)
        try:
            quiet, _ = measure(prep.fn, ctx.repeats, ctx.warmup, budget_s=LOAD_BUDGET_S,
                               min_sample_s=0.0)
        finally:
            set_num_threads(ctx.threads)
    timing: Optional[Timing] = None
    out: Any = None
    with busy_core():
        if prep.fn is not None:
            timing, out = measure(prep.fn, ctx.repeats, ctx.warmup, budget_s=LOAD_BUDGET_S,
                                  min_sample_s=0.0)
        peers, peer_out = _time_peers(ctx, prep)
    checks = prep.check(out, peer_out) if prep.check is not None else {}
    del out, peer_out
    return Result(case.op, config, tuple(shape), ctx.threads, timing, prep.nbytes, prep.flops,
                  peers, checks, None, unavailable=prep.unavailable, quiet_1t=quiet, load=True)


def run(ops: Sequence[str] = ("quantize", "dequantize"), configs: Sequence[str] = tuple(CONFIGS),
        shapes: Optional[Sequence[Tuple[int, ...]]] = None, threads: Optional[int] = None,
        repeats: int = DEFAULT_REPEATS, warmup: int = 1,
        on_result: Optional[Callable[[Case, Optional[Result]], None]] = None,
        on_case_start: Optional[Callable[[Case], None]] = None,
        ctx: Optional[BenchContext] = None) -> Tuple[List[Result], BenchContext]:
    """Run the cases `ops` for every config and shape (default: the LLM layer
    shapes) at `threads` (default: the current count); returns the results and
    the context (its ``notes``)."""
    _check_names(ops, configs)
    old = get_num_threads()
    if threads is not None:
        set_num_threads(threads)
    try:
        if ctx is None:
            ctx = BenchContext(shapes or default_shapes(), configs, get_num_threads(), repeats,
                               warmup)
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
        set_num_threads(old)
        if ctx is not None:
            ctx.cache.clear()


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


def bench(*, shapes: Optional[Sequence[Tuple[int, ...]]] = None,
          configs: Optional[Sequence[str]] = None, ops: Optional[Sequence[str]] = None,
          threads: Any = None, repeats: Any = None, quick: bool = False,
          json_path: Optional[str] = None, plot_path: Optional[str] = None,
          load: bool = False, stream: TextIO = sys.stdout) -> dict:
    """Run the benchmark, print the report to `stream`, write the JSON and the
    plot when asked; returns the JSON dict.  What ``quantcore bench`` calls.
    `load`: time the linear rows with one core kept busy by another process
    (``--load``; see the module's docstring)."""
    for flag, value in (("--threads", threads), ("--repeats", repeats)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or
                                  value < 1):
            raise BenchError(f"{flag} must be an integer >= 1, got {value!r}")
    if plot_path is not None:
        if importlib.util.find_spec("matplotlib") is None:
            raise BenchError("--plot needs matplotlib, which is not installed "
                             "(pip install matplotlib, or pip install 'quantcore[bench]')")
        _check_writable(plot_path, "--plot")
    if json_path is not None:
        _check_writable(json_path, "--json")
    custom_shapes = bool(shapes)
    shapes = list(shapes) if shapes else (quick_shapes() if quick else default_shapes())
    configs = list(configs) if configs else list(CONFIGS)
    ops = list(ops) if ops else list(LOAD_OPS if load else DEFAULT_OPS)
    _check_names(ops, configs)
    if load:
        bad = [op for op in ops if not CASES[op].loadable]
        if bad:
            raise BenchError(f"--load runs the linear rows only ("
                             f"{', '.join(op for op in CASES if CASES[op].loadable)}), got --ops "
                             f"{', '.join(bad)}")
    repeats = repeats or (LOAD_REPEATS if load else QUICK_REPEATS if quick else DEFAULT_REPEATS)
    nthreads = threads or get_num_threads()
    ctx = BenchContext(shapes, configs, nthreads, repeats, 1, quick=quick,
                       custom_shapes=custom_shapes, load=load)

    def say(text: str = "") -> None:
        print(text, file=stream, flush=True)

    def say_wrapped(text: str) -> None:
        say("\n".join(textwrap.wrap(text, WIDTH, subsequent_indent="  ")))

    inf = info()
    caches = cache_sizes()
    say_wrapped(f"quantcore {__version__} bench: isa {inf['isa']}, {nthreads} thread"
                f"{'s' if nthreads != 1 else ''} (pool {inf['thread_pool']}), "
                f"numpy {np.__version__}, median of {repeats} after a warmup" +
                (" (one call per sample, stopping after "
                 f"{LOAD_BUDGET_S:g} s)" if load else ""))
    ncpu = os.cpu_count() or 1
    say_wrapped(f"{cpu_name()}, {ncpu} cores; {caches.describe()}")
    load_avg = load_average()
    if load_avg is not None and load_avg >= 0.5 * ncpu:
        say_wrapped(f"load average {load_avg:.2f} on {ncpu} cores: other work is running, "
                    f"timings will be noisy")
    if load:
        say_wrapped("--load: each row times quantcore alone on 1 thread without a busy process, "
                    "then quantcore and its peers with another process spinning on one core, "
                    "started before and stopped after the row's loaded timings")
    peers = present_peers(ops)
    if load:
        peers -= set(LOAD_SKIPPED_PEERS)
    tables: Dict[str, Table] = {}

    def start(case: Case) -> None:
        tables[case.op] = (LoadTable if load else Table)(case, sorted(peers))
        say("")
        say(tables[case.op].header())

    def row(case: Case, r: Optional[Result]) -> None:
        if r is not None:
            say(tables[case.op].row(r))

    t0 = time.perf_counter()
    try:
        with blas_threads(nthreads):
            results, ctx = run(ops, configs, shapes, threads, repeats, on_result=row,
                               on_case_start=start, ctx=ctx)
    except BusyCoreError as e:
        raise BenchError(f"--load: {e}") from None
    finally:
        clear_weights()
    say("")
    for t in tables.values():
        note = t.footnote(caches.last_level)
        if note:
            say(note)
    say(legend(list(tables.values()), nthreads, have_threadpoolctl(), load=load))
    for n in ctx.notes:
        say_wrapped(f"note: {n}")
    say(f"({time.perf_counter() - t0:.1f} s)")
    settings = {"ops": ops, "configs": configs, "shapes": [list(s) for s in shapes],
                "threads": ctx.threads, "repeats": repeats, "warmup": 1, "quick": quick,
                "peer_budget_s": LOAD_BUDGET_S if load else PEER_BUDGET_S,
                "load_average_at_start": load_avg, "load": load,
                **({"load_skipped_peers": list(LOAD_SKIPPED_PEERS)} if load else {})}
    doc = to_json(results, settings, ctx.notes)
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
