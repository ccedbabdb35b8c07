"""QuantizedLinear.forward on LLM layer shapes against its peers, with
pytest-benchmark, grouped by (config, M x K x N).

The cases and peers are those of ``quantcore bench`` (quantcore.bench.linear):
NumPy float32 ``x @ W.T``, the naive NumPy dequantize-then-matmul, and, when
installed, PyTorch float32, PyTorch dynamic int8 (fbgemm) and ONNX Runtime
MatMulNBits at accuracy_level 0 and 4, all at quantcore's thread count.
Memory-bound shapes rotate through copies of the layer beyond 4x the last-level
cache (read from the machine).
Setup (quantizing, building sessions) happens before the timed calls.

GB/s counts the packed weight bytes a call streams; GFLOP/s is in
``extra_info``.  The default grid is a subset that runs in a few minutes;
``QC_BENCH_LINEAR_FULL=1`` runs M in {1, 2, 4, 8, 16, 32, 128, 512} on all three shapes.
Run: ``python -m pytest bench/test_bench_linear.py --benchmark-only``.
"""

import os

import pytest

import quantcore as qc
from quantcore.bench import BenchContext
from quantcore.bench import linear as bl
from quantcore.bench.peers import blas_threads

FULL = os.environ.get("QC_BENCH_LINEAR_FULL", "") not in ("", "0")
MS = bl.LINEAR_MS if FULL else (1, 128)
KN = bl.LINEAR_KN if FULL else ((4096, 14336),)
CONFIGS = list(bl.LINEAR_CONFIGS)
IMPLS = ["quantcore", "numpy", "naive", "torch", "torch_i8", "ort_a0", "ort_a4"]

_prepared = {}
_ctx = {}


def _prepare(config, shape):
    """The Prepared case (quantcore's call and its peers), built once per (config, shape)."""
    key = (config, shape)
    if key not in _prepared:
        ctx = _ctx.setdefault(shape[1:], BenchContext(shapes=[shape], configs=[config],
                                                      threads=qc.get_num_threads()))
        _prepared[key] = bl._prepare_linear(ctx, config, shape)
    return _prepared[key]


@pytest.fixture(scope="module", autouse=True)
def _blas_at_our_thread_count():
    with blas_threads(qc.get_num_threads()):
        yield
    _prepared.clear()
    _ctx.clear()


@pytest.mark.parametrize("kn", KN, ids=lambda kn: f"K{kn[0]}xN{kn[1]}")
@pytest.mark.parametrize("m", MS, ids=lambda m: f"M{m}")
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("impl", IMPLS)
def test_linear(bench_gbps, impl, config, m, kn):
    k, n = kn
    shape = (m, k, n)
    prep = _prepare(config, shape)
    if impl == "quantcore":
        fn = prep.fn
    else:
        peer = next(p for p in prep.peers if p.name == impl)
        if peer.fn is None:
            pytest.skip(f"{impl}: {peer.note}")
        fn = peer.fn
    bench_gbps(fn, prep.nbytes, f"linear {config} {m}x{k}x{n}", impl, op="linear",
               config=config, shape=list(shape), flops=prep.flops)
