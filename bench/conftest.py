"""pytest-benchmark setup for quantcore's benchmarks (see README.md here).

The ``bench_gbps`` fixture times a callable with pytest-benchmark and stores its
GB/s in ``benchmark.extra_info`` (in ``--benchmark-json`` output); a GB/s table
with the speedup of quantcore over each peer is printed at the end of the run.
"""

import os
import time

import pytest

import quantcore
from quantcore.bench import gbps, make_weights
from quantcore.bench.machine import size_classes

_ROWS = []          # (group, impl, median seconds, GB/s), in run order
SLOW_CALL_S = 0.1   # calls longer than this get 3 rounds instead of pytest-benchmark's calibration


def pytest_report_header(config):
    info = quantcore.info()
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    return (f"quantcore {info['version']}: isa {info['isa']}, {info['num_threads']} threads, "
            f"openmp {'on' if info['openmp'] else 'OFF'}{load}")


@pytest.fixture(scope="session")
def weights():
    """weights(size_class) -> float32 array of the shape size_classes()[size_class]
    (from this machine's caches; cached, read-only)."""
    classes = size_classes()
    return lambda size: make_weights(classes[size])


@pytest.fixture
def bench_gbps(benchmark):
    """bench_gbps(fn, nbytes, group, impl, **info): time ``fn()`` (setup already
    done by the caller), report GB/s of `nbytes` per call in extra_info."""

    def run(fn, nbytes, group, impl, **info):
        benchmark.group = group
        benchmark.extra_info.update(impl=impl, nbytes=int(nbytes),
                                    threads=quantcore.get_num_threads(), isa=quantcore.get_isa(),
                                    **info)
        t0 = time.perf_counter()
        fn()                                  # warmup, and how long one call takes
        if time.perf_counter() - t0 > SLOW_CALL_S:
            benchmark.pedantic(fn, rounds=3, warmup_rounds=0, iterations=1)
        else:
            benchmark(fn)
        if benchmark.stats is not None:      # None under --benchmark-disable
            med = benchmark.stats.stats.median
            rate = gbps(nbytes, med)
            benchmark.extra_info["gbps"] = round(rate, 3)
            _ROWS.append((group, impl, med, rate))

    return run


def pytest_terminal_summary(terminalreporter):
    if not _ROWS:
        return
    tr = terminalreporter
    tr.section("quantcore GB/s (median; speedup = peer time / quantcore time)")
    tr.write_line(f"{'group':<28} {'impl':<10} {'median ms':>10} {'GB/s':>8} {'quantcore speedup':>18}")
    base = {g: med for g, impl, med, _ in _ROWS if impl == "quantcore"}
    for group in dict.fromkeys(g for g, *_ in _ROWS):
        for g, impl, med, gbps in _ROWS:
            if g != group:
                continue
            sp = f"{med / base[g]:.1f}x" if impl != "quantcore" and g in base else ""
            tr.write_line(f"{g:<28} {impl:<10} {med * 1e3:>10.3f} {gbps:>8.2f} {sp:>18}")
