"""Memory: no leaks (RSS flat over 20,000 small calls of every op, error paths
included, in a fresh child process; refcounts of the inputs unchanged), a forward
allocates O(M*(K+N)) at most (tracemalloc for the Python side, the peak RSS of a
child for everything), and a layer whose packed weights pass 2**31 bytes
quantizes and runs (64-bit index math; slow, needs ~8 GB of free memory).
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

import quantcore as qc
from quantcore import QuantConfig, QuantizedLinear

HERE = os.path.dirname(os.path.abspath(__file__))
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/self/statm and ru_maxrss in KiB")


def _child(code: str, timeout=600) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([HERE] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert r.returncode == 0, f"child failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r.stdout


LEAK_CHILD = r"""
import os, sys, numpy as np, quantcore as qc
from quantcore import QuantConfig, QuantizedLinear
PAGE = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE
rng = np.random.default_rng(0)
w = rng.standard_normal((24, 96)).astype(np.float32)
x1 = rng.standard_normal((1, 96)).astype(np.float32)
x9 = rng.standard_normal((9, 96)).astype(np.float32)
xnan = x9.copy(); xnan[3, 5] = np.nan
bad = w.copy(); bad[2, 2] = np.inf
out = np.empty((9, 24), np.float32)
l8 = QuantizedLinear.from_linear(w, np.ones(24, np.float32), QuantConfig.int8())
l4 = QuantizedLinear.from_linear(w, None, QuantConfig.q4_1(compute="float32"))
qt = qc.quantize(w, QuantConfig.int4())
v = rng.integers(0, 16, (5, 33)).astype(np.uint8)
def err(f):
    try:
        f()
    except (ValueError, TypeError):
        return
    raise AssertionError("no error")
ops = {
    "quantize": lambda: qc.quantize(w, QuantConfig.q4_0()),
    "quantize-f16": lambda: qc.quantize(w.astype(np.float16), QuantConfig.int8()),
    "dequantize": lambda: qt.dequantize(),
    "forward-gemv": lambda: l8(x1),
    "forward-gemm-out": lambda: l4(x9, out=out),
    "forward-nan-rows": lambda: l8(xnan),
    "pack": lambda: qc.unpack_int4(qc.pack_int4(v), 33),
    "error-nan": lambda: err(lambda: qc.quantize(bad)),
    "error-shape": lambda: err(lambda: l8(np.ones((2, 95), np.float32))),
    "error-config": lambda: err(lambda: QuantConfig(bits=3)),
}
N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
for name, f in ops.items():
    n = N if not name.startswith("error") else N // 4
    for _ in range(1000):
        f()
    before = rss()
    for _ in range(n):
        f()
    grew = rss() - before
    print(name, n, grew, flush=True)
"""


@linux_only
def test_rss_flat_over_20000_calls():
    out = _child(LEAK_CHILD)
    rows = [line.split() for line in out.strip().splitlines()]
    # A leak of even 16 bytes a call shows as 320 kB; allow 256 kB of allocator noise.
    grown = {name: int(g) for name, n, g in rows}
    assert len(grown) == 10
    leaky = {k: v for k, v in grown.items() if v > 256 * 1024}
    assert not leaky, f"RSS grew over 20,000 calls (bytes): {leaky}"


def test_refcounts_unchanged():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    x = rng.standard_normal((9, 64)).astype(np.float32)
    out = np.empty((9, 16), np.float32)
    cfg = QuantConfig.int4()
    v = rng.integers(0, 16, (3, 64)).astype(np.uint8)
    objs = [w, b, x, out, cfg, v]
    gc.collect()
    before = [sys.getrefcount(o) for o in objs]
    for _ in range(200):
        qt = qc.quantize(w, cfg)
        layer = QuantizedLinear(qt, b)
        layer(x, out=out)
        layer(x)
        qt.dequantize()
        qc.unpack_int4(qc.pack_int4(v), 64)
        for bad in (lambda: layer(x, out=out[:, :3]), lambda: qc.quantize(w, "x"),
                    lambda: qc.pack_int4(v + 9)):
            try:
                bad()
            except (TypeError, ValueError):
                pass
        del qt, layer
    gc.collect()
    after = [sys.getrefcount(o) for o in objs]
    assert after == before, f"refcounts changed: {before} -> {after}"


@pytest.mark.parametrize("m", [1, 4, 64])
@pytest.mark.parametrize("cfg", [QuantConfig.int4(), QuantConfig.int8(compute="float32")],
                         ids=["int4_i8", "int8_f32"])
def test_forward_python_allocations(cfg, m):
    """tracemalloc sees NumPy's allocations: with out= a forward allocates next to
    nothing; without, the output plus O(M*K) for a converted x."""
    rng = np.random.default_rng(2)
    k, n = 1024, 2048
    layer = QuantizedLinear.from_linear(rng.standard_normal((n, k)).astype(np.float32), None, cfg)
    x = rng.standard_normal((m, k)).astype(np.float32)
    x64 = x.astype(np.float64)
    out = np.empty((m, n), np.float32)
    layer(x, out=out)
    for arg, kw, allowed in [(x, {"out": out}, 16 * 1024),
                             (x, {}, 4 * m * n + 16 * 1024),
                             (x64, {}, 4 * m * (n + k) + 16 * 1024)]:
        tracemalloc.start()
        try:
            layer(arg, **kw)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak <= allowed, f"peak {peak} B > {allowed} B (M={m}, {arg.dtype}, out={'out' in kw})"


FORWARD_PEAK_CHILD = r"""
import sys, numpy as np, quantcore as qc
from quantcore import QuantConfig, QuantizedTensor, QuantizedLinear
def hwm():
    # VmHWM: this process's own peak RSS.  Not ru_maxrss: Linux carries the
    # parent's peak across fork+exec into it, so a large pytest parent would hide
    # everything this child does.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
n, k, m, bits = (int(a) for a in sys.argv[1:5])
cfg = QuantConfig.int4(compute=sys.argv[5]) if bits == 4 else QuantConfig.int8(compute=sys.argv[5])
# synthetic codes, generated in slices: no float weight and no big temporary ever
# exists, so the peak RSS before the forward is the packed weight itself
rb = (k + 1) // 2 if bits == 4 else k
data = np.empty((n, rb), np.uint8)
for r0 in range(0, n, 16):
    i = np.arange(r0 * rb, min(n, r0 + 16) * rb, dtype=np.uint64)
    data[r0:r0 + 16] = ((i * np.uint64(2654435761)) >> np.uint64(24)).astype(np.uint8).reshape(-1, rb)
if bits == 8:
    data = data.view(np.int8); data[data == -128] = 0
ng = -(-k // 32)
scales = np.full((n, ng) if bits == 4 else (n, 1), 0.01, np.float32)
qt = QuantizedTensor._make(data, scales, None, (n, k), np.float32, cfg)  # no copy (from_arrays copies)
del data
layer = QuantizedLinear(qt)
x = np.random.default_rng(0).standard_normal((m, k)).astype(np.float32)
out = np.empty((m, n), np.float32)
layer(x[:1], out=out[:1])  # threads started, code paged in
base = hwm()
if len(sys.argv) > 6 and sys.argv[6] == "control":
    w = qt.dequantize()  # what a forward must not do: a float32 copy of W
else:
    layer(x, out=out)
peak = hwm()
print(peak - base, qt.nbytes)
"""


@linux_only
@pytest.mark.parametrize("bits, compute, m", [(4, "int8", 1), (4, "int8", 64), (8, "float32", 1),
                                               (8, "float32", 64), (4, "float32", 16)])
def test_forward_peak_memory_is_o_of_m_k_plus_n(bits, compute, m):
    """Peak RSS during one forward over a 8192x8192 layer stays within a small
    multiple of M*(K+N) floats: a float copy of W (256 MB) would show."""
    n = k = 8192
    grew, nbytes = (int(v) for v in _run_peak(n, k, m, bits, compute).split())
    allowed = _allowed(m, k, n)
    assert grew <= allowed, f"forward raised peak RSS by {grew / 2**20:.1f} MiB (> {allowed / 2**20:.1f} MiB)"


@linux_only
def test_forward_peak_measurement_sees_a_float_copy():
    """The method is sensitive: a float32 copy of W in place of the forward shows."""
    grew, _ = (int(v) for v in _run_peak(8192, 8192, 64, 4, "int8", "control").split())
    # a 256 MiB copy must exceed what the forward test allows for M=64 by far
    assert grew > 2 * _allowed(64, 8192, 8192), f"the float copy raised the peak by {grew} B only"


def _allowed(m, k, n):
    """Peak growth a forward may cause: 8 float32 buffers of M*(K+N), plus 24 MiB
    (thread stacks, GEMM tiles, allocator slack)."""
    return 8 * 4 * m * (k + n) + 24 * 2**20


def _run_peak(n, k, m, bits, compute, *extra):
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-c", FORWARD_PEAK_CHILD, str(n), str(k), str(m), str(bits), compute,
                        *extra],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip()


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


BIG_CHILD = r"""
import sys, time, numpy as np, quantcore as qc
from quantcore import QuantConfig, QuantizedLinear
n, k = 65536 + 1, 32768 + 32              # int8: 2,149,613,600 packed bytes > 2**31
t0 = time.time()
base = np.random.default_rng(0).standard_normal(k).astype(np.float16)
x16 = np.empty((n, k), np.float16)
step = 4096
f = (np.arange(n) % 97 + 1).astype(np.float16)
for r0 in range(0, n, step):
    x16[r0:r0 + step] = base * f[r0:r0 + step, None]
spike_col = (np.arange(n) * 7919) % k            # a per-row outlier: codes differ per row
x16[np.arange(n), spike_col] = np.float16(20.0)
qt = qc.quantize(x16, QuantConfig.int8())
assert qt.data.nbytes > 2**31, qt.data.nbytes
t1 = time.time()
rows = np.r_[0:3, 65460:65480, n - 3:n]            # byte offsets on both sides of 2**31
ref = qc.quantize(x16[rows], QuantConfig.int8())
assert np.array_equal(qt.data[rows], ref.data) and np.array_equal(qt.scales[rows], ref.scales)
del x16
x = np.random.default_rng(1).standard_normal((10, k)).astype(np.float32)
for compute in ("int8", "float32"):
    layer = QuantizedLinear(qt.__class__._make(qt._data, qt._scales, None, qt.shape, qt.dtype,
                                               qt.config.replace(compute=compute)))
    y = np.concatenate([layer(x[:2]), layer(x[2:])])  # the GEMV (2 rows) and GEMM (8 rows) paths
    # (only the x86 sets have a GEMM; scalar and NEON run their GEMV for 8 rows too)
    assert not layer._qw.uses_gemm(2, layer._mode)
    assert layer._qw.uses_gemm(8, layer._mode) == (qc.get_isa() in ("avx2", "avx512"))
    w = ref.dequantize().astype(np.float64)
    want = x.astype(np.float64) @ w.T
    tol = 1e-3 * np.abs(x).sum(1, keepdims=True) * np.abs(w).max() + 0.05 * np.abs(want).max()
    err = np.abs(y[:, rows] - want)
    assert np.all(err <= tol), (compute, float(err.max()))
    assert np.all(np.isfinite(y))
print(f"quantize {t1 - t0:.1f} s, total {time.time() - t0:.1f} s, packed {qt.data.nbytes} B")
"""


@linux_only
@pytest.mark.slow
def test_layer_over_2_gib_quantizes_and_runs():
    """int8 weight of shape (65537, 32800): 2.15e9 packed bytes, quantized from a
    float16 source (4.3 GB) and run with int8 and float32 compute; rows whose byte
    offsets lie past 2**31 are checked against the same rows quantized alone."""
    need = 8 * 2**30
    if _mem_available() < need:
        pytest.skip(f"needs {need / 2**30:.0f} GiB of available memory, have "
                    f"{_mem_available() / 2**30:.1f} GiB")
    print(_child(BIG_CHILD, timeout=900))
