"""CompressionMetrics (its formulas, value by value), QuantizedTensor.metrics
and QuantizedLinear.metrics against a NumPy oracle, ModelCompressionMetrics sums
on hand-computed cases."""

import math
import pickle

import numpy as np
import pytest

import quantcore as qc
from quantcore import CompressionMetrics, ModelCompressionMetrics, QuantConfig

CM = CompressionMetrics


# ---- the constructors and formulas -----------------------------------------------------------

def test_quantized_only_values():
    m = CM.quantized_only(1000, 4, 0.01)
    assert (m.n_parameters, m.original_bits_per_param, m.effective_bits_per_param,
            m.sparsity, m.quantization_mse) == (1000, 32.0, 4.0, 0.0, 0.01)
    assert m.compression_ratio() == 8.0
    assert m.total_original_bits() == 32000
    assert m.total_compressed_bits() == 4000
    assert m.max_abs_error is None and m.snr_db is None


def test_quantized_only_int8():
    m = CM.quantized_only(10, 8, 0.0)
    assert m.compression_ratio() == 4.0
    assert m.total_original_bits() == 320 and m.total_compressed_bits() == 80


def test_pruned_only_values():
    m = CM.pruned_only(1000, 0.5)
    assert (m.original_bits_per_param, m.effective_bits_per_param, m.sparsity,
            m.quantization_mse) == (32.0, 16.0, 0.5, 0.0)
    assert m.compression_ratio() == 2.0
    assert m.total_original_bits() == 32000 and m.total_compressed_bits() == 16000
    assert CM.pruned_only(8, 0.0).effective_bits_per_param == 32.0
    assert CM.pruned_only(8, 0.75).compression_ratio() == 4.0


def test_quantized_and_pruned_values():
    m = CM.quantized_and_pruned(1000, 4, 0.5, 0.02)
    assert (m.original_bits_per_param, m.effective_bits_per_param, m.sparsity,
            m.quantization_mse) == (32.0, 2.0, 0.5, 0.02)
    assert m.compression_ratio() == 16.0
    assert m.total_compressed_bits() == 2000
    m = CM.quantized_and_pruned(100, 8, 0.25, 0.0)
    assert m.effective_bits_per_param == 6.0
    assert m.compression_ratio() == pytest.approx(32 / 6)


def test_fully_pruned_ratio_is_inf():
    assert CM.pruned_only(10, 1.0).compression_ratio() == math.inf
    assert CM.quantized_and_pruned(10, 4, 1.0, 0.0).compression_ratio() == math.inf
    assert CM.pruned_only(10, 1.0).total_compressed_bits() == 0


def test_default_is_all_zeros():
    m = CM()
    assert (m.n_parameters, m.original_bits_per_param, m.effective_bits_per_param,
            m.sparsity, m.quantization_mse) == (0, 0.0, 0.0, 0.0, 0.0)
    assert m.total_original_bits() == 0 and m.total_compressed_bits() == 0
    assert m.compression_ratio() == math.inf  # effective bits are 0
    assert m == CM()


def test_equality_hash_repr_pickle():
    a = CM.quantized_only(1000, 4, 0.01)
    assert a == CM.quantized_only(1000, 4, 0.01)
    assert a != CM.quantized_only(1000, 4, 0.02)
    assert a != CM.quantized_only(1001, 4, 0.01)
    assert hash(a) == hash(CM.quantized_only(1000, 4, 0.01))
    r = repr(a)
    for word in ("CompressionMetrics(", "n_parameters=1000", "effective_bits_per_param=4",
                 "quantization_mse=0.01", "compression_ratio=8"):
        assert word in r, r
    assert pickle.loads(pickle.dumps(a)) == a
    assert CM.from_dict(a.to_dict()) == a
    with pytest.raises(ValueError, match="unknown"):
        CM.from_dict({**a.to_dict(), "bogus": 1})
    with pytest.raises(AttributeError):
        a.sparsity = 0.5  # frozen


@pytest.mark.parametrize("call, word", [
    (lambda: CM.quantized_only(-1, 4, 0.0), "n_parameters"),
    (lambda: CM.quantized_only(10, 0, 0.0), "quant_bits"),
    (lambda: CM.quantized_only(10, -4, 0.0), "quant_bits"),
    (lambda: CM.quantized_only(10, float("nan"), 0.0), "quant_bits"),
    (lambda: CM.quantized_only(10, float("inf"), 0.0), "quant_bits"),
    (lambda: CM.quantized_only(10, 4, -0.1), "quant_mse"),
    (lambda: CM.quantized_only(10, 4, float("nan")), "quant_mse"),
    (lambda: CM.pruned_only(10, 1.5), "sparsity"),
    (lambda: CM.pruned_only(10, -0.1), "sparsity"),
    (lambda: CM.pruned_only(10, float("nan")), "sparsity"),
    (lambda: CM.pruned_only(-3, 0.5), "n_parameters"),
    (lambda: CM.quantized_and_pruned(10, 4, 2.0, 0.0), "sparsity"),
    (lambda: CM.quantized_and_pruned(10, 0, 0.5, 0.0), "quant_bits"),
    (lambda: CM(n_parameters=-1), "n_parameters"),
    (lambda: CM(original_bits_per_param=-32), "original_bits_per_param"),
    (lambda: CM(effective_bits_per_param=float("nan")), "effective_bits_per_param"),
    (lambda: CM(sparsity=1.01), "sparsity"),
    (lambda: CM(quantization_mse=float("inf")), "quantization_mse"),
    (lambda: CM(max_abs_error=-1.0), "max_abs_error"),
    (lambda: CM(snr_db=float("nan")), "snr_db"),
])
def test_out_of_range_raises_value_error(call, word):
    with pytest.raises(ValueError, match=word):
        call()


@pytest.mark.parametrize("call, word", [
    (lambda: CM.quantized_only(10.5, 4, 0.0), "n_parameters"),
    (lambda: CM.quantized_only(True, 4, 0.0), "n_parameters"),
    (lambda: CM.quantized_only(10, "4", 0.0), "quant_bits"),
    (lambda: CM.pruned_only(10, None), "sparsity"),
])
def test_wrong_types_raise_type_error(call, word):
    with pytest.raises(TypeError, match=word):
        call()


# ---- QuantizedTensor.metrics against a NumPy oracle ----------------------------------------------

def _oracle(qt, ref):
    deq = qt.dequantize().astype(np.float64)
    r = ref.astype(np.float64)
    err = deq - r
    mse = float(np.mean(err ** 2))
    snr = 10 * math.log10(float(np.sum(r ** 2)) / float(np.sum(err ** 2)))
    return mse, float(np.abs(err).max()), snr


@pytest.mark.parametrize("config, bits", [
    (QuantConfig.int4(group_size=32, scale_dtype="float16"), 4.5),
    (QuantConfig.int4(group_size=32), 5.0),
    (QuantConfig.int4(group_size=32, symmetric=False, scale_dtype="float16"), 4.75),
    (QuantConfig.q4_0(), 4.5),
    (QuantConfig.q4_1(), 5.0),
    (QuantConfig.q8_0(), 8.5),
    (QuantConfig.int8(), 8 + 32 / 256),
    (QuantConfig.int4(group_size=128), 4.25),
], ids=["int4g32f16", "int4g32", "uint4g32f16", "q4_0", "q4_1", "q8_0", "int8", "int4g128"])
def test_tensor_metrics_values(rng, config, bits):
    w = rng.standard_normal((16, 256)).astype(np.float32)
    qt = qc.quantize(w, config)
    m = qt.metrics(w)
    assert m.n_parameters == w.size
    assert m.original_bits_per_param == 32.0
    assert m.effective_bits_per_param == pytest.approx(bits)
    assert m.effective_bits_per_param == 8 * qt.nbytes / qt.size
    mse, mx, snr = _oracle(qt, w)
    assert m.quantization_mse == pytest.approx(mse, rel=1e-12)
    assert m.quantization_mse == pytest.approx(qt.mse(w), rel=1e-12)
    assert m.max_abs_error == pytest.approx(mx, rel=1e-12)
    assert m.snr_db == pytest.approx(snr, rel=1e-12)
    assert m.sparsity == 0.0
    assert m.compression_ratio() == pytest.approx(32.0 / bits)


@pytest.mark.parametrize("shape", [(1, 1), (3, 33), (2, 65), (5, 40), (2, 3, 31), (7,)])
def test_tensor_metrics_awkward_shapes(rng, shape):
    w = rng.standard_normal(shape).astype(np.float32)
    qt = qc.quantize(w, QuantConfig.int4(group_size=32))
    m = qt.metrics(w)
    mse, mx, _ = _oracle(qt, w) if np.any(qt.dequantize() != w) else (0.0, 0.0, None)
    assert m.quantization_mse == pytest.approx(mse, rel=1e-12, abs=1e-300)
    assert m.max_abs_error == pytest.approx(mx, rel=1e-12, abs=1e-300)
    assert m.effective_bits_per_param == 8 * qt.nbytes / w.size


def test_tensor_metrics_original_dtype(rng):
    w = rng.standard_normal((4, 64))
    assert qc.quantize(w.astype(np.float16), QuantConfig.int8()).metrics(w.astype(np.float16)) \
        .original_bits_per_param == 16.0
    assert qc.quantize(w, QuantConfig.int8()).metrics(w).original_bits_per_param == 64.0


def test_tensor_metrics_sparsity_of_pruned(rng):
    w = rng.standard_normal((8, 64)).astype(np.float32)
    p, mask = qc.prune_magnitude(w, 0.5)
    qt = qc.quantize(p, QuantConfig.int4(group_size=32, scale_dtype="float16"))
    m = qt.metrics(p)
    assert m.sparsity == 0.5
    # storage is dense: pruning does not lower the real bits per parameter
    assert m.effective_bits_per_param == 4.5
    # the pruned weights stay exact zeros through symmetric quantization
    assert np.all(qt.dequantize()[~mask] == 0)
    ideal = CM.quantized_and_pruned(m.n_parameters, 4.5, m.sparsity, m.quantization_mse)
    assert ideal.effective_bits_per_param == 2.25


def test_tensor_metrics_without_reference(rng):
    w = rng.standard_normal((4, 64)).astype(np.float32)
    w[0, :10] = 0
    qt = qc.quantize(w, QuantConfig.int8())
    m = qt.metrics()
    assert m.quantization_mse == 0.0
    assert m.max_abs_error is None and m.snr_db is None
    assert m.sparsity == np.count_nonzero(qt.dequantize() == 0) / w.size
    assert m.effective_bits_per_param == qt.metrics(w).effective_bits_per_param


def test_tensor_metrics_exact_and_zero():
    w = np.array([[1.0, -1.0, 0.0, 0.5]], np.float32)
    qt = qc.quantize(w, QuantConfig.int8())
    # 127 * 0.5 is not an integer, so 0.5 is not exact; 1 and -1 and 0 are
    m = qt.metrics(w)
    assert m.sparsity == 0.25
    z = np.zeros((2, 8), np.float32)
    m = qc.quantize(z, QuantConfig.int8()).metrics(z)
    assert m.quantization_mse == 0.0 and m.snr_db == math.inf and m.sparsity == 1.0


def test_tensor_metrics_bad_reference(rng):
    w = rng.standard_normal((4, 64)).astype(np.float32)
    qt = qc.quantize(w, QuantConfig.int8())
    with pytest.raises(ValueError, match="reference"):
        qt.metrics(w[:, :32])
    bad = w.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="reference"):
        qt.metrics(bad)
    with pytest.raises(TypeError, match="reference"):
        qt.metrics(np.zeros((4, 64), np.int32))
    before = w.copy()
    qt.metrics(w)
    assert np.array_equal(w, before)


def test_linear_metrics(rng):
    w = rng.standard_normal((24, 96)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    layer = qc.QuantizedLinear.from_linear(w, b, QuantConfig.q4_0())
    m = layer.metrics(w)
    assert m == layer.weight_quantized.metrics(w)
    assert m.n_parameters == w.size  # the bias is not counted
    assert m.effective_bits_per_param == 4.5
    assert layer.metrics() == layer.weight_quantized.metrics()


def test_linear_metrics_torch(rng):
    torch = pytest.importorskip("torch")
    lin = torch.nn.Linear(64, 16)
    layer = qc.QuantizedLinear.from_linear(lin, config=QuantConfig.int8())
    w = lin.weight.detach().numpy()
    assert layer.metrics(lin.weight) == layer.metrics(w)


# ---- ModelCompressionMetrics ----------------------------------------------------------------------

def _hand_model():
    mm = ModelCompressionMetrics()
    mm.add_layer("a", CM.quantized_only(1000, 4, 0.01))       # 32000 -> 4000 bits
    mm.add_layer("b", CM.quantized_only(3000, 8, 0.002))      # 96000 -> 24000 bits
    mm.add_layer("c", CM.pruned_only(1000, 0.5))              # 32000 -> 16000 bits
    return mm


def test_model_sums_by_hand():
    mm = _hand_model()
    assert mm.total_parameters() == 5000
    assert mm.total_original_bits() == 160000
    assert mm.total_compressed_bits() == 44000
    assert mm.model_compression_ratio() == pytest.approx(160000 / 44000)
    # parameter-weighted: (1000*0.01 + 3000*0.002 + 1000*0) / 5000
    assert mm.mean_quantization_mse() == pytest.approx(0.016 / 5)
    # (1000*4 + 3000*8 + 1000*16) / 5000
    assert mm.average_effective_bits() == pytest.approx(44000 / 5000)
    assert mm.average_original_bits() == 32.0


def test_model_iteration_len_access():
    mm = _hand_model()
    assert len(mm) == 3
    assert [n for n, _ in mm] == ["a", "b", "c"]
    assert [m for _, m in mm][1] == CM.quantized_only(3000, 8, 0.002)
    assert "b" in mm and "z" not in mm
    assert mm["c"].sparsity == 0.5
    with pytest.raises(KeyError, match="z"):
        mm["z"]
    assert mm.names() == ["a", "b", "c"]


def test_model_empty():
    mm = ModelCompressionMetrics()
    assert len(mm) == 0 and list(mm) == []
    assert mm.total_parameters() == 0
    assert mm.mean_quantization_mse() == 0.0 and mm.average_effective_bits() == 0.0
    assert mm.model_compression_ratio() == math.inf
    assert "total" in str(mm) and "total" in mm.to_markdown()


def test_model_duplicates_and_bad_input():
    mm = _hand_model()
    with pytest.raises(ValueError, match="'a'"):
        mm.add_layer("a", CM())
    with pytest.raises(ValueError, match="'a'"):
        mm.add_quantized_layer("a", np.ones((2, 32), np.float32), 4)
    with pytest.raises(TypeError, match="metrics"):
        mm.add_layer("d", {"n_parameters": 3})
    with pytest.raises(TypeError, match="name"):
        mm.add_layer(3, CM())
    with pytest.raises(ValueError, match="name"):
        mm.add_layer("", CM())
    assert len(mm) == 3


def test_add_quantized_layer_measures_mse(rng):
    w = rng.standard_normal((16, 64)).astype(np.float32)
    mm = ModelCompressionMetrics()
    m4 = mm.add_quantized_layer("w4", w, 4)
    m8 = mm.add_quantized_layer("w8", w, 8)
    assert m4 == CM.quantized_only(w.size, 4, qc.quantize(w, QuantConfig.int4()).mse(w))
    assert m8 == CM.quantized_only(w.size, 8, qc.quantize(w, QuantConfig.int8()).mse(w))
    assert 0 < m8.quantization_mse < m4.quantization_mse
    m = mm.add_quantized_layer("given", w, 4, 0.125)
    assert m.quantization_mse == 0.125
    q = mm.add_quantized_layer("cfg", w, 4, config=QuantConfig.q4_1())
    assert q.quantization_mse == pytest.approx(qc.quantize(w, QuantConfig.q4_1()).mse(w))
    assert mm.add_quantized_layer("three", w, 3, 0.5).effective_bits_per_param == 3
    with pytest.raises(ValueError, match="quant_bits"):
        mm.add_quantized_layer("three_nomse", w, 3)
    assert [n for n, _ in mm] == ["w4", "w8", "given", "cfg", "three"]


def test_add_quantized_layer_rejects_empty_and_bad():
    mm = ModelCompressionMetrics()
    with pytest.raises(ValueError, match="empty"):
        mm.add_quantized_layer("e", np.zeros((0, 4), np.float32), 4)
    with pytest.raises(ValueError, match="empty"):
        mm.add_quantized_layer("e", [], 4)
    with pytest.raises(ValueError, match="quant_bits"):
        mm.add_quantized_layer("e", np.ones(4, np.float32), 0)
    with pytest.raises(ValueError, match="NaN"):
        mm.add_quantized_layer("e", np.array([1.0, np.nan], np.float32), 8)
    assert len(mm) == 0


def test_model_to_dict_and_tables():
    mm = _hand_model()
    d = mm.to_dict()
    assert list(d["layers"]) == ["a", "b", "c"]
    assert d["layers"]["a"] == CM.quantized_only(1000, 4, 0.01).to_dict()
    t = d["totals"]
    assert t["total_parameters"] == 5000
    assert t["model_compression_ratio"] == pytest.approx(160000 / 44000)
    assert t["average_effective_bits"] == pytest.approx(8.8)
    assert ModelCompressionMetrics.from_dict(d) == mm
    import json
    json.dumps(d)  # JSON-friendly
    s = str(mm)
    lines = s.splitlines()
    assert lines[0].split()[:3] == ["layer", "params", "orig"]
    assert any(l.startswith("a ") for l in lines) and lines[-1].startswith("total")
    assert "5,000" in lines[-1] and "3.64" in lines[-1]
    md = mm.to_markdown().splitlines()
    assert md[0].startswith("| layer |") and md[1].startswith("|---|")
    assert len(md) == 2 + 3 + 1 and md[-1].startswith("| **total** | 5,000 |")
    assert all(l.count("|") == md[0].count("|") for l in md)
    assert "ModelCompressionMetrics(layers=3" in repr(mm)
