"""quantize_model: what is quantized and what passes through, include/exclude/
overrides globs, the metrics it returns (hand-checked), progress, errors."""

import io

import numpy as np
import pytest

import quantcore as qc
from quantcore import QuantConfig, QuantizedTensor, quantize_model


def toy(rng):
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return {
        "embed.weight": f(50, 32),
        "layers.0.attn.q.weight": f(32, 32),
        "layers.0.attn.q.bias": f(32),
        "layers.0.mlp.up.weight": f(64, 33),      # K not a multiple of the group
        "layers.0.norm.weight": f(32),
        "layers.0.conv.weight": f(4, 3, 40),      # N-D: last axis quantized
        "position_ids": np.arange(16, dtype=np.int64).reshape(1, 16),
        "lm_head.weight": f(50, 32),
    }


def test_matrices_quantized_rest_passed_through(rng):
    w = toy(rng)
    before = {k: v.copy() for k, v in w.items()}
    m = quantize_model(w, QuantConfig.int4(group_size=32), progress=False)
    assert list(m) == list(w)  # input order
    assert len(m) == len(w)
    for name, v in w.items():
        assert np.array_equal(v, before[name])  # inputs untouched
        if v.dtype.kind == "f" and v.ndim >= 2:
            assert isinstance(m[name], QuantizedTensor), name
            assert m[name] == qc.quantize(v, QuantConfig.int4(group_size=32))
        else:
            assert m[name] is v, name
    assert set(m.quantized()) == {"embed.weight", "layers.0.attn.q.weight",
                                  "layers.0.mlp.up.weight", "layers.0.conv.weight",
                                  "lm_head.weight"}
    assert "QuantizedModel(8 tensors, 5 quantized" in repr(m)


def test_metrics_by_hand(rng):
    w = {"a": rng.standard_normal((8, 64)).astype(np.float32),
         "b": rng.standard_normal(8).astype(np.float32),
         "c": np.arange(4, dtype=np.int32)}
    cfg = QuantConfig.int4(group_size=32, scale_dtype="float16")  # 4.5 bits
    m = quantize_model(w, cfg, progress=False)
    mm = m.metrics
    assert [n for n, _ in mm] == ["a", "b"]  # integer buffers are not parameters
    assert mm["a"] == m["a"].metrics(w["a"])
    assert mm["b"] == qc.CompressionMetrics(8, 32.0, 32.0, 0.0, 0.0)
    assert mm.total_parameters() == 520
    # bits: 512 * 4.5 + 8 * 32 = 2560 compressed, 520 * 32 = 16640 original
    assert mm.total_compressed_bits() == pytest.approx(2560)
    assert mm.model_compression_ratio() == pytest.approx(16640 / 2560)
    assert mm.average_effective_bits() == pytest.approx(2560 / 520)
    assert mm.mean_quantization_mse() == pytest.approx(512 * m["a"].mse(w["a"]) / 520)
    assert m.nbytes == m["a"].nbytes + w["b"].nbytes + w["c"].nbytes


def test_include_exclude(rng):
    w = toy(rng)
    m = quantize_model(w, exclude=["embed*", "lm_head*"], progress=False)
    assert set(m.quantized()) == {"layers.0.attn.q.weight", "layers.0.mlp.up.weight",
                                  "layers.0.conv.weight"}
    m = quantize_model(w, include="layers.*.weight", exclude="*conv*", progress=False)
    assert set(m.quantized()) == {"layers.0.attn.q.weight", "layers.0.mlp.up.weight"}
    m = quantize_model(w, include=[], progress=False)
    assert m.quantized() == {}
    # case-sensitive, and a bias never matches a matrix rule
    m = quantize_model(w, include="*Q*", progress=False)
    assert m.quantized() == {}
    m = quantize_model(w, include="*.q.*", progress=False)
    assert set(m.quantized()) == {"layers.0.attn.q.weight"}


def test_overrides_first_match_wins(rng):
    w = toy(rng)
    m = quantize_model(w, QuantConfig.q4_0(),
                       overrides={"lm_head*": QuantConfig.int8(), "*head*": QuantConfig.q4_1(),
                                  "embed*": None},
                       progress=False)
    assert m["lm_head.weight"].config == QuantConfig.int8()
    assert m["layers.0.attn.q.weight"].config == QuantConfig.q4_0()
    assert isinstance(m["embed.weight"], np.ndarray)  # None keeps it float
    assert m.metrics["lm_head.weight"].effective_bits_per_param == pytest.approx(8 + 32 / 32)


def test_default_config_is_int4_g32(rng):
    w = {"x": rng.standard_normal((4, 64)).astype(np.float32)}
    assert quantize_model(w, progress=False)["x"].config == QuantConfig.int4(group_size=32)


def test_already_quantized_and_torch(rng):
    a = rng.standard_normal((4, 64)).astype(np.float32)
    qt = qc.quantize(a, QuantConfig.int8())
    m = quantize_model({"q": qt, "a": a}, progress=False)
    assert m["q"] is qt
    assert m.metrics["q"] == qt.metrics()
    torch = pytest.importorskip("torch")
    sd = {"w": torch.from_numpy(a), "bf": torch.from_numpy(a).bfloat16(), "i": torch.arange(3)}
    m = quantize_model(sd, progress=False)
    assert m["w"] == qc.quantize(a, QuantConfig.int4())
    assert isinstance(m["bf"], QuantizedTensor)
    assert isinstance(m["i"], np.ndarray)


def test_progress_bar(rng, monkeypatch):
    auto = pytest.importorskip("tqdm.auto")
    w = {f"l{i}": rng.standard_normal((4, 32)).astype(np.float32) for i in range(3)}
    calls = []
    real = auto.tqdm

    def spy(*args, **kw):
        calls.append(kw)
        kw["file"] = io.StringIO()
        kw["disable"] = False
        return real(*args, **kw)

    monkeypatch.setattr(auto, "tqdm", spy)
    quantize_model(w, progress=True)
    assert len(calls) == 1 and calls[0]["total"] == 3
    quantize_model(w, progress=False)
    assert len(calls) == 1


def test_progress_without_tqdm(rng, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_tqdm(name, *a, **kw):
        if name.startswith("tqdm"):
            raise ImportError("no tqdm")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    m = quantize_model({"x": rng.standard_normal((4, 32)).astype(np.float32)}, progress=True)
    assert isinstance(m["x"], QuantizedTensor)


def test_errors_name_the_tensor(rng):
    w = {"good": rng.standard_normal((4, 32)).astype(np.float32),
         "bad": np.full((4, 32), np.nan, np.float32)}
    with pytest.raises(ValueError, match="'bad'"):
        quantize_model(w, progress=False)
    with pytest.raises(TypeError, match="mapping"):
        quantize_model([("a", w["good"])], progress=False)
    with pytest.raises(TypeError, match="config"):
        quantize_model(w, "int4", progress=False)
    with pytest.raises(TypeError, match="overrides"):
        quantize_model(w, overrides={"a*": "int8"}, progress=False)
    with pytest.raises(TypeError, match="include"):
        quantize_model(w, include=[3], progress=False)
    with pytest.raises(TypeError, match="keys"):
        quantize_model({1: w["good"]}, progress=False)


def test_mapping_protocol(rng):
    m = quantize_model(toy(rng), progress=False)
    assert isinstance(m, __import__("collections.abc").abc.Mapping)
    assert "lm_head.weight" in m and dict(m).keys() == m.keys()
    deq = m.dequantize()
    assert deq["lm_head.weight"].dtype == np.float32
    assert deq["position_ids"] is m["position_ids"]
    with pytest.raises(TypeError):
        m["x"] = 1
