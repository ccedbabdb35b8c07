"""method="gptq": held against a slow NumPy GPTQ written here from the paper's
update rule (the inverse Hessian's Cholesky factor, one column at a time, the
whole matrix updated after each), for every format with and without act_order;
the output error against round-to-nearest's on the calibration inputs; the
result as an ordinary tensor of its format (GGUF blocks, MatMulNBits); and bad
inputs."""
from __future__ import annotations

import numpy as np
import pytest

import oracle as O
import quantcore as qc
from quantcore import QuantConfig, QuantizedTensor
from quantcore.calibrate import LayerStats
from quantcore.gptq import gptq_arrays

FORMATS = {
    "int8": QuantConfig.int8(),
    "int8_asym": QuantConfig.int8(symmetric=False),
    "int8_tensor": QuantConfig.int8(granularity="tensor"),
    "int4_g16": QuantConfig.int4(group_size=16),
    "int4_g32": QuantConfig.int4(),
    "int4_g32_f16": QuantConfig.int4(scale_dtype="float16"),
    "int4_g32_asym": QuantConfig.int4(symmetric=False),
    "int4_channel": QuantConfig.int4(granularity="channel"),
    "int4_tensor_asym": QuantConfig.int4(granularity="tensor", symmetric=False),
    "int8_g64": QuantConfig.int8(group_size=64),
    "q8_0": QuantConfig.q8_0(),
    "q4_0": QuantConfig.q4_0(),
    "q4_1": QuantConfig.q4_1(),
}


# ---- the reference --------------------------------------------------------------------------

def _nearest(kind, t, d, z):
    """Brute force: each row's code whose dequantized value (as the kernels compute
    it, float32) is nearest to t."""
    lo, hi = {O.SYM8: (-127, 127), O.ASYM8: (0, 255)}.get(kind, (0, 15))
    cand = np.arange(lo, hi + 1).astype(np.float32)[None, :]
    d = np.asarray(d, np.float32)[:, None]
    if kind == O.SYM8:
        v = d * cand
    elif kind == O.SYM4:
        v = d * (cand - 8)
    elif kind == O.MIN4:
        v = d * cand + np.asarray(z, np.float32)[:, None]
    else:
        v = d * (cand - np.asarray(z, np.float32)[:, None])
    j = np.abs(v.astype(np.float64) - t[:, None]).argmin(1)
    return (j + lo), v[np.arange(len(t)), j].astype(np.float64)


def reference_gptq(w, h, cfg, act_order=False, damp=0.01):
    """GPTQ as the paper states it: U = chol(inv(H)).T, column by column, the
    rest of W updated by -err / U[i, i] * U[i, i:] after each; a group's scale
    from the group's columns as updated when its first column is reached (from
    the original weights with act_order, per channel and per tensor); the
    format's rules from tests/oracle.py."""
    kind = cfg.kind
    per_tensor = cfg.granularity == "tensor"
    g = (cfg.group_size or 0) if cfg.granularity == "group" else 0
    f16 = cfg.scale_dtype == "float16"
    W = np.array(w, np.float64)
    n, k = W.shape
    g = g if g < k else 0
    H = np.array(h, np.float64)
    dg = np.diag(H).copy()
    dead = ~(dg > 0)
    mean = dg[~dead].mean() if (~dead).any() else 1.0
    H[dead, :] = 0
    H[:, dead] = 0
    H[dead, dead] = mean
    H[np.diag_indices(k)] += damp * mean
    static = per_tensor or g == 0 or act_order
    if static:
        r = O.quantize(W.astype(np.float32), kind, g, per_tensor, f16)
        S = np.broadcast_to(r.scales.astype(np.float32), (n, r.scales.shape[1])) if not per_tensor \
            else np.full((n, 1), r.scales.reshape(-1)[0], np.float32)
        Z = None if r.zeros is None else (np.full((n, 1), r.zeros.reshape(-1)[0]) if per_tensor
                                          else r.zeros)
    else:
        S = np.zeros((n, -(-k // g)), np.float32)
        Z = np.zeros(S.shape, np.float32)
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(k)
    W = W[:, perm]
    H = H[perm][:, perm]
    U = np.linalg.cholesky(np.linalg.inv(H)).T
    Q = np.zeros((n, k), np.int64)
    for i in range(k):
        col = perm[i]
        if not static and i % g == 0:
            r = O.quantize(W[:, i:i + g].astype(np.float32), kind, 0, False, f16)
            S[:, i // g] = r.scales[:, 0]
            if r.zeros is not None:
                Z[:, i // g] = r.zeros[:, 0]
        gi = 0 if (g == 0 or per_tensor) else col // g
        q, deq = _nearest(kind, W[:, i], S[:, gi], None if Z is None else Z[:, gi])
        err = (W[:, i] - deq) / U[i, i]
        W[:, i:] -= np.outer(err, U[i, i:])
        Q[:, col] = q
    return Q


def _codes(qt: QuantizedTensor) -> np.ndarray:
    """The integer codes of a 2-D tensor (int8 values, or 4-bit nibbles)."""
    d = np.asarray(qt.data)
    if qt.bits == 4:
        return qc.unpack_int4(d, qt.shape[-1]).astype(np.int64)
    return d.astype(np.int64)


def _problem(seed, n, k, tokens=None, dead=()):
    """Weights and correlated calibration inputs with a few loud channels, as
    transformer activations have."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    tokens = tokens or 3 * k
    x = (rng.standard_normal((tokens, k)) @ rng.standard_normal((k, k)) * 0.3).astype(np.float32)
    x[:, k // 3] *= 8
    x[:, list(dead)] = 0
    return w, x, LayerStats(k).update(x)


def _out_err(x, w, qt):
    return float(np.linalg.norm(x.astype(np.float64) @ (qt.dequantize() - w).T.astype(np.float64)))


# ---- same codes as the reference --------------------------------------------------------------

@pytest.mark.parametrize("act_order", [False, True], ids=["natural", "act_order"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_codes_match_the_reference(fmt, act_order):
    # K = 96: groups of 16/32/64 with a tail for g64, a dead channel, sub-blocks of 16
    w, x, st = _problem(1, 9, 96, dead=(7,))
    cfg = FORMATS[fmt].replace(method="gptq", act_order=act_order)
    got = qc.quantize(w, cfg, calibration=st)
    want = reference_gptq(w, st.hessian, cfg, act_order)
    np.testing.assert_array_equal(_codes(got), want)
    assert got.config == cfg and got.shape == w.shape


@pytest.mark.parametrize("fmt", ["int4_g32", "q4_1", "int8", "int4_g32_asym"])
@pytest.mark.parametrize("act_order", [False, True], ids=["natural", "act_order"])
def test_codes_match_the_reference_across_blocks(fmt, act_order):
    """K beyond one block of 128 columns and not a multiple of the group."""
    w, x, st = _problem(2, 5, 300, tokens=500, dead=(150,))
    cfg = FORMATS[fmt].replace(method="gptq", act_order=act_order)
    np.testing.assert_array_equal(_codes(qc.quantize(w, cfg, calibration=st)),
                                  reference_gptq(w, st.hessian, cfg, act_order))


def test_groups_wider_than_a_block_and_block_sizes():
    w, x, st = _problem(3, 4, 600, tokens=700)
    cfg = QuantConfig.int4(group_size=256, method="gptq")
    want = reference_gptq(w, st.hessian, cfg)
    np.testing.assert_array_equal(_codes(qc.quantize(w, cfg, calibration=st)), want)
    # the lazy blocks change only the order of the sums, not the codes
    for block in (32, 512):
        codes, _, _ = gptq_arrays(w, st.xtx, cfg, block=block)
        np.testing.assert_array_equal(codes, want)


def test_float32_block_products_of_large_layers():
    """Large layers carry the errors between blocks in float32: the same codes
    but for near-ties, and the same output error."""
    w, x, st = _problem(15, 48, 400, tokens=800)
    cfg = QuantConfig.int4(method="gptq")
    c64, s64, _ = gptq_arrays(w, st.xtx, cfg, lazy_float32=False)
    c32, s32, _ = gptq_arrays(w, st.xtx, cfg, lazy_float32=True)
    assert np.mean(c64 == c32) > 0.999
    q = lambda c, s: QuantizedTensor.from_arrays(  # noqa: E731
        qc.pack_int4(c.astype(np.uint8)), s, None, w.shape, cfg)
    e64, e32 = (qc.metrics.calibrated_error(w, q(c, s), st) for c, s in ((c64, s64), (c32, s32)))
    assert e32 == pytest.approx(e64, rel=0.01)


@pytest.mark.parametrize("k", [1, 2, 3, 15, 16, 17, 31, 33, 65])
@pytest.mark.parametrize("fmt", ["int8", "int4_g16", "int4_tensor_asym", "q4_1"])
def test_awkward_widths(fmt, k):
    w, x, st = _problem(16, 3, k, tokens=40)
    cfg = FORMATS[fmt].replace(method="gptq", act_order=k % 2 == 1)
    np.testing.assert_array_equal(_codes(qc.quantize(w, cfg, calibration=st)),
                                  reference_gptq(w, st.hessian, cfg, cfg.act_order))


def test_mse_scale_search_inside_gptq():
    w, x, st = _problem(17, 16, 128, tokens=600)
    cfg = QuantConfig.int4(method="gptq")
    plain = _out_err(x, w, qc.quantize(w, QuantConfig.int4()))
    for ao in (False, True):
        codes, s, _ = gptq_arrays(w, st.xtx, cfg, act_order=ao, search=True)
        qt = QuantizedTensor.from_arrays(qc.pack_int4(codes.astype(np.uint8)), s, None, w.shape, cfg)
        assert _out_err(x, w, qt) < 0.9 * plain


def test_damping_is_a_fraction_of_the_mean_diagonal():
    w, x, st = _problem(4, 6, 64)
    cfg = QuantConfig.int4(method="gptq", damp=0.1)
    np.testing.assert_array_equal(_codes(qc.quantize(w, cfg, calibration=st)),
                                  reference_gptq(w, st.hessian, cfg, damp=0.1))


# ---- better than rounding ------------------------------------------------------------------------

@pytest.mark.parametrize("act_order", [False, True], ids=["natural", "act_order"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_output_error_below_rounding_on_the_calibration_inputs(fmt, act_order):
    w, x, st = _problem(5, 32, 128, tokens=1000)
    cfg = FORMATS[fmt]
    plain = qc.quantize(w, cfg)
    g = qc.quantize(w, cfg.replace(method="gptq", act_order=act_order), calibration=st)
    assert _out_err(x, w, g) < 0.9 * _out_err(x, w, plain)
    # the same measure, from the statistics alone
    assert qc.metrics.calibrated_error(w, g, st) < qc.metrics.calibrated_error(w, plain, st)


def test_diagonal_statistics_give_plain_rounding():
    """Uncorrelated inputs leave no error to spread: the codes are the nearest
    ones, as round-to-nearest gives them (float32 scales)."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    st = LayerStats.from_arrays(np.ones(64) * 10, 10, np.eye(64) * 10)
    for cfg in (QuantConfig.int8(), QuantConfig.int4(), QuantConfig.int4(symmetric=False)):
        g = qc.quantize(w, cfg.replace(method="gptq"), calibration=st)
        p = qc.quantize(w, cfg)
        np.testing.assert_array_equal(g.scales, p.scales)
        assert np.mean(_codes(g) == _codes(p)) > 0.999


def test_dead_channels_are_rounded_plainly_and_never_nan():
    w, x, st = _problem(7, 8, 64, dead=(3, 40))
    cfg = QuantConfig.int8(method="gptq")
    g = qc.quantize(w, cfg, calibration=st)
    d = g.scales.astype(np.float64)
    for j in (3, 40):
        np.testing.assert_array_equal(_codes(g)[:, j], np.clip(np.rint(w[:, j] / d), -127, 127))
    # all channels dead (inputs all zero): plain rounding everywhere, finite
    zero = LayerStats(64).update(np.zeros((10, 64), np.float32))
    for fmt in FORMATS.values():
        g = qc.quantize(w, fmt.replace(method="gptq"), calibration=zero)
        assert np.all(np.isfinite(g.dequantize()))


def test_rank_deficient_and_ill_conditioned_statistics_stay_finite():
    rng = np.random.default_rng(8)
    w = (rng.standard_normal((8, 128)) * np.logspace(-3, 3, 128)).astype(np.float32)
    x = rng.standard_normal((5, 128)).astype(np.float32) * 1e3  # 5 rows: rank 5 of 128
    x[:, 0] *= 1e6
    st = LayerStats(128).update(x)
    for fmt in FORMATS.values():
        for ao in (False, True):
            g = qc.quantize(w, fmt.replace(method="gptq", act_order=ao, damp=0.0), calibration=st)
            assert np.all(np.isfinite(g.dequantize()))


# ---- an ordinary tensor of its format ------------------------------------------------------------

def test_result_is_an_ordinary_tensor():
    w, x, st = _problem(9, 33, 70)
    for fmt, cfg in FORMATS.items():
        g = qc.quantize(w, cfg.replace(method="gptq"), calibration=st)
        p = qc.quantize(w, cfg)
        assert g.data.shape == p.data.shape and g.data.dtype == p.data.dtype
        assert g.scales.shape == p.scales.shape and g.scales.dtype == p.scales.dtype
        assert (g.zero_points is None) == (p.zero_points is None)
        back = QuantizedTensor.from_arrays(g.data, g.scales, g.zero_points, g.shape, g.config)
        assert back == g
        if cfg.group_size == 16:
            continue  # QuantizedLinear takes groups of 32 or more
        lin = qc.QuantizedLinear(g)
        y = lin(x[:3])
        want = x[:3].astype(np.float64) @ g.dequantize().T.astype(np.float64)
        assert np.all(np.abs(y - want) <= lin.int8_error_bound(x[:3]) + 1e-4 * np.abs(want).max())


def test_gguf_export_of_gptq_tensors(tmp_path):
    pytest.importorskip("gguf", reason="the gguf package is not installed")
    from quantcore import gguf
    w, x, st = _problem(10, 8, 64)
    tensors = {f: qc.quantize(w, getattr(QuantConfig, f)(method="gptq"), calibration=st)
               for f in ("q8_0", "q4_0", "q4_1")}
    path = tmp_path / "g.gguf"
    gguf.save(path, tensors)
    back = gguf.load(path)
    for name, t in tensors.items():
        b = back[name]
        np.testing.assert_array_equal(b.dequantize(), t.dequantize())
        np.testing.assert_array_equal(np.asarray(b.data), np.asarray(t.data))


def test_matmulnbits_export_of_gptq_tensors():
    w, x, st = _problem(11, 12, 96)
    for cfg in (QuantConfig.int4(), QuantConfig.int4(symmetric=False),
                QuantConfig.int4(group_size=16, scale_dtype="float16")):
        g = qc.quantize(w, cfg.replace(method="gptq"), calibration=st)
        m = g.to_matmulnbits()
        back = QuantizedTensor.from_matmulnbits(m.B, m.scales, m.zero_points, K=m.K, N=m.N,
                                                bits=m.bits, block_size=m.block_size)
        np.testing.assert_array_equal(back.dequantize(), g.dequantize())


def test_nd_weights_float16_and_input_untouched():
    w, x, st = _problem(12, 6, 64)
    w3 = np.stack([w, -w]).astype(np.float16)
    keep = w3.copy()
    g = qc.quantize(w3, QuantConfig.int4(method="gptq"), calibration=st)
    assert g.shape == (2, 6, 64) and g.dtype == np.float16
    np.testing.assert_array_equal(w3, keep)
    g2 = qc.quantize(w3.reshape(12, 64), QuantConfig.int4(method="gptq"), calibration=st)
    np.testing.assert_array_equal(np.asarray(g.data).reshape(12, -1), np.asarray(g2.data))


# ---- bad inputs ---------------------------------------------------------------------------------------

def test_bad_inputs():
    w, x, st = _problem(13, 4, 32)
    cfg = QuantConfig.int4(method="gptq")
    with pytest.raises(ValueError, match="calibration="):
        qc.quantize(w, cfg)
    with pytest.raises(ValueError, match="width 32 for a weight with 16"):
        qc.quantize(w[:, :16], cfg, calibration=st)
    with pytest.raises(ValueError, match="diagonal"):
        qc.quantize(w, cfg, calibration=st.without_hessian())
    with pytest.raises(ValueError, match="no rows"):
        qc.quantize(w, cfg, calibration=LayerStats(32))
    with pytest.raises(TypeError, match="LayerStats"):
        qc.quantize(w, cfg, calibration=x)
    bad = w.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        qc.quantize(bad, cfg, calibration=st)
    with pytest.raises(ValueError, match="calibration is used by"):
        qc.quantize(w, QuantConfig.int4(), calibration=st)
    with pytest.raises(ValueError, match="act_order"):
        QuantConfig.int4(act_order=True)
    with pytest.raises(ValueError, match="act_order"):
        QuantConfig.int4(method="gptq", act_order=1)
    for d in (-0.1, 2.0, float("nan"), "0.1"):
        with pytest.raises(ValueError, match="damp"):
            QuantConfig.int4(method="gptq", damp=d)
    # a float16 scale that cannot hold the group
    with pytest.raises(ValueError):
        qc.quantize(w * 1e6, QuantConfig.q4_0(method="gptq"), calibration=st)


def test_config_round_trips_with_the_new_fields(tmp_path):
    cfg = QuantConfig.q4_0(method="gptq", act_order=True, damp=0.05)
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    w, x, st = _problem(14, 4, 64)
    g = qc.quantize(w, cfg, calibration=st)
    qc.save(tmp_path / "m.safetensors", {"w": g})
    assert qc.load(tmp_path / "m.safetensors")["w"] == g
