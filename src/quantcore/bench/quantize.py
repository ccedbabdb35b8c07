"""The ``quantize`` and ``dequantize`` cases of ``quantcore bench``.

Rows: every selected config on every selected weight shape.  Peers: the NumPy
baseline of the same rule (:mod:`.peers`) and, for the GGUF block formats,
gguf's NumPy reference.  GB/s counts the float32 side of the op: the input of
``quantize``, the output of ``dequantize``.  ``dequantize`` writes into a
preallocated buffer (``out=``) for quantcore and NumPy, as a steady-state caller
would; gguf's API allocates.  NumPy and gguf work on one thread.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..config import QuantConfig
from ..tensor import quantize as qc_quantize
from . import BenchContext, Peer, Prepared, make_weights, register_case
from .machine import size_classes
from .peers import gguf_module, numpy_dequantize, numpy_quantize, numpy_supports

__all__ = ["CONFIGS", "GGUF_TYPES", "default_shapes", "quick_shapes"]

#: Configs by the names the command line takes, in report order.
CONFIGS: Dict[str, QuantConfig] = {
    "int8": QuantConfig.int8(),
    "int4_g32": QuantConfig.int4(group_size=32),
    "q8_0": QuantConfig.q8_0(),
    "q4_0": QuantConfig.q4_0(),
    "q4_1": QuantConfig.q4_1(),
}

#: gguf's GGMLQuantizationType name for each GGUF block format.
GGUF_TYPES: Dict[str, str] = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1"}


def default_shapes() -> List[Tuple[int, int]]:
    """An L2-sized weight (for this machine's L2) and the layer shapes
    (out_features, in_features) of a Llama-3-8B / Mistral-7B block: attention
    projection, MLP up/gate, MLP down."""
    return [size_classes()["L2"], (4096, 4096), (14336, 4096), (4096, 14336)]


def quick_shapes() -> List[Tuple[int, int]]:
    """``--quick``: the L2-sized weight and one 1024x4096 layer."""
    return [size_classes()["L2"], (1024, 4096)]


def _gguf_peer(ctx: BenchContext, op: str, config: str, shape: Tuple[int, ...],
               make_fn: Callable[[Any, Any], Callable[[], Any]], keep: bool = False) -> Peer:
    if config not in GGUF_TYPES:
        return Peer("gguf")
    gguf = gguf_module()
    if gguf is None:
        return Peer("gguf", note="not installed")
    if shape[-1] % 32:
        return Peer("gguf", note="gguf needs in_features % 32 == 0")
    qtype = getattr(gguf.GGMLQuantizationType, GGUF_TYPES[config])
    return Peer("gguf", make_fn(gguf, qtype), key=("gguf", op, config, tuple(shape)), keep=keep)


@register_case("quantize", peers=("numpy", "gguf"), what="quantcore.quantize(w, config)",
               bytes_label="GB/s of float32 weights read")
def _prepare_quantize(ctx: BenchContext, config: str, shape: Tuple[int, ...]) -> Prepared:
    """quantcore.quantize(w, config) on a float32 weight."""
    w = make_weights(shape)
    cfg = CONFIGS[config]
    peers = []
    why = numpy_supports(cfg, (shape[0], shape[1]))
    if why is None:
        peers.append(Peer("numpy", lambda: numpy_quantize(w, cfg),
                          key=("numpy", "quantize", config, shape), keep=True))
    else:
        peers.append(Peer("numpy", note=why))
    peers.append(_gguf_peer(ctx, "quantize", config, shape,
                            lambda g, t: (lambda: g.quants.quantize(w, t)), keep=True))
    return Prepared(lambda: qc_quantize(w, cfg), nbytes=w.nbytes, peers=peers,
                    keep_key=("quantcore", "quantize", config, shape))


@register_case("dequantize", peers=("numpy", "gguf"), what="QuantizedTensor.dequantize(out=buf)",
               bytes_label="GB/s of float32 written", exact_peer="gguf")
def _prepare_dequantize(ctx: BenchContext, config: str, shape: Tuple[int, ...]) -> Prepared:
    """QuantizedTensor.dequantize(out=buf) into a preallocated float32 buffer."""
    w = make_weights(shape)
    cfg = CONFIGS[config]
    qt = ctx.kept_or(("quantcore", "quantize", config, shape), lambda: qc_quantize(w, cfg))
    out = np.empty(shape, np.float32)
    peers = []
    why = numpy_supports(cfg, (shape[0], shape[1]))
    if why is None:
        nq: Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]] = ctx.kept_or(
            ("numpy", "quantize", config, shape), lambda: numpy_quantize(w, cfg))
        ndata, nscales, nzeros = nq
        nout = np.empty(shape, np.float32)
        peers.append(Peer("numpy", lambda: numpy_dequantize(ndata, nscales, nzeros, cfg,
                                                            (shape[0], shape[1]), out=nout),
                          key=("numpy", "dequantize", config, shape)))
    else:
        peers.append(Peer("numpy", note=why))

    def gguf_fn(g: Any, t: Any) -> Callable[[], Any]:
        blocks = ctx.kept_or(("gguf", "quantize", config, shape), lambda: g.quants.quantize(w, t))
        return lambda: g.quants.dequantize(blocks, t)
    peers.append(_gguf_peer(ctx, "dequantize", config, shape, gguf_fn))

    def check(res: np.ndarray, peer_res: Dict[str, Any]) -> Dict[str, Any]:
        # quantize + dequantize round trip, bit for bit against gguf's reference
        if "gguf" not in peer_res:
            return {}
        ref = peer_res["gguf"]
        return {"gguf_bit_exact": bool(ref.shape == res.shape and
                                       np.array_equal(ref.view(np.uint32), res.view(np.uint32)))}
    return Prepared(lambda: qt.dequantize(out=out), nbytes=out.nbytes, peers=peers, check=check)
