"""The K-quant cases of ``quantcore bench``: ``kquant`` (QuantizedLinear.forward
over Q4_K, Q5_K and Q6_K weights) and ``kquantize`` (quantize to them), each
against ggml's own code through ggml-python.

``kquant`` rows: M = 1 on (K, N) = (4096, 14336) and (14336, 4096), and M = 128
on (4096, 14336), int8 compute (ggml multiplies K-quant weights by Q8_K
activations, an int8 path too); ``--quick``: M in {1, 32} on (1024, 4096);
``--shapes NxK`` sets the layers (K a multiple of 256).  The weight is quantized
once by ``ggml_quantize_chunk`` where ggml-python is installed (else by
quantcore, whose K-quant bytes are ggml's) and both sides run those same bytes:
quantcore's ``QuantizedLinear`` and a one-node ``ggml_mul_mat`` graph computed
on a ggml thread pool of the run's thread count.  Both rotate through copies of
the layer beyond 4x the last-level cache, like the ``linear`` rows, and %bw is
against the same read probe.  Where quantcore has no kernel for a format the row
shows ``n/a`` and ggml's time alone.

``kquantize`` rows: each format on a 4096x4096 float32 weight (``--quick``:
256x4096), without an importance vector, on one thread for both
(``quantcore.quantize`` at one thread, ``ggml_quantize_chunk``); Mw/s counts
million weights quantized per second.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..config import QuantConfig
from ..gguf import from_blocks
from ..linear import QuantizedLinear
from ..runtime import get_num_threads, set_num_threads
from ..tensor import quantize as qc_quantize
from . import BenchContext, Peer, Prepared, make_weights, register_case
from .machine import cache_sizes, layer_copies, read_probe
from .peers import GGML_TYPES, GgmlMatmul, GgmlThreads, ggml_module, ggml_quantize
from .timing import QC_BUDGET_S, Timing, measure, rotating

__all__ = ["KQUANT_FORMATS", "KQUANT_ROWS", "QUICK_KQUANT_ROWS", "KQUANTIZE_SHAPES",
           "QUICK_KQUANTIZE_SHAPES"]

#: formats by the names the rows carry (``/i8``: int8 compute).
KQUANT_FORMATS: Dict[str, str] = {"q4_k/i8": "q4_k", "q5_k/i8": "q5_k", "q6_k/i8": "q6_k"}
#: the linear rows (M, K, N), in report order.
KQUANT_ROWS: Tuple[Tuple[int, int, int], ...] = ((1, 4096, 14336), (128, 4096, 14336),
                                                 (1, 14336, 4096))
QUICK_KQUANT_ROWS: Tuple[Tuple[int, int, int], ...] = ((1, 1024, 4096), (32, 1024, 4096))
KQUANTIZE_SHAPES: Tuple[Tuple[int, int], ...] = ((4096, 4096),)
QUICK_KQUANTIZE_SHAPES: Tuple[Tuple[int, int], ...] = ((256, 4096),)
_SUPER = 256


def _config(fmt: str) -> QuantConfig:
    cfg: QuantConfig = getattr(QuantConfig, fmt)(compute="int8")
    return cfg


def _blocks(ctx: BenchContext, fmt: str, k: int, n: int) -> np.ndarray:
    """The weight's K-quant bytes, (N, row bytes): ggml's where ggml is present."""
    def make() -> np.ndarray:
        w = make_weights((n, k))
        ggml = ggml_module()
        if ggml is not None:
            return ggml_quantize(ggml, fmt, w)
        return np.asarray(qc_quantize(w, _config(fmt)).data).reshape(n, -1)
    return ctx.cached(("kq_blocks", fmt, k, n), make)


def _qc_layers(ctx: BenchContext, fmt: str, k: int, n: int, copies: int
               ) -> Tuple[Optional[List[QuantizedLinear]], str]:
    """quantcore's layer and its copies over the same bytes, or None and why not."""
    def make() -> Tuple[Optional[List[QuantizedLinear]], str]:
        blocks = _blocks(ctx, fmt, k, n)
        try:
            layers = [QuantizedLinear(from_blocks(blocks, fmt, (n, k), compute="int8"))
                      for _ in range(copies)]
        except NotImplementedError as e:
            return None, str(e)
        return layers, ""
    return ctx.cached(("kq_qc", fmt, k, n), make)


def _ggml_peer(ctx: BenchContext, fmt: str, x: np.ndarray, m: int, k: int, n: int,
               copies: int) -> Peer:
    ggml = ggml_module()
    if ggml is None:
        return Peer("ggml", note="not installed")
    blocks = _blocks(ctx, fmt, k, n)
    threads: GgmlThreads = ctx.cached(("ggml_threads", ctx.threads),
                                      lambda: GgmlThreads(ggml, ctx.threads))
    graphs = ctx.cached(("kq_ggml", fmt, m, k, n),
                        lambda: [GgmlMatmul(ggml, fmt, blocks, m, k, threads)
                                 for _ in range(copies)])
    return Peer("ggml", rotating([functools.partial(g, x) for g in graphs]),
                key=("ggml", "kquant", fmt, m, k, n, ctx.threads))


def _linear_grid(ctx: BenchContext) -> List[Tuple[str, Tuple[int, ...]]]:
    rows = QUICK_KQUANT_ROWS if ctx.quick else KQUANT_ROWS
    names = ["q4_k/i8"] if ctx.quick else list(KQUANT_FORMATS)
    if ctx.custom_shapes:  # --shapes N x K: M = 1 on each
        rows = tuple((1, s[1], s[0]) for s in ctx.shapes if len(s) == 2 and s[1] % _SUPER == 0)
    return [(c, r) for c in names for r in rows]


@register_case("kquant", peers=("ggml",), what="QuantizedLinear.forward(x, out=buf) over "
               "K-quant weights (the same bytes as ggml's), x (M, K), weight (N, K)",
               bytes_label="GB/s of K-quant weights read", flops=True, grid=_linear_grid,
               show_bw=True, mkn=True, peer_ms=True, loadable=True)
def _prepare_kquant(ctx: BenchContext, config: str, shape: Tuple[int, ...]) -> Prepared:
    """QuantizedLinear.forward(x, out=buf) over a K-quant weight; ggml's mul_mat."""
    if config not in KQUANT_FORMATS:
        raise NotImplementedError(f"kquant runs {', '.join(KQUANT_FORMATS)}")
    fmt = KQUANT_FORMATS[config]
    m, k, n = shape
    if k % _SUPER:
        raise NotImplementedError(f"K-quant rows need K % {_SUPER} == 0")
    if ctx.cache.get("kquant_kn") != (k, n):  # one (K, N) at a time, like linear
        for key in [key for key in ctx.cache if isinstance(key, tuple) and
                    str(key[0]).startswith("kq_")]:
            del ctx.cache[key]
        ctx.cache["kquant_kn"] = (k, n)
    wbytes = _blocks(ctx, fmt, k, n).nbytes
    copies = layer_copies(wbytes)
    x = make_weights((m, k), seed=1)
    out = np.empty((m, n), np.float32)
    layers, why = _qc_layers(ctx, fmt, k, n, copies)
    fn: Optional[Callable[[], Any]] = None
    if layers is not None:
        fn = rotating([functools.partial(L.forward, x, out=out) for L in layers])
    peers = [_ggml_peer(ctx, fmt, x, m, k, n, copies)]

    def ceiling() -> Timing:
        return ctx.cached(("probe", wbytes, copies, ctx.threads), lambda: measure(
            read_probe(wbytes, copies), ctx.repeats, ctx.warmup, budget_s=QC_BUDGET_S)[0])

    def check(res: Any, peer_res: Dict[str, Any]) -> Dict[str, Any]:
        info: Dict[str, Any] = {"layer_copies": copies, "weight_source":
                                "ggml_quantize_chunk" if ggml_module() is not None
                                else "quantcore.quantize",
                                "cache_resident": copies * wbytes <= cache_sizes().last_level}
        ref = peer_res.get("ggml")
        if res is not None and ref is not None:
            info["max_rel_diff_vs_ggml"] = float(np.abs(res - ref).max() /
                                                 (np.abs(ref).max() + 1e-30))
        return info
    return Prepared(fn, nbytes=wbytes, flops=2 * m * k * n, peers=peers, check=check,
                    ceiling=ceiling, unavailable=why)


def _quantize_grid(ctx: BenchContext) -> List[Tuple[str, Tuple[int, ...]]]:
    shapes = QUICK_KQUANTIZE_SHAPES if ctx.quick else KQUANTIZE_SHAPES
    if ctx.custom_shapes:
        shapes = tuple((s[0], s[1]) for s in ctx.shapes if len(s) == 2 and s[1] % _SUPER == 0)
    fmts = ["q4_k"] if ctx.quick else sorted(set(KQUANT_FORMATS.values()))
    return [(f, s) for f in fmts for s in shapes]


def _one_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        old = get_num_threads()
        set_num_threads(1)
        try:
            return fn()
        finally:
            set_num_threads(old)
    return call


@register_case("kquantize", peers=("ggml",), what="quantcore.quantize(w, QuantConfig.q4_k() ...) "
               "on one thread, no importance vector", bytes_label="GB/s of float32 weights read",
               grid=_quantize_grid, peer_ms=True, mweights=True, exact_peer="ggml")
def _prepare_kquantize(ctx: BenchContext, config: str, shape: Tuple[int, ...]) -> Prepared:
    """quantcore.quantize(w, K-quant config) on one thread; ggml_quantize_chunk."""
    if config not in set(KQUANT_FORMATS.values()):
        raise NotImplementedError(f"kquantize runs {', '.join(sorted(set(KQUANT_FORMATS.values())))}")
    rows, k = shape
    if k % _SUPER:
        raise NotImplementedError(f"K-quant rows need in_features % {_SUPER} == 0")
    w = make_weights(shape)
    cfg = getattr(QuantConfig, config)()
    ggml = ggml_module()
    if ggml is None:
        peer = Peer("ggml", note="not installed")
    else:
        buf = np.empty((rows, int(ggml.ggml_row_size(getattr(ggml, GGML_TYPES[config]), k))),
                       np.uint8)
        peer = Peer("ggml", lambda: ggml_quantize(ggml, config, w, out=buf),
                    key=("ggml", "kquantize", config, tuple(shape)))

    def check(res: Any, peer_res: Dict[str, Any]) -> Dict[str, Any]:
        ref = peer_res.get("ggml")
        if res is None or ref is None:
            return {}
        return {"ggml_bit_exact": bool(np.array_equal(
            np.asarray(res.data).reshape(-1).view(np.uint8), ref.reshape(-1)))}
    return Prepared(_one_thread(lambda: qc_quantize(w, cfg)), nbytes=w.nbytes, peers=[peer],
                    check=check)
