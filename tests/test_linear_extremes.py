"""QuantizedLinear at the edges of float32, and what its exactness statement says.

Magnitudes: rows of x from 1e30 to 3e38, tiny and subnormal rows, huge and tiny
rows mixed in one batch, huge weight scales, float64 rows beyond float32's
range.  Wherever ``x @ dequantize(W).T`` (float64) is representable in float32
the output must be finite and within the documented bound of it, on every ISA,
both compute modes, GEMV and GEMM; ordinary rows stay bit for bit what they are
without the extreme ones.  Rows holding NaN or Inf give the class float64 IEEE
arithmetic gives.  ``out=`` may overlap ``x``.

Exactness (the QuantizedLinear docstring): bit-identical for any thread count
and whatever the other rows are, for one ISA and path; across ISAs and between
GEMV and GEMM, within ``(K + 64) * 2**-24 * sum_k |x_k| (|d q_k| + |c|)`` of the
exact result (int8 compute: of the result for the quantized activations).

The cases of the original report run in a child process (tests/caserunner.py),
so that a crash fails its own case.
"""

from __future__ import annotations

import numpy as np
import pytest

import oracle as O
import quantcore as qc
from quantcore import QuantConfig, QuantizedLinear, QuantizedTensor

from caserunner import run_cases
from helpers import as_2d, assert_bits_equal

F32_MAX = float(np.finfo(np.float32).max)
U = 2.0 ** -24  # float32 unit roundoff
ISAS = qc.available_isas()

CONFIGS = {
    "int8": QuantConfig.int8(),
    "uint8": QuantConfig(bits=8, symmetric=False),
    "int8_g64": QuantConfig(bits=8, group_size=64),
    "int8_tensor_f16": QuantConfig(bits=8, granularity="tensor", scale_dtype="float16"),
    "int4_g32": QuantConfig.int4(),
    "uint4_g64": QuantConfig(bits=4, group_size=64, symmetric=False),
    "int4_channel": QuantConfig(bits=4, granularity="channel"),
    "uint4_tensor": QuantConfig(bits=4, granularity="tensor", symmetric=False),
    "q8_0": QuantConfig.q8_0(),
    "q4_0": QuantConfig.q4_0(),
    "q4_1": QuantConfig.q4_1(),
}
COMPUTES = ("float32", "int8")


# ---- the bound -------------------------------------------------------------------------------
def _terms(layer):
    """(W, wm, wq): the dequantized weight (float64), |d q| + |c| per element (the
    factored form the kernels round in: w = d q + c, with c = -d z, -8 d, the Q4_1
    minimum or 0) and its largest value over the layer."""
    qt = layer.weight_quantized
    cfg = qt.config
    n, k = qt.shape
    q = as_2d(qt)
    group = (cfg.group_size or 0) if cfg.granularity == "group" else 0
    per_tensor = cfg.granularity == "tensor"
    d = O._expand(q.scales.astype(np.float64), n, k, group, per_tensor)
    if cfg.kind in (O.ASYM8, O.ASYM4):
        c = -d * O._expand(q.zeros.astype(np.float64), n, k, group, per_tensor)
    elif cfg.kind == O.SYM4:
        c = -8.0 * d
    elif cfg.kind == O.MIN4:
        c = O._expand(q.zeros.astype(np.float64), n, k, group, per_tensor)
    else:
        c = np.zeros_like(d)
    w = layer.dequantized_weight().astype(np.float64)
    wm = np.abs(w - c) + np.abs(c)
    return w, wm, float(wm.max())


def _xhat_abs(layer, x64):
    """|x|, or for int8 compute an upper bound of the quantized activations' |x^|
    (|x| + da/2 per 32-block)."""
    a = np.abs(x64)
    if layer.compute != "int8":
        return a
    m, k = a.shape
    kp = -(-k // 32) * 32
    pad = np.zeros((m, kp))
    pad[:, :k] = a
    half = pad.reshape(m, -1, 32).max(-1) / 254.0
    return a + np.repeat(half, 32, axis=1)[:, :k]


def _int8_bound(layer, x64):
    """int8_error_bound computed in float64 (x may lie beyond float32)."""
    m, k = x64.shape
    kp = -(-k // 32) * 32
    pad = np.zeros((m, kp))
    pad[:, :k] = np.abs(x64)
    half = pad.reshape(m, -1, 32).max(-1) / 254.0
    wabs = np.zeros((layer.out_features, kp))
    wabs[:, :k] = np.abs(layer.dequantized_weight().astype(np.float64))
    return half @ wabs.reshape(layer.out_features, -1, 32).sum(-1).T


def _bound(layer, x64, scaled=True):
    """The documented bound of |y - x @ W.T| per output: float rounding in the
    factored form (on the quantized activations for int8 compute), plus the int8
    activation rounding, plus for rows the kernels had to scale down the loss of
    contributions below 2**-96 of the row's largest term, plus subnormal steps."""
    w, wm, wq = _terms(layer)
    k = layer.in_features
    nb = -(-k // 32)
    tol = (k + 64) * U * (_xhat_abs(layer, x64) @ wm.T)
    if layer.compute == "int8":
        with np.errstate(over="ignore", invalid="ignore"):  # float64 x beyond float32
            tol = tol + _int8_bound(layer, x64) * (1 + 1e-6)
        # blocks with max |x| below 2**-119 have no representable activation scale
        tol = tol + 2.0 ** -118 * np.abs(w).sum(axis=1)[None, :]
    amax = np.abs(x64).max(axis=1, keepdims=True)
    if scaled:
        tol = tol + k * 2.0 ** -96 * amax * wq
    return tol + nb * 2.0 ** -120


def _oracle(layer, x64):
    with np.errstate(over="ignore", invalid="ignore"):
        ref = x64 @ layer.dequantized_weight().astype(np.float64).T
        if layer.bias is not None:
            ref = ref + layer.bias
    return ref


def _check(layer, x, y, what=""):
    """Every output whose reference is representable (with its bound) is finite and
    within the bound; float32 compute: overflowing ones are inf of the right sign."""
    x64 = np.asarray(x, np.float64).reshape(-1, layer.in_features)
    y = y.reshape(x64.shape[0], layer.out_features).astype(np.float64)
    ref = _oracle(layer, x64)
    tol = _bound(layer, x64)
    if layer.bias is not None:
        tol = tol + U * np.abs(layer.bias)
    fits = np.isfinite(ref) & (np.abs(ref) + tol < F32_MAX)
    bad = fits & ~np.isfinite(y)
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {int(fits.sum())} representable outputs "
                           f"not finite, e.g. at {np.argwhere(bad)[0]} (ref {ref[bad][0]:.4g})")
    with np.errstate(invalid="ignore"):
        err = np.where(fits, np.abs(y - ref), 0.0)
    over = err > tol
    assert not over.any(), (f"{what}: off by {np.max(err - tol):.4g} beyond the bound at "
                            f"{np.argwhere(over)[0]} (ref {ref[over][0]:.6g}, got {y[over][0]:.6g}, "
                            f"bound {tol[over][0]:.4g})")
    if layer.compute == "float32":
        huge = np.isfinite(ref) & (np.abs(ref) - tol > F32_MAX * (1 + 2 * U))
        assert np.all(np.isinf(y[huge]) & (np.sign(y[huge]) == np.sign(ref[huge]))), \
            f"{what}: an output beyond float32's range is not inf of its sign"


# ---- the rows --------------------------------------------------------------------------------
HUGE = (1e30, 1e35, 1e37, 1e38, 3e38)


def _extreme_rows(rng, m, k):
    """m rows cycling through: one huge element in an ordinary row, a whole row
    near the limit, tiny and subnormal rows, a huge element among subnormals, and
    ordinary rows."""
    x = rng.standard_normal((m, k))
    for r in range(m):
        kind, mag = r % 7, HUGE[(r // 7 + r) % len(HUGE)]
        if kind == 0:
            x[r, rng.integers(k)] = mag * rng.choice([-1.0, 1.0])
        elif kind == 1:
            x[r] *= mag / 4
        elif kind == 2:
            x[r] *= (1e-38, 1e-42, 1e-30)[r % 3]
        elif kind == 3:
            x[r] *= 1e-42
            x[r, rng.integers(k)] = mag
        elif kind == 4:
            x[r] *= mag / 4 / np.sqrt(k)
            x[r, ::5] *= 1e-30
        # kind 5, 6: ordinary
    return x.astype(np.float32)


def _layer(name, compute, n, k, rng, wscale=1.0, bias=False):
    w = (rng.standard_normal((n, k)) * wscale).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    return QuantizedLinear.from_linear(w, b, CONFIGS[name].replace(compute=compute))


@pytest.mark.parametrize("m", [1, 3, 9, 24], ids=lambda m: f"m{m}")
@pytest.mark.parametrize("compute", COMPUTES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_extreme_rows_match_float64_oracle(name, compute, m, isa, rng):
    # the last shape is prepacked with int8 compute (x86 builds)
    for n, k, wscale, bias in [(37, 100, 1.0, True), (20, 257, 1e-6, False), (45, 128, 1.0, True)]:
        layer = _layer(name, compute, n, k, rng, wscale, bias)
        x = _extreme_rows(rng, m, k)
        y = layer(x)
        _check(layer, x, y, f"{name} {compute} m={m} n={n} k={k} ({layer.kernel})")


@pytest.mark.parametrize("compute", COMPUTES)
@pytest.mark.parametrize("name", [c for c in CONFIGS if CONFIGS[c].scale_dtype == "float32"])
def test_largest_accepted_scales_meet_large_and_tiny_rows(name, compute, isa, rng):
    """Weight scales of 5e29 (QuantizedLinear takes up to 1e30; float16 scales
    cannot get there): x of 1e4..1e6 overflows the kernels' intermediates, not
    the result."""
    n, k = 24, 160
    cfg = CONFIGS[name].replace(compute=compute)
    qt = qc.quantize(rng.standard_normal((n, k)).astype(np.float32), cfg)
    scales = np.asarray(qt.scales * np.float32(5e29 / float(np.abs(qt.scales).max())), np.float32)
    layer = QuantizedLinear(QuantizedTensor.from_arrays(qt.data, scales, qt.zero_points, (n, k), cfg))
    x = rng.standard_normal((11, k)).astype(np.float32)
    for r, mag in enumerate((1e4, 1e6, 1e-20, 1e-36, 3e6, 1.0)):
        x[2 * r] *= np.float32(mag)
    for m in (1, 2, 11):
        _check(layer, x[:m], layer(x[:m]), f"{name} {compute} m={m}")


@pytest.mark.parametrize("m", [3, 12], ids=["gemv", "gemm"])
@pytest.mark.parametrize("compute", COMPUTES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_ordinary_rows_keep_their_bits_next_to_extreme_rows(name, compute, m, isa, rng):
    n, k = 29, 130
    layer = _layer(name, compute, n, k, rng, bias=True)
    plain = rng.standard_normal((m, k)).astype(np.float32)
    mixed = plain.copy()
    extreme = _extreme_rows(rng, 5, k)
    for i, r in enumerate(range(0, m, 2)):
        mixed[r] = extreme[i % 5]
    keep = [r for r in range(m) if r % 2]
    assert_bits_equal(layer(mixed)[keep], layer(plain)[keep], f"{name} {compute} m={m}")


@pytest.mark.parametrize("compute", COMPUTES)
@pytest.mark.parametrize("name", ["int8", "q4_0", "q4_1", "uint4_g64"])
def test_tiny_rows_are_relatively_accurate(name, compute, isa, rng):
    """int8 compute gave zeros for rows whose blocks all lie below ~1.5e-36; both
    modes now hold the bound scaled to the row, without the absolute slack."""
    n, k = 19, 96
    layer = _layer(name, compute, n, k, rng)
    base = rng.standard_normal((6, k))
    for mag in (1e-20, 1e-37, 1e-40, 1e-44):
        x = (base * mag).astype(np.float32)
        x64 = x.astype(np.float64)
        for m in (1, 6):
            y = layer(x[:m]).astype(np.float64)
            ref = _oracle(layer, x64[:m])
            # float32 rounding of x itself (subnormal x) is in the reference already
            tol = _bound(layer, x64[:m], scaled=False) - (-(-k // 32)) * 2.0 ** -120
            tol = tol - (2.0 ** -118 * np.abs(_terms(layer)[0]).sum(axis=1)[None, :]
                         if compute == "int8" else 0)
            tol = tol + 2.0 ** -149  # the output's own rounding
            assert np.all(np.abs(y - ref) <= tol), (
                f"{name} {compute} |x|~{mag:g} m={m}: off by {np.max(np.abs(y - ref) - tol):.3g}")


@pytest.mark.parametrize("compute", COMPUTES)
def test_nonfinite_rows_with_huge_values_give_the_float64_class(compute, isa):
    """The exact path for NaN/Inf rows sums in float64: 4 * 1e38 - inf is -inf
    (float32 sums gave inf - inf = NaN)."""
    k, n = 40, 6
    w = np.ones((n, k), np.float32)
    w[1] = -1.0
    w[2, 4] = 0.0
    layer = QuantizedLinear.from_linear(w, None, QuantConfig.int8(compute=compute))
    x = np.zeros((3, k), np.float32)
    x[0, :4] = 1e38
    x[0, 4] = -np.inf
    x[1, :] = 3e38
    x[1, 7] = np.inf
    x[2, 4] = np.inf
    y = layer(x)
    with np.errstate(invalid="ignore", over="ignore"):
        ref = x.astype(np.float64) @ layer.dequantized_weight().astype(np.float64).T
    cls = lambda v: np.where(np.isnan(v), 0, np.where(np.isposinf(v), 1, np.where(np.isneginf(v), -1, 2)))  # noqa: E731
    np.testing.assert_array_equal(cls(y), cls(ref))


# ---- float64 input beyond float32 ------------------------------------------------------------
@pytest.mark.parametrize("compute", COMPUTES)
@pytest.mark.parametrize("name", ["int8", "q4_1", "uint8"])
def test_float64_rows_beyond_float32_range(name, compute, isa, rng):
    """float64 rows whose values do not fit float32 (or underflow it) are scaled
    by a power of two before the rounding to float32."""
    n, k = 21, 70
    cases = [(1e-6, 1e40), (1e-6, 1e300), (1.0, 1e-40)]
    if CONFIGS[name].scale_dtype == "float32":
        cases.append((1e20, 1e-50))
    for wscale, mag in cases:
        layer = _layer(name, compute, n, k, rng, wscale, bias=True)
        x = rng.standard_normal((5, k))
        x[1] *= mag
        x[3, 2] = mag
        y = layer(x)
        ref = _oracle(layer, x)
        # the kernels see each scaled row rounded to float32: 2 u |x| |w| more
        with np.errstate(over="ignore"):
            tol = (_bound(layer, x) + U * np.abs(layer.bias)
                   + 2 * U * (np.abs(x) @ np.abs(_terms(layer)[0]).T))
        ok = np.abs(ref) + tol < F32_MAX
        assert np.all(np.isfinite(y[ok])), f"{name} {compute} |x|~{mag:g}"
        assert np.all(np.abs(y[ok] - ref[ok]) <= tol[ok]), (
            f"{name} {compute} |x|~{mag:g}: off by {np.max(np.abs(y - ref) - tol):.3g}")
        # rows inside float32's range: as for a float32 x (same batch size, same path)
        plain = x.copy()
        plain[[1, 3]] = 0.0
        keep = [0, 2, 4]
        assert_bits_equal(y[keep], layer(plain.astype(np.float32))[keep], "ordinary rows")


# ---- out= overlapping x ----------------------------------------------------------------------
@pytest.mark.parametrize("m", [3, 11], ids=["gemv", "gemm"])
@pytest.mark.parametrize("compute", COMPUTES)
@pytest.mark.parametrize("name", ["int8", "q4_0", "q4_1"])
def test_out_may_overlap_x(name, compute, m, isa, rng):
    k = 64
    layer = _layer(name, compute, k, k, rng, bias=True)
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[1, 5] = np.nan
    x[2, 9] = np.inf
    x[0, 3] = 1e38  # a row the kernels scale down and recompute from x
    want = layer(x)
    # out is x
    a = x.copy()
    got = layer(a, out=a)
    assert got is a
    assert_bits_equal(a, want, "out=x")
    # out one row behind / ahead of x in one buffer (partial overlap through views)
    for shift in (1, -1):
        buf = np.empty((m + 1, k), np.float32)
        xs, ys = (buf[:-1], buf[1:]) if shift == 1 else (buf[1:], buf[:-1])
        xs[...] = x
        layer(xs, out=ys)
        assert_bits_equal(ys, want, f"out shifted {shift}")
    # out is a reshaped view of x, with a leading dimension
    c = x.reshape(1, m, k).copy()
    layer(c, out=c)
    assert_bits_equal(c[0], want, "out=x (3-D)")


# ---- exactness statement ---------------------------------------------------------------------
EXACT_SHAPES = [(1, 300, 1000), (2, 300, 1000), (9, 300, 1000), (40, 70, 250)]


@pytest.mark.parametrize("compute", COMPUTES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_thread_counts_give_identical_bits(name, compute, isa, threads, rng):
    """Each output is computed by one thread with the same arithmetic whatever the
    split: 1, 2 and 3 threads agree bit for bit, GEMV and GEMM."""
    for m, n, k in EXACT_SHAPES[:3]:
        layer = _layer(name, compute, n, k, rng, bias=True)
        x = rng.standard_normal((m, k)).astype(np.float32)
        threads(1)
        ref = layer(x)
        for t in (2, 3):
            threads(t)
            assert_bits_equal(layer(x), ref, f"{t} threads, m={m} ({layer.kernel})")


@pytest.mark.parametrize("compute", COMPUTES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_row_does_not_depend_on_the_other_rows(name, compute, isa, rng):
    """Within one path (GEMV, or GEMM) a row's result is the same bits for any
    batch it is in: ordinary rows, and rows the kernels rescale (they are redone
    on the path of the whole batch, however many of them there are)."""
    n, k = 70, 250
    layer = _layer(name, compute, n, k, rng)
    extreme = _extreme_rows(rng, 40, k)
    # row 1: one the kernels rescale (16 values of 3e37 in one 32-block: its sum of
    # codes times x passes float32's max), with mostly finite outputs
    extreme[1, :16] = np.float32(3e37)
    assert np.isfinite(layer(extreme[1:2])).mean() > 0.5
    for x in (rng.standard_normal((40, k)).astype(np.float32), extreme):
        by_path = {}
        for m in (1, 2, 3, 5, 7, 8, 9, 16, 40):
            path = "gemm" if layer.kernel_for(m).startswith("gemm") else "gemv"
            y = layer(x[:m])
            if path in by_path:
                r = min(m, by_path[path].shape[0])
                assert_bits_equal(y[:r], by_path[path][:r], f"m={m} ({layer.kernel_for(m)})")
            else:
                by_path[path] = y
        if "gemm" in by_path:  # one rescaled row alone in a GEMM-sized batch of ordinary rows
            one = rng.standard_normal((16, k)).astype(np.float32)
            one[5] = x[1]
            assert_bits_equal(layer(one)[5], by_path["gemm"][1], "a lone rescaled row")


def _float_bound(layer, x):
    """(K + 64) u sum_k |x^_k| (|d q_k| + |c|): how far one ISA/path's float steps
    may take an output from the exact value (for int8 compute: the exact value for
    the quantized activations, which every ISA computes alike)."""
    _, wm, _ = _terms(layer)
    k = layer.in_features
    return (k + 64) * U * (_xhat_abs(layer, x.astype(np.float64)) @ wm.T)


@pytest.mark.parametrize("compute", COMPUTES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_isas_and_paths_agree_within_the_stated_bound(name, compute, all_isas, rng):
    """Not bit-exact: the float sums run in another order per ISA and path.  Each
    result is within the bound of the exact one (float32 compute: against
    float64), so any two differ by at most twice that; and they do differ, which
    is why the statement is a bound."""
    n, k = 70, 250
    layer = _layer(name, compute, n, k, rng)
    x = (rng.standard_normal((12, k)) * rng.uniform(0.1, 10, (12, 1))).astype(np.float32)
    bound = _float_bound(layer, x)
    results = {}
    for isa in all_isas:
        qc.set_isa(isa)
        results[(isa, "gemm" if layer.kernel_for(12).startswith("gemm") else "gemv")] = layer(x)
        gemv = np.concatenate([layer(x[i:i + 1]) for i in range(12)])
        results[(isa, "gemv")] = gemv
    if compute == "float32":
        ref = _oracle(layer, x.astype(np.float64))
        for key, y in results.items():
            err = np.abs(y - ref)
            assert np.all(err <= bound), f"{key}: off by {np.max(err - bound):.3g} beyond the bound"
    ref = results[("scalar", "gemv")]
    for key, y in results.items():
        diff = np.abs(y.astype(np.float64) - ref)
        assert np.all(diff <= 2 * bound), f"{key} vs scalar: {np.max(diff - 2 * bound):.3g} beyond"


def test_isa_results_really_differ():
    """The bound is needed: some ISA's float32 result differs from the scalar one."""
    if len(ISAS) < 2:
        pytest.skip("only the scalar kernels run on this machine")
    rng = np.random.default_rng(5)
    layer = _layer("int4_g32", "float32", 64, 1024, rng)
    x = rng.standard_normal((1, 1024)).astype(np.float32)
    before = qc.get_isa()
    try:
        outs = []
        for isa in ISAS:
            qc.set_isa(isa)
            outs.append(layer(x))
    finally:
        qc.set_isa(before)
    assert any(not np.array_equal(o, outs[0]) for o in outs[1:])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_dequantize_identical_across_isas(name, all_isas, rng):
    w = (rng.standard_normal((33, 250)) * rng.uniform(0.01, 100, (33, 1))).astype(np.float32)
    qt = qc.quantize(w, CONFIGS[name])
    outs = {}
    for isa in all_isas:
        qc.set_isa(isa)
        outs[isa] = qc.quantize(w, CONFIGS[name]).dequantize()
        assert_bits_equal(qt.dequantize(), outs[isa], f"{isa} dequantize")


# ---- the reported cases, in a child process ---------------------------------------------------
def _case_int8_64x64_one_1e37():
    """A 64x64 int8 layer with one x of 1e37 gave 60 of 64 outputs inf/NaN."""
    rng = np.random.default_rng(3)
    for isa in ISAS:
        qc.set_isa(isa)
        for compute in COMPUTES:
            layer = QuantizedLinear.from_linear(rng.standard_normal((64, 64)).astype(np.float32),
                                                None, QuantConfig.int8(compute=compute))
            for m in (1, 16):
                x = rng.standard_normal((m, 64)).astype(np.float32)
                x[:, 10] = 1e37
                _check(layer, x, layer(x), f"{isa} {compute} m={m}")


def _case_4bit_from_1e38():
    rng = np.random.default_rng(4)
    for isa in ISAS:
        qc.set_isa(isa)
        for name in ("int4_g32", "q4_0", "q4_1", "uint4_g64"):
            for compute in COMPUTES:
                layer = _layer(name, compute, 64, 64, rng)
                for m in (1, 16):
                    x = rng.standard_normal((m, 64)).astype(np.float32)
                    x[:, 20] = 1e38
                    x[m - 1] *= 3e38 / 1e38 if m > 1 else 1
                    _check(layer, x, layer(x), f"{isa} {name} {compute} m={m}")


def _case_out_is_x_with_nan_rows():
    """forward(x, out=x) recomputed NaN/Inf rows from the overwritten x."""
    rng = np.random.default_rng(6)
    for isa in ISAS:
        qc.set_isa(isa)
        for compute in COMPUTES:
            layer = _layer("int4_g32", compute, 64, 64, rng)
            x = rng.standard_normal((4, 64)).astype(np.float32)
            x[1, 2] = np.nan
            x[2, 3] = np.inf
            want = layer(x)
            layer(x, out=x)
            assert_bits_equal(x, want, f"{isa} {compute}")


def _case_scales_up_to_1e30():
    """Weight scales up to 1e30 are taken and computed right even where x makes
    the kernels' sums overflow; beyond that a ValueError names the scales (the
    kernels form weight-only products, d times an integer block dot, that no
    rescaling of x shrinks)."""
    w = np.random.default_rng(8).standard_normal((8, 64)).astype(np.float32)
    for compute in COMPUTES:
        # uint8: d * sum(q x) and -d z * sum(x) nearly cancel, each beyond float32
        cfg = QuantConfig(bits=8, symmetric=False, compute=compute)
        qt = qc.quantize(w, cfg)
        layer = QuantizedLinear(QuantizedTensor.from_arrays(
            qt.data, np.full(8, 5e29, np.float32), qt.zero_points, (8, 64), cfg))
        x = np.random.default_rng(9).uniform(1, 2, (3, 64)).astype(np.float32) * np.float32(1e5)
        for isa in ISAS:
            qc.set_isa(isa)
            _check(layer, x, layer(x), f"{isa} {compute} scales 5e29")
        try:
            QuantizedLinear(QuantizedTensor.from_arrays(qt.data, np.full(8, 1e36, np.float32),
                                                        qt.zero_points, (8, 64), cfg))
        except ValueError as e:
            assert "scales" in str(e)
        else:
            raise AssertionError("scales of 1e36 accepted")


def _case_statement_gemv_vs_gemm():
    """A row's float32-compute result changed by ~3e-6 between M=1 and M>=6: within
    the stated bound, and bit-identical within each path."""
    rng = np.random.default_rng(10)
    layer = _layer("int4_g32", "float32", 64, 512, rng)
    x = rng.standard_normal((8, 512)).astype(np.float32)
    b = _float_bound(layer, x[:1])[0]
    for isa in ISAS:
        qc.set_isa(isa)
        one, many = layer(x[:1])[0], layer(x)[0]
        assert np.all(np.abs(one.astype(np.float64) - many) <= 2 * b), isa
        assert_bits_equal(layer(x[:2])[0], one, f"{isa} gemv m=2")


CHILD_CASES = {
    "int8-64x64-one-1e37": _case_int8_64x64_one_1e37,
    "4bit-from-1e38": _case_4bit_from_1e38,
    "out-is-x-with-nan-rows": _case_out_is_x_with_nan_rows,
    "scales-up-to-1e30": _case_scales_up_to_1e30,
    "gemv-vs-gemm-within-bound": _case_statement_gemv_vs_gemm,
}


def child_cases():
    """For tests/caserunner.py: the callables by name."""
    return CHILD_CASES


@pytest.fixture(scope="module")
def outcomes():
    return run_cases("test_linear_extremes", list(CHILD_CASES))


@pytest.mark.parametrize("case", list(CHILD_CASES))
def test_reported_case(case, outcomes):
    res = outcomes[case]
    assert res["status"] == "ok", f"{case}: {res['status']} {res.get('type')}: {res['msg']}"
