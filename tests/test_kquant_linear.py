"""QuantizedLinear over GGUF K-quant weights (Q4_K, Q5_K, Q6_K).

Every ISA and both paths (GEMV for few rows, the tiled GEMM for many) compute the
same float operations in the same order (docs/kquants.md), so their outputs are
compared bit for bit with the scalar reference; the NumPy oracle is
x @ dequantize(W).T in float64, within a float-rounding bound (float32 compute)
plus the int8 activation bound (int8 compute).
"""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

import quantcore as qc
from quantcore import QuantConfig, QuantizedLinear, QuantizedTensor

FORMATS = ("q4_k", "q5_k", "q6_k")
COMPUTES = ("float32", "int8")
EPS = float(np.finfo(np.float32).eps)


def _layer(w, fmt, compute, bias=None):
    return QuantizedLinear(qc.quantize(w, getattr(QuantConfig, fmt)(compute=compute)), bias)


def _check_oracle(layer, x, y):
    """|y - x @ dequantize(W).T| within float rounding (+ the int8 activation bound)."""
    w = layer.dequantized_weight().astype(np.float64)
    x64 = np.asarray(x, np.float64)
    ref = x64 @ w.T
    if layer.bias is not None:
        ref += layer.bias
    k = layer.in_features
    xa = np.abs(x64)
    extra = 0.0
    if layer.compute == "int8":
        amax = xa.reshape(x64.shape[0], -1, 32).max(-1) / 254.0
        xa = xa + np.repeat(amax, 32, axis=1)
        extra = layer.int8_error_bound(x)
    tol = (k + 64) * 2.0 ** -24 * (xa @ np.abs(w).T) + extra + 1e-30
    err = np.abs(y.astype(np.float64) - ref)
    assert np.all(err <= tol), f"max err {err.max():.3g}, tol there {tol.flat[np.argmax(err - tol)]:.3g}"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("compute", COMPUTES)
def test_forward_matches_oracle(isa, fmt, compute, rng):
    for k, n in ((256, 1), (768, 17), (512, 100)):
        w = rng.standard_normal((n, k)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        layer = _layer(w, fmt, compute, bias)
        for m in (1, 3, 5, 16, 33):
            x = rng.standard_normal((m, k)).astype(np.float32)
            y = layer(x)
            assert y.shape == (m, n) and layer.kernel.endswith(isa) and fmt in layer.kernel
            _check_oracle(layer, x, y)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("compute", COMPUTES)
def test_every_isa_and_path_gives_the_scalar_bits(fmt, compute, all_isas, rng):
    """Same bits on every ISA, for every row count (GEMV and GEMM), and a row's
    bits do not depend on the other rows."""
    for k, n in ((256, 3), (4096 + 256, 17), (512, 100)):
        w = rng.standard_normal((n, k)).astype(np.float32)
        w[0, 5] = 40.0  # an outlier sub-block
        layer = _layer(w, fmt, compute)
        x = rng.standard_normal((33, k)).astype(np.float32)
        x[2, :300] *= 1e3
        qc.set_isa("scalar")
        want = np.concatenate([layer(x[i:i + 1]) for i in range(x.shape[0])])
        for isa in all_isas:
            qc.set_isa(isa)
            for m in (1, 2, 3, 4, 5, 8, 16, 33):
                got = layer(x[:m])
                assert got.tobytes() == want[:m].tobytes(), f"{isa} {layer.kernel} K={k} N={n} M={m}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_zero_rows_outliers_bias_out_strided(fmt, isa, rng):
    k, n = 512, 33
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[3] = 0.0  # an all-zero weight row
    w[4, 100] = 1e4
    bias = rng.standard_normal(n).astype(np.float32)
    for compute in COMPUTES:
        layer = _layer(w, fmt, compute, bias)
        assert layer(np.zeros((0, k), np.float32)).shape == (0, n)
        x = rng.standard_normal((6, k)).astype(np.float32)
        x[1] = 0.0
        x[2, 7] = 300.0
        y = layer(x)
        _check_oracle(layer, x, y)
        np.testing.assert_array_equal(y[1], bias)
        out = np.full((6, n), np.nan, np.float32)
        assert layer(x, out=out) is out
        assert out.tobytes() == y.tobytes()
        wide = np.concatenate([x, x[:, :40]], axis=1)[:, :k]  # rows strided apart
        assert layer(wide).tobytes() == y.tobytes()
        assert layer(x.astype(np.float64)).tobytes() == y.tobytes()
        sq = _layer(rng.standard_normal((k, k)).astype(np.float32), fmt, compute)
        xs = rng.standard_normal((3, k)).astype(np.float32)
        want = sq(xs)
        assert sq(xs, out=xs) is xs and xs.tobytes() == want.tobytes()  # out=x


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("compute", COMPUTES)
def test_nan_inf_rows_and_extreme_magnitudes(fmt, compute, isa, rng):
    k, n = 256, 9
    w = rng.standard_normal((n, k)).astype(np.float32)
    layer = _layer(w, fmt, compute)
    x = rng.standard_normal((5, k)).astype(np.float32)
    clean = layer(x)
    x[1, 7] = np.nan
    x[2, 3] = np.inf
    x[3] *= 1e36  # outputs beyond float32 inside the kernels: rescaled
    x[4] *= 1e-42  # tiny (denormal) row
    y = layer(x)
    assert np.all(np.isnan(y[1]))
    assert not np.any(np.isfinite(y[2]))
    assert y[0].tobytes() == clean[0].tobytes()
    assert np.all(np.isfinite(y[3])) and np.any(y[4] != 0)
    for r in (3, 4):
        _check_oracle(layer, x[r:r + 1], y[r:r + 1])


@pytest.mark.parametrize("nthreads", [2, 3])
def test_thread_counts_agree(nthreads, threads, rng):
    w = rng.standard_normal((300, 1024)).astype(np.float32)
    for fmt in FORMATS:
        for compute in COMPUTES:
            layer = _layer(w, fmt, compute)
            x = rng.standard_normal((20, 1024)).astype(np.float32)
            threads(1)
            ref = layer(x), layer(x[:2])
            threads(nthreads)
            assert layer(x).tobytes() == ref[0].tobytes()
            assert layer(x[:2]).tobytes() == ref[1].tobytes()


@pytest.mark.parametrize("fmt", FORMATS)
def test_module_surface_and_protocols(fmt, rng):
    w = rng.standard_normal((8, 512)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    layer = QuantizedLinear.from_linear(w, bias, getattr(QuantConfig, fmt)())
    assert layer.compute == "int8" and layer.config.format == fmt
    assert f"weight={fmt}" in repr(layer) and f"gemv_i8_{fmt}_" in repr(layer)
    assert layer.nbytes == layer.weight_quantized.nbytes + bias.nbytes
    assert layer.weight_quantized.nbytes == 8 * 2 * {"q4_k": 144, "q5_k": 176, "q6_k": 210}[fmt]
    x = rng.standard_normal((3, 512)).astype(np.float32)
    back = pickle.loads(pickle.dumps(layer))
    assert back(x).tobytes() == layer(x).tobytes()
    with pytest.raises(ValueError, match="K-quant"):
        layer.weight_quantized.to_matmulnbits()
    with pytest.raises(ValueError, match="multiple of 256"):
        QuantizedLinear.from_linear(w[:, :300], None, getattr(QuantConfig, fmt)())
    with pytest.raises(ValueError, match="in_features=512"):
        layer(x[:, :256])


@pytest.mark.parametrize("fmt", FORMATS)
def test_torch_module_round_trip(fmt, rng):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from quantcore.torch import QuantizedLinearModule
    lin = torch.nn.Linear(256, 5)
    mod = QuantizedLinearModule.from_linear(lin, getattr(QuantConfig, fmt)())
    x = torch.from_numpy(rng.standard_normal((2, 256)).astype(np.float32))
    y = mod(x)
    again = QuantizedLinearModule.from_linear(torch.nn.Linear(256, 5), getattr(QuantConfig, fmt)())
    again.load_state_dict(mod.state_dict())
    assert torch.equal(again(x), y)


@pytest.mark.parametrize("fmt", FORMATS)
def test_gguf_loaded_tensors_run_packed(fmt, tmp_path, rng):
    import quantcore.gguf as qg
    w = rng.standard_normal((20, 512)).astype(np.float32)
    p = tmp_path / "w.gguf"
    qg.save(p, {"w": qc.quantize(w, getattr(QuantConfig, fmt)())})
    for compute in COMPUTES:
        qt = qg.load(p, compute=compute)["w"]
        assert isinstance(qt, QuantizedTensor) and qt.config.format == fmt  # still packed
        layer = QuantizedLinear(qt)
        x = rng.standard_normal((4, 512)).astype(np.float32)
        y = layer(x)
        _check_oracle(layer, x, y)
        assert y.tobytes() == _layer(w, fmt, compute)(x).tobytes()


@pytest.mark.parametrize("fmt", FORMATS)
def test_int8_agrees_with_ggml_mul_mat(fmt, rng):
    """Optional cross-check against ggml's own K-quant x Q8_K product (ggml-python's
    ggml_mul_mat on the same super-blocks).  ggml rounds the activations with one
    scale per 256 values, quantcore with one per 32, so each is within its own
    activation-rounding bound of x @ dequantize(W).T (plus float rounding) and the
    two within the sum of both."""
    try:
        import ctypes
        import ggml
    except Exception as e:  # not installed, or its shared library failed to load
        pytest.skip(f"ggml-python is not importable ({type(e).__name__}: {e})")
    n, k, m = 13, 768, 3
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[1, :256] *= 20.0  # one loud super-block
    qt = qc.quantize(w, getattr(QuantConfig, fmt)())
    layer = QuantizedLinear(qt)
    gtype = {"q4_k": ggml.GGML_TYPE_Q4_K, "q5_k": ggml.GGML_TYPE_Q5_K, "q6_k": ggml.GGML_TYPE_Q6_K}[fmt]
    params = ggml.ggml_init_params(mem_size=16 << 20, mem_buffer=None, no_alloc=False)
    ctx = ggml.ggml_init(params)
    try:
        a = ggml.ggml_new_tensor_2d(ctx, gtype, k, n)
        data = np.ascontiguousarray(qt.data)
        ctypes.memmove(ggml.ggml_get_data(a), data.ctypes.data, data.nbytes)
        b = ggml.ggml_new_tensor_2d(ctx, ggml.GGML_TYPE_F32, k, m)
        ctypes.memmove(ggml.ggml_get_data(b), x.ctypes.data, x.nbytes)
        c = ggml.ggml_mul_mat(ctx, a, b)
        gf = ggml.ggml_new_graph(ctx)
        ggml.ggml_build_forward_expand(gf, c)
        ggml.ggml_graph_compute_with_ctx(ctx, gf, 1)
        ptr = ctypes.cast(ggml.ggml_get_data(c), ctypes.POINTER(ctypes.c_float))
        yg = np.ctypeslib.as_array(ptr, shape=(m, n)).astype(np.float64)
    finally:
        ggml.ggml_free(ctx)
    y = layer(x).astype(np.float64)
    wd = qt.dequantize().astype(np.float64)
    aw = np.abs(wd)
    half256 = np.abs(x).reshape(m, -1, 256).max(-1) / 254.0  # ggml's Q8_K: d = amax / 127
    bound_ggml = half256 @ aw.reshape(n, -1, 256).sum(-1).T
    rounding = 2 * (k + 64) * 2.0 ** -24 * (np.abs(x).astype(np.float64) * 1.01) @ aw.T
    tol = bound_ggml + layer.int8_error_bound(x) + rounding
    assert np.all(np.abs(y - yg) <= tol), np.max(np.abs(y - yg) - tol)


# ---- guard pages (tests/guard.py), in a child process ------------------------------
GUARD_SHAPES = [(256, 1), (512, 3), (768, 17)]
GUARD_ROWS = [1, 3, 5, 9, 17]


def _guard_case(fmt, isa):
    from guard import guarded
    qc.set_isa(isa)
    rng = np.random.default_rng(3)
    for k, n in GUARD_SHAPES:
        w = rng.standard_normal((n, k)).astype(np.float32)
        for compute in COMPUTES:
            qt = qc.quantize(w, getattr(QuantConfig, fmt)(compute=compute))
            layer = QuantizedLinear(qt)
            for before in (False, True):
                gq = QuantizedTensor._make(guarded(qt._data, before), qt._scales, qt._zeros,
                                           qt.shape, qt.dtype, qt.config)
                gl = QuantizedLinear(gq)
                for m in GUARD_ROWS:
                    x = rng.standard_normal((m, k)).astype(np.float32)
                    want = layer(x)
                    out = guarded(np.zeros((m, n), np.float32), before)
                    gl(guarded(x, before, writeable=False), out=out)
                    assert out.tobytes() == want.tobytes(), f"K={k} N={n} M={m} {compute}"


GUARD_CASES = {f"forward-{fmt}-{isa}": (fmt, isa) for fmt in FORMATS for isa in qc.available_isas()}


def child_cases():
    return {name: (lambda spec=spec: _guard_case(*spec)) for name, spec in GUARD_CASES.items()}


@pytest.fixture(scope="module")
def guard_outcomes():
    from caserunner import run_cases
    return run_cases("test_kquant_linear", list(GUARD_CASES))


@pytest.mark.skipif(sys.platform == "win32", reason="guard pages need POSIX mmap/mprotect")
@pytest.mark.parametrize("name", list(GUARD_CASES))
def test_guarded_buffers(name, guard_outcomes):
    res = guard_outcomes[name]
    assert res["status"] == "ok", f"{name}: {res}"
