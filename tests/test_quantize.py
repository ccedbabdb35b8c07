"""quantize / dequantize against the NumPy oracle, bit for bit, on every kernel set.

Kinds: sym8 (int8), asym8 (uint8 + zero point), sym4 (Q4_0 rule), asym4 (nibble +
zero point), min4 (Q4_1 rule).  min4 is public only as QuantConfig.q4_1() (group
32, float16 scales); its other granularities are reached through the extension's
quantize_2d, which is the C API every caller shares.
"""

from __future__ import annotations

import numpy as np
import pytest

import oracle as O
import quantcore
from conftest import SIMD_ISAS
from helpers import (DISTRIBUTIONS, GRAN_IDS, GRANULARITIES, KIND_LIST, KINDS, SCALE_DTYPES,
                     as_2d, assert_bits_equal, assert_quantized_equal, check_against_oracle,
                     config_for, roundtrip_bound, run_dequantize, run_oracle, run_quantize)
from quantcore import QuantConfig

FLT_MAX = float(np.finfo(np.float32).max)


# ---- the main grid: kind x granularity x scale dtype x ISA x awkward shape ---------------------
@pytest.mark.parametrize("scale_dtype", SCALE_DTYPES)
@pytest.mark.parametrize("gran", GRANULARITIES, ids=GRAN_IDS)
@pytest.mark.parametrize("kind", KIND_LIST)
def test_matches_oracle(kind, gran, scale_dtype, isa, awkward_shape, values):
    x = values(awkward_shape)
    check_against_oracle(x, KINDS[kind], *gran, scale_dtype)


@pytest.mark.skipif(not SIMD_ISAS, reason="no SIMD kernel set on this CPU/build: only scalar")
@pytest.mark.parametrize("gran", GRANULARITIES, ids=GRAN_IDS)
@pytest.mark.parametrize("kind", KIND_LIST)
def test_simd_equals_scalar(kind, gran, awkward_shape, values, all_isas):
    """Every SIMD kernel set gives the scalar reference's bytes, for quantize and
    dequantize (float16 scales, so that the float16 conversion is covered too)."""
    k = KINDS[kind]
    rows, cols = awkward_shape
    x = values(awkward_shape, dist="heavy")
    results = {}
    for name in all_isas:
        quantcore.set_isa(name)
        q = run_quantize(x, k, *gran, "float16")
        results[name] = (q, run_dequantize(q, k, rows, cols, *gran))
    ref_q, ref_deq = results["scalar"]
    for name in SIMD_ISAS:
        q, deq = results[name]
        assert_quantized_equal(q, ref_q, f"{name} vs scalar:")
        assert_bits_equal(deq, ref_deq, f"{name} vs scalar: dequantized")


@pytest.mark.parametrize("dist", DISTRIBUTIONS)
@pytest.mark.parametrize("kind", KIND_LIST)
def test_magnitudes_and_distributions(kind, dist, magnitude, isa, values):
    """Values from 1e-30 to 1e30, of several shapes of distribution, float32
    scales per group (with a tail) and float16 scales per channel (overflow for the
    large magnitudes must raise ValueError naming float16)."""
    x = values((7, 100), scale=magnitude, dist=dist)
    check_against_oracle(x, KINDS[kind], "group", 32, "float32")
    check_against_oracle(x, KINDS[kind], "channel", None, "float16")


# ---- edge values ---------------------------------------------------------------------------------
@pytest.mark.parametrize("gran", GRANULARITIES, ids=GRAN_IDS)
@pytest.mark.parametrize("kind", KIND_LIST)
def test_all_zero_groups(kind, gran, isa, values):
    x = values((4, 70))
    x[1] = 0.0            # a whole row
    x[2, 32:64] = -0.0    # one group (of 32 and two of 16), negative zeros
    x[3, 64:] = 0.0       # the tail group
    k = KINDS[kind]
    got, deq = check_against_oracle(x, k, *gran)
    if gran[0] != "tensor":
        assert np.all(got.scales[1] == 0)
    if gran[0] != "tensor" or k != O.MIN4:  # a tensor-wide minimum m != 0 is not exact
        assert np.all(deq[1] == 0)
    if gran[0] == "group":
        assert np.all(deq[2, 32:64] == 0) and np.all(deq[3, 64:] == 0)


@pytest.mark.parametrize("scale_dtype", SCALE_DTYPES)
@pytest.mark.parametrize("kind", KIND_LIST)
def test_all_zero_tensor(kind, scale_dtype, isa):
    """Zero scale, and the codes that mean 0: 0 (sym8), the zero point 0 (asym),
    8 (sym4, whose scale is -0.0 as GGUF's max / -8 gives), 0 with minimum +0
    (min4)."""
    k = KINDS[kind]
    x = np.zeros((3, 37), np.float32)
    for gran in GRANULARITIES:
        got, deq = check_against_oracle(x, k, *gran, scale_dtype)
        assert np.all(got.scales == 0)
        assert np.all(deq == 0)
        codes = (O.unpack_int4(got.data, 37) if O.BITS[k] == 4 else got.data).astype(int)
        assert np.all(codes == (8 if k == O.SYM4 else 0))
        if k == O.SYM4:
            assert np.all(np.signbit(got.scales)), "Q4_0's d = max / -8 is -0.0 for +0 input"
        else:
            assert not np.any(np.signbit(got.scales)), "a zero scale is stored as +0"
        if got.zeros is not None:
            assert np.all(got.zeros == 0) and not np.any(np.signbit(got.zeros))


@pytest.mark.parametrize("outlier", [1e4, -1e4, 1e30])
@pytest.mark.parametrize("gran", GRANULARITIES, ids=GRAN_IDS)
@pytest.mark.parametrize("kind", KIND_LIST)
def test_one_huge_outlier(kind, gran, outlier, isa, values):
    x = values((3, 100), scale=1e-3)
    x[1, 41] = outlier
    got, deq = check_against_oracle(x, KINDS[kind], *gran)
    assert abs(deq[1, 41] - outlier) <= abs(outlier) * 0.07  # the outlier itself survives


@pytest.mark.parametrize("positions", [(0, 1), (1, 0), (3, 40), (40, 3), (31, 32), (32, 31),
                                       (60, 63), (63, 2), (7, 8)])
def test_sym4_equal_magnitudes_first_wins(positions, isa, values):
    """Q4_0: d = max / -8 where max is the first element of largest magnitude, so
    +a then -a gives a negative scale and -a then +a a positive one (inside a SIMD
    block, across blocks, and in a short tail group)."""
    i, j = positions
    ti, tj = i % 9, j % 9
    if ti == tj:
        tj = (tj + 1) % 9
    x = values((2, 64 + 9), scale=0.1)
    x[0, i], x[0, j] = 3.0, -3.0
    x[1, 64 + ti], x[1, 64 + tj] = -3.0, 3.0
    cfg = QuantConfig.int4(group_size=64)
    qt = quantcore.quantize(x, cfg)
    check_against_oracle(x, O.SYM4, "group", 64)
    first = x[0, min(i, j)]
    assert qt.scales[0, 0] == np.float32(first) / np.float32(-8)
    first_tail = x[1, 64 + min(ti, tj)]
    assert qt.scales[1, 1] == np.float32(first_tail) / np.float32(-8)


def test_sym4_equal_magnitudes_per_tensor_first_row_wins(isa, values):
    x = values((6, 50), scale=0.1)
    x[2, 40], x[4, 3] = -5.0, 5.0
    cfg = QuantConfig.int4(group_size=None, granularity="tensor")
    qt = quantcore.quantize(x, cfg)
    assert qt.scales == np.float32(-5.0) / np.float32(-8)
    check_against_oracle(x, O.SYM4, "tensor")


# (kind, row of values, expected codes): each row is built so that d == 1 exactly,
# so x * (1/d) lands on exact .5 ties.
TIE_CASES = {
    "sym8": ([127, 2.5, -2.5, 0.5, -0.5, 126.5, 1.5, -1.5], [127, 3, -3, 1, -1, 127, 2, -2]),
    "asym8": ([-100, 155, 2.5, -2.5, 0.5, -0.5, 154.5], [0, 255, 103, 97, 101, 99, 255]),
    # sym4: trunc(x + 8.5) rounds ties towards +inf
    "sym4": ([-8, 2.5, -2.5, 0.5, -0.5, 7, 6.5, -7.5], [0, 11, 6, 9, 8, 15, 15, 1]),
    "asym4": ([-7, 8, 2.5, -2.5, 0.5, -0.5, 7.5], [0, 15, 10, 4, 8, 6, 15]),
    "min4": ([0, 15, 2.5, 0.5, 14.5, 13.5], [0, 15, 3, 1, 15, 14]),
}


@pytest.mark.parametrize("kind", KIND_LIST)
def test_exact_half_ties(kind, isa):
    vals, want = TIE_CASES[kind]
    k = KINDS[kind]
    n = len(vals)
    # the row alone (scalar tail), and repeated to 64 (SIMD body)
    for reps in (1, 8):
        x = np.array([vals * reps], np.float32)
        got, deq = check_against_oracle(x, k, "channel")
        assert got.scales[0, 0] == 1.0
        codes = O.unpack_int4(got.data, n * reps) if O.BITS[k] == 4 else got.data
        assert codes[0, :n].astype(int).tolist() == want
        assert np.array_equal(codes[0, :n], codes[0, -n:])


def test_asym_zero_point_tie(isa):
    """z = round_half_away(-lo / d): lo = -6.5, d = 1 gives z = 7."""
    x = np.array([[-6.5, 8.5, 0.0, 1.0]], np.float32)
    got, _ = check_against_oracle(x, O.ASYM4, "channel")
    assert got.zeros[0, 0] == 7


@pytest.mark.parametrize("kind", KIND_LIST)
def test_denormals(kind, isa):
    """Subnormal inputs: groups whose 1/d overflows are stored as zeros; a
    subnormal d whose inverse is finite still quantizes; subnormals beside normal
    values quantize to 0."""
    rows = [
        [1e-40] * 5 + [0.0] * 3,
        [1e-45, -1e-45, 1e-45, 0.0, -1e-45, 0, 0, 0],
        [1.0, 1e-45, -1e-40, 0.5, -2.0, 1e-38, 0, 0],
        [1e-38, -1e-38, 5e-39, 0, 0, 0, 0, 0],
        [1e-36, -3e-37, 1e-37, 0, 0, 0, 0, 0],
        [-2e-35, 1e-36, 7e-36, 0, 0, 0, 0, 0],
    ]
    x = np.array(rows, np.float32)
    assert x[0, 0] != 0 and x[1, 0] != 0  # really subnormal, not flushed
    k = KINDS[kind]
    for scale_dtype in SCALE_DTYPES:
        got, deq = check_against_oracle(x, k, "channel", None, scale_dtype)
        assert np.all(got.scales[:2] == 0)  # 1/d overflows: stored as zeros
        assert np.all(np.abs(deq[:2]) <= 1e-39)  # (min4 keeps its minimum m)
    # float16 subnormal inputs (converted exactly)
    h = np.array([[6e-8, -6e-8, 1e-5, 3e-7, 0.0, 2e-6]], np.float16)
    check_against_oracle(h, k, "channel")


MAX_RANGE_ROWS = [[FLT_MAX, 1.0, 2.0, -3.0],
                  [-FLT_MAX, 3.0, 0.5, 0.0],
                  [FLT_MAX / 2, -FLT_MAX / 2, 1.0, 2.0],
                  [FLT_MAX * 0.99, -1e36, 1.0, 0.0],
                  [FLT_MAX, -FLT_MAX, 1.0, 2.0]]  # hi - lo overflows float32


@pytest.mark.parametrize("row", range(len(MAX_RANGE_ROWS)))
@pytest.mark.parametrize("kind", KIND_LIST)
def test_float32_max_range_matches_oracle(kind, row, isa):
    """Values near float32's limits with float32 scales follow the rules of
    formats.h on every kernel set: codes and scales as the oracle computes them,
    or a ValueError where the scale (or minimum) overflows float32 (asym8, asym4
    and min4 with hi - lo beyond float32's max)."""
    x = np.array([MAX_RANGE_ROWS[row]], np.float32)
    check_against_oracle(x, KINDS[kind], "channel", None, "float32", roundtrip=False)




@pytest.mark.parametrize("kind", [pytest.param(k)
                                  for k in KIND_LIST])
def test_float32_max_range_is_finite_or_rejected(kind, isa):
    """Finite float32 input must either quantize to finite values within the
    round-trip bound, or be rejected with a ValueError; never inf or NaN."""
    k = KINDS[kind]
    for row in MAX_RANGE_ROWS:
        x = np.array([row], np.float32)
        try:
            q = run_quantize(x, k, "channel", None, "float32")
        except ValueError:
            continue
        deq = run_dequantize(q, k, 1, 4, "channel")
        assert np.all(np.isfinite(deq)), f"{row} -> {deq}"
        bound = roundtrip_bound(k, x, q, "channel", None)
        assert np.all(np.abs(x.astype(np.float64) - deq) <= bound), f"{row} -> {deq}"


# the smallest magnitude whose scale overflows float16, per kind (d > 65504)
_F16_OVERFLOW = {"sym8": 1e7, "asym8": 2e7, "sym4": 6e5, "asym4": 1e6, "min4": 1e6}


@pytest.mark.parametrize("gran", GRANULARITIES, ids=GRAN_IDS)
@pytest.mark.parametrize("kind", KIND_LIST)
def test_float16_scale_overflow_raises(kind, gran, isa, values):
    k = KINDS[kind]
    x = values((3, 70))
    x[2, 50] = _F16_OVERFLOW[kind] * 1.01
    x[2, 51] = -_F16_OVERFLOW[kind] * 1.01
    with pytest.raises(ValueError, match="float16") as info:
        run_quantize(x, k, *gran, "float16")
    granularity, gs = gran
    row, col = {"channel": (2, 0), "tensor": (0, 0)}.get(granularity, (2, 50 // (gs or 1) * (gs or 1)))
    assert f"row {row}, column {col}" in str(info.value)
    check_against_oracle(x, k, *gran, "float16")  # the oracle agrees it must raise
    check_against_oracle(x, k, *gran, "float32")  # and float32 scales are fine


@pytest.mark.parametrize("gran", [g for g in GRANULARITIES if g[0] != "tensor"],
                         ids=[i for i in GRAN_IDS if i != "tensor"])
def test_float16_minimum_overflow_raises(gran, isa):
    """Q4_1 stores the minimum in float16 too: a constant group at -70000 has d = 0
    but a minimum that float16 cannot hold."""
    x = np.full((2, 64), -70000.0, np.float32)
    x[0] = 1.0
    with pytest.raises(ValueError, match="float16"):
        run_quantize(x, O.MIN4, *gran, "float16")


def test_float16_minimum_overflow_raises_per_tensor(isa):
    """Regression: per tensor, only d was checked against float16, and the Q4_1
    minimum was stored as -inf silently."""
    x = np.full((2, 64), -70000.0, np.float32)
    x[0, 0] = -69999.0
    with pytest.raises(ValueError, match="float16"):
        run_quantize(x, O.MIN4, "tensor", None, "float16")


def test_float16_scale_limit_is_accepted(isa):
    """d == 65504 exactly (the largest float16) is stored, not rejected."""
    x = np.array([[-65504.0 * 8, 1.0, 2.0]], np.float32)
    qt = quantcore.quantize(x, QuantConfig.int4(group_size=None, granularity="channel", scale_dtype="float16"))
    assert qt.scales[0] == np.float16(65504.0)


@pytest.mark.parametrize("gran", GRANULARITIES, ids=GRAN_IDS)
@pytest.mark.parametrize("kind", KIND_LIST)
def test_negative_zero(kind, gran, isa, values):
    k = KINDS[kind]
    x = np.full((3, 40), -0.0, np.float32)
    x[1, ::2] = 0.0                  # alternating +0 / -0
    x[2] = values((40,))
    x[2, ::3] = -0.0                 # -0.0 among ordinary values
    got, deq = check_against_oracle(x, k, *gran)
    if gran[0] != "tensor" or k != O.MIN4:
        assert np.all(deq[:2] == 0)


# ---- input layouts and dtypes ----------------------------------------------------------------------
PUBLIC_CONFIGS = {
    "int8-channel": (O.SYM8, "channel", None, "float32"),
    "asym8-tensor": (O.ASYM8, "tensor", None, "float32"),
    "int4-g16": (O.SYM4, "group", 16, "float32"),
    "asym4-g32-f16": (O.ASYM4, "group", 32, "float16"),
    "q4_1": (O.MIN4, "group", 32, "float16"),
}


def _unaligned(a):
    """A copy of `a` whose data pointer is one byte off its dtype's alignment."""
    a = np.ascontiguousarray(a)
    buf = np.zeros(a.nbytes + 1, np.uint8)
    buf[1:] = a.view(np.uint8).reshape(-1)
    u = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    assert not u.flags.aligned
    return u


def _readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a


INPUT_VARIANTS = {
    "float16": lambda x: x.astype(np.float16),
    "float64": lambda x: x.astype(np.float64) * (1 + 1e-9),  # not float32-representable
    "transposed": lambda x: np.ascontiguousarray(x.T).T,
    "fortran": np.asfortranarray,
    "neg-col-stride": lambda x: x[:, ::-1].copy()[:, ::-1],
    "neg-both-strides": lambda x: x[::-1, ::-1].copy()[::-1, ::-1],
    "every-other-column": lambda x: np.repeat(x, 2, axis=1)[:, ::2],
    "every-other-row": lambda x: np.repeat(x, 2, axis=0)[::2],
    "byteswapped-f4": lambda x: x.astype(">f4"),
    "byteswapped-f2": lambda x: x.astype(">f2"),
    "byteswapped-f8": lambda x: x.astype(">f8"),
    "readonly": _readonly,
    "unaligned": _unaligned,
    "broadcast-rows": lambda x: np.broadcast_to(x[1], x.shape),
    "3d": lambda x: x.reshape(2, 3, -1),
    "4d": lambda x: x.reshape(2, 1, 3, -1),
    "3d-noncontiguous": lambda x: np.swapaxes(x.reshape(2, 3, -1), 0, 1),
    "1d": lambda x: x[0],
    "1d-strided": lambda x: np.repeat(x[0], 3)[::3],
    "list": lambda x: x.tolist(),
    "list-1d": lambda x: x[0].tolist(),
}


@pytest.mark.parametrize("variant", INPUT_VARIANTS)
@pytest.mark.parametrize("cfg_name", PUBLIC_CONFIGS)
def test_input_layouts_and_dtypes(cfg_name, variant, isa, values):
    """Strided, reversed, byte-swapped, unaligned, read-only, N-D, 1-D and list
    inputs all quantize like the equivalent C-contiguous float32 array (after the
    conversion to float32), and the input is never modified."""
    kind, gran, gs, sdt = PUBLIC_CONFIGS[cfg_name]
    base = values((6, 70), dist="heavy")
    x = INPUT_VARIANTS[variant](base)
    arr = np.asarray(x)
    before = np.array(arr, copy=True)
    cfg = config_for(kind, gran, gs, sdt)
    qt = quantcore.quantize(x, cfg)
    assert qt.shape == arr.shape
    assert qt.dtype.newbyteorder("=") == arr.dtype.newbyteorder("=")
    check_against_oracle(arr, kind, gran, gs, sdt)
    if isinstance(x, np.ndarray):
        assert x.dtype == before.dtype and x.shape == before.shape
        assert_bits_equal(np.ascontiguousarray(x), before, "input after quantize")
    deq = qt.dequantize()
    assert deq.shape == arr.shape and deq.dtype == np.float32
    assert np.array_equal(deq.reshape(-1), quantcore.quantize(
        np.ascontiguousarray(arr.astype(np.float32)), cfg).dequantize().reshape(-1))


def test_float64_out_of_float32_range_is_rejected(isa):
    """1e39 is finite in float64 but not in float32, the kernels' arithmetic."""
    x = np.array([[1.0, 1e39, 2.0]])
    with pytest.raises(ValueError):
        quantcore.quantize(x)


# ---- threads -------------------------------------------------------------------------------------
LARGE = (512, 4096)  # 2M elements: far above the 65536-element threshold of the parallel path


@pytest.fixture(scope="module")
def large_values():
    return np.random.default_rng(1234).standard_t(3.0, LARGE).astype(np.float32)


@pytest.mark.parametrize("cfg_name", list(PUBLIC_CONFIGS) + ["int8-tensor-f16", "q4_0", "q8_0"])
def test_thread_counts_give_identical_bytes(cfg_name, large_values, threads, isa):
    if cfg_name in PUBLIC_CONFIGS:
        kind, gran, gs, sdt = PUBLIC_CONFIGS[cfg_name]
        cfg = config_for(kind, gran, gs, sdt)
    elif cfg_name == "int8-tensor-f16":
        cfg = QuantConfig.int8(granularity="tensor", scale_dtype="float16")
    else:
        cfg = getattr(QuantConfig, cfg_name)()
    results = []
    for n in (1, 2, 3):
        threads(n)
        qt = quantcore.quantize(large_values, cfg)
        results.append((qt, qt.dequantize()))
    for qt, deq in results[1:]:
        assert qt == results[0][0]
        assert_bits_equal(deq, results[0][1], "dequantized")
    if cfg_name == "int4-g16":  # and the oracle agrees on the large array once
        assert_quantized_equal(as_2d(results[0][0]), run_oracle(large_values, O.SYM4, "group", 16))


@pytest.mark.parametrize("cfg", [QuantConfig.int8(), QuantConfig.int8(granularity="tensor"),
                                 QuantConfig.int4()], ids=["channel", "tensor", "g32"])
def test_nonfinite_location_independent_of_threads(cfg, large_values, threads):
    """Regression: a thread that found an error made the others skip their
    remaining rows, so which of two bad rows was reported depended on timing."""
    x = large_values.copy()
    x[255, 4095] = np.nan  # the last element of the first thread's rows (2 threads)
    x[256, 0] = np.inf     # the first element of the second thread's rows
    threads(2)
    seen = set()
    for _ in range(20):
        with pytest.raises(ValueError, match="NaN or Inf") as info:
            quantcore.quantize(x, cfg)
        seen.add(str(info.value))
    assert seen == {"array contains NaN or Inf at row 255, column 4095; "
                    "quantization needs finite values"}, seen
