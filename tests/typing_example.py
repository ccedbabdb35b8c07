"""A user's file: the public API under mypy (tests/test_typing.py runs mypy on it
and also runs it).  Every annotation here is what a user would write; mypy must
accept all of it without errors."""

from __future__ import annotations

import copy
import pickle
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

import quantcore as qc
from quantcore import QuantConfig, QuantizedLinear, QuantizedTensor
from quantcore.matmulnbits import MatMulNBitsAttributes, MatMulNBitsWeights


def build() -> Tuple[QuantizedLinear, np.ndarray]:
    rng = np.random.default_rng(0)
    w: np.ndarray = rng.standard_normal((64, 96)).astype(np.float32)
    cfg: QuantConfig = QuantConfig.int4(group_size=32).replace(compute="float32")
    cfg8: QuantConfig = QuantConfig(bits=8, symmetric=False, scale_dtype="float16")
    presets: List[QuantConfig] = [QuantConfig.q8_0(), QuantConfig.q4_0(), QuantConfig.q4_1(), cfg8]
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg and len(presets) == 4
    qt: QuantizedTensor = qc.quantize(w, cfg)
    shape: Tuple[int, ...] = qt.shape
    group: Optional[int] = qt.group_size
    zeros: Optional[np.ndarray] = qt.zero_points
    bits: int = qt.bits
    eff: float = qt.effective_bits
    err: float = qt.mse(w)
    w_hat: np.ndarray = qt.dequantize()
    assert shape == (64, 96) and group == 32 and zeros is None and bits == 4
    assert eff == 5.0 and err >= 0.0 and w_hat.dtype == np.float32
    layer = QuantizedLinear(qt, bias=np.zeros(64, np.float32))
    layer2: QuantizedLinear = QuantizedLinear.from_linear(w, None, QuantConfig.int8())
    n_in: int = layer.in_features
    kernel: str = layer2.kernel
    saved: int = layer.memory_savings_bytes()
    assert n_in == 96 and kernel and saved > 0
    return layer, w


def run() -> None:
    layer, w = build()
    x = np.ones((3, 96), np.float32)
    y: np.ndarray = layer(x)
    out = np.empty((3, 64), np.float32)
    layer.forward(x, out=out)
    assert np.array_equal(y, out)
    again: QuantizedLinear = pickle.loads(pickle.dumps(layer))
    deep: QuantizedLinear = copy.deepcopy(layer)
    assert np.array_equal(again(x), y) and np.array_equal(deep(x), y)

    mw: MatMulNBitsWeights = layer.weight_quantized.to_matmulnbits()
    attrs: MatMulNBitsAttributes = mw.attributes()
    back: QuantizedTensor = QuantizedTensor.from_matmulnbits(mw.B, mw.scales, mw.zero_points,
                                                             **attrs)
    assert back.shape == (64, 96)

    packed: np.ndarray = qc.pack_int4(np.array([1, 2, 3], np.uint8))
    assert qc.unpack_int4(packed, 3).tolist() == [1, 2, 3]
    threads: int = qc.get_num_threads()
    qc.set_num_threads(threads)
    qc.set_num_threads(None)
    isas: tuple = qc.available_isas()
    qc.set_isa(isas[0])
    qc.set_isa(None)
    name: str = qc.get_isa()
    facts: Dict[str, object] = qc.info()
    include: str = qc.get_include()
    assert name and facts and include


def gguf_round_trip(path: str) -> Dict[str, Union[QuantizedTensor, np.ndarray]]:
    from quantcore import gguf as qgguf
    w = np.ones((4, 64), np.float32)
    qgguf.save(path, {"w": qc.quantize(w, QuantConfig.q8_0()), "b": w[0]})
    return qgguf.load(path)


if __name__ == "__main__":
    run()
    print("ok")
