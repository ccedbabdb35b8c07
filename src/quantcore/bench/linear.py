"""The ``linear`` case of ``quantcore bench``: QuantizedLinear.forward on LLM layer
shapes against NumPy and, when installed, PyTorch and ONNX Runtime.

Rows: M in {1, 2, 4, 8, 16, 32, 128, 512} x (K, N) in {(4096, 4096), (4096,
14336), (14336, 4096)} for int8 per channel and int4 g32, each with int8 and
float32 compute (``--quick``: M in {1, 4, 32} on K=1024, N=4096; ``--shapes NxK``
sets the layers).  Peers, at the same thread count and on the same weights: NumPy float32
``x @ W.T``, the naive NumPy dequantize-then-matmul, PyTorch float32 and dynamic
int8, ONNX Runtime ``MatMulNBits`` (block 32, quantcore's own codes and scales)
at accuracy_level 0 and 4.

Each implementation rotates through copies of its layer until they exceed 4x
the last-level cache (as a model's successive layers do; at most 32 copies).
GB/s counts the weight bytes a call streams.  The row's ceiling is the read
probe over the same bytes and the same number of copies, timed the same way
(:func:`.machine.read_probe`); %bw is the row's GB/s against it.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Dict, List, Tuple

import numpy as np

from ..config import QuantConfig
from ..linear import QuantizedLinear
from ..tensor import QuantizedTensor
from ..tensor import quantize as qc_quantize
from . import BenchContext, Peer, Prepared, make_weights, register_case
from .machine import cache_sizes, layer_copies, read_probe
from .peers import numpy_dequantize, ort_module, torch_module
from .timing import QC_BUDGET_S, Timing, measure, rotating

__all__ = ["LINEAR_CONFIGS", "LINEAR_MS", "LINEAR_KN", "QUICK_MS", "QUICK_KN"]

LINEAR_MS = (1, 2, 4, 8, 16, 32, 128, 512)
LINEAR_KN = ((4096, 4096), (4096, 14336), (14336, 4096))
QUICK_MS = (1, 4, 32)
QUICK_KN = ((1024, 4096),)
LINEAR_CONFIGS: Dict[str, QuantConfig] = {
    "int8/i8": QuantConfig.int8(compute="int8"),
    "int8/f32": QuantConfig.int8(compute="float32"),
    "int4/i8": QuantConfig.int4(compute="int8"),
    "int4/f32": QuantConfig.int4(compute="float32"),
}


def _weights(k: int, n: int) -> np.ndarray:
    return make_weights((n, k))


def _layers(ctx: BenchContext, cfg_name: str, k: int, n: int) -> List[QuantizedLinear]:
    def make() -> List[QuantizedLinear]:
        base = QuantizedLinear.from_linear(_weights(k, n), None, LINEAR_CONFIGS[cfg_name])
        qt = base.weight_quantized
        copies = [base]
        for _ in range(layer_copies(base.nbytes) - 1):
            copies.append(QuantizedLinear(QuantizedTensor.from_arrays(
                qt.data, qt.scales, qt.zero_points, qt.shape, qt.config)))
        return copies
    return ctx.cached(("qc", cfg_name, k, n), make)


def _ort_session(ctx: BenchContext, ort: Any, bits: int, k: int, n: int, acc: int) -> Tuple[Any, int]:
    """A one-node MatMulNBits model over quantcore's own codes and scales (block 32)."""
    cfg = QuantConfig(bits=bits, group_size=32)
    mw = ctx.cached(("ort_w", bits, k, n), lambda: qc_quantize(_weights(k, n), cfg).to_matmulnbits())
    so = ort.SessionOptions()
    so.intra_op_num_threads = ctx.threads
    so.inter_op_num_threads = 1
    # Several sessions (rotated layers, other rows) live at once, each with its own
    # pool: spinning workers of idle sessions would steal cores from the one running.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(mw.make_model(accuracy_level=acc).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return sess, mw.nbytes


def _torch_peers(ctx: BenchContext, torch: Any, x: np.ndarray, ws: List[np.ndarray],
                 m: int, k: int, n: int) -> List[Peer]:
    torch.set_num_threads(ctx.threads)
    tx = torch.from_numpy(x.copy())
    F = torch.nn.functional

    def tensor(W: np.ndarray) -> Any:  # the weights are read-only and stay unwritten
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(W)

    def tf32(W: Any) -> Any:
        with torch.inference_mode():
            return F.linear(tx, W)

    def int8_modules() -> List[Any]:
        mods = []
        for _ in range(layer_copies(n * k)):
            lin = torch.nn.Linear(k, n, bias=False)
            with torch.no_grad():
                lin.weight.copy_(tensor(ws[0]))
            with warnings.catch_warnings():  # quantize_dynamic's deprecation notice
                warnings.simplefilter("ignore")
                mods.append(torch.ao.quantization.quantize_dynamic(
                    torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8))
        return mods

    def ti8(mod: Any) -> Any:
        with torch.inference_mode():
            return mod(tx)
    mods = ctx.cached(("torch_i8", k, n), int8_modules)
    return [Peer("torch", rotating([functools.partial(tf32, tensor(W)) for W in ws]),
                 key=("torch", "linear", m, k, n, ctx.threads)),
            Peer("torch_i8", rotating([functools.partial(ti8, M) for M in mods]),
                 key=("torch_i8", "linear", m, k, n, ctx.threads))]


def _peers(ctx: BenchContext, cfg_name: str, m: int, k: int, n: int) -> List[Peer]:
    bits = LINEAR_CONFIGS[cfg_name].bits
    x = make_weights((m, k), seed=1)
    w = _weights(k, n)
    ws = ctx.cached(("numpy_w", k, n),
                    lambda: [w] + [w.copy() for _ in range(layer_copies(w.nbytes) - 1)])
    peers = [Peer("numpy", rotating([functools.partial(np.matmul, x, W.T) for W in ws]),
                  key=("numpy", "linear", m, k, n, ctx.threads))]
    qt = _layers(ctx, cfg_name, k, n)[0].weight_quantized
    wbuf = np.empty((n, k), np.float32)
    peers.append(Peer("naive", lambda: x @ numpy_dequantize(
        qt.data, qt.scales, qt.zero_points, qt.config, (n, k), out=wbuf).T,
        key=("naive", "linear", bits, m, k, n, ctx.threads)))
    torch = torch_module()
    if torch is None:
        peers += [Peer("torch", note="not installed"), Peer("torch_i8", note="not installed")]
    else:
        peers += _torch_peers(ctx, torch, x, ws, m, k, n)
    ort = ort_module()
    for acc in (0, 4):
        name = f"ort_a{acc}"
        if ort is None:
            peers.append(Peer(name, note="not installed"))
            continue
        if k % 32:
            peers.append(Peer(name, note="MatMulNBits needs K % 32 == 0"))
            continue

        def sessions(acc: int = acc) -> List[Any]:
            sess, nbytes = _ort_session(ctx, ort, bits, k, n, acc)
            return [sess] + [_ort_session(ctx, ort, bits, k, n, acc)[0]
                             for _ in range(layer_copies(nbytes) - 1)]
        feeds = {"A": x}
        peers.append(Peer(name, rotating([functools.partial(S.run, None, feeds) for S in
                                          ctx.cached(("ort", bits, acc, k, n), sessions)]),
                          key=(name, "linear", bits, m, k, n, ctx.threads)))
    return peers


def _grid(ctx: BenchContext) -> List[Tuple[str, Tuple[int, ...]]]:
    ms = QUICK_MS if ctx.quick else LINEAR_MS
    kns: Tuple[Tuple[int, int], ...] = QUICK_KN if ctx.quick else LINEAR_KN
    if ctx.custom_shapes:  # --shapes N x K
        kns = tuple((s[1], s[0]) for s in ctx.shapes if len(s) == 2)
    return [(c, (m, k, n)) for (k, n) in kns for m in ms for c in LINEAR_CONFIGS]


@register_case("linear", peers=("numpy", "naive", "torch", "torch_i8", "ort_a0", "ort_a4"),
               what="QuantizedLinear.forward(x, out=buf), x (M, K), weight (N, K)",
               bytes_label="GB/s of packed weights read", flops=True, grid=_grid, show_bw=True,
               mkn=True, loadable=True)
def _prepare_linear(ctx: BenchContext, config: str, shape: Tuple[int, ...]) -> Prepared:
    """QuantizedLinear.forward(x, out=buf) for x of shape (M, K), weight (N, K)."""
    if config not in LINEAR_CONFIGS:
        raise NotImplementedError(f"linear runs {', '.join(LINEAR_CONFIGS)}")
    m, k, n = shape
    if ctx.cache.get("linear_kn") != (k, n):  # the layers, copies and sessions of one (K, N) at a time
        ctx.cache.clear()
        ctx.cache["linear_kn"] = (k, n)
    layers = _layers(ctx, config, k, n)
    x = make_weights((m, k), seed=1)
    out = np.empty((m, n), np.float32)
    fn = rotating([functools.partial(L.forward, x, out=out) for L in layers])
    wbytes = layers[0].nbytes
    copies = len(layers)

    def ceiling() -> Timing:
        return ctx.cached(("probe", wbytes, copies, ctx.threads), lambda: measure(
            read_probe(wbytes, copies), ctx.repeats, ctx.warmup, budget_s=QC_BUDGET_S)[0])

    def check(res: np.ndarray, peer_res: Dict[str, Any]) -> Dict[str, Any]:
        info: Dict[str, Any] = {"kernel": layers[0].kernel_for(m), "layer_copies": copies,
                                "cache_resident": copies * wbytes <= cache_sizes().last_level}
        ref = peer_res.get("numpy")
        if ref is not None:
            info["max_rel_err_vs_float32"] = float(np.abs(res - ref).max() /
                                                   (np.abs(ref).max() + 1e-30))
        return info
    return Prepared(fn, nbytes=wbytes, flops=2 * m * k * n, peers=_peers(ctx, config, m, k, n),
                    check=check, ceiling=ceiling)
