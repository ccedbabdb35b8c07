"""Integer results are identical on every kernel set (ISA): the codes, scales and
zero points of quantize, the bytes of pack_int4, and the integer dot products of
the int8-compute linear path.

The dot products are made observable by choosing problems where every float
step is exact: weight rows whose largest magnitude is 127 (int8: d = 1) or whose
signed extreme is -8 (int4 Q4_0 rule: d = 1), activations whose 32-blocks each
hold a +-127 (da = 1), so that y equals the integer dot product sum(q_w * q_x)
with no rounding at all, on every ISA, in the GEMV (M < 8) and GEMM (M >= 8)
paths, and equals NumPy's int64 result.  Also run by tests/sanitize/run.sh.
"""

from __future__ import annotations

import numpy as np
import pytest

import quantcore as qc
from quantcore import QuantConfig, QuantizedLinear

from helpers import AWKWARD_SHAPES, assert_bits_equal

ISAS = qc.available_isas()

QUANT_CONFIGS = {
    "int8": QuantConfig.int8(), "uint8": QuantConfig(bits=8, symmetric=False),
    "int4_g16": QuantConfig(bits=4, group_size=16), "uint4_g32": QuantConfig(bits=4, symmetric=False),
    "q8_0": QuantConfig.q8_0(), "q4_0": QuantConfig.q4_0(), "q4_1": QuantConfig.q4_1(),
    "int8_tensor_f16": QuantConfig(bits=8, granularity="tensor", scale_dtype="float16"),
}


@pytest.fixture(autouse=True)
def _restore_isa():
    before = qc.get_isa()
    yield
    qc.set_isa(before)


@pytest.mark.parametrize("cfg_name", list(QUANT_CONFIGS))
def test_quantize_codes_identical_across_isas(cfg_name):
    rng = np.random.default_rng(11)
    cfg = QUANT_CONFIGS[cfg_name]
    for shape in AWKWARD_SHAPES:
        for dist in ("normal", "heavy"):
            x = rng.standard_normal(shape) if dist == "normal" else rng.standard_t(2.0, shape)
            x = x.astype(np.float32)
            results = {}
            for isa in ISAS:
                qc.set_isa(isa)
                results[isa] = qc.quantize(x, cfg)
            ref = results["scalar"]
            for isa, qt in results.items():
                assert qt == ref, f"{isa} vs scalar: {cfg_name} {shape} {dist}"


def test_pack_identical_across_isas():
    rng = np.random.default_rng(12)
    for shape in AWKWARD_SHAPES:
        v = rng.integers(0, 16, shape).astype(np.uint8)
        outs = {}
        for isa in ISAS:
            qc.set_isa(isa)
            outs[isa] = (qc.pack_int4(v), qc.unpack_int4(qc.pack_int4(v), shape[-1], signed=True))
        for isa, (p, u) in outs.items():
            assert_bits_equal(p, outs["scalar"][0], f"{isa} packed {shape}")
            assert_bits_equal(u, outs["scalar"][1], f"{isa} unpacked {shape}")


def _exact_weight(rng, n, k, bits):
    """Integer-valued float weights whose quantization has d = 1 per row (or group of 32)."""
    if bits == 8:
        w = rng.integers(-127, 128, (n, k)).astype(np.float32)
        w[:, 0] = 127.0  # amax 127 -> d = 127/127 = 1; codes = values
        if k > 32:  # group 32: every group needs its own 127
            w[:, ::32] = 127.0
    else:
        w = rng.integers(-8, 8, (n, k)).astype(np.float32)
        w[:, ::32] = -8.0  # the signed extreme -8 -> d = -8/-8 = 1; codes = values + 8
    return w


def _exact_activations(rng, m, k):
    x = rng.integers(-127, 128, (m, k)).astype(np.float32)
    x[:, ::32] = -127.0  # every 32-block has |x| max 127 -> da = 1
    return x


CASES = {
    "int8_channel": (QuantConfig.int8(compute="int8"), 8),
    "q8_0": (QuantConfig.q8_0(compute="int8"), 8),
    "int8_g64": (QuantConfig(bits=8, group_size=64, compute="int8"), 8),
    "q4_0": (QuantConfig.q4_0(compute="int8"), 4),
    "int4_g32_f32": (QuantConfig.int4(compute="int8"), 4),
    "int4_g128": (QuantConfig.int4(group_size=128, compute="int8"), 4),
}


@pytest.mark.parametrize("m", [1, 3, 8, 13])
@pytest.mark.parametrize("name", list(CASES))
def test_int8_compute_dot_products_exact_on_every_isa(name, m):
    cfg, bits = CASES[name]
    rng = np.random.default_rng(13 + m)
    for k, n in [(32, 1), (33, 7), (64, 17), (100, 9), (257, 33), (1024, 40)]:
        w = _exact_weight(rng, n, k, bits)
        x = _exact_activations(rng, m, k)
        layer = QuantizedLinear.from_linear(w, None, cfg)
        np.testing.assert_array_equal(layer.dequantized_weight(), w)  # d = 1 really
        want = (x.astype(np.int64) @ w.astype(np.int64).T).astype(np.float32)
        for isa in ISAS:
            qc.set_isa(isa)
            y = layer(x)
            assert_bits_equal(y, want, f"{isa} {name} M={m} K={k} N={n} ({layer.kernel})")
