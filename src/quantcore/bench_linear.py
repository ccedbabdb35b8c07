"""The ``linear`` case of ``quantcore bench``: QuantizedLinear.forward on LLM layer
shapes against NumPy and, when installed, PyTorch and ONNX Runtime.

Rows: M in {1, 8, 32, 128, 512} x (K, N) in {(4096, 4096), (4096, 14336),
(14336, 4096)} for int8 per-channel and int4 g32, each with int8 and float32
compute.  Peers, at the same thread count and on the same weights:

* ``numpy``: float32 ``x @ W.T`` (the dense baseline);
* ``naive``: NumPy dequantize-then-matmul of the same packed weights (what a
  user without fused kernels does each call);
* ``torch``: PyTorch float32 ``F.linear``; ``torch_i8``: PyTorch dynamic int8
  (``torch.ao.quantization.quantize_dynamic``, fbgemm);
* ``ort_a0`` / ``ort_a4``: ONNX Runtime ``MatMulNBits`` with the row's bit width
  (block 32, the same codes and scales as quantcore's), accuracy_level 0
  (float32 compute) and 4 (int8 compute).

Memory-bound rows rotate through enough copies of the layer to exceed 4x the L3
cache (as a model's successive layers do), for quantcore and each peer alike;
GB/s counts the weight bytes a call streams, and ``%bw`` is that against the
read bandwidth the run measures itself (all threads streaming a 512 MiB buffer).
"""

from __future__ import annotations

import contextlib
import functools
import math
import statistics
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

import quantcore as qc
from quantcore import _ext
from quantcore.benchmark import (BenchContext, Peer, Prepared, make_weights,
                                 numpy_dequantize, register_case)
from quantcore.config import QuantConfig

L3_BYTES = 32 << 20
ROTATE_FACTOR = 4          # rotate until the working set exceeds 4x L3
MAX_LAYERS = 8
LINEAR_MS = (1, 8, 32, 128, 512)
LINEAR_KN = ((4096, 4096), (4096, 14336), (14336, 4096))
QUICK_MS = (1, 32)
QUICK_KN = ((1024, 4096),)
LINEAR_CONFIGS = {
    "int8/i8": QuantConfig.int8(compute="int8"),
    "int8/f32": QuantConfig.int8(compute="float32"),
    "int4/i8": QuantConfig.int4(compute="int8"),
    "int4/f32": QuantConfig.int4(compute="float32"),
}

_cache: Dict[Any, Any] = {}


def clear() -> None:
    _cache.clear()


def n_layers(nbytes: int) -> int:
    """Copies of a layer of `nbytes` to rotate through so that they exceed 4x L3."""
    return max(1, min(MAX_LAYERS, math.ceil(ROTATE_FACTOR * L3_BYTES / max(1, nbytes))))


def rotating(fns: List[Callable[[], Any]]) -> Callable[[], Any]:
    """One callable that runs the next of `fns` on each call."""
    state = [0]

    def call():
        i = state[0]
        state[0] = (i + 1) % len(fns)
        return fns[i]()
    return call


def measured_bandwidth(size: int = 512 << 20, repeats: int = 5) -> float:
    """Read bandwidth in GB/s with the kernels' threads (median of `repeats`)."""
    if "bw" in _cache:
        return _cache["bw"]
    buf = np.ones(size // 8, np.uint64)
    _ext.read_probe(buf)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _ext.read_probe(buf)
        ts.append(time.perf_counter() - t0)
    del buf
    _cache["bw"] = size / statistics.median(ts) / 1e9
    return _cache["bw"]


def _weights(k: int, n: int) -> np.ndarray:
    return make_weights((n, k), cache=True)


def _layers(cfg_name: str, k: int, n: int) -> List[qc.QuantizedLinear]:
    key = ("qc", cfg_name, k, n)
    if key not in _cache:
        base = qc.QuantizedLinear.from_linear(_weights(k, n), None, LINEAR_CONFIGS[cfg_name])
        copies = [base]
        for _ in range(n_layers(base.nbytes) - 1):
            qt = base.weight_quantized
            copies.append(qc.QuantizedLinear(qc.QuantizedTensor.from_arrays(
                qt._data, qt._scales, qt._zeros, qt.shape, qt.config), None))
        _cache[key] = copies
    return _cache[key]


# ---- peers -----------------------------------------------------------------------
def _torch():
    try:
        import torch
        return torch
    except Exception:
        return None


def _ort():
    try:
        import onnxruntime
        from onnx import TensorProto, helper, numpy_helper  # noqa: F401
        return onnxruntime
    except Exception:
        return None


def _ort_session(ort, bits: int, k: int, n: int, acc: int, threads: int):
    """A one-node MatMulNBits model over quantcore's own codes and scales (block 32),
    exported by QuantizedTensor.to_matmulnbits."""
    cfg = QuantConfig(bits=bits, group_size=32)
    key = ("ort_w", bits, k, n)
    if key not in _cache:
        _cache[key] = qc.quantize(_weights(k, n), cfg).to_matmulnbits()
    mw = _cache[key]
    model = mw.make_model(accuracy_level=acc)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # Several sessions (rotated layers, other rows) live at once, each with its own
    # pool: spinning workers of idle sessions would steal the 2 cores from the one
    # running (measured: 2.65 -> 1.83 ms median for int4 14336x4096, M=1).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]), mw.nbytes


def _peers(ctx: BenchContext, cfg_name: str, m: int, k: int, n: int) -> List[Peer]:
    threads = ctx.threads
    bits = LINEAR_CONFIGS[cfg_name].bits
    x = make_weights((m, k), seed=1, cache=True)
    w = _weights(k, n)
    peers: List[Peer] = []
    # NumPy float32 (235 MB for the large shapes: no rotation needed beyond 4x L3)
    nf = n_layers(w.nbytes)
    ws = [w] + [w.copy() for _ in range(nf - 1)]
    peers.append(Peer("numpy", rotating([functools.partial(np.matmul, x, W.T) for W in ws]),
                      key=("numpy", "linear", m, k, n, threads)))
    # naive: dequantize the packed weight, then matmul
    qt = _layers(cfg_name, k, n)[0].weight_quantized
    nq = (np.asarray(qt._data), np.asarray(qt._scales), None)
    wbuf = np.empty((n, k), np.float32)
    peers.append(Peer("naive", lambda: x @ numpy_dequantize(*nq, qt.config, (n, k), out=wbuf).T,
                      key=("naive", "linear", cfg_name.split("/")[0], m, k, n, threads)))
    torch = _torch()
    if torch is None:
        ctx.note("PyTorch not installed: its columns are empty (pip install 'quantcore[bench]')")
        peers += [Peer("torch", note="not installed"), Peer("torch_i8", note="not installed")]
    else:
        torch.set_num_threads(threads)
        tx = torch.from_numpy(x.copy())
        tws = [torch.from_numpy(W) for W in ws]
        F = torch.nn.functional

        def tf32(W):
            with torch.inference_mode():
                return F.linear(tx, W)
        peers.append(Peer("torch", rotating([functools.partial(tf32, W) for W in tws]),
                          key=("torch", "linear", m, k, n, threads)))
        key = ("torch_i8_mods", k, n)
        if key not in _cache:
            mods = []
            for _ in range(n_layers(n * k)):
                lin = torch.nn.Linear(k, n, bias=False)
                with torch.no_grad():
                    lin.weight.copy_(torch.from_numpy(w))
                with warnings.catch_warnings():  # quantize_dynamic's deprecation notice
                    warnings.simplefilter("ignore")
                    mods.append(torch.ao.quantization.quantize_dynamic(
                        torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8))
            _cache[key] = mods

        def ti8(mod):
            with torch.inference_mode():
                return mod(tx)
        peers.append(Peer("torch_i8", rotating([functools.partial(ti8, M) for M in _cache[key]]),
                          key=("torch_i8", "linear", m, k, n, threads)))
    ort = _ort()
    for acc in (0, 4):
        name = f"ort_a{acc}"
        if ort is None:
            ctx.note("ONNX Runtime not installed: its columns are empty "
                     "(pip install 'quantcore[bench]')")
            peers.append(Peer(name, note="not installed"))
            continue
        if k % 32:
            peers.append(Peer(name, note="MatMulNBits needs K % 32 == 0"))
            continue
        skey = ("ort_sess", bits, acc, k, n, threads)
        if skey not in _cache:
            sess, nbytes = _ort_session(ort, bits, k, n, acc, threads)
            _cache[skey] = [sess] + [_ort_session(ort, bits, k, n, acc, threads)[0]
                                     for _ in range(n_layers(nbytes) - 1)]
        feeds = {"A": x}
        peers.append(Peer(name, rotating([functools.partial(S.run, None, feeds)
                                          for S in _cache[skey]]),
                          key=(name, "linear", bits, m, k, n, threads)))
    return peers


def _grid(ctx: BenchContext):
    quick = ctx.quick
    ms = QUICK_MS if quick else LINEAR_MS
    kns: Tuple[Tuple[int, int], ...] = QUICK_KN if quick else LINEAR_KN
    if ctx.custom_shapes:  # --shapes N x K
        kns = tuple((s[1], s[0]) for s in ctx.shapes if len(s) == 2)
    return [(c, (m, k, n)) for (k, n) in kns for m in ms for c in LINEAR_CONFIGS]


@register_case("linear", peers=("numpy", "naive", "torch", "torch_i8", "ort_a0", "ort_a4"),
               bytes_label="GB/s of packed weights streamed", flops=True, grid=_grid,
               show_bw=True)  # the %bw column
def _prepare_linear(ctx: BenchContext, config: str, shape: Tuple[int, int, int]) -> Prepared:
    """QuantizedLinear.forward(x, out=buf) for x of shape (M, K), weight (N, K)."""
    if config not in LINEAR_CONFIGS:
        raise NotImplementedError(f"linear runs {', '.join(LINEAR_CONFIGS)}")
    m, k, n = shape
    layers = _layers(config, k, n)
    x = make_weights((m, k), seed=1, cache=True)
    out = np.empty((m, n), np.float32)
    fn = rotating([functools.partial(L.forward, x, out=out) for L in layers])
    bw = measured_bandwidth()
    wbytes = layers[0].nbytes

    def check(res, peer_res):
        ref = peer_res.get("numpy")
        info = {"kernel": layers[0].kernel_for(m), "bandwidth_gbps": bw}
        if ref is not None:
            rel = float(np.abs(res - ref).max() / (np.abs(ref).max() + 1e-30))
            info["max_rel_err_vs_float32"] = rel
        return info
    return Prepared(fn, nbytes=wbytes, flops=2 * m * k * n, peers=_peers(ctx, config, m, k, n),
                    check=check)


def have_threadpoolctl() -> bool:
    import importlib.util
    return importlib.util.find_spec("threadpoolctl") is not None


def blas_threads(n: int):
    """Limit NumPy's BLAS to n threads for the run (threadpoolctl), so NumPy's
    matmul runs at quantcore's thread count; a no-op when threadpoolctl is absent."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


LINEAR_NOTE = ("linear: GB/s = packed weight bytes per call; %bw = that / the read bandwidth "
               "this run measured; ort_a0/a4 = ONNX Runtime MatMulNBits accuracy_level 0/4 on "
               "the same codes; naive = NumPy dequantize-then-matmul")
