"""Python conventions: QuantizedLinear pickles, copies and travels to a spawned
worker process (as to multiprocessing, Dask or Ray workers) with identical
outputs; threadpoolctl does not see quantcore's own thread pool, and its limits
leave quantcore's thread count alone."""

from __future__ import annotations

import concurrent.futures as cf
import copy
import multiprocessing as mp
import pickle
import threading

import numpy as np
import pytest

import quantcore
from quantcore import QuantConfig, QuantizedLinear

CONFIGS = {
    "int8": QuantConfig.int8(),
    "int8_asym_f32": QuantConfig.int8(symmetric=False, compute="float32"),
    "int4_g32": QuantConfig.int4(group_size=32),
    "int4_g64_asym_f16": QuantConfig.int4(group_size=64, symmetric=False, scale_dtype="float16"),
    "q4_1": QuantConfig.q4_1(),
    "q8_0_f32": QuantConfig.q8_0(compute="float32"),
}


def _layer(cfg, rng, n=19, k=96, bias=True):
    w = rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    return QuantizedLinear.from_linear(w, b, cfg)


def _same(a: QuantizedLinear, b: QuantizedLinear, x: np.ndarray) -> None:
    assert a is not b
    assert a.config == b.config and a.weight_quantized == b.weight_quantized
    assert (a.bias is None) == (b.bias is None)
    if a.bias is not None:
        assert a.bias.tobytes() == b.bias.tobytes()
    assert a(x).tobytes() == b(x).tobytes()
    assert a.kernel == b.kernel


@pytest.mark.parametrize("name", CONFIGS)
def test_pickle_round_trip(name, rng):
    layer = _layer(CONFIGS[name], rng, bias=name != "q4_1")
    x = rng.standard_normal((5, 96)).astype(np.float32)
    for proto in (2, 4, pickle.HIGHEST_PROTOCOL):
        blob = pickle.dumps(layer, protocol=proto)
        again = pickle.loads(blob)
        _same(layer, again, x)
        # only the packed storage travels, no float32 copy of the weight
        assert len(blob) < layer.nbytes + 2048, (len(blob), layer.nbytes)
        assert not again.weight_quantized.data.flags.writeable


@pytest.mark.parametrize("name", ["int8", "int4_g32", "q4_1"])
def test_copy_and_deepcopy(name, rng):
    layer = _layer(CONFIGS[name], rng)
    x = rng.standard_normal((9, 96)).astype(np.float32)
    deep = copy.deepcopy(layer)
    _same(layer, deep, x)
    assert not np.shares_memory(deep.weight_quantized.data, layer.weight_quantized.data)
    shallow = copy.copy(layer)
    _same(layer, shallow, x)
    model = {"a": layer, "b": [layer, layer]}  # a model holding layers: memo keeps sharing
    dm = copy.deepcopy(model)
    assert dm["b"][0] is dm["b"][1] is dm["a"]


def _worker(layer: QuantizedLinear, x: np.ndarray):
    """Runs in a spawned process: the layer arrived pickled."""
    return layer(x), layer.kernel_for(x.shape[0]), quantcore.get_isa()


def test_spawned_worker_gives_identical_outputs(rng):
    layers = [_layer(CONFIGS[n], rng) for n in ("int8", "int4_g32", "q4_1")]
    x = rng.standard_normal((3, 96)).astype(np.float32)
    x_big = rng.standard_normal((20, 96)).astype(np.float32)  # GEMM path too
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as ex:
        futures = [(layer, xx, ex.submit(_worker, layer, xx)) for layer in layers
                   for xx in (x, x_big)]
        for layer, xx, fut in futures:
            y, kernel, isa = fut.result(timeout=120)
            if isa == quantcore.get_isa():  # same kernels: bit for bit
                assert y.tobytes() == layer(xx).tobytes()
                assert kernel == layer.kernel_for(xx.shape[0])
            else:  # QUANTCORE_ISA forced in the parent only: close, not identical
                np.testing.assert_allclose(y, layer(xx), rtol=1e-4, atol=1e-4)


# ---- threadpoolctl ----------------------------------------------------------------------
@pytest.fixture
def tpc():
    return pytest.importorskip("threadpoolctl", reason="threadpoolctl is not installed")


# Lists what threadpoolctl sees before and after importing quantcore and running a
# call that starts the pool's workers.
TPC_CHILD = r"""
import json, os, numpy as np, threadpoolctl
before = {i["filepath"] for i in threadpoolctl.threadpool_info()}
import quantcore
quantcore.set_num_threads(2)
quantcore.quantize(np.ones((600, 600), np.float32), quantcore.QuantConfig.int8())
pkg = os.path.dirname(quantcore.__file__)
after = threadpoolctl.threadpool_info()
print(json.dumps({"new": [i for i in after if i["filepath"] not in before],
                  "ours": [i for i in after if i["filepath"].startswith(pkg)],
                  "workers": quantcore.info()["pool_workers"]}))
"""


def test_threadpoolctl_sees_no_pool_of_quantcore(tpc):
    """quantcore runs no OpenMP or BLAS: importing it and starting its workers
    adds nothing to threadpoolctl's list."""
    import json
    import os
    import subprocess
    import sys
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(quantcore.__file__))] + [env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", TPC_CHILD], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["new"] == [] and got["ours"] == [], got
    if quantcore.info()["thread_pool"] == "pthreads":
        assert got["workers"] == 1  # the pool did start


def test_threadpool_limits_leave_quantcore_alone(tpc, threads, rng):
    """threadpool_limits limits NumPy's BLAS (and OpenMP libraries), not
    quantcore: its thread count, here and in other Python threads, stays."""
    threads(None)
    default = quantcore.get_num_threads()
    layer = _layer(CONFIGS["int4_g32"], rng, n=600, k=512)
    x = rng.standard_normal((2, 512)).astype(np.float32)
    want = layer(x)
    with tpc.threadpool_limits(limits=1):
        assert quantcore.get_num_threads() == default
        other = []
        t = threading.Thread(target=lambda: other.append(quantcore.get_num_threads()))
        t.start()
        t.join()
        assert other == [default]
        assert layer(x).tobytes() == want.tobytes()
        quantcore.set_num_threads(3)
        assert quantcore.get_num_threads() == 3
    assert quantcore.get_num_threads() == 3
