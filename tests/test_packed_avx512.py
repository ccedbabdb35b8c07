"""The AVX-512 packed-weight kernels on long rows and many rows, bit for bit
against the scalar packed reader: the rows go in tiles of about 512 KiB of
activation codes (k = 4096: 128 rows; k = 1024: 512), and with several passes
over a panel the passes prefetch the next one.  (Every ISA on short rows:
test_packed.py.)"""

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
    "uint8_g64": QuantConfig.int8(symmetric=False, group_size=64),
    "uint8_tensor_f16": QuantConfig.int8(symmetric=False, granularity="tensor",
                                         scale_dtype="float16"),
    "int4_g32_f16": QuantConfig.int4(scale_dtype="float16"),
    "uint4_channel": QuantConfig.int4(symmetric=False, granularity="channel"),
    "q4_1": QuantConfig.q4_1(),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("k, ms", [(4096, (7, 25, 300)), (1024, (513,))])
def test_row_tiles_equal_scalar(name, k, ms, all_isas, threads):
    rng = np.random.default_rng(seed_for(f"{name} {k}"))
    n = 3 * 32 + 5  # three panels and a tail
    w = rng.standard_normal((n, k)).astype(np.float32)
    layer = QuantizedLinear(quantcore.quantize(w, CONFIGS[name].replace(compute="int8")),
                            rng.standard_normal(n).astype(np.float32))
    assert layer.prepacked
    for m in ms:
        x = (rng.standard_normal((m, k)) * 10.0 ** rng.uniform(-3, 3, (m, 1))).astype(np.float32)
        quantcore.set_isa("scalar")
        threads(1)
        want = layer(x)
        quantcore.set_isa("avx512")
        for nt in (1, 2):
            threads(nt)
            got = layer(x)
            assert got.tobytes() == want.tobytes(), \
                f"m={m} threads={nt}: {np.argwhere(got != want)[:4].tolist()}"
