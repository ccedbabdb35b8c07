"""llama.cpp's K-quant recipes (q4_k_m & co.), target_bits and `quantcore quantize`
with a GGUF model in and out: every key and non-weight tensor kept, the recipe's
types, values close to the originals, the imatrix used by name."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import quantcore
from quantcore import QuantConfig
from quantcore import model as M
from quantcore.calibrate import LayerStats, write_imatrix
from test_cli import assert_one_line_error, qc

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed")
from gguf import GGMLQuantizationType as T, GGUFReader, GGUFValueType as VT  # noqa: E402

N_LAYER, EMBD, FFN, KV, VOCAB = 4, 256, 512, 128, 320


def _weights(seed=0):
    """name -> (float32 array, GGML type to store it in), in llama.cpp's file order."""
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.05):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    out = {"token_embd.weight": (w(VOCAB, EMBD), T.F16),
           "rope_freqs.weight": (np.linspace(1, 2, 32, dtype=np.float32), T.F32)}
    for i in range(N_LAYER):
        b = f"blk.{i}."
        out[b + "attn_norm.weight"] = (1 + w(EMBD), T.F32)
        out[b + "attn_q.weight"] = (w(EMBD, EMBD), T.BF16 if i == 1 else T.F16)
        out[b + "attn_k.weight"] = (w(KV, EMBD), T.F16)
        out[b + "attn_v.weight"] = (w(KV, EMBD), T.F16)
        out[b + "attn_output.weight"] = (w(EMBD, EMBD), T.F16)
        out[b + "ffn_norm.weight"] = (1 + w(EMBD), T.F32)
        out[b + "ffn_gate.weight"] = (w(FFN, EMBD), T.F16)
        out[b + "ffn_up.weight"] = (w(FFN, EMBD), T.F16)
        # heavy tails in one layer: a tensor that more bits help more
        down = w(EMBD, FFN) if i != 2 else (rng.standard_t(2, (EMBD, FFN)) * 0.02).astype(np.float32)
        out[b + "ffn_down.weight"] = (down, T.F16)
    out["blk.0.adapter_a.weight"] = (w(64, 96), T.F16)    # rows of 96: no K-quant fits
    out["blk.0.adapter_b.weight"] = (w(16, 100), T.F16)   # rows of 100: no block format fits
    out["output_norm.weight"] = (1 + w(EMBD), T.F32)
    out["output.weight"] = (w(VOCAB, EMBD), T.F16)
    out["blk.0.token_ids"] = (np.arange(12, dtype=np.int32).reshape(3, 4), T.I32)
    return out


def _stored(a, t):
    """The values as the file holds them (F16 / BF16 rounding), float32."""
    if t == T.F16:
        return a.astype(np.float16).astype(np.float32)
    if t == T.BF16:
        return ((a.view(np.uint32) >> 16).astype(np.uint32) << 16).view(np.float32)
    return a


METADATA = [
    ("general.name", "tiny llama", VT.STRING),
    ("general.file_type", 1, VT.UINT32),
    ("general.quantization_version", 2, VT.UINT32),
    ("llama.block_count", N_LAYER, VT.UINT32),
    ("llama.context_length", 2048, VT.UINT32),
    ("llama.embedding_length", EMBD, VT.UINT32),
    ("llama.rope.freq_base", 10000.0, VT.FLOAT32),
    ("llama.attention.layer_norm_rms_epsilon", 1e-5, VT.FLOAT32),
    ("test.u8", 200, VT.UINT8), ("test.i16", -3, VT.INT16), ("test.u64", 2**40, VT.UINT64),
    ("test.i64", -2**40, VT.INT64), ("test.f64", 0.1, VT.FLOAT64), ("test.flag", True, VT.BOOL),
    ("tokenizer.ggml.model", "llama", VT.STRING),
    ("tokenizer.ggml.tokens", [f"tok{i}" for i in range(VOCAB)], VT.ARRAY, VT.STRING),
    ("tokenizer.ggml.scores", [float(-i) for i in range(VOCAB)], VT.ARRAY, VT.FLOAT32),
    ("tokenizer.ggml.token_type", [1] * VOCAB, VT.ARRAY, VT.INT32),
    ("test.u16s", [1, 2, 65535], VT.ARRAY, VT.UINT16),
]


def _model_gguf(path, weights=None):
    weights = weights or _weights()
    w = gguf.GGUFWriter(str(path), "llama")
    for entry in METADATA:
        w.add_key_value(entry[0], entry[1], entry[2], sub_type=entry[3] if len(entry) > 3 else None)
    for name, (a, t) in weights.items():
        if t == T.F16:
            w.add_tensor(name, a.astype(np.float16))
        elif t == T.BF16:
            bf = (a.view(np.uint32) >> 16).astype(np.uint16)
            w.add_tensor(name, bf.view(np.uint8), raw_shape=a.shape[:-1] + (2 * a.shape[-1],),
                         raw_dtype=T.BF16)
        else:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return weights


def _fields(reader):
    out = {}
    for k, f in reader.fields.items():
        if not k.startswith("GGUF."):
            out[k] = (f.types, f.contents())
    return out


def _tensors(reader):
    return {t.name: t for t in reader.tensors}


EXPECTED_Q4_K_M = {  # 4 layers: use_more_bits picks layers 2 and 3
    "token_embd.weight": T.Q4_K, "output.weight": T.Q6_K,
    "blk.0.attn_v.weight": T.Q4_K, "blk.1.attn_v.weight": T.Q4_K,
    "blk.2.attn_v.weight": T.Q6_K, "blk.3.attn_v.weight": T.Q6_K,
    "blk.0.ffn_down.weight": T.Q4_K, "blk.2.ffn_down.weight": T.Q6_K,
    "blk.3.ffn_down.weight": T.Q6_K, "blk.1.attn_q.weight": T.Q4_K,
    "blk.3.ffn_up.weight": T.Q4_K, "blk.0.attn_output.weight": T.Q4_K,
    "blk.0.adapter_a.weight": T.Q8_0, "blk.0.adapter_b.weight": T.F16,
}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("kq")
    src = d / "model-f16.gguf"
    weights = _model_gguf(src)
    return src, weights


def test_cli_q4_k_m_end_to_end(model_file, tmp_path):
    src, weights = model_file
    out = tmp_path / "model-q4_k_m.gguf"
    p = qc("quantize", str(src), "-o", str(out), "--recipe", "q4_k_m", "--no-progress")
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert "format" in p.stdout.splitlines()[0]
    row = {l.split()[0]: l.split() for l in p.stdout.splitlines()[2:] if l and l[0] != "-"}
    assert row["output.weight"][1] == "q6_k" and row["blk.2.attn_v.weight"][1] == "q6_k"
    assert row["blk.0.adapter_a.weight"][1] == "q8_0"
    assert f"wrote {out}" in p.stdout

    r_in, r_out = GGUFReader(str(src)), GGUFReader(str(out))
    f_in, f_out = _fields(r_in), _fields(r_out)
    changed = {"general.file_type"}
    assert set(f_out) == set(f_in)
    for k in f_in:
        if k not in changed:
            assert f_out[k][0] == f_in[k][0], k          # the types
            assert f_out[k][1] == f_in[k][1], k          # the values
    assert f_out["general.file_type"] == ([VT.UINT32], 15)  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    # the keys keep their order (the two the writer puts first aside)
    first = ["general.architecture", "general.quantization_version"]
    assert [k for k in f_out if k not in first] == [k for k in f_in if k not in first]

    t_in, t_out = _tensors(r_in), _tensors(r_out)
    assert list(t_out) == list(t_in)
    plan = M.recipe_formats({n: a.shape for n, (a, _) in weights.items()}, "q4_k_m")
    for name, (a, t) in weights.items():
        ti, to = t_in[name], t_out[name]
        assert list(to.shape) == list(ti.shape), name
        if plan[name] is None:  # norms, 1-D and integer tensors: byte for byte
            assert to.tensor_type == ti.tensor_type, name
            assert bytes(np.asarray(to.data).view(np.uint8)) == \
                bytes(np.asarray(ti.data).view(np.uint8)), name
            continue
        assert to.tensor_type == T[plan[name].upper()], name
        if name in EXPECTED_Q4_K_M:
            assert to.tensor_type == EXPECTED_Q4_K_M[name], name
        back = gguf.quants.dequantize(np.asarray(to.data), to.tensor_type).reshape(a.shape)
        ref = _stored(a, t)
        rel = np.linalg.norm(back - ref) / np.linalg.norm(ref)
        assert rel < {T.Q4_K: 0.12, T.Q6_K: 0.04, T.Q8_0: 0.01, T.F16: 1e-3}[to.tensor_type], name
        if to.tensor_type in (T.Q4_K, T.Q6_K):  # ggml's bytes for the stored values
            qt = quantcore.quantize(ref, getattr(QuantConfig, plan[name])())
            assert bytes(np.asarray(to.data)) == bytes(qt.data), name
    # quantcore reads the K-quant tensors back packed
    back = quantcore.gguf.load(out, names=["blk.0.attn_q.weight", "output.weight"])
    assert back["blk.0.attn_q.weight"].config.format == "q4_k"
    assert back["output.weight"].config.format == "q6_k"


def test_custom_alignment_is_kept(tmp_path):
    rng = np.random.default_rng(4)
    src = tmp_path / "a64.gguf"
    w = gguf.GGUFWriter(str(src), "llama")
    w.add_custom_alignment(64)
    w.add_tensor("blk.0.attn_norm.weight", rng.standard_normal(7).astype(np.float32))
    w.add_tensor("blk.0.ffn_up.weight", rng.standard_normal((3, 256)).astype(np.float16))
    w.add_tensor("output_norm.weight", rng.standard_normal(5).astype(np.float32))
    for step in (w.write_header_to_file, w.write_kv_data_to_file, w.write_tensors_to_file,
                 w.close):
        step()
    out = tmp_path / "o.gguf"
    M.quantize_gguf(src, out, recipe="q6_k", progress=False)
    a, b = GGUFReader(str(src)), GGUFReader(str(out))
    assert b.fields["general.alignment"].contents() == 64 and b.alignment == 64
    tb = {t.name: t for t in b.tensors}
    assert all(t.data_offset % 64 == 0 for t in b.tensors)
    for t in a.tensors:
        if t.name.endswith("norm.weight"):
            assert bytes(np.asarray(t.data).view(np.uint8)) == \
                bytes(np.asarray(tb[t.name].data).view(np.uint8))
    assert tb["blk.0.ffn_up.weight"].tensor_type == T.Q6_K


def test_recipe_types_per_recipe(model_file, tmp_path):
    src, weights = model_file
    shapes = {n: a.shape for n, (a, _) in weights.items()}
    out = tmp_path / "q6.gguf"
    m = M.quantize_gguf(src, out, recipe="q6_k", progress=False)
    r = GGUFReader(str(out))
    types = {t.name: t.tensor_type for t in r.tensors}
    for name, fmt in M.recipe_formats(shapes, "q6_k").items():
        if fmt is not None:
            assert types[name] == T[fmt.upper()]
            assert m.format_of(name) == fmt
    assert types["blk.0.ffn_up.weight"] == T.Q6_K and types["blk.0.adapter_a.weight"] == T.Q8_0
    assert r.fields["general.file_type"].contents() == 18


def _layers(n, recipe, kind):
    shapes = {}
    for i in range(n):
        shapes[f"blk.{i}.attn_norm.weight"] = (256,)
        shapes[f"blk.{i}.attn_v.weight"] = (256, 256)
        shapes[f"blk.{i}.ffn_down.weight"] = (256, 512)
    plan = M.recipe_formats(shapes, recipe)
    return [i for i in range(n) if plan[f"blk.{i}.{kind}.weight"] != M._RECIPE_BASE[recipe]]


def test_more_bits_layers_32_and_30():
    # llama.cpp's use_more_bits: the first and last eighth, and every third in between
    more32 = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    more30 = [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
    for recipe in ("q4_k_m", "q5_k_m"):
        for kind in ("attn_v", "ffn_down"):
            assert _layers(32, recipe, kind) == more32
            assert _layers(30, recipe, kind) == more30
    assert _layers(32, "q4_k_s", "attn_v") == [0, 1, 2, 3]
    assert _layers(32, "q4_k_s", "ffn_down") == [0, 1, 2, 3]
    assert _layers(30, "q4_k_s", "ffn_down") == [0, 1, 2]
    assert _layers(32, "q5_k_s", "attn_v") == [] == _layers(32, "q6_k", "ffn_down")
    plan = M.recipe_formats({"blk.0.attn_v.weight": (256, 256)}, "q4_k_m")
    assert plan == {"blk.0.attn_v.weight": "q6_k"}  # one layer: the first eighth is empty,
    # but it is also the last


def test_recipe_output_embedding_and_fallbacks():
    shapes = {"token_embd.weight": (100, 256), "blk.0.attn_q.weight": (256, 256),
              "blk.0.attn_norm.weight": (256,), "blk.0.ffn_gate_inp.weight": (8, 256),
              "output.weight": (100, 256)}
    p = M.recipe_formats(shapes, "q4_k_m")
    assert p == {"token_embd.weight": "q4_k", "blk.0.attn_q.weight": "q4_k",
                 "blk.0.attn_norm.weight": None, "blk.0.ffn_gate_inp.weight": None,
                 "output.weight": "q6_k"}
    # tied embeddings: token_embd is the output and gets its type
    del shapes["output.weight"]
    assert M.recipe_formats(shapes, "q5_k_s")["token_embd.weight"] == "q6_k"
    # rows not a multiple of 256: Q8_0 (llama.cpp: Q5_0 / Q5_1 / Q8_0), F16 below 32
    p = M.recipe_formats({"output.weight": (10, 96), "blk.0.ffn_up.weight": (10, 160),
                          "blk.0.ffn_down.weight": (10, 50)}, "q5_k_m")
    assert p == {"output.weight": "q8_0", "blk.0.ffn_up.weight": "q8_0",
                 "blk.0.ffn_down.weight": "f16"}
    assert M.recipe_formats({"blk.0.attn_qkv.weight": (768, 256)}, "q4_k_m") == \
        {"blk.0.attn_qkv.weight": "q5_k"}


def test_quantize_model_recipe_matches_the_plan():
    weights = {n: a for n, (a, _) in _weights(1).items() if n.startswith(("blk.3", "output"))}
    qm = quantcore.quantize_model(weights, recipe="q4_k_m", progress=False)
    plan = M.recipe_formats({n: a.shape for n, a in weights.items()}, "q4_k_m")
    for name, fmt in plan.items():
        if fmt is None:
            assert qm[name] is weights[name] or np.array_equal(qm[name], weights[name])
        else:
            assert qm[name].config.format == fmt and qm.metrics.format_of(name) == fmt
    assert "format" in str(qm.metrics).splitlines()[0]
    assert qm.metrics.to_dict()["formats"]["output.weight"] == "q6_k"
    again = M.ModelCompressionMetrics.from_dict(qm.metrics.to_dict())
    assert again == qm.metrics


def _errors(weights, formats):
    """name -> (n, bits, relative error) of `formats` (one per tensor)."""
    out = {}
    for name, fmt in formats.items():
        if fmt is None:
            continue
        a = weights[name]
        if fmt == "f16":
            back = a.astype(np.float16).astype(np.float32)
            bits = 16.0
        else:
            qt = quantcore.quantize(a, getattr(QuantConfig, fmt)())
            back, bits = qt.dequantize(), qt.effective_bits
        out[name] = (a.size, bits, float(np.sum((back.astype(np.float64) - a) ** 2) /
                                         np.sum(a.astype(np.float64) ** 2)))
    return out


def test_target_bits_lands_and_beats_uniform():
    # one large tensor and small heavy-tailed ones: bits are worth more in some
    rng = np.random.default_rng(2)
    weights = {"blk.0.ffn_up.weight": rng.standard_normal((1024, 256)).astype(np.float32),
               "blk.0.ffn_down.weight": rng.laplace(size=(256, 512)).astype(np.float32)}
    for i in range(8):
        weights[f"blk.{i}.attn_k.weight"] = rng.standard_t(3, (16, 256)).astype(np.float32)
    qm = quantcore.quantize_model(weights, target_bits=5.5, progress=False)
    chosen = {n: qm.metrics.format_of(n) for n in weights}
    err = _errors(weights, chosen)
    n = sum(v[0] for v in err.values())
    avg = sum(v[0] * v[1] for v in err.values()) / n
    assert 5.5 - 0.35 <= avg <= 5.5 + 1e-9
    assert qm.metrics.average_effective_bits() == pytest.approx(avg)
    uniform = _errors(weights, {k: "q5_k" for k in weights})
    assert sum(v[0] * v[1] for v in uniform.values()) / n == pytest.approx(5.5)
    assert sum(v[2] for v in err.values()) < 0.5 * sum(v[2] for v in uniform.values())
    assert len(set(chosen.values())) > 1
    # the table shows each tensor's choice
    rows = {l.split()[0]: l.split()[1] for l in str(qm.metrics).splitlines()[2:-2]}
    assert rows == chosen
    # the extremes: everything smallest, everything Q8_0
    low = quantcore.quantize_model(weights, target_bits=4.5, progress=False)
    assert {low.metrics.format_of(k) for k in weights} == {"q4_k"}
    high = quantcore.quantize_model(weights, target_bits=8.5, progress=False)
    assert {high.metrics.format_of(k) for k in weights} == {"q8_0"}


def test_choose_formats_is_a_good_knapsack():
    rng = np.random.default_rng(5)
    errors = {}
    for i in range(12):
        e = np.sort(rng.uniform(1e-4, 1e-2, 4))[::-1] * rng.uniform(0.1, 10)
        errors[f"t{i}"] = (int(rng.integers(1, 50)) * 256,
                           dict(zip(M.TARGET_FORMATS, zip((4.5, 5.5, 6.5625, 8.5), e))))
    total_n = sum(n for n, _ in errors.values())
    for target in (4.6, 5.0, 5.5, 6.0, 7.3):
        pick = M.choose_formats(errors, target)
        bits = sum(errors[k][0] * errors[k][1][f][0] for k, f in pick.items())
        assert bits <= target * total_n + 1e-6
        err = sum(errors[k][1][f][1] for k, f in pick.items())
        for f in M.TARGET_FORMATS:  # never worse than a uniform assignment that fits
            ub = sum(n * per[f][0] for n, per in errors.values())
            if ub <= target * total_n:
                assert err <= sum(per[f][1] for _, per in errors.values()) + 1e-15
    with pytest.raises(ValueError, match="target_bits=4.0 is below"):
        M.choose_formats(errors, 4.0)


def test_imatrix_changes_the_result_and_matches_importance(model_file, tmp_path):
    src, weights = model_file
    rng = np.random.default_rng(7)
    stats = {}
    for name in ("blk.0.attn_q.weight", "blk.1.ffn_down.weight", "blk.2.attn_v.weight"):
        k = weights[name][0].shape[1]
        st = LayerStats(k, hessian=False)
        st.update(rng.standard_normal((64, k)).astype(np.float32) * rng.uniform(0.1, 3, k))
        stats[name] = st
    outs = {}
    for kind in ("gguf", "dat"):
        ipath = tmp_path / f"imatrix.{kind}"
        write_imatrix(ipath, stats, format=kind)
        out = tmp_path / f"with-{kind}.gguf"
        p = qc("quantize", str(src), "-o", str(out), "--recipe", "q4_k_m", "--imatrix",
               str(ipath), "--no-progress")
        assert p.returncode == 0, p.stderr
        warn = [l for l in p.stderr.splitlines() if "warning" in l]
        assert len(warn) == 1 and "no importance for" in warn[0] and str(ipath) in warn[0]
        outs[kind] = {t.name: t for t in GGUFReader(str(out)).tensors}
        f = GGUFReader(str(out)).fields
        assert f["quantize.imatrix.file"].contents() == str(ipath)
        assert f["quantize.imatrix.entries_count"].contents() == 3
    plain = tmp_path / "plain.gguf"
    M.quantize_gguf(src, plain, recipe="q4_k_m", progress=False)
    t_plain = {t.name: t for t in GGUFReader(str(plain)).tensors}
    for name in stats:
        a, t = weights[name]
        fmt = M.recipe_formats({n: w.shape for n, (w, _) in weights.items()}, "q4_k_m")[name]
        ref = quantcore.quantize(_stored(a, t), getattr(QuantConfig, fmt)(),
                                 importance=stats[name].importance.astype(np.float32))
        for kind in ("gguf", "dat"):
            assert bytes(np.asarray(outs[kind][name].data)) == bytes(ref.data), (kind, name)
        assert bytes(np.asarray(t_plain[name].data)) != bytes(ref.data), name
    # tensors without an entry are as without an imatrix
    name = "blk.3.ffn_up.weight"
    assert bytes(np.asarray(outs["gguf"][name].data)) == bytes(np.asarray(t_plain[name].data))


def test_target_bits_cli_and_file_type(model_file, tmp_path):
    src, _ = model_file
    out = tmp_path / "tb.gguf"
    p = qc("quantize", str(src), "-o", str(out), "--target-bits", "5.0", "--no-progress")
    assert p.returncode == 0, p.stderr
    r = GGUFReader(str(out))
    types = {t.name: t.tensor_type for t in r.tensors}
    quant = [t for t in r.tensors if M.quantizable(t.name, tuple(reversed(t.shape.tolist())))]
    bits = sum(t.n_bytes * 8 for t in quant) / sum(t.n_elements for t in quant)
    assert 4.5 <= bits <= 5.0 + 1e-9
    assert types["blk.0.adapter_b.weight"] == T.F16 and types["blk.0.attn_norm.weight"] == T.F32
    assert r.fields["general.file_type"].contents() in (2, 3, 7, 15, 17, 18)


def test_requantize_is_refused_unless_allowed(model_file, tmp_path):
    src, _ = model_file
    q4 = tmp_path / "q4.gguf"
    M.quantize_gguf(src, q4, recipe="q4_k_s", progress=False)
    out = tmp_path / "q5.gguf"
    assert_one_line_error(qc("quantize", str(q4), "-o", str(out), "--recipe", "q5_k_m",
                             "--no-progress"), "already Q", "--allow-requantize")
    assert not out.exists()
    # the same recipe again: every weight is already in its type and is copied
    M.quantize_gguf(q4, out, recipe="q4_k_s", progress=False)
    a, b = GGUFReader(str(q4)), GGUFReader(str(out))
    for ta, tb in zip(a.tensors, b.tensors):
        assert ta.tensor_type == tb.tensor_type
        assert bytes(np.asarray(ta.data).view(np.uint8)) == bytes(np.asarray(tb.data).view(np.uint8))
    p = qc("quantize", str(q4), "-o", str(out), "--recipe", "q6_k", "--allow-requantize",
           "--no-progress")
    assert p.returncode == 0, p.stderr
    assert {t.tensor_type for t in GGUFReader(str(out)).tensors if t.name == "blk.0.attn_q.weight"} \
        == {T.Q6_K}


def test_bad_inputs(model_file, tmp_path):
    src, _ = model_file
    o = str(tmp_path / "o.gguf")
    bad = tmp_path / "bad.imatrix"
    bad.write_bytes(b"not an imatrix at all")
    for args, words in [
        (["--recipe", "q3_k_m"], ["--recipe", "q4_k_m", "'q3_k_m'"]),
        (["--target-bits", "3"], ["--target-bits", "[4.5, 8.5]", "3"]),
        (["--target-bits", "9.5"], ["--target-bits", "9.5"]),
        (["--target-bits", "lots"], ["--target-bits", "lots"]),
        (["--recipe", "q4_k_m", "--target-bits", "5"], ["not both"]),
        ([], ["GGUF file", "--recipe"]),
        (["--recipe", "q4_k_m", "--bits", "4"], ["drop --bits"]),
        (["--recipe", "q4_k_m", "--imatrix", str(tmp_path / "none.dat")], ["none.dat"]),
        (["--recipe", "q4_k_m", "--imatrix", str(bad)], [str(bad)]),
    ]:
        assert_one_line_error(qc("quantize", str(src), "-o", o, "--no-progress", *args), *words)
    assert not (tmp_path / "o.gguf").exists()
    # an imatrix whose vector does not fit its tensor
    ipath = tmp_path / "wrong.gguf"
    st = LayerStats(100, hessian=False)
    st.update(np.ones((2, 100), np.float32))
    write_imatrix(ipath, {"blk.0.attn_q.weight": st})
    assert_one_line_error(qc("quantize", str(src), "-o", o, "--recipe", "q4_k_m", "--imatrix",
                             str(ipath), "--no-progress"), str(ipath), "blk.0.attn_q.weight", "100")
    # a truncated model file
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(src.read_bytes()[:5000])
    assert_one_line_error(qc("quantize", str(cut), "-o", o, "--recipe", "q4_k_m"), str(cut))
    # the API
    with pytest.raises(ValueError, match="recipe must be one of"):
        M.quantize_gguf(src, o, recipe="Q4_0")
    with pytest.raises(TypeError, match="target_bits must be a number"):
        quantcore.quantize_model({"w": np.ones((2, 256), np.float32)}, target_bits="5")
    with pytest.raises(ValueError, match="drop config"):
        quantcore.quantize_model({"w": np.ones((2, 256), np.float32)}, QuantConfig.q4_k(),
                                 recipe="q4_k_m")
    with pytest.raises(ValueError, match="give recipe .* or target_bits"):
        M.quantize_gguf(src, o)
    with pytest.raises(TypeError, match="imatrix must be a mapping .*read_imatrix"):
        M.quantize_gguf(src, o, recipe="q4_k_m", imatrix="imatrix.gguf")
    assert not (tmp_path / "o.gguf").exists()


def test_recipe_on_a_safetensors_model(tmp_path):
    weights = {n: a for n, (a, _) in _weights(3).items()
               if n.startswith("blk.2") and a.dtype == np.float32}
    src = tmp_path / "m.safetensors"
    quantcore.save(src, weights)
    out = tmp_path / "q.safetensors"
    p = qc("quantize", str(src), "-o", str(out), "--recipe", "q5_k_m", "--no-progress")
    assert p.returncode == 0, p.stderr
    back = quantcore.load(out)
    assert back["blk.2.attn_v.weight"].config.format == "q6_k"
    assert back["blk.2.ffn_up.weight"].config.format == "q5_k"
    assert isinstance(back["blk.2.attn_norm.weight"], np.ndarray)


def test_missing_imatrix_entries_warn_once_in_the_api(model_file, tmp_path):
    src, weights = model_file
    st = LayerStats(EMBD, hessian=False)
    st.update(np.ones((4, EMBD), np.float32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        M.quantize_gguf(src, tmp_path / "w.gguf", recipe="q4_k_m",
                        imatrix={"blk.0.attn_q.weight": st}, progress=False)
    msgs = [str(w.message) for w in caught if "no importance" in str(w.message)]
    assert len(msgs) == 1 and "token_embd.weight" in msgs[0]
