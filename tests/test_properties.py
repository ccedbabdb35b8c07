"""Hypothesis property tests: for any shape, strides, float dtype and finite
values, every kernel set gives the scalar reference's bytes and both equal the
NumPy oracle (quantize and dequantize), and int4 packing round-trips.

Values stay within |x| <= 1e37 (float16 inputs: any finite float16), away from
the float32-range overflows that test_quantize.py pins as known bugs.  The
default profile ("ci") is derandomized so the suite is reproducible; run with
HYPOTHESIS_PROFILE=explore for a longer, random search.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import oracle as O  # noqa: E402
import quantcore  # noqa: E402
from conftest import ISAS  # noqa: E402
from helpers import (GRANULARITIES, as_2d, assert_bits_equal, assert_quantized_equal,  # noqa: E402
                     check_against_oracle, run_dequantize, run_quantize)

settings.register_profile("ci", max_examples=60, deadline=None, database=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
settings.register_profile("explore", max_examples=1000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
# tests/sanitize/run.sh: the same properties, fewer examples (ASan+UBSan run ~3x slower)
settings.register_profile("sanitize", max_examples=20, deadline=None, database=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

BOUND = float(np.float32(1e37))  # exactly representable in float32
SPECIALS = [0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-38, 1e-36, 0.5, -0.5, 1.5, 2.5, -2.5,
            65504.0, -65504.0, 1e30, -1e30, BOUND, -BOUND]


def elements(dtype):
    if dtype == np.float16:
        finite16 = [v for v in SPECIALS if abs(v) <= 65504]
        return st.one_of(st.floats(width=16, allow_nan=False, allow_infinity=False),
                         st.sampled_from(finite16))
    return st.one_of(st.floats(-BOUND, BOUND, allow_nan=False, allow_infinity=False,
                               width=32 if dtype == np.float32 else 64),
                     st.sampled_from(SPECIALS))


@st.composite
def float_matrices(draw, max_rows=5, max_cols=80):
    """A 2-D float16/32/64 array of any shape, possibly a strided, reversed or
    transposed view of a larger one, possibly byte-swapped."""
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    rows = draw(st.integers(1, max_rows))
    cols = draw(st.integers(1, max_cols))
    rstep = draw(st.sampled_from([1, 1, 2, -1]))
    cstep = draw(st.sampled_from([1, 1, 2, -1, -3]))
    transpose = draw(st.booleans())
    bshape = (rows * abs(rstep), cols * abs(cstep))
    if transpose:
        bshape = bshape[::-1]
    base = draw(hnp.arrays(dtype, bshape, elements=elements(dtype)))
    if transpose:
        base = base.T
    x = base[::rstep, ::cstep]
    assert x.shape == (rows, cols)
    if draw(st.booleans()):
        x = x.astype(x.dtype.newbyteorder(">"))
    return x


kinds = st.sampled_from(sorted(O.KIND_NAMES))
granularities = st.sampled_from(GRANULARITIES + [("group", 64)])
scale_dtypes = st.sampled_from(["float32", "float16"])


@pytest.fixture(autouse=True)
def _restore_isa():
    before = quantcore.get_isa()
    yield
    quantcore.set_isa(before)


@settings(settings.get_profile(PROFILE))
@given(x=float_matrices(), kind=kinds, gran=granularities, scale_dtype=scale_dtypes)
def test_every_isa_equals_scalar_equals_oracle(x, kind, gran, scale_dtype):
    before = np.array(x, copy=True)
    results = {}
    for name in ISAS:
        quantcore.set_isa(name)
        got, deq = check_against_oracle(x, kind, *gran, scale_dtype)
        results[name] = (got, deq)
    ref_q, ref_deq = results["scalar"]
    for name, (got, deq) in results.items():
        if ref_q is None:
            assert got is None  # all raise (float16 overflow) alike
            continue
        assert_quantized_equal(got, ref_q, f"{name} vs scalar:")
        assert_bits_equal(deq, ref_deq, f"{name} vs scalar: dequantized")
    assert_bits_equal(np.ascontiguousarray(x), np.ascontiguousarray(before), "input")


@settings(settings.get_profile(PROFILE))
@given(x=float_matrices(max_rows=3, max_cols=300), kind=kinds)
def test_long_rows_per_group_32_f32(x, kind):
    """Long rows (several SIMD blocks and a tail), group 32, float32 scales."""
    for name in ISAS:
        quantcore.set_isa(name)
        check_against_oracle(x, kind, "group", 32, "float32")


@settings(settings.get_profile(PROFILE))
@given(x=float_matrices(max_rows=4, max_cols=100), kind=kinds)
def test_dequantize_any_stored_bytes(x, kind):
    """Dequantize is a pure function of the stored arrays: arbitrary code bytes
    and zero points (not only those quantize makes) give the oracle's floats."""
    rows, cols = x.shape
    q = run_quantize(x.astype(np.float32) if x.dtype == np.float16 else x, kind, "group", 32)
    rng = np.random.default_rng(zlib.crc32(x.tobytes()))
    data = rng.integers(0, 256, q.data.shape).astype(np.uint8).view(q.data.dtype)
    zeros = q.zeros
    if kind in O.HAS_INT_ZERO:
        zeros = rng.integers(0, O.QMAX[kind] + 1, q.zeros.shape).astype(np.uint8)
    if O.BITS[kind] == 4 and cols % 2:
        data[:, -1] &= 0x0F  # the unused high nibble of an odd row
    stored = O.Quantized(data, q.scales, zeros)
    want = O.dequantize(data, q.scales, zeros, kind, rows, cols, 32, False)
    for name in ISAS:
        quantcore.set_isa(name)
        got = run_dequantize(stored, kind, rows, cols, "group", 32)
        assert_bits_equal(got, want, f"{name} dequantized")


@settings(settings.get_profile(PROFILE))
@given(v=hnp.arrays(np.int8, hnp.array_shapes(min_dims=1, max_dims=4, max_side=70),
                    elements=st.integers(-8, 7)),
       signed=st.booleans(), reverse=st.booleans())
def test_pack_unpack_round_trip(v, signed, reverse):
    if not signed:
        v = (v.astype(np.int16) + 8).astype(np.uint8)
    if reverse:
        v = v[..., ::-1]
    n = v.shape[-1]
    want = O.pack_int4(v)
    for name in ISAS:
        quantcore.set_isa(name)
        packed = quantcore.pack_int4(v)
        assert_bits_equal(packed, want, f"{name} packed")
        assert_bits_equal(quantcore.unpack_int4(packed, n, signed=signed),
                          np.ascontiguousarray(v), f"{name} unpacked")


# ---- QuantizedLinear.forward -------------------------------------------------------------------
LINEAR_CONFIGS = [
    quantcore.QuantConfig.int8(), quantcore.QuantConfig(bits=8, symmetric=False),
    quantcore.QuantConfig.int4(), quantcore.QuantConfig(bits=4, symmetric=False, group_size=64),
    quantcore.QuantConfig.q8_0(), quantcore.QuantConfig.q4_0(), quantcore.QuantConfig.q4_1(),
    quantcore.QuantConfig.int4(granularity="tensor"), quantcore.QuantConfig(bits=8, group_size=128),
]


@st.composite
def activations(draw, k):
    """(m, k) activations of any float dtype, possibly a strided, reversed, transposed
    or byte-swapped view, or an N-D array with k last; values of any magnitude
    within float32 (from 1e-3 to 1e3 per row, plus specials like 0 and -0)."""
    m = draw(st.integers(0, 20))
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    layout = draw(st.sampled_from(["c", "rows-strided", "cols-strided", "reversed", "transposed", "3d"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.integers(-3, 4, (m, 1))
    x = rng.standard_normal((m, k)) * scale
    if m and draw(st.booleans()):
        x[rng.integers(0, m), rng.integers(0, k)] = draw(st.sampled_from([0.0, -0.0, 1e-30, 65504.0]))
    x = x.astype(dtype)
    if layout == "rows-strided":
        big = np.zeros((2 * m, k + 3), dtype)
        big[::2, 1:k + 1] = x
        x = big[::2, 1:k + 1]
    elif layout == "cols-strided":
        big = np.zeros((m, 2 * k), dtype)
        big[:, ::2] = x
        x = big[:, ::2]
    elif layout == "reversed":
        x = np.ascontiguousarray(x[::-1, ::-1])[::-1, ::-1]
    elif layout == "transposed":
        x = np.asfortranarray(x)
    elif layout == "3d" and m % 2 == 0:
        x = x.reshape(2, m // 2, k)
    if draw(st.booleans()):
        x = x.astype(x.dtype.newbyteorder(">"))
    return x


@settings(settings.get_profile(PROFILE))
@given(data=st.data(), cfg=st.sampled_from(LINEAR_CONFIGS), compute=st.sampled_from(["float32", "int8"]),
       k=st.integers(1, 300), n=st.integers(1, 40), bias=st.booleans(), use_out=st.booleans())
def test_forward_any_layout_matches_oracle_on_every_isa(data, cfg, compute, k, n, bias, use_out):
    """forward(x) for any shape, layout, dtype and magnitude equals x @ dequantize(W).T + b
    within the float32 (and, for int8 compute, the documented activation) error bound, on
    every ISA; the input is never modified."""
    x = data.draw(activations(k))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) * 10.0 ** rng.integers(-2, 3, (n, 1))).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    layer = quantcore.QuantizedLinear.from_linear(w, b, cfg.replace(compute=compute))
    before = np.array(x, copy=True)
    x64 = x.astype(np.float64).reshape(-1, k)
    wd = layer.dequantized_weight().astype(np.float64)
    ref = x64 @ wd.T + (0.0 if b is None else b.astype(np.float64))
    # float32 rounding of the factored kernels (d * sum(x q) + c * sum(x)) scales with
    # |x| (|d| qmax + |c|), not only |x| |W| (see tests/fuzz/fuzz_loaders.py)
    qt = layer.weight_quantized
    q2 = as_2d(qt)
    group = cfg.group_size if cfg.granularity == "group" else 0
    per_tensor = cfg.granularity == "tensor"
    dexp = np.abs(O._expand(q2.scales.astype(np.float64), n, k, group, per_tensor))
    wmag = np.abs(wd) + dexp * (O.QMAX[cfg.kind] + 1)
    if cfg.kind == O.MIN4:
        wmag = wmag + np.abs(O._expand(q2.zeros.astype(np.float64), n, k, group, per_tensor))
    mag = np.abs(x64) @ wmag.T
    tol = 4 * (k + 4) * 2.0**-23 * (mag + (0.0 if b is None else np.abs(b))) + 1e-30
    if layer.compute == "int8" and x64.shape[0]:
        tol = tol + layer.int8_error_bound(x64) * 1.0001
    shape = x.shape[:-1] + (n,)
    for name in ISAS:
        quantcore.set_isa(name)
        out = np.full(shape, np.nan, np.float32) if use_out else None
        y = layer(x, out=out)
        assert y.shape == shape and y.dtype == np.float32
        if use_out:
            assert y is out
        err = np.abs(y.reshape(-1, n).astype(np.float64) - ref)
        assert np.all(err <= tol), f"{name}: excess {np.max(err - tol):.3g} ({layer.kernel_for(x64.shape[0])})"
    assert_bits_equal(np.ascontiguousarray(x), np.ascontiguousarray(before), "input")
