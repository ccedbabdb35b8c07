"""Shared, non-fixture helpers of the test suite: the awkward shapes, value
generators, the kind table and thin wrappers that run quantcore and the oracle
the same way.  conftest.py turns the parametrizable parts into fixtures."""

from __future__ import annotations

import zlib
from typing import Optional

import numpy as np
import pytest

import oracle as O
import quantcore
from quantcore import QuantConfig, _ext

# ---- shapes (STYLE.md convention 5) ------------------------------------------------------
# K in 1..17, 31..33, 63..65, K not a multiple of the group (16 and 32 here), M=1 with odd K,
# one larger odd shape.
AWKWARD_SHAPES = (
    [(3, k) for k in range(1, 18)]
    + [(2, k) for k in (31, 32, 33, 63, 64, 65)]
    + [(5, 40), (4, 100), (2, 130)]
    + [(1, 1), (1, 7), (1, 33), (1, 255), (1, 1031)]
    + [(67, 1031)]
)


def shape_id(shape) -> str:
    return "x".join(map(str, shape))


# ---- kinds, granularities ---------------------------------------------------------------
KINDS = {name: kind for kind, name in O.KIND_NAMES.items()}  # "sym8" -> 0, ...
KIND_LIST = list(KINDS)
GRANULARITIES = [("channel", None), ("group", 16), ("group", 32), ("tensor", None)]
GRAN_IDS = ["channel", "g16", "g32", "tensor"]
SCALE_DTYPES = ["float32", "float16"]
# the kinds whose codes round to nearest (SYM4 truncates x*id + 8.5, which is
# round-half-up, but its extreme code of the opposite sign is clipped to 15)
HALF_STEP_KINDS = (O.SYM8, O.ASYM8, O.ASYM4, O.MIN4)


def config_for(kind: int, granularity: str, group_size: Optional[int],
               scale_dtype: str) -> Optional[QuantConfig]:
    """The public QuantConfig for this combination, or None where only the C API
    reaches it (MIN4 is public only as GGUF Q4_1: group 32, float16 scales)."""
    if kind == O.MIN4:
        if (granularity, group_size, scale_dtype) == ("group", 32, "float16"):
            return QuantConfig.q4_1()
        return None
    return QuantConfig(bits=O.BITS[kind], symmetric=kind in (O.SYM8, O.SYM4),
                       granularity=granularity, group_size=group_size,
                       scale_dtype=scale_dtype)


def kernel_args(granularity: str, group_size: Optional[int]):
    """(group, per_tensor) as the C API takes them."""
    return (group_size if granularity == "group" else 0), granularity == "tensor"


def run_quantize(x, kind: int, granularity: str = "channel", group_size: Optional[int] = None,
                 scale_dtype: str = "float32") -> O.Quantized:
    """quantcore's result as 2-D (rows x ...) arrays: through quantcore.quantize
    where a public config exists, else through the extension's quantize_2d."""
    cfg = config_for(kind, granularity, group_size, scale_dtype)
    if cfg is not None:
        qt = quantcore.quantize(x, cfg)
        return as_2d(qt)
    group, per_tensor = kernel_args(granularity, group_size)
    a = np.asarray(x)
    a = a.reshape(-1, a.shape[-1])
    return O.Quantized(*_ext.quantize_2d(a, kind, group, per_tensor, scale_dtype == "float16"))


def run_dequantize(q: O.Quantized, kind: int, rows: int, cols: int, granularity: str = "channel",
                   group_size: Optional[int] = None) -> np.ndarray:
    group, per_tensor = kernel_args(granularity, group_size)
    return _ext.dequantize_2d(q.data, q.scales, q.zeros, kind, rows, cols, group, per_tensor)


def run_oracle(x, kind: int, granularity: str = "channel", group_size: Optional[int] = None,
               scale_dtype: str = "float32") -> O.Quantized:
    group, per_tensor = kernel_args(granularity, group_size)
    return O.quantize(x, kind, group, per_tensor, scale_dtype == "float16")


def oracle_dequantize(q: O.Quantized, kind: int, rows: int, cols: int,
                      granularity: str = "channel", group_size: Optional[int] = None):
    group, per_tensor = kernel_args(granularity, group_size)
    return O.dequantize(q.data, q.scales, q.zeros, kind, rows, cols, group, per_tensor)


def as_2d(qt) -> O.Quantized:
    """A QuantizedTensor's public arrays in the (rows, ...) layout of the oracle."""
    rows = qt.data.size // qt.data.shape[-1] if qt.data.ndim > 1 else 1
    data = qt.data.reshape(rows, -1)
    if qt.granularity == "tensor":
        srows, ng = 1, 1
    else:
        srows, ng = rows, qt.scales.size // rows
    scales = qt.scales.reshape(srows, ng)
    zeros = None if qt.zero_points is None else qt.zero_points.reshape(srows, ng)
    return O.Quantized(data, scales, zeros)


# ---- bitwise comparison ------------------------------------------------------------------------
def bits(a: np.ndarray) -> np.ndarray:
    """An array's bits as unsigned ints (so -0.0 != 0.0 and NaN payloads count)."""
    a = np.ascontiguousarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_bits_equal(got: np.ndarray, want: np.ndarray, what: str = "array") -> None:
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    g, w = bits(got), bits(want)
    if not np.array_equal(g, w):
        idx = np.argwhere(g != w)
        first = tuple(int(i) for i in idx[0])
        raise AssertionError(
            f"{what}: {len(idx)} of {g.size} elements differ; first at {first}: "
            f"got {got[first]!r} ({g[first]:#x}), want {want[first]!r} ({w[first]:#x})")


def assert_quantized_equal(got: O.Quantized, want: O.Quantized, what: str = "") -> None:
    assert_bits_equal(got.data, want.data, f"{what} data")
    assert_bits_equal(got.scales, want.scales, f"{what} scales")
    if want.zeros is None:
        assert got.zeros is None, f"{what} zero points: expected None"
    else:
        assert got.zeros is not None, f"{what} zero points: got None"
        assert_bits_equal(got.zeros, want.zeros, f"{what} zero points")


# ---- round-trip error bound --------------------------------------------------------------------
def roundtrip_bound(kind: int, x32: np.ndarray, q: O.Quantized, granularity: str,
                    group_size: Optional[int]) -> np.ndarray:
    """Per-element bound on |x - dequantize(quantize(x))|: half a step (a full step
    for SYM4, whose opposite-sign extreme is clipped), plus float32 rounding, plus
    the float16 rounding of the stored scale (and minimum) when there is one."""
    rows, cols = x32.shape
    group, per_tensor = kernel_args(granularity, group_size)
    d = np.abs(O._expand(q.scales.astype(np.float64), rows, cols, group, per_tensor))
    step = 1.0 if kind == O.SYM4 else 0.5
    bound = step * d * (1 + 2.0**-10) + np.abs(x32.astype(np.float64)) * 2.0**-20 + 1e-36
    if q.scales.dtype == np.float16:
        qmax = O.QMAX[kind] + 1
        bound = bound + qmax * (d * 2.0**-10 + 2.0**-24)
        if kind == O.MIN4:
            m = np.abs(O._expand(q.zeros.astype(np.float64), rows, cols, group, per_tensor))
            bound = bound + m * 2.0**-10 + 2.0**-24
    return bound


# ---- the whole check -----------------------------------------------------------------------------
def check_against_oracle(x, kind, granularity="channel", group_size=None,
                         scale_dtype="float32", roundtrip=True):
    """Quantize x with quantcore and the oracle; codes, scales, zero points and the
    dequantized values must agree bit for bit, and the round-trip error must stay
    within half a step.  Returns (quantized, dequantized)."""
    a = np.asarray(x)
    rows, cols = int(np.prod(a.shape[:-1], dtype=np.int64)), a.shape[-1]
    try:
        want = run_oracle(x, kind, granularity, group_size, scale_dtype)
    except O.ScaleOverflow as e:
        match = "float16" if scale_dtype == "float16" else "scale"
        with pytest.raises(ValueError, match=match) as info:
            run_quantize(x, kind, granularity, group_size, scale_dtype)
        assert f"row {e.row}, column {e.col}" in str(info.value)
        return None, None
    cfg = config_for(kind, granularity, group_size, scale_dtype)
    if cfg is not None:
        qt = quantcore.quantize(x, cfg)
        got = as_2d(qt)
        deq = qt.dequantize().reshape(rows, cols)
    else:
        got = run_quantize(x, kind, granularity, group_size, scale_dtype)
        deq = run_dequantize(got, kind, rows, cols, granularity, group_size)
    assert_quantized_equal(got, want)
    assert_bits_equal(deq, oracle_dequantize(want, kind, rows, cols, granularity, group_size),
                      "dequantized")
    if roundtrip:
        x32 = O.to_f32_2d(x)
        err = np.abs(x32.astype(np.float64) - deq.astype(np.float64))
        bound = roundtrip_bound(kind, x32, got, granularity, group_size)
        worst = np.unravel_index(np.argmax(err - bound), err.shape)
        assert np.all(err <= bound), (
            f"round-trip error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst} "
            f"(x={x32[worst]!r}, dequantized={deq[worst]!r})")
    return got, deq


# ---- value generators ------------------------------------------------------------------------------
MAGNITUDES = (1e-30, 1e-3, 1.0, 1e3, 1e30)
DISTRIBUTIONS = ("normal", "uniform", "heavy", "positive", "negative", "ties", "constant", "sparse")


def seed_for(text: str) -> int:
    return zlib.crc32(text.encode())


def random_values(rng: np.random.Generator, shape, scale: float = 1.0, dist: str = "normal",
                  dtype=np.float32) -> np.ndarray:
    """Random values of `shape` around magnitude `scale`:
    normal, uniform, heavy (Student t, df 2: outliers), positive, negative, ties
    (small integers times scale: many equal magnitudes of both signs), constant
    (one value per row), sparse (90 % zeros)."""
    shape = tuple(shape)
    if dist == "normal":
        v = rng.standard_normal(shape)
    elif dist == "uniform":
        v = rng.uniform(-1.0, 1.0, shape)
    elif dist == "heavy":
        v = rng.standard_t(2.0, shape)
    elif dist == "positive":
        v = np.abs(rng.standard_normal(shape)) + 0.25
    elif dist == "negative":
        v = -np.abs(rng.standard_normal(shape)) - 0.25
    elif dist == "ties":
        v = rng.integers(-4, 5, shape).astype(np.float64)
    elif dist == "constant":
        v = np.broadcast_to(rng.standard_normal(shape[:-1] + (1,)), shape).copy()
    elif dist == "sparse":
        v = rng.standard_normal(shape) * (rng.random(shape) < 0.1)
    else:
        raise ValueError(dist)
    return (v * scale).astype(dtype)


# ---- the examples/ scripts ------------------------------------------------------------------

def load_example(name: str):
    """Import examples/<name>.py as module `name` (registered in sys.modules, so that
    one example can import another)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def example_env() -> dict:
    """The environment for an example's process: the quantcore this test imports
    (the installed one in CI, src/ in a development tree) comes first."""
    import os
    from pathlib import Path

    here = str(Path(quantcore.__file__).resolve().parents[1])
    rest = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=here + (os.pathsep + rest if rest else ""))


# ---- Python threads calling quantcore at once -----------------------------------------------

def run_jobs_concurrently(jobs, expected, key, n_threads, rounds, meddle=None, pause=0.0005):
    """`n_threads` Python threads each run every (name, fn) of `jobs` `rounds` times in
    their own order, comparing key(fn()) with expected[name]; meanwhile, when given,
    meddle(i) is called every `pause` seconds from another thread.  Returns the
    problems found (the first per thread), empty when every result matched."""
    import threading
    import time

    problems, stop = [], threading.Event()
    barrier = threading.Barrier(n_threads + (1 if meddle else 0))

    def worker(t):
        order = np.random.default_rng(t).permutation(len(jobs))
        barrier.wait()
        try:
            for _ in range(rounds):
                for j in order:
                    name, fn = jobs[j]
                    if key(fn()) != expected[name]:
                        problems.append(f"thread {t}: {name} differs from the expected result")
                        return
        except Exception as e:  # pragma: no cover - reported by the caller's assert
            problems.append(f"thread {t}: {type(e).__name__}: {e}")

    def meddler():
        barrier.wait()
        i = 0
        while not stop.is_set():
            meddle(i)
            i += 1
            time.sleep(pause)

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    mt = threading.Thread(target=meddler) if meddle else None
    for t in ts + ([mt] if mt else []):
        t.start()
    for t in ts:
        t.join(timeout=300)
    stop.set()
    if mt:
        mt.join(timeout=60)
    assert not any(t.is_alive() for t in ts), "a Python thread hung"
    return problems
