"""Quantize, dequantize and int4 (un)packing over L1-, L2-, L3- and DRAM-sized
inputs (half of each cache level of this machine, and 4x its last-level cache;
see quantcore.bench.machine.size_classes), quantcore against the NumPy baseline and,
for q4_0, gguf's reference, grouped by op, config and size.

GB/s (in ``extra_info`` and the closing table) counts the float32 side: the
input of quantize, the output of dequantize; for pack_int4/unpack_int4 the
unpacked uint8 codes (one byte per element, same element counts).  Setup is
done before the timed call.  Run: ``python -m pytest bench --benchmark-only``.
"""

import numpy as np
import pytest

import quantcore as qc
from quantcore.bench import peers
from quantcore.bench.machine import size_classes
from quantcore.bench.quantize import CONFIGS as QB_CONFIGS, GGUF_TYPES

SIZES = list(size_classes())                   # L1, L2, L3, DRAM
CONFIGS = ["int8", "int4_g32", "q4_0"]
IMPLS = ["quantcore", "numpy", "gguf"]


def _gguf_or_skip(config):
    if config not in GGUF_TYPES:
        pytest.skip(f"gguf has no {config} format")
    gguf = peers.gguf_module()
    if gguf is None:
        pytest.skip("gguf not installed")
    return gguf, getattr(gguf.GGMLQuantizationType, GGUF_TYPES[config])


def _quantizer(impl, config):
    """fn(w) -> what `impl` produces when quantizing w with `config`."""
    cfg = QB_CONFIGS[config]
    if impl == "quantcore":
        return lambda w: qc.quantize(w, cfg)
    if impl == "numpy":
        return lambda w: peers.numpy_quantize(w, cfg)
    gguf, qtype = _gguf_or_skip(config)
    return lambda w: gguf.quants.quantize(w, qtype)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("impl", IMPLS)
def test_quantize(bench_gbps, weights, impl, config, size):
    w = weights(size)
    quantize = _quantizer(impl, config)
    bench_gbps(lambda: quantize(w), w.nbytes, f"quantize {config} {size}", impl,
               op="quantize", config=config, size=size, shape=list(w.shape))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("impl", IMPLS)
def test_dequantize(bench_gbps, weights, impl, config, size):
    w = weights(size)
    cfg = QB_CONFIGS[config]
    q = _quantizer(impl, config)(w)
    if impl == "quantcore":
        out = np.empty(w.shape, np.float32)
        fn = lambda: q.dequantize(out=out)                      # noqa: E731
    elif impl == "numpy":
        out = np.empty(w.shape, np.float32)
        fn = lambda: peers.numpy_dequantize(*q, cfg, w.shape, out=out)   # noqa: E731
    else:
        gguf, qtype = _gguf_or_skip(config)
        fn = lambda: gguf.quants.dequantize(q, qtype)           # noqa: E731
    bench_gbps(fn, w.nbytes, f"dequantize {config} {size}", impl,
               op="dequantize", config=config, size=size, shape=list(w.shape))


def _codes(size):
    rows, k = size_classes()[size]
    return np.random.default_rng(0).integers(0, 16, size=(rows, k), dtype=np.uint8)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("impl", ["quantcore", "numpy"])
def test_pack_int4(bench_gbps, impl, size):
    codes = _codes(size)
    fn = (lambda: qc.pack_int4(codes)) if impl == "quantcore" else (lambda: peers.numpy_pack_int4(codes))
    bench_gbps(fn, codes.nbytes, f"pack_int4 {size}", impl,
               op="pack_int4", size=size, shape=list(codes.shape))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("impl", ["quantcore", "numpy"])
def test_unpack_int4(bench_gbps, impl, size):
    codes = _codes(size)
    packed = qc.pack_int4(codes)
    n = codes.shape[-1]
    if impl == "quantcore":
        fn = lambda: qc.unpack_int4(packed, n)                  # noqa: E731
    else:
        out = np.empty_like(codes)
        fn = lambda: peers.numpy_unpack_int4(packed, out=out)      # noqa: E731
    bench_gbps(fn, codes.nbytes, f"unpack_int4 {size}", impl,
               op="unpack_int4", size=size, shape=list(codes.shape))
