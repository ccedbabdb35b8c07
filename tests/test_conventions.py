"""Python conventions: QuantizedLinear pickles, copies and travels to a spawned
worker process (as to multiprocessing, Dask or Ray workers) with identical
outputs; threadpoolctl sees quantcore's OpenMP pool, and what its limits do."""

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
    mod = pytest.importorskip("threadpoolctl", reason="threadpoolctl is not installed")
    if not quantcore.info()["openmp"]:
        pytest.skip("this build has no OpenMP")
    return mod


def test_threadpoolctl_lists_the_openmp_pool(tpc):
    infos = [i for i in tpc.threadpool_info() if i["user_api"] == "openmp"]
    assert infos, tpc.threadpool_info()
    assert any(i["prefix"] in ("libgomp", "libiomp", "libomp", "vcomp") for i in infos)


def test_threadpool_limits_apply_to_the_calling_thread(tpc, threads):
    """OpenMP's thread count is per calling thread: threadpool_limits changes the
    default of quantcore's kernels called from this thread; an explicit
    quantcore.set_num_threads wins over it everywhere."""
    threads(None)  # back to OpenMP's default
    default = quantcore.get_num_threads()
    with tpc.threadpool_limits(limits=1, user_api="openmp"):
        assert quantcore.get_num_threads() == 1
        other = []
        t = threading.Thread(target=lambda: other.append(quantcore.get_num_threads()))
        t.start()
        t.join()
        assert other == [default]  # another Python thread keeps OpenMP's default
        quantcore.set_num_threads(3)
        assert quantcore.get_num_threads() == 3
        quantcore.set_num_threads(None)
        assert quantcore.get_num_threads() == 1
    assert quantcore.get_num_threads() == default
