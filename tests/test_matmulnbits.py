"""QuantizedTensor.to_matmulnbits / from_matmulnbits: ONNX Runtime's MatMulNBits layout.

Three checks: (1) a NumPy reading of the op's definition ((q - zero_point) * scale over
B (N, n_blocks, blob), zero points packed per row, default 2**(bits-1)) gives
back quantcore's dequantized weight bit for bit; (2) export -> import is the
identity; (3) onnxruntime itself, running a one-node model over the exported
arrays, gives the outputs of QuantizedLinear (compute float32) within float
tolerance (skipped without onnx/onnxruntime).
"""

from __future__ import annotations

import numpy as np
import pytest

import quantcore
from quantcore import QuantConfig, QuantizedLinear, QuantizedTensor
from quantcore.matmulnbits import MatMulNBitsWeights

from_matmulnbits = QuantizedTensor.from_matmulnbits

CONFIGS = {
    "int4_g16": QuantConfig.int4(group_size=16, compute="float32"),
    "int4_g32": QuantConfig.int4(group_size=32),
    "int4_g64_asym": QuantConfig.int4(group_size=64, symmetric=False),
    "int4_g128_asym_f16": QuantConfig.int4(group_size=128, symmetric=False, scale_dtype="float16"),
    "int4_g256": QuantConfig.int4(group_size=256),
    "int4_channel": QuantConfig.int4(granularity="channel"),
    "int4_channel_asym": QuantConfig.int4(granularity="channel", symmetric=False),
    "int4_tensor_asym": QuantConfig.int4(granularity="tensor", symmetric=False),
    "int8_channel": QuantConfig.int8(),
    "int8_channel_asym": QuantConfig.int8(symmetric=False),
    "int8_g32": QuantConfig.int8(group_size=32),
    "int8_g64_asym": QuantConfig.int8(group_size=64, symmetric=False),
    "int8_tensor": QuantConfig.int8(granularity="tensor"),
    "q4_0": QuantConfig.q4_0(),
    "q8_0": QuantConfig.q8_0(),
}
# (N, K): K not a multiple of the block, odd N and K, one row, K below the block
SHAPES = [(1, 32), (3, 80), (5, 33), (7, 100), (2, 300), (17, 65), (4, 7)]


def spec_dequantize(w: MatMulNBitsWeights) -> np.ndarray:
    """The op's definition, read straight from ContribOperators.md, in NumPy."""
    n, k, bits, bs = w.N, w.K, w.bits, w.block_size
    nb = -(-k // bs)
    assert w.B.dtype == np.uint8 and w.B.shape == (n, nb, bs * bits // 8)
    assert w.scales.dtype == np.float32 and w.scales.shape == (n, nb)
    b = w.B.reshape(n, -1)
    if bits == 4:
        q = np.empty((n, 2 * b.shape[1]), np.uint8)
        q[:, 0::2], q[:, 1::2] = b & 15, b >> 4
    else:
        q = b
    q = q.reshape(n, nb, bs).astype(np.float32)
    if w.zero_points is None:
        z = np.full((n, nb), 2.0 ** (bits - 1), np.float32)
    else:
        zb = w.zero_points
        assert zb.dtype == np.uint8 and zb.shape == (n, -(-nb * bits // 8))
        if bits == 4:
            zz = np.empty((n, 2 * zb.shape[1]), np.uint8)
            zz[:, 0::2], zz[:, 1::2] = zb & 15, zb >> 4
            z = zz[:, :nb].astype(np.float32)
        else:
            z = zb.astype(np.float32)
    return ((q - z[:, :, None]) * w.scales[:, :, None]).reshape(n, -1)[:, :k]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", CONFIGS)
def test_layout_matches_spec_and_round_trips(name, shape, values):
    cfg = CONFIGS[name]
    if cfg.format is not None and shape[1] % 32:
        shape = (shape[0], 32 * (shape[1] // 32 + 1))
    x = values(shape, dist="heavy")
    qt = quantcore.quantize(x, cfg)
    w = qt.to_matmulnbits()
    assert (w.N, w.K, w.bits) == (shape[0], shape[1], cfg.bits)
    assert w.block_size >= 16 and w.block_size & (w.block_size - 1) == 0
    if cfg.granularity == "group" and cfg.group_size < shape[1]:
        assert w.block_size == cfg.group_size
    assert (w.zero_points is None) == cfg.symmetric
    deq = qt.dequantize()
    np.testing.assert_array_equal(spec_dequantize(w), deq)  # exact: same float32 products
    back = QuantizedTensor.from_matmulnbits(**w.as_dict())
    np.testing.assert_array_equal(back.dequantize(), deq)
    assert back.shape == qt.shape and back.bits == qt.bits
    if cfg.granularity == "group" and cfg.group_size < shape[1]:
        assert back.group_size == cfg.group_size
    # arrays are fresh: exporting never aliases the tensor's storage
    assert not np.shares_memory(w.B, qt.data)


def test_round_trip_keeps_the_format_where_it_can(values):
    for cfg in (QuantConfig.int4(group_size=64), QuantConfig.int4(group_size=32, symmetric=False),
                QuantConfig.int8(group_size=128, symmetric=False)):
        qt = quantcore.quantize(values((6, 256)), cfg)
        back = QuantizedTensor.from_matmulnbits(**qt.to_matmulnbits().as_dict())
        assert back == quantcore.QuantizedTensor.from_arrays(
            qt.data, np.asarray(qt.scales, np.float32), qt.zero_points, qt.shape,
            cfg.replace(scale_dtype="float32"))


def test_int8_code_zero_imports_as_asymmetric():
    """MatMulNBits 8-bit code 0 means -128, outside quantcore's symmetric int8 range:
    the import keeps the values with an asymmetric format (zero point 128)."""
    k, n = 64, 3
    b = np.random.default_rng(1).integers(0, 256, (n, 2, 32)).astype(np.uint8)
    b[1, 0, 5] = 0
    s = np.full((n, 2), 0.5, np.float32)
    qt = from_matmulnbits(b, s, K=k, N=n, bits=8, block_size=32)
    assert not qt.symmetric
    want = (b.reshape(n, k).astype(np.float32) - 128) * 0.5
    np.testing.assert_array_equal(qt.dequantize(), want)
    b[1, 0, 5] = 1
    assert from_matmulnbits(b, s, K=k, N=n, bits=8, block_size=32).symmetric


def test_import_flat_arrays_and_float_zero_points(values):
    qt = quantcore.quantize(values((5, 80)), QuantConfig.int4(group_size=32, symmetric=False))
    w = qt.to_matmulnbits()
    z = qt.zero_points.astype(np.float32).reshape(-1)
    a = from_matmulnbits(w.B.reshape(-1), w.scales.reshape(-1), z, **w.attributes())
    np.testing.assert_array_equal(a.dequantize(), qt.dequantize())
    with pytest.raises(ValueError, match="integers"):
        from_matmulnbits(w.B, w.scales, z + 0.5, **w.attributes())


def test_odd_k_padding_nibble_is_cleared():
    k, n = 33, 2
    b = np.full((n, 2, 16), 0xFF, np.uint8)  # padding nibbles set: the op ignores them
    qt = from_matmulnbits(b, np.ones((n, 2), np.float32), K=k, N=n, bits=4, block_size=32)
    assert np.all(qt.data[:, -1] == 0x0F)
    np.testing.assert_array_equal(qt.dequantize(), np.full((n, k), 7.0, np.float32))


def test_q4_1_does_not_map(values):
    qt = quantcore.quantize(values((2, 64)), QuantConfig.q4_1())
    with pytest.raises(ValueError, match="Q4_1.*does not map"):
        qt.to_matmulnbits()


def test_bad_inputs(values):
    qt = quantcore.quantize(values((3, 64)), QuantConfig.int4(group_size=32))
    w = qt.to_matmulnbits()
    with pytest.raises(ValueError, match="2-D"):
        quantcore.quantize(values((2, 3, 64)), QuantConfig.int4()).to_matmulnbits()
    with pytest.raises(ValueError, match="B must hold"):
        from_matmulnbits(w.B[:, :1], w.scales, K=64, N=3, bits=4, block_size=32)
    with pytest.raises(TypeError, match="B must have dtype uint8"):
        from_matmulnbits(w.B.astype(np.int8), w.scales, K=64, N=3, bits=4, block_size=32)
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        from_matmulnbits(w.B, w.scales, K=64, N=3, bits=3, block_size=32)
    with pytest.raises(ValueError, match="block_size"):
        from_matmulnbits(w.B, w.scales, K=64, N=3, bits=4, block_size=24)
    with pytest.raises(ValueError, match="scales must hold"):
        from_matmulnbits(w.B, w.scales[:, :1], K=64, N=3, bits=4, block_size=32)
    with pytest.raises(TypeError, match="scales must have dtype"):
        from_matmulnbits(w.B, w.scales.astype(np.float64), K=64, N=3, bits=4, block_size=32)
    bad = w.scales.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        from_matmulnbits(w.B, bad, K=64, N=3, bits=4, block_size=32)
    with pytest.raises(ValueError, match="zero_points must hold"):
        from_matmulnbits(w.B, w.scales, np.zeros(5, np.uint8), K=64, N=3, bits=4, block_size=32)
    with pytest.raises(TypeError, match="K must be an int"):
        from_matmulnbits(w.B, w.scales, K=64.0, N=3, bits=4, block_size=32)


# ---- onnxruntime itself ---------------------------------------------------------------
ORT_CASES = [
    ("int4_g32", (13, 80)), ("int4_g16", (5, 47)), ("int4_g64_asym", (9, 100)),
    ("int4_g128_asym_f16", (3, 300)), ("int4_g256", (4, 513)), ("int4_channel_asym", (6, 33)),
    ("int8_channel", (7, 65)), ("int8_channel_asym", (5, 31)), ("int8_g32", (11, 96)),
    ("int8_g64_asym", (3, 130)), ("int8_tensor", (4, 40)), ("q4_0", (8, 64)), ("q8_0", (3, 96)),
]


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    return pytest.importorskip("onnxruntime", reason="onnxruntime is not installed "
                               "(pip install onnxruntime)")


@pytest.mark.parametrize("name,shape", ORT_CASES, ids=[f"{a}-{b[0]}x{b[1]}" for a, b in ORT_CASES])
def test_onnxruntime_matches_quantized_linear(ort, name, shape, values, rng):
    n, k = shape
    cfg = CONFIGS[name].replace(compute="float32")
    qt = quantcore.quantize(values(shape, dist="heavy"), cfg)
    bias = rng.standard_normal(n).astype(np.float32)
    # group 16 has no QuantizedLinear kernel (groups must be >= 32): NumPy only there
    layer = QuantizedLinear(qt, bias) if cfg.group_size != 16 else None
    mw = qt.to_matmulnbits()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(mw.make_model(bias=bias).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    for m in (1, 3, 17):
        x = rng.standard_normal((m, k)).astype(np.float32)
        got = sess.run(None, {"A": x})[0]
        ref = x.astype(np.float64) @ qt.dequantize().astype(np.float64).T + bias
        tol = 8 * k * np.finfo(np.float32).eps * (np.abs(x) @ np.abs(qt.dequantize()).T + 1)
        assert np.all(np.abs(got - ref) <= tol), (name, m, np.max(np.abs(got - ref)))
        if layer is not None:
            want = layer(x)
            assert np.all(np.abs(want - ref) <= tol)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_onnxruntime_model_imports_back(ort, values, rng):
    """A model built elsewhere (here: by make_model) read back through the ONNX
    initializers gives a QuantizedLinear with onnxruntime's outputs."""
    from onnx import numpy_helper
    qt = quantcore.quantize(values((10, 96)), QuantConfig.int4(group_size=32, symmetric=False))
    model = qt.to_matmulnbits().make_model()
    node = model.graph.node[0]
    attrs = {a.name: a.i for a in node.attribute if a.name in ("K", "N", "bits", "block_size")}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    imported = QuantizedTensor.from_matmulnbits(inits["B"], inits["scales"],
                                                inits.get("zero_points"), **attrs,
                                                compute="float32")
    x = rng.standard_normal((4, 96)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(QuantizedLinear(imported)(x), sess.run(None, {"A": x})[0],
                               rtol=1e-5, atol=1e-5)
