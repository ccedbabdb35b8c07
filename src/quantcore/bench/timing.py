"""How ``quantcore bench`` times a call: a warmup, then the median of repeats.

quantcore's calls, its peers' calls and the read probe all go through
:func:`measure`, so their figures are comparable within one run.  Each timing
also keeps the 90th percentile of its samples: with one call per sample
(``min_sample_s=0``, as ``--load`` times) that is the tail of single calls.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

__all__ = ["Timing", "measure", "rotating", "percentile", "DEFAULT_REPEATS", "QUICK_REPEATS",
           "PEER_BUDGET_S", "QC_BUDGET_S", "LOAD_REPEATS", "LOAD_BUDGET_S"]

DEFAULT_REPEATS = 5
QUICK_REPEATS = 3
PEER_BUDGET_S = 0.5       # a slow peer stops sampling after this much time (>= 1 sample)
QC_BUDGET_S = 2.0         # the same for quantcore (matters for QUANTCORE_ISA=scalar)
MIN_SAMPLE_S = 1e-3       # shorter calls are repeated inside one sample
SETTLE_S = 0.03           # pause before each measurement (see measure)
LOAD_REPEATS = 40         # --load: single-call samples per measurement (for a p90) ...
LOAD_BUDGET_S = 2.0       # ... stopping after this much time (quantcore and peers alike)


@dataclass
class Timing:
    """Seconds per call over `samples` samples of `number` calls each; `p90` is
    the samples' 90th percentile (nearest rank; None where not recorded)."""
    median: float
    min: float
    max: float
    samples: int
    number: int
    p90: Optional[float] = None

    def to_dict(self) -> dict:
        """The timing as plain JSON values."""
        return {"median_s": self.median, "min_s": self.min, "max_s": self.max,
                "p90_s": self.p90, "samples": self.samples, "calls_per_sample": self.number}


def percentile(samples: List[float], q: float) -> float:
    """The nearest-rank `q`-th percentile (0 < q <= 100) of a non-empty list."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def measure(fn: Callable[[], Any], repeats: int = DEFAULT_REPEATS, warmup: int = 1,
            budget_s: Optional[float] = None, min_sample_s: float = MIN_SAMPLE_S
            ) -> Tuple[Timing, Any]:
    """Time ``fn()``: `warmup` calls (at least one, used to calibrate), then up to
    `repeats` samples after a short pause, stopping early once `budget_s` seconds
    of samples have run (never fewer than one).  A call shorter than
    `min_sample_s` is repeated inside each sample.  The garbage collector is off
    while timing.  Returns the :class:`Timing` and the result of the last call."""
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
    return (Timing(statistics.median(samples), min(samples), max(samples), len(samples), number,
                   percentile(samples, 90)), out)


def rotating(fns: List[Callable[[], Any]]) -> Callable[[], Any]:
    """One callable that runs the next of `fns` on each call (copies of a layer
    read in turn, as a model's successive layers are)."""
    state = [0]

    def call() -> Any:
        i = state[0]
        state[0] = (i + 1) % len(fns)
        return fns[i]()
    return call
