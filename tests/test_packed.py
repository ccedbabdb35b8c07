"""Prepacked weights (csrc/packed.h): a QuantizedLinear with int8 compute holds its
weight in the packed kernels' layout.  Round trips to the row layout bit for bit,
sizes, every ISA bit for bit against the scalar packed reader for every batch size,
thread count and tail, against the NumPy oracle and the row-layout kernels, extremes,
pickling, set_isa on a packed layer, concurrency, and guard pages in a child process."""
from __future__ import annotations

import copy
import pickle
import sys

import numpy as np
import pytest

import quantcore as qc
from quantcore import QuantConfig, QuantizedLinear, QuantizedTensor, _ext

from conftest import ISAS

X86 = "avx2" in _ext.compiled_isas()
pytestmark = pytest.mark.skipif(not X86, reason="weights are prepacked on x86 builds only")

CONFIGS = {
    "int8": QuantConfig.int8(),
    "int8_asym": QuantConfig(bits=8, symmetric=False),
    "int8_g64": QuantConfig(bits=8, group_size=64),
    "int8_tensor": QuantConfig(bits=8, granularity="tensor"),
    "int8_asym_g32_f16": QuantConfig(bits=8, group_size=32, symmetric=False, scale_dtype="float16"),
    "q8_0": QuantConfig.q8_0(),
    "int4_g32": QuantConfig.int4(),
    "int4_g64_asym": QuantConfig(bits=4, group_size=64, symmetric=False),
    "int4_g128_asym_f16": QuantConfig(bits=4, group_size=128, symmetric=False, scale_dtype="float16"),
    "int4_tensor": QuantConfig(bits=4, granularity="tensor"),
    "int4_channel_f16": QuantConfig(bits=4, scale_dtype="float16"),
    "uint4_channel": QuantConfig(bits=4, symmetric=False),
    "q4_0": QuantConfig.q4_0(),
    "q4_1": QuantConfig.q4_1(),
}
# (n, k): whole panels, a tail of 1 and of 31 rows, one panel only, long K
NK = [(32, 32), (33, 64), (64, 96), (95, 128), (100, 256), (256, 160), (40, 1024)]
BATCHES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 16, 17, 31, 64, 130]


def _weights(rng, n, k, scale=1.0):
    w = rng.standard_normal((n, k)).astype(np.float32) * scale
    w[0, : k // 2] = 0.0          # a row half zeros
    w[-1, 3] = 40.0 * scale       # an outlier in the tail (or last panel)
    return w


def _layer(cfg, w, bias=None, prepack=True):
    return QuantizedLinear(qc.quantize(w, cfg.replace(compute="int8")), bias, prepack=prepack)


def _oracle_bound_check(layer, x, y):
    k = layer.in_features
    wd = layer.dequantized_weight().astype(np.float64)
    ref = x.astype(np.float64) @ wd.T
    if layer.bias is not None:
        ref = ref + layer.bias
    mag = np.abs(x.astype(np.float64)) @ np.abs(wd).T + (0 if layer.bias is None else np.abs(layer.bias))
    tol = 4 * (k + 64) * np.finfo(np.float32).eps * mag + layer.int8_error_bound(x) * 1.0001 + 1e-30
    err = np.abs(y.astype(np.float64) - ref)
    assert np.all(err <= tol), f"max excess {np.max(err - tol):.3g}"


# ---- layout: what is packed, round trips, sizes -------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_round_trip_and_size(name, rng):
    cfg = CONFIGS[name]
    for n, k in NK:
        wq = qc.quantize(_weights(rng, n, k), cfg)
        b = rng.standard_normal(n).astype(np.float32)
        layer = QuantizedLinear(wq, b)
        assert layer.prepacked and layer.kernel.startswith("packed_i8_")
        back = layer.weight_quantized
        assert back == wq
        for a, c in zip(back._storage(), wq._storage()):
            assert (a is None) == (c is None)
            if a is not None:
                assert a.dtype == c.dtype and a.shape == c.shape and a.tobytes() == c.tobytes()
        # the same bytes, rearranged: nbytes equals the row layout's
        assert layer.nbytes == QuantizedLinear(wq, b, prepack=False).nbytes == wq.nbytes + 4 * n
        assert layer.memory_savings_bytes() == 4 * n * k - wq.nbytes
        np.testing.assert_array_equal(layer.dequantized_weight(), wq.dequantize())
        assert not back.data.flags.writeable  # a tensor like any other


def test_what_stays_in_the_row_layout(rng):
    w = rng.standard_normal((64, 96)).astype(np.float32)
    cases = {
        "float32 compute": QuantizedLinear(qc.quantize(w, QuantConfig.int8(compute="float32"))),
        "prepack=False": QuantizedLinear(qc.quantize(w, QuantConfig.int8()), prepack=False),
        "k not a multiple of 32": QuantizedLinear.from_linear(w[:, :90], None, QuantConfig.int8()),
        "fewer than 32 rows": QuantizedLinear.from_linear(w[:31], None, QuantConfig.int8()),
        "K-quant": QuantizedLinear.from_linear(rng.standard_normal((64, 256)).astype(np.float32),
                                               None, QuantConfig.q4_k()),
    }
    for what, layer in cases.items():
        assert not layer.prepacked, what
        assert not layer.kernel.startswith("packed_"), what
    with pytest.raises(TypeError, match="prepack"):
        QuantizedLinear(qc.quantize(w, QuantConfig.int8()), prepack="yes")


# ---- every ISA bit for bit against the scalar packed reader --------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_isa_equals_scalar_bit_for_bit(name, all_isas, rng):
    cfg = CONFIGS[name]
    for n, k in NK[:6]:
        layer = _layer(cfg, _weights(rng, n, k), rng.standard_normal(n).astype(np.float32))
        for m in BATCHES:
            x = rng.standard_normal((m, k)).astype(np.float32) * 2
            x[0, :7] = 0.0
            if m > 2:
                x[1] = 0.0               # a zero row
                x[2] *= 1e-3            # a small one
            qc.set_isa("scalar")
            want = layer(x)
            for isa in all_isas[1:]:
                qc.set_isa(isa)
                got = layer(x)
                assert got.tobytes() == want.tobytes(), f"{isa} n={n} k={k} m={m}"


@pytest.mark.parametrize("name", ["int8", "int8_asym", "q4_0", "q4_1", "int4_g64_asym", "int8_tensor"])
def test_matches_oracle_and_row_kernels(name, isa, rng):
    cfg = CONFIGS[name]
    for n, k in NK:
        w = _weights(rng, n, k)
        b = rng.standard_normal(n).astype(np.float32) if n % 2 else None
        layer, rows = _layer(cfg, w, b), _layer(cfg, w, b, prepack=False)
        for m in (1, 4, 17, 64):
            x = rng.standard_normal((m, k)).astype(np.float32) * 3
            y = layer(x)
            _oracle_bound_check(layer, x, y)
            # the row-layout kernels compute the same sums in another order
            yr = rows(x).astype(np.float64)
            mag = np.abs(x.astype(np.float64)) @ np.abs(layer.dequantized_weight().astype(np.float64)).T
            assert np.all(np.abs(y - yr) <= 8 * (k + 64) * np.finfo(np.float32).eps * mag + 1e-30)


@pytest.mark.parametrize("name", ["int8", "int4_g32", "q4_1", "int8_asym"])
def test_threads_and_batches_change_no_bit(name, all_isas, rng):
    cfg = CONFIGS[name]
    n, k = 32 * 37 + 5, 256
    layer = _layer(cfg, _weights(rng, n, k))
    x = rng.standard_normal((21, k)).astype(np.float32)
    before = qc.get_num_threads()
    try:
        for isa in all_isas:
            qc.set_isa(isa)
            qc.set_num_threads(1)
            want = layer(x)
            for t in (2, 3):
                qc.set_num_threads(t)
                assert layer(x).tobytes() == want.tobytes(), f"{isa} threads={t}"
            # a row's bits do not depend on the other rows of the batch
            for i in (0, 7, 20):
                assert layer(x[i : i + 1]).tobytes() == want[i : i + 1].tobytes(), f"{isa} row {i}"
            assert layer(x[3:9]).tobytes() == want[3:9].tobytes(), isa
    finally:
        qc.set_num_threads(before)


def test_isa_switch_after_packing(rng):
    layer = _layer(QuantConfig.q4_0(), _weights(rng, 70, 128))
    x = rng.standard_normal((5, 128)).astype(np.float32)
    before = qc.get_isa()
    try:
        outs = {}
        for isa in ISAS:
            qc.set_isa(isa)
            outs[isa] = layer(x)
            assert layer.kernel.endswith("_" + isa) and layer.kernel.startswith("packed_i8_int4_")
        assert len({o.tobytes() for o in outs.values()}) == 1
    finally:
        qc.set_isa(before)


# ---- extremes: NaN/Inf rows, huge and tiny rows, extreme weights ---------------------
@pytest.mark.parametrize("name", ["int8", "q4_0", "q4_1", "int8_asym", "int4_g64_asym"])
def test_extreme_rows(name, isa, rng):
    cfg = CONFIGS[name]
    n, k = 45, 96
    w = _weights(rng, n, k)
    layer, rows = _layer(cfg, w), _layer(cfg, w, prepack=False)
    x = rng.standard_normal((6, k)).astype(np.float32)
    x[0, 5] = np.nan
    x[1, 9] = np.inf
    x[2] *= 1e35            # the kernels' sums may overflow: rescaled
    x[3] *= 1e-41           # tiny: scaled up
    x[4, :] = 0.0
    y = layer(x)
    # NaN / Inf rows take the float64 path over the dequantized weights: same as rows'
    np.testing.assert_array_equal(y[:2], rows(x)[:2])
    assert np.isfinite(y[2:]).all()
    _oracle_bound_check(layer, x[2:], y[2:])
    assert not np.any(y[4])


def test_extreme_weight_scales(rng):
    w = _weights(rng, 64, 64)
    w[5] *= 1e29
    w[40] *= 1e-30
    for cfg in (QuantConfig.int8(), QuantConfig.int4(), QuantConfig(bits=8, symmetric=False)):
        layer = _layer(cfg, w)
        x = rng.standard_normal((3, 64)).astype(np.float32) * 100
        y = layer(x)
        assert np.isfinite(y).all()
        _oracle_bound_check(layer, x, y)


# ---- Python protocols -----------------------------------------------------------------
def test_pickle_copy_and_exports(rng):
    w = _weights(rng, 80, 128)
    b = rng.standard_normal(80).astype(np.float32)
    for cfg in (QuantConfig.int4(), QuantConfig.q4_1(), QuantConfig.int8()):
        wq = qc.quantize(w, cfg)
        layer = QuantizedLinear(wq, b).eval()
        x = rng.standard_normal((3, 128)).astype(np.float32)
        y = layer(x)
        for clone in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer), copy.copy(layer)):
            assert clone.prepacked and not clone.training
            assert clone(x).tobytes() == y.tobytes()
            assert clone.weight_quantized == wq
        rows = pickle.loads(pickle.dumps(QuantizedLinear(wq, b, prepack=False)))
        assert not rows.prepacked
        if cfg.bits == 4 and cfg.format != "q4_1":  # Q4_1 has no MatMulNBits form
            got, want = layer.weight_quantized.to_matmulnbits(), wq.to_matmulnbits()
            for f in ("B", "scales", "zero_points"):
                a, c = getattr(got, f), getattr(want, f)
                assert (a is None and c is None) or np.array_equal(a, c), f


def test_concurrent_calls_on_one_packed_layer(rng):
    from helpers import run_jobs_concurrently
    layers = {name: _layer(CONFIGS[name], _weights(rng, 96, 256)) for name in ("int8", "q4_0", "q4_1")}
    xs = {m: rng.standard_normal((m, 256)).astype(np.float32) for m in (1, 5, 40)}
    jobs = [(f"{name}-{m}", (lambda lay=lay, x=x: lay(x))) for name, lay in layers.items()
            for m, x in xs.items()]
    expected = {name: fn().tobytes() for name, fn in jobs}
    before = qc.get_num_threads()
    try:
        problems = run_jobs_concurrently(jobs, expected, lambda y: y.tobytes(), 4, 3,
                                         meddle=lambda i: qc.set_num_threads(1 + i % 3))
    finally:
        qc.set_num_threads(before)
    assert not problems, problems


# ---- guard pages (tests/guard.py), in a child process ------------------------------
GUARD_CFGS = ["int8", "int8_asym", "q4_0", "q4_1", "int4_g64_asym", "int8_tensor"]


def _guard_case(name, isa):
    from guard import guarded
    qc.set_isa(isa)
    rng = np.random.default_rng(5)
    cfg = CONFIGS[name].replace(compute="int8")
    for n, k in ((33, 64), (64, 32), (95, 160)):
        wq = qc.quantize(_weights(rng, n, k), cfg)
        want_layer = QuantizedLinear(wq)
        data, scales, zeros = wq._storage()
        c = wq.config
        args = (data, scales, zeros, c.kind, n, k, c.effective_group_size, c.granularity == "tensor")
        nb = _ext.QWeight(*args, pack=True).nbytes
        for before in (False, True):
            qw = _ext.QWeight(*args, pack=True, buffer=guarded(np.zeros(nb, np.uint8), before))
            assert qw.packed
            for m in (1, 3, 7, 17):
                x = rng.standard_normal((m, k)).astype(np.float32)
                want = want_layer(x)
                out = guarded(np.zeros((m, n), np.float32), before)
                qw.forward(guarded(x, before, writeable=False), None, out, _ext.COMPUTE_I8)
                assert out.tobytes() == want.tobytes(), f"{name} n={n} k={k} m={m}"


GUARD_CASES = {f"packed-{name}-{isa}": (name, isa) for name in GUARD_CFGS for isa in ISAS}


def child_cases():
    return {name: (lambda spec=spec: _guard_case(*spec)) for name, spec in GUARD_CASES.items()}


@pytest.fixture(scope="module")
def guard_outcomes():
    from caserunner import run_cases
    return run_cases("test_packed", list(GUARD_CASES))


@pytest.mark.skipif(sys.platform == "win32", reason="guard pages need POSIX mmap/mprotect")
@pytest.mark.parametrize("name", list(GUARD_CASES))
def test_guarded_buffers(name, guard_outcomes):
    res = guard_outcomes[name]
    assert res["status"] == "ok", f"{name}: {res}"


def test_bad_buffer_is_refused(rng):
    wq = qc.quantize(_weights(rng, 40, 64), QuantConfig.int8())
    data, scales, zeros = wq._storage()
    args = (data, scales, zeros, wq.config.kind, 40, 64, 0, False)
    nb = _ext.QWeight(*args, pack=True).nbytes
    for bad in (np.zeros(nb - 1, np.uint8), np.zeros(nb, np.int8), np.zeros(2 * nb, np.uint8)[::2]):
        with pytest.raises(ValueError, match="buffer"):
            _ext.QWeight(*args, pack=True, buffer=bad)
