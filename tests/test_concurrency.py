"""Concurrency: many Python threads calling forward, quantize, dequantize and
pack at once get exactly what one thread gets; changing the thread count (and,
for the integer ops, the ISA) while other threads run is safe and changes no
bit; the kernels release the GIL (another Python thread keeps running during one
long forward).  The throughput side of the GIL release is bench/thread_scaling.py.
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

import quantcore as qc
from quantcore import QuantConfig, QuantizedLinear
from helpers import run_jobs_concurrently

N_THREADS = 8


@pytest.fixture(autouse=True)
def _restore_settings():
    isa, nt = qc.get_isa(), qc.get_num_threads()
    yield
    qc.set_isa(isa)
    qc.set_num_threads(nt)


def _workload(seed=0):
    """(name, callable) jobs mixing every op, GEMV and GEMM, both computes."""
    rng = np.random.default_rng(seed)
    jobs = []
    for i, (cfg, m, k, n) in enumerate([
            (QuantConfig.q4_0(), 1, 256, 96), (QuantConfig.int8(compute="float32"), 3, 200, 64),
            (QuantConfig.int4(compute="int8"), 16, 160, 80), (QuantConfig.q4_1(compute="float32"), 9, 96, 48),
            (QuantConfig(bits=8, symmetric=False), 33, 64, 40)]):
        layer = QuantizedLinear.from_linear(rng.standard_normal((n, k)).astype(np.float32),
                                            rng.standard_normal(n).astype(np.float32), cfg)
        x = rng.standard_normal((m, k)).astype(np.float32)
        jobs.append((f"forward{i}", lambda layer=layer, x=x: layer(x)))
    for i, cfg in enumerate([QuantConfig.int8(), QuantConfig.int4(), QuantConfig.q8_0(),
                             QuantConfig(bits=4, symmetric=False, group_size=64)]):
        w = rng.standard_normal((37, 300)).astype(np.float32)
        jobs.append((f"quantize{i}", lambda w=w, cfg=cfg: qc.quantize(w, cfg)))
        qt = qc.quantize(w, cfg)
        jobs.append((f"dequantize{i}", lambda qt=qt: qt.dequantize()))
    v = rng.integers(0, 16, (17, 301)).astype(np.uint8)
    jobs.append(("pack", lambda: qc.pack_int4(v)))
    return jobs


def _key(result):
    if isinstance(result, np.ndarray):
        return result.dtype.str, result.shape, result.tobytes()
    return result  # a QuantizedTensor compares bitwise with ==


def _run_concurrently(jobs, rounds, meddle=None):
    """Every thread runs every job `rounds` times in its own order; returns the
    problems found (empty: every result matched the one-thread one)."""
    expected = {name: _key(fn()) for name, fn in jobs}
    return run_jobs_concurrently(jobs, expected, _key, N_THREADS, rounds, meddle)


def test_many_python_threads_match_one_thread():
    problems = _run_concurrently(_workload(), rounds=6)
    assert not problems, problems[:5]


def test_set_num_threads_while_others_run():
    counts = [1, 2, 3, 1, 4]
    problems = _run_concurrently(_workload(1), rounds=6,
                                 meddle=lambda i: qc.set_num_threads(counts[i % len(counts)]))
    assert not problems, problems[:5]


def test_set_isa_while_integer_ops_run():
    """quantize, dequantize and pack are bit-identical across ISAs, so switching
    the kernel set under running calls must change no result."""
    jobs = [j for j in _workload(2) if not j[0].startswith("forward")]
    isas = qc.available_isas()
    problems = _run_concurrently(jobs, rounds=6, meddle=lambda i: qc.set_isa(isas[i % len(isas)]))
    assert not problems, problems[:5]


def test_one_layer_shared_by_threads_with_out_buffers():
    """Each thread writes into its own out= buffer of one shared layer."""
    rng = np.random.default_rng(3)
    layer = QuantizedLinear.from_linear(rng.standard_normal((130, 257)).astype(np.float32),
                                        None, QuantConfig.int4())
    xs = [rng.standard_normal((1 + t % 12, 257)).astype(np.float32) for t in range(N_THREADS)]
    want = [layer(x) for x in xs]
    outs = [np.empty_like(w) for w in want]
    errors = []

    def work(t):
        try:
            for _ in range(30):
                outs[t].fill(np.nan)
                layer(xs[t], out=outs[t])
                if outs[t].tobytes() != want[t].tobytes():
                    errors.append(t)
                    return
        except Exception as e:  # pragma: no cover
            errors.append(e)

    ts = [threading.Thread(target=work, args=(t,)) for t in range(N_THREADS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


def test_kernels_release_the_gil():
    """While one thread is inside a long forward (quantcore threads = 1), another
    Python thread keeps counting; if the GIL were held it would be frozen."""
    qc.set_num_threads(1)
    rng = np.random.default_rng(4)
    layer = QuantizedLinear.from_linear(rng.standard_normal((2048, 2048)).astype(np.float32),
                                        None, QuantConfig.int8(compute="float32"))
    x = rng.standard_normal((64, 2048)).astype(np.float32)
    layer(x)  # warm up
    t0 = time.perf_counter()
    layer(x)
    one_call = time.perf_counter() - t0
    reps = max(1, int(0.3 / max(one_call, 1e-4)))  # ~0.3 s of calls

    count = [0]
    inside = threading.Event()
    done = threading.Event()

    def spinner():
        while not done.is_set():
            if inside.is_set():
                count[0] += 1

    def spin_rate(busy):
        """Spinner increments per second while the main thread runs `busy`."""
        count[0] = 0
        inside.set()
        t0 = time.perf_counter()
        busy()
        dt = time.perf_counter() - t0
        inside.clear()
        return count[0] / dt, dt

    old = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    try:
        th = threading.Thread(target=spinner)
        th.start()
        # baseline: the main thread sleeps (releases the GIL) for as long
        free, _ = spin_rate(lambda: time.sleep(reps * one_call))
        busy, spent = spin_rate(lambda: [layer(x) for _ in range(reps)])
        done.set()
        th.join()
    finally:
        sys.setswitchinterval(old)
    # With the GIL held through each call, the spinner could only run between
    # calls (about one switch interval per call): a few percent of `free`.
    print(f"spinner rate free {free:.3g}/s, during forward {busy:.3g}/s ({busy / free:.2f})")
    assert busy > 0.2 * free, (f"spinner rate {busy:.3g}/s during {reps} forward calls "
                               f"({spent:.2f} s) vs {free:.3g}/s free: the GIL seems held")
