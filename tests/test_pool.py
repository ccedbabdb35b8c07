"""The kernels' thread pool (csrc/pool.c) through the Python API.

Every parallel kernel gives the same bytes at 1, 2, 3 and 4 threads (the work
is split into chunks whose results do not depend on which thread runs them);
many Python threads calling at once, on one layer or several, while the thread
count changes, get the one-thread bytes; a child after fork() uses the pool
(while another parent thread was inside a call); thousands of small calls,
calls after the workers went to sleep, workers that sleep at once
(QUANTCORE_SPIN_US=0), and a process pinned to one CPU with more threads than
CPUs (a worker that is not running must not hold the caller: the calls end
and give the same bytes; no timing is asserted).  The C-level stress test of
the pool on its own, also under ThreadSanitizer, is tests/c/run_pool.sh.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import quantcore as qc
from quantcore import QuantConfig, QuantizedLinear, _ext
from helpers import run_jobs_concurrently

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
THREAD_COUNTS = (1, 2, 3, 4)
POOLED = qc.info()["thread_pool"] == "pthreads"


@pytest.fixture(autouse=True)
def _restore_settings():
    isa, nt = qc.get_isa(), qc.get_num_threads()
    yield
    qc.set_isa(isa)
    qc.set_num_threads(nt)


def _at_each_thread_count(fn):
    out = []
    for n in THREAD_COUNTS:
        qc.set_num_threads(n)
        out.append(fn())
    return out


def _same_bytes(results, what):
    first = results[0]
    for n, r in zip(THREAD_COUNTS[1:], results[1:]):
        if isinstance(first, np.ndarray):
            assert r.dtype == first.dtype and r.shape == first.shape, what
            assert r.tobytes() == first.tobytes(), f"{what}: {n} threads differ from 1"
        else:
            assert r == first, f"{what}: {n} threads differ from 1"


# The shapes are above the kernels' threshold for going parallel (2^18 elements
# or multiply-adds), with row counts that do not divide evenly into chunks.
QUANT_CONFIGS = {
    "int8": QuantConfig.int8(),
    "uint8": QuantConfig(bits=8, symmetric=False),
    "int4_g32": QuantConfig.int4(),
    "uint4_g64_f16": QuantConfig(bits=4, symmetric=False, group_size=64, scale_dtype="float16"),
    "q4_1": QuantConfig.q4_1(),
    "int8_tensor": QuantConfig(bits=8, granularity="tensor"),
    "uint4_tensor_f16": QuantConfig(bits=4, symmetric=False, granularity="tensor", scale_dtype="float16"),
    "int4_g32_mse": QuantConfig.int4(method="mse"),
    "int8_tensor_mse": QuantConfig(bits=8, granularity="tensor", method="mse"),
    "q4_1_tensor_mse": QuantConfig(bits=4, symmetric=False, granularity="tensor", method="mse"),
}


@pytest.mark.parametrize("name", list(QUANT_CONFIGS))
def test_quantize_and_dequantize_identical_across_thread_counts(name):
    cfg = QUANT_CONFIGS[name]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((613, 448)).astype(np.float32)
    x[::37] *= 40.0  # rows of other magnitudes: the per-tensor fold must not care about order
    inputs = {"f32": x, "f16": x.astype(np.float16), "f64": x.astype(np.float64),
              "strided": np.asfortranarray(x)}
    for kind, xi in inputs.items():
        qts = _at_each_thread_count(lambda: qc.quantize(xi, cfg))
        _same_bytes(qts, f"quantize {name} {kind}")
        _same_bytes(_at_each_thread_count(lambda: qts[0].dequantize()), f"dequantize {name} {kind}")


def test_per_tensor_extreme_tie_identical_across_thread_counts():
    """Per tensor, the signed extreme sets the Q4_0-style scale (d = max / -8):
    with +50 and -50 in rows of different chunks, the first row's wins at any
    thread count (the chunks' statistics are folded in row order)."""
    x = np.random.default_rng(2).standard_normal((700, 400)).astype(np.float32)
    x[5, 2] = -50.0
    x[600, 1] = 50.0
    cfg = QuantConfig(bits=4, granularity="tensor")
    qts = _at_each_thread_count(lambda: qc.quantize(x, cfg))
    _same_bytes(qts, "per-tensor tie")
    assert float(np.asarray(qts[0].scales).ravel()[0]) == pytest.approx(50.0 / 8)


def test_quantize_error_identical_across_thread_counts():
    """Bad values in several chunks: the error names the first one (row, col)
    whatever the thread count."""
    x = np.random.default_rng(3).standard_normal((900, 512)).astype(np.float32)
    x[850, 7] = np.nan
    x[411, 300] = np.inf
    x[411, 500] = np.nan
    for cfg in (QuantConfig.int8(), QuantConfig.int4(), QuantConfig(bits=8, granularity="tensor")):
        msgs = []
        for n in THREAD_COUNTS:
            qc.set_num_threads(n)
            with pytest.raises(ValueError) as e:
                qc.quantize(x, cfg)
            msgs.append(str(e.value))
        assert len(set(msgs)) == 1, msgs
        assert "411" in msgs[0], msgs[0]


def test_pack_unpack_identical_across_thread_counts():
    rng = np.random.default_rng(4)
    v = rng.integers(0, 16, (701, 803)).astype(np.uint8)
    s = rng.integers(-8, 8, (701, 803)).astype(np.int8)
    packed = _at_each_thread_count(lambda: qc.pack_int4(v))
    _same_bytes(packed, "pack_int4 unsigned")
    _same_bytes(_at_each_thread_count(lambda: qc.pack_int4(s)), "pack_int4 signed")
    _same_bytes(_at_each_thread_count(lambda: qc.unpack_int4(packed[0], 803, signed=True)),
                "unpack_int4")


def test_read_probe_identical_across_thread_counts():
    buf = np.random.default_rng(5).integers(0, 256, 3 << 20, dtype=np.uint8)
    sums = _at_each_thread_count(lambda: _ext.read_probe(buf))
    _same_bytes(sums, "read_probe")
    w = buf.view(np.uint64)
    assert sums[0] == int(np.bitwise_xor.reduce(w))


LINEAR_CONFIGS = {
    "int8_i8": QuantConfig.int8(compute="int8"),
    "int8_f32": QuantConfig.int8(compute="float32"),
    "int4_g32_i8": QuantConfig.int4(compute="int8"),
    "int4_g32_f32": QuantConfig.int4(compute="float32"),
    "q4_1_i8": QuantConfig.q4_1(compute="int8"),
    "uint8_g64_f32": QuantConfig(bits=8, symmetric=False, group_size=64, compute="float32"),
}


@pytest.mark.parametrize("name", list(LINEAR_CONFIGS))
def test_linear_identical_across_thread_counts(name, isa):
    """GEMV (M < 8) and GEMM (M >= 8) paths, bias, every kernel set."""
    rng = np.random.default_rng(6)
    n, k = 1003, 320  # N not a multiple of any chunk
    layer = QuantizedLinear.from_linear(rng.standard_normal((n, k)).astype(np.float32),
                                        rng.standard_normal(n).astype(np.float32),
                                        LINEAR_CONFIGS[name])
    for m in (1, 3, 8, 37):
        x = rng.standard_normal((m, k)).astype(np.float32)
        _same_bytes(_at_each_thread_count(lambda: layer(x)), f"{name} M={m} ({layer.kernel})")


# ---- many Python threads -----------------------------------------------------------------

def _pooled_jobs(seed):
    """(name, callable) jobs, each large enough to go through the pool."""
    rng = np.random.default_rng(seed)
    jobs = []
    shared = QuantizedLinear.from_linear(rng.standard_normal((700, 512)).astype(np.float32),
                                         None, QuantConfig.int4())
    for i, m in enumerate((1, 2, 9)):  # one layer from several threads, GEMV and GEMM
        x = rng.standard_normal((m, 512)).astype(np.float32)
        jobs.append((f"shared{i}", lambda x=x: shared(x)))
    for i, (cfg, m) in enumerate([(QuantConfig.int8(), 1), (QuantConfig.q4_1(compute="float32"), 4),
                                  (QuantConfig.int8(compute="float32"), 12)]):
        layer = QuantizedLinear.from_linear(rng.standard_normal((600, 640)).astype(np.float32),
                                            rng.standard_normal(600).astype(np.float32), cfg)
        x = rng.standard_normal((m, 640)).astype(np.float32)
        jobs.append((f"layer{i}", lambda layer=layer, x=x: layer(x)))
    w = rng.standard_normal((520, 600)).astype(np.float32)
    for i, cfg in enumerate([QuantConfig.int4(), QuantConfig(bits=8, granularity="tensor")]):
        jobs.append((f"quantize{i}", lambda cfg=cfg: qc.quantize(w, cfg)))
        qt = qc.quantize(w, cfg)
        jobs.append((f"dequantize{i}", lambda qt=qt: qt.dequantize()))
    v = rng.integers(0, 16, (600, 512)).astype(np.uint8)
    jobs.append(("pack", lambda: qc.pack_int4(v)))
    return jobs


def _key(r):
    return r.tobytes() if isinstance(r, np.ndarray) else r


def _hammer(jobs, n_threads, rounds, meddle=None):
    qc.set_num_threads(1)
    expected = {name: _key(fn()) for name, fn in jobs}
    qc.set_num_threads(2)
    return run_jobs_concurrently(jobs, expected, _key, n_threads, rounds, meddle, pause=0.0003)


def test_python_threads_share_the_pool():
    problems = _hammer(_pooled_jobs(10), n_threads=6, rounds=4)
    assert not problems, problems[:5]


def test_set_num_threads_during_concurrent_calls():
    counts = [4, 1, 3, 2, 6, 1]
    problems = _hammer(_pooled_jobs(11), n_threads=4, rounds=4,
                       meddle=lambda i: qc.set_num_threads(counts[i % len(counts)]))
    assert not problems, problems[:5]


def test_many_small_pooled_calls():
    """Thousands of calls just above the parallel threshold (a few chunks each)."""
    rng = np.random.default_rng(12)
    layer = QuantizedLinear.from_linear(rng.standard_normal((64, 4096)).astype(np.float32),
                                        None, QuantConfig.int4())
    x = rng.standard_normal((1, 4096)).astype(np.float32)
    w = rng.standard_normal((64, 4096)).astype(np.float32)
    qc.set_num_threads(1)
    want_y, want_q = layer(x).tobytes(), qc.quantize(w, QuantConfig.int8())
    for n in (2, 4):
        qc.set_num_threads(n)
        for i in range(1500):
            assert layer(x).tobytes() == want_y, (n, i)
            if i % 10 == 0:
                assert qc.quantize(w, QuantConfig.int8()) == want_q, (n, i)


def test_calls_after_idle_pauses():
    """Calls after the workers stopped polling and went to sleep."""
    rng = np.random.default_rng(13)
    layer = QuantizedLinear.from_linear(rng.standard_normal((900, 1024)).astype(np.float32),
                                        None, QuantConfig.int8())
    x = rng.standard_normal((2, 1024)).astype(np.float32)
    qc.set_num_threads(1)
    want = layer(x).tobytes()
    qc.set_num_threads(3)
    for pause in (0.0, 0.0001, 0.002, 0.03, 0.15, 0.0, 0.03):
        time.sleep(pause)
        assert layer(x).tobytes() == want, pause


# ---- processes: fork, environment, one CPU --------------------------------------------

def _fork_child_job(seed):
    rng = np.random.default_rng(seed)
    layer = QuantizedLinear.from_linear(rng.standard_normal((800, 768)).astype(np.float32),
                                        None, QuantConfig.int4())
    x = rng.standard_normal((3, 768)).astype(np.float32)
    w = rng.standard_normal((400, 800)).astype(np.float32)
    return (layer(x).tobytes(), qc.quantize(w, QuantConfig.q4_1()).data.tobytes(),
            qc.get_num_threads(), qc.info()["pool_workers"])


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="no fork start method here")
def test_fork_child_uses_the_pool_while_parent_threads_call():
    qc.set_num_threads(3)
    want = [_fork_child_job(s)[:2] for s in range(4)]  # the parent's workers exist now
    stop = threading.Event()
    rng = np.random.default_rng(14)
    layer = QuantizedLinear.from_linear(rng.standard_normal((1000, 1024)).astype(np.float32),
                                        None, QuantConfig.int8())
    x = rng.standard_normal((1, 1024)).astype(np.float32)

    def busy():  # a parent thread inside pool calls while the children are forked
        while not stop.is_set():
            layer(x)

    t = threading.Thread(target=busy)
    t.start()
    try:
        with mp.get_context("fork").Pool(2) as pool:
            got = pool.map_async(_fork_child_job, range(4)).get(timeout=120)
    finally:
        stop.set()
        t.join()
    for s, (y, q, nt, workers) in enumerate(got):
        assert (y, q) == want[s], f"child job {s} differs"
        assert nt == 3
        if POOLED:
            assert 1 <= workers <= 2  # the child started its own workers


def _python(code, preexec_fn=None, **env):
    e = dict(os.environ)
    for k in ("QUANTCORE_NUM_THREADS", "OMP_NUM_THREADS", "QUANTCORE_SPIN_US"):
        e.pop(k, None)
    e.update(env)
    # the child imports the quantcore this process tests (installed, or a source tree)
    here = os.path.dirname(os.path.dirname(os.path.abspath(qc.__file__)))
    e["PYTHONPATH"] = os.pathsep.join(p for p in [here, e.get("PYTHONPATH")] if p)
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True,
                          timeout=300, preexec_fn=preexec_fn)


# Prints a digest of the outputs of every pooled kernel, computed at each thread
# count in argv[1:], then the pool's info.
DIGEST_CHILD = r"""
import hashlib, sys
import numpy as np
import quantcore as qc
from quantcore import QuantConfig, QuantizedLinear
rng = np.random.default_rng(20)
w = rng.standard_normal((700, 640)).astype(np.float32)
layers = [QuantizedLinear.from_linear(w, None, c) for c in
          (QuantConfig.int4(), QuantConfig.int8(compute="float32"))]
xs = [rng.standard_normal((m, 640)).astype(np.float32) for m in (1, 5, 24)]
v = rng.integers(0, 16, (600, 600)).astype(np.uint8)
for n in [int(a) for a in sys.argv[1:]]:
    qc.set_num_threads(n)
    h = hashlib.sha256()
    for _ in range(20):
        for layer in layers:
            for x in xs:
                h.update(layer(x).tobytes())
    for cfg in (QuantConfig.int4(), QuantConfig(bits=8, granularity="tensor", method="mse")):
        qt = qc.quantize(w, cfg)
        h.update(qt.data.tobytes()); h.update(qt.scales.tobytes()); h.update(qt.dequantize().tobytes())
    h.update(qc.pack_int4(v).tobytes())
    print(n, h.hexdigest())
i = qc.info()
print("pool", i["thread_pool"], i["pool_workers"], i["pool_spin_us"], qc.get_num_threads())
"""


def _digests(out):
    lines = out.strip().splitlines()
    return {int(a): b for a, b in (ln.split() for ln in lines if not ln.startswith("pool"))}, \
        lines[-1].split()[1:]


def test_workers_sleep_at_once_with_spin_zero():
    code = "import sys; sys.argv += ['1', '2', '4']\n" + DIGEST_CHILD
    r = _python(code, QUANTCORE_SPIN_US="0")
    assert r.returncode == 0, r.stderr[-3000:]
    digests, pool = _digests(r.stdout)
    assert len(set(digests.values())) == 1, digests
    if pool[0] == "pthreads":
        assert pool[2] == "0" and pool[1] == "3", pool


def test_spin_environment_variable():
    code = "import quantcore; print(quantcore.info()['pool_spin_us'])"
    for value, want in (("200", 200), (" 7 ", 7), ("bogus", 50), ("", 50)):
        r = _python(code, QUANTCORE_SPIN_US=value)
        assert r.returncode == 0, r.stderr
        if POOLED:
            assert int(r.stdout) == want, (value, r.stdout)


@pytest.mark.skipif(not POOLED, reason="a serial build has no workers")
def test_workers_start_lazily_and_grow_with_the_thread_count():
    code = r"""
import numpy as np, quantcore as qc
w = lambda: qc.info()["pool_workers"]
x = np.ones((600, 600), np.float32)
a = [w()]
qc.set_num_threads(3); qc.quantize(np.ones((4, 8), np.float32), qc.QuantConfig.int8()); a.append(w())
qc.quantize(x, qc.QuantConfig.int8()); a.append(w())
qc.set_num_threads(5); a.append(w()); qc.quantize(x, qc.QuantConfig.int8()); a.append(w())
qc.set_num_threads(2); qc.quantize(x, qc.QuantConfig.int8()); a.append(w())
print(*a)
"""
    r = _python(code)
    assert r.returncode == 0, r.stderr
    # none at import, none for a small (one-thread) call; 2 for 3 threads; 4 only
    # once a call needs them; none stopped when the count goes down
    assert r.stdout.split() == ["0", "0", "2", "2", "4", "4"], r.stdout


def test_default_thread_count_from_environment():
    code = "import quantcore; print(quantcore.get_num_threads())"
    r = _python(code, OMP_NUM_THREADS="3")
    assert r.returncode == 0 and r.stdout.strip() == ("3" if POOLED else "1"), r.stdout + r.stderr
    r = _python(code, OMP_NUM_THREADS="3", QUANTCORE_NUM_THREADS="2")
    assert r.stdout.strip() == "2", r.stdout + r.stderr
    if POOLED and hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        r = _python(code, preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
        assert r.stdout.strip() == "1", r.stdout + r.stderr  # the CPUs it may run on


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity (Linux)")
def test_more_threads_than_cpus_on_one_pinned_cpu():
    """QUANTCORE_NUM_THREADS=2 (then 4) in a process pinned to one CPU: at most one
    of caller and workers runs at a time, so a caller must never wait for a worker
    that is not running unless it holds a chunk.  The calls end and give the bytes
    of an unpinned one-thread run."""
    free = _python("import sys; sys.argv += ['1']\n" + DIGEST_CHILD)
    assert free.returncode == 0, free.stderr[-3000:]
    want = _digests(free.stdout)[0][1]
    cpu = min(os.sched_getaffinity(0))
    code = ("import os, sys; sys.argv += ['2', '4', '1']\n"
            f"os.sched_setaffinity(0, {{{cpu}}})\n" + DIGEST_CHILD)
    r = _python(code, QUANTCORE_NUM_THREADS="2")
    assert r.returncode == 0, r.stderr[-3000:]
    digests, pool = _digests(r.stdout)
    assert digests == {2: want, 4: want, 1: want}
    if pool[0] == "pthreads":
        assert pool[1] == "3", pool  # the workers did exist


# ---- the pool on its own, in C ---------------------------------------------------------

@pytest.mark.skipif(sys.platform == "win32" or not os.path.isdir(os.path.join(ROOT, "csrc")),
                    reason="needs the source tree (csrc/) and a POSIX shell")
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="no C compiler on PATH")
def test_c_stress_test_of_the_pool():
    r = subprocess.run(["sh", os.path.join(HERE, "c", "run_pool.sh")], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    # futexes (two spins), condition variables, serial; and ThreadSanitizer where available
    assert out.count(" passed, 0 failed") >= 4, out[-4000:]
