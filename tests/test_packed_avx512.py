"""The AVX-512 packed-weight kernels against the scalar packed reader, bit for bit:
every kind and scale layout, the row counts that change how rows are grouped into
passes over a panel (1..20, 31, 64, 130, 513), activation tiles (k = 4096 with
more than one tile of rows), and thread counts that start chunks mid-weight.
Only the panel features are compared: tail rows run through other kernels."""

from __future__ import annotations

import numpy as np
import pytest

import quantcore
from helpers import seed_for
from quantcore import QuantConfig, QuantizedLinear

pytestmark = pytest.mark.skipif("avx512" not in quantcore.available_isas(),
                                reason="this CPU does not run the AVX-512 kernel set")

CONFIGS = {
    "int8": QuantConfig.int8(),
    "int8-f16": QuantConfig.int8(scale_dtype="float16"),
    "int8-tensor": QuantConfig.int8(granularity="tensor"),
    "int8-g32-f16": QuantConfig.int8(group_size=32, scale_dtype="float16"),
    "uint8": QuantConfig.int8(symmetric=False),
    "uint8-tensor-f16": QuantConfig.int8(symmetric=False, granularity="tensor", scale_dtype="float16"),
    "uint8-g64": QuantConfig.int8(symmetric=False, group_size=64),
    "int4-g32-f16": QuantConfig.int4(scale_dtype="float16"),
    "int4-channel": QuantConfig.int4(granularity="channel"),
    "int4-g128": QuantConfig.int4(group_size=128),
    "uint4-g64-f16": QuantConfig.int4(symmetric=False, group_size=64, scale_dtype="float16"),
    "uint4-tensor": QuantConfig.int4(symmetric=False, granularity="tensor"),
    "q4_1": QuantConfig.q4_1(),
}


def _layer(rng, cfg, n, k, bias):
    w = rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    layer = QuantizedLinear(quantcore.quantize(w, cfg.replace(compute="int8")), b)
    assert layer.prepacked
    return layer


def _compare(layer, x, threads, n_threads=(1, 2, 3)):
    npk = layer.out_features // 32 * 32
    quantcore.set_isa("scalar")
    threads(1)
    want = layer(x)
    quantcore.set_isa("avx512")
    for nt in n_threads:
        threads(nt)
        got = layer(x)
        assert np.array_equal(got[:, :npk].view(np.uint32), want[:, :npk].view(np.uint32)), \
            f"{x.shape[0]} rows, {nt} threads: {np.argwhere(got[:, :npk] != want[:, :npk])[:4]}"
        np.testing.assert_allclose(got[:, npk:], want[:, npk:], rtol=1e-4,
                                   atol=1e-4 * (np.abs(want).max() + 1.0))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_row_count(name, all_isas, threads):
    rng = np.random.default_rng(seed_for(name))
    k, n = (320, 77) if CONFIGS[name].bits == 4 else (256, 96)
    layer = _layer(rng, CONFIGS[name], n, k, bias=len(name) % 2 == 0)
    for m in list(range(1, 21)) + [31, 64, 130, 513]:
        scale = 10.0 ** rng.uniform(-3, 3)
        x = (rng.standard_normal((m, k)) * scale).astype(np.float32)
        _compare(layer, x, threads, (1, 3) if m > 100 else (1, 2, 3))


@pytest.mark.parametrize("name", ["int8", "uint8-g64", "int4-g32-f16", "q4_1"])
def test_long_rows_several_activation_tiles(name, all_isas, threads):
    """k = 4096: the rows go in tiles of about 128 (the panels are read once per
    tile), and the passes over a panel prefetch the next one."""
    rng = np.random.default_rng(seed_for("long " + name))
    layer = _layer(rng, CONFIGS[name], 96, 4096, bias=True)
    for m in (7, 25, 300):
        x = rng.standard_normal((m, 4096)).astype(np.float32)
        _compare(layer, x, threads, (1, 2))
