"""QuantizedLinear: forward against the NumPy oracle (x @ dequantize(W).T + b) for
every weight format x compute mode x ISA on awkward shapes, plus the API, threads,
concurrency and bad inputs.  GEMM-specific shapes live in test_gemm.py."""
from __future__ import annotations

import copy
import pickle
import threading

import numpy as np
import pytest

import quantcore as qc
from quantcore import QuantConfig, QuantizedLinear

CONFIGS = {
    "int8": QuantConfig.int8(),
    "int8_asym": QuantConfig(bits=8, symmetric=False),
    "int8_g64": QuantConfig(bits=8, group_size=64),
    "int4_g32": QuantConfig.int4(),
    "int4_g64_asym": QuantConfig(bits=4, group_size=64, symmetric=False),
    "int4_tensor": QuantConfig(bits=4, granularity="tensor"),
    "int4_channel_f16": QuantConfig(bits=4, scale_dtype="float16"),
    "q8_0": QuantConfig.q8_0(),
    "q4_0": QuantConfig.q4_0(),
    "q4_1": QuantConfig.q4_1(),
}
# (m, n, k): M=1 with odd N and K, K not a multiple of the group, N below the SIMD width
SHAPES = [(1, 1, 1), (1, 7, 33), (1, 17, 31), (1, 33, 65), (2, 5, 100), (3, 64, 257),
          (1, 3, 1031), (5, 16, 64), (7, 9, 17), (1, 130, 512)]


def _oracle(layer, x):
    w = layer.dequantized_weight().astype(np.float64)
    y = x.astype(np.float64).reshape(-1, layer.in_features) @ w.T
    if layer.bias is not None:
        y = y + layer.bias
    return y.reshape(x.shape[:-1] + (layer.out_features,))


def _check(layer, x, y):
    ref = _oracle(layer, x)
    k = layer.in_features
    # float32 rounding of a k-term dot product, scaled by the magnitudes involved
    mag = (np.abs(x.astype(np.float64)).reshape(-1, k) @ np.abs(layer.dequantized_weight().astype(np.float64)).T)
    mag = mag.reshape(ref.shape) + (0 if layer.bias is None else np.abs(layer.bias))
    tol = 4 * (k + 4) * np.finfo(np.float32).eps * mag + 1e-30
    if layer.compute == "int8":
        tol = tol + layer.int8_error_bound(x) * 1.0001
    err = np.abs(y.astype(np.float64) - ref)
    assert np.all(err <= tol), f"max excess {np.max(err - tol):.3g} (max err {err.max():.3g})"


@pytest.mark.parametrize("compute", ["float32", "int8"])
@pytest.mark.parametrize("cfg_name", list(CONFIGS))
def test_forward_matches_oracle(isa, cfg_name, compute, rng):
    cfg = CONFIGS[cfg_name].replace(compute=compute)
    for m, n, k in SHAPES:
        w = rng.standard_normal((n, k)).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32) if (m + n) % 2 else None
        layer = QuantizedLinear.from_linear(w, b, cfg)
        assert layer.compute == compute
        x = rng.standard_normal((m, k)).astype(np.float32) * 3
        y = layer(x)
        assert y.dtype == np.float32 and y.shape == (m, n)
        _check(layer, x, y)


@pytest.mark.parametrize("cfg_name", ["int8", "int4_g32", "q4_1", "int8_asym"])
@pytest.mark.parametrize("compute", ["float32", "int8"])
def test_simd_matches_scalar(cfg_name, compute, all_isas, rng):
    cfg = CONFIGS[cfg_name].replace(compute=compute)
    w = rng.standard_normal((37, 333)).astype(np.float32)
    layer = QuantizedLinear.from_linear(w, None, cfg)
    x = rng.standard_normal((3, 333)).astype(np.float32)
    qc.set_isa("scalar")
    ref = layer(x)
    for isa in all_isas:
        qc.set_isa(isa)
        y = layer(x)
        # same integer dots, float sums in another order
        np.testing.assert_allclose(y, ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max())


def test_int8_compute_error_bound_is_tight_enough(rng):
    """The int8 path's documented bound holds and is small next to the outputs."""
    w = rng.standard_normal((64, 4096)).astype(np.float32)
    x = rng.standard_normal((4, 4096)).astype(np.float32)
    layer = QuantizedLinear.from_linear(w, None, QuantConfig.int4(compute="int8"))
    exact = _oracle(layer, x)
    err = np.abs(layer(x) - exact)
    bound = layer.int8_error_bound(x)
    assert np.all(err <= bound * 1.0001 + 1e-3)
    assert np.median(err / np.abs(exact).mean()) < 0.02


def _int8_emulation(layer, x, per_row):
    """The int8 path in float64: x rounded to int8 with one scale per 32-block
    (or per row), dotted with the dequantized weights."""
    import oracle as O
    k = layer.in_features
    kp = -(-k // 32) * 32
    xp = np.zeros((x.shape[0], kp), np.float32)
    xp[:, :k] = x
    xb = xp.reshape(x.shape[0], kp // 32, 32)
    amax = np.abs(xb).max(-1)
    if per_row:
        amax = np.broadcast_to(amax.max(-1, keepdims=True), amax.shape)
    p = O.params_from_stats(O.SYM8, amax, amax, amax)
    xq = O.codes(O.SYM8, xb, p).astype(np.float64) * p.d[..., None].astype(np.float64)
    w = np.zeros((layer.out_features, kp))
    w[:, :k] = layer.dequantized_weight()
    return xq.reshape(x.shape[0], kp) @ w.T


@pytest.mark.parametrize("name", ["int8", "int8_g64", "int4_g32", "int4_channel_f16", "q8_0"])
@pytest.mark.parametrize("m", [1, 3, 16])
def test_int8_compute_rounds_activations_per_block(name, m, isa, rng):
    """Every format, whole-row scales included, rounds activations with one scale
    per 32-block (docs/linear.md says why not per row); GEMV (m < 8) and GEMM alike.
    The two rules differ by far more than float rounding when one block of the
    row holds a large value."""
    cfg = CONFIGS[name].replace(compute="int8")
    w = rng.standard_normal((24, 200)).astype(np.float32)
    x = rng.standard_normal((m, 200)).astype(np.float32)
    x[:, 5] = 40.0  # block 0 dominates the row
    layer = QuantizedLinear.from_linear(w, None, cfg)
    y = layer(x).astype(np.float64)  # on the ISA of the `isa` fixture
    want = _int8_emulation(layer, x, per_row=False)
    other = _int8_emulation(layer, x, per_row=True)
    tol = 1e-5 * np.abs(want).max()
    np.testing.assert_allclose(y, want, rtol=0, atol=tol)
    assert np.abs(other - want).max() > 100 * tol  # the test tells the two apart


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_nd_strided_dtypes_and_out(dtype, rng):
    w = rng.standard_normal((24, 40)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    layer = QuantizedLinear.from_linear(w, b, QuantConfig.int4(compute="float32"))
    base = rng.standard_normal((2, 3, 80)).astype(dtype)
    x = base[..., ::2]  # strided last axis
    before = x.copy()
    y = layer(x)
    assert y.shape == (2, 3, 24)
    _check(layer, x.astype(np.float32), y)
    np.testing.assert_array_equal(x, before)  # input untouched
    out = np.full((2, 3, 24), np.nan, np.float32)
    res = layer.forward(x, out=out)
    assert res is out
    np.testing.assert_array_equal(out, y)
    # 1-D input, transposed input: 1 or 3 rows may run another kernel (GEMV) than
    # the 6 rows above (GEMM from 4-8 rows), so they agree to K * eps, not bitwise
    tol = 40 * np.finfo(np.float32).eps * float(np.abs(y).max())
    np.testing.assert_allclose(layer(x[0, 0]), y[0, 0], rtol=0, atol=tol)
    xt = np.asfortranarray(x[0].astype(np.float32))
    np.testing.assert_allclose(layer(xt), y[0], rtol=0, atol=tol)


def test_zero_rows_and_lists(rng):
    layer = QuantizedLinear.from_linear(rng.standard_normal((8, 16)).astype(np.float32))
    assert layer(np.zeros((0, 16), np.float32)).shape == (0, 8)
    y = layer([[1.0] * 16])
    assert y.shape == (1, 8)


@pytest.mark.parametrize("compute", ["float32", "int8"])
def test_nan_inf_activations_propagate_per_row(compute, rng):
    w = rng.standard_normal((16, 64)).astype(np.float32)
    layer = QuantizedLinear.from_linear(w, None, QuantConfig.int4(compute=compute))
    x = rng.standard_normal((4, 64)).astype(np.float32)
    clean = layer(x)
    x[1, 7] = np.nan
    x[2, 3] = np.inf
    y = layer(x)
    assert np.all(np.isnan(y[1]))
    # IEEE: inf * w summed -> +-inf or nan (never a finite number)
    assert not np.any(np.isfinite(y[2]))
    np.testing.assert_array_equal(y[[0, 3]], clean[[0, 3]])


@pytest.mark.parametrize("nthreads", [1, 2, 3])
@pytest.mark.parametrize("compute", ["float32", "int8"])
def test_thread_counts_agree(nthreads, compute, threads, rng):
    w = rng.standard_normal((300, 1000)).astype(np.float32)
    layer = QuantizedLinear.from_linear(w, None, QuantConfig.int4(compute=compute))
    x = rng.standard_normal((2, 1000)).astype(np.float32)
    threads(1)
    ref = layer(x)
    threads(nthreads)
    np.testing.assert_array_equal(layer(x), ref)  # same per-output arithmetic


def test_concurrent_forward_from_python_threads(rng):
    w = rng.standard_normal((256, 512)).astype(np.float32)
    layer = QuantizedLinear.from_linear(w, None, QuantConfig.q4_0())
    xs = [rng.standard_normal((1 + i % 3, 512)).astype(np.float32) for i in range(8)]
    expected = [layer(x) for x in xs]
    results = [None] * 8
    errors = []

    def work(i):
        try:
            for _ in range(20):
                results[i] = layer(xs[i])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


def test_attributes_and_protocols(rng):
    w = rng.standard_normal((48, 64)).astype(np.float32)
    b = rng.standard_normal(48).astype(np.float32)
    layer = QuantizedLinear.from_linear(w, b, QuantConfig.q4_0())
    assert (layer.in_features, layer.out_features) == (64, 48)
    assert layer.config == QuantConfig.q4_0()
    assert layer.weight_quantized.shape == (48, 64)
    assert layer.num_parameters() == 48 * 64 + 48
    # q4_0: 18 bytes per 32 weights
    assert layer.weight_quantized.nbytes == 48 * 2 * 18
    assert layer.nbytes == 48 * 2 * 18 + 48 * 4
    assert layer.memory_savings_bytes() == 48 * 64 * 4 - 48 * 2 * 18
    assert layer.bias.dtype == np.float32 and not layer.bias.flags.writeable
    np.testing.assert_array_equal(layer.dequantized_weight(), layer.weight_quantized.dequantize())
    # int8 compute on an x86 build: the weight is prepacked, one kernel for every m
    x86 = "avx2" in qc._ext.compiled_isas()
    assert layer.kernel.startswith("packed_i8_int4_" if x86 else "gemv_i8_int4_")
    assert QuantizedLinear(layer.weight_quantized, prepack=False).kernel.startswith("gemv_i8_int4_")
    assert "QuantizedLinear(" in repr(layer)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    y = layer(x)
    for clone in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        np.testing.assert_array_equal(clone(x), y)
    # QuantizedLinear(weight_q, bias)
    again = QuantizedLinear(layer.weight_quantized, layer.bias)
    np.testing.assert_array_equal(again(x), y)


def test_from_linear_accepts_module_like_objects(rng):
    class FakeLinear:  # what torch.nn.Linear looks like to from_linear
        def __init__(self):
            self.weight = rng.standard_normal((6, 10)).astype(np.float32)
            self.bias = rng.standard_normal(6).astype(np.float32)

    mod = FakeLinear()
    layer = QuantizedLinear.from_linear(mod, config=QuantConfig.int8(compute="float32"))
    np.testing.assert_array_equal(layer.bias, mod.bias)
    x = rng.standard_normal((1, 10)).astype(np.float32)
    _check(layer, x, layer(x))


@pytest.mark.parametrize("make, exc, words", [
    (lambda L: L(np.zeros((2, 15), np.float32)), ValueError, "in_features"),
    (lambda L: L(np.zeros((2, 16), np.int32)), TypeError, "float"),
    (lambda L: L(np.zeros((2, 16), np.complex64)), TypeError, "float"),
    (lambda L: L(np.float32(1.0)), ValueError, "0-d"),
    (lambda L: L(np.zeros((2, 16), np.float32), out=np.zeros((2, 7), np.float32)), ValueError, "shape"),
    (lambda L: L(np.zeros((2, 16), np.float32), out=np.zeros((2, 8), np.float64)), TypeError, "float32"),
    (lambda L: L(np.zeros((2, 16), np.float32), out=np.zeros((8, 2), np.float32).T), ValueError, "contiguous"),
    (lambda L: QuantizedLinear(np.zeros((8, 16), np.float32)), TypeError, "QuantizedTensor"),
    (lambda L: QuantizedLinear(qc.quantize(np.ones(16, np.float32))), ValueError, "2-D"),
    (lambda L: QuantizedLinear(L.weight_quantized, np.ones(7, np.float32)), ValueError, "bias"),
    (lambda L: QuantizedLinear(L.weight_quantized, np.array([np.nan] * 8, np.float32)), ValueError, "NaN"),
    (lambda L: QuantizedLinear.from_linear(np.ones((4, 8), np.float32), config="int8"), TypeError, "config"),
    (lambda L: QuantizedLinear.from_linear(np.ones((4, 64), np.float32), config=QuantConfig(bits=4, group_size=16)), ValueError, "group_size"),
])
def test_bad_inputs_raise(make, exc, words, rng):
    layer = QuantizedLinear.from_linear(rng.standard_normal((8, 16)).astype(np.float32))
    with pytest.raises(exc) as ei:
        make(layer)
    assert words in str(ei.value)


def test_readonly_out_raises(rng):
    layer = QuantizedLinear.from_linear(rng.standard_normal((8, 16)).astype(np.float32))
    out = np.zeros((2, 8), np.float32)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="writeable"):
        layer(np.zeros((2, 16), np.float32), out=out)


# Group layouts the GEMV kernels treat differently: whole rows, one group per
# 32-block, several blocks per group (g64, g128) and groups longer than the
# 16-block chunks of the AVX-512 kernels (g1024), float16 scales, zero points.
GEMV_CONFIGS = {
    "int8": QuantConfig.int8(),
    "int8_g64": QuantConfig(bits=8, group_size=64),
    "int8_g128_asym_f16": QuantConfig(bits=8, group_size=128, symmetric=False, scale_dtype="float16"),
    "int8_tensor_asym": QuantConfig(bits=8, granularity="tensor", symmetric=False),
    "int4_g32": QuantConfig.int4(),
    "int4_g64_asym_f16": QuantConfig(bits=4, group_size=64, symmetric=False, scale_dtype="float16"),
    "int4_g128": QuantConfig(bits=4, group_size=128),
    "int4_g1024": QuantConfig(bits=4, group_size=1024),
    "int4_channel": QuantConfig(bits=4),
    "q4_1": QuantConfig.q4_1(),
}
# every remainder of 32-blocks modulo 4 and 16, partial last blocks, odd K
GEMV_KS = [1, 16, 31, 32, 33, 64, 95, 96, 97, 128, 129, 161, 200, 511, 513, 544, 1000, 2080]


@pytest.mark.parametrize("compute", ["float32", "int8"])
def test_gemv_k_sweep_matches_oracle_and_scalar(isa, compute, rng):
    """Every GEMV tail (blocks per SIMD step, partial blocks, scale chunks) for
    M = 1..7 (the GEMV rows; the GEMM where it takes over) against the oracle, and against the scalar reference on the same
    quantized activations (integer dots exact, float sums in another order)."""
    for name, cfg in GEMV_CONFIGS.items():
        cfg = cfg.replace(compute=compute)
        for k in GEMV_KS:
            n = 3 + k % 17
            w = rng.standard_normal((n, k)).astype(np.float32)
            b = rng.standard_normal(n).astype(np.float32) if k % 2 else None
            layer = QuantizedLinear.from_linear(w, b, cfg)
            x = rng.standard_normal((7, k)).astype(np.float32)
            for m in (1, 2, 3, 4, 5, 7):
                qc.set_isa(isa)
                y = layer(x[:m])
                # from 4-8 rows on (per ISA and mode) the GEMM runs: held to the same checks
                assert layer.kernel.endswith(isa) and (m >= 4 or layer.kernel.startswith("gemv")), \
                    layer.kernel
                _check(layer, x[:m], y)
                qc.set_isa("scalar")
                ref = layer(x[:m])
                np.testing.assert_allclose(y, ref, rtol=3e-5, atol=3e-5 * (np.abs(ref).max() + 1e-30),
                                           err_msg=f"{name} k={k} m={m}")


@pytest.mark.parametrize("nthreads", [2, 3])
def test_bias_added_by_every_thread(nthreads, isa, threads, rng):
    """Each thread adds the bias to its own chunk of outputs (GEMV and GEMM)."""
    w = rng.standard_normal((301, 1000)).astype(np.float32)
    b = rng.standard_normal(301).astype(np.float32) * 10
    threads(nthreads)
    for cfg in (QuantConfig.int8(compute="int8"), QuantConfig.int4(compute="float32")):
        layer = QuantizedLinear.from_linear(w, b, cfg)
        for m in (1, 5, 9):
            x = rng.standard_normal((m, 1000)).astype(np.float32)
            y = layer(x)
            _check(layer, x, y)
            plain = QuantizedLinear(layer.weight_quantized)(x)
            np.testing.assert_allclose(y - plain, np.broadcast_to(b, y.shape), rtol=1e-5, atol=1e-4)
