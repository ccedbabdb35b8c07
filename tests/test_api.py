"""The Python API: QuantConfig, QuantizedTensor, bad input, the runtime settings
and the environment variables."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
import pickle
import platform
import subprocess
import sys
import threading

import numpy as np
import pytest

import oracle as O
import quantcore
from helpers import as_2d, assert_bits_equal, assert_quantized_equal, run_oracle
from quantcore import QuantConfig, QuantizedTensor, _ext

# ---- QuantConfig ---------------------------------------------------------------------------------


def test_defaults_and_presets():
    c = QuantConfig()
    assert (c.bits, c.group_size, c.symmetric, c.granularity, c.scale_dtype, c.method,
            c.compute, c.format) == (8, None, True, "channel", "float32", "absmax", "auto", None)
    assert QuantConfig.int8() == c
    i4 = QuantConfig.int4()
    assert (i4.bits, i4.group_size, i4.granularity, i4.symmetric) == (4, 32, "group", True)
    assert QuantConfig.int4(group_size=128).group_size == 128
    for name, bits, sym in [("q8_0", 8, True), ("q4_0", 4, True), ("q4_1", 4, False)]:
        q = getattr(QuantConfig, name)()
        assert (q.bits, q.symmetric, q.group_size, q.granularity, q.scale_dtype, q.format) == (
            bits, sym, 32, "group", "float16", name)
    assert QuantConfig(group_size=64).granularity == "group"
    assert QuantConfig(granularity="group").group_size == 32


def test_kind_mapping():
    assert QuantConfig.int8().kind == _ext.KIND_SYM8
    assert QuantConfig(symmetric=False).kind == _ext.KIND_ASYM8
    assert QuantConfig.int4().kind == _ext.KIND_SYM4
    assert QuantConfig.int4(symmetric=False).kind == _ext.KIND_ASYM4
    assert QuantConfig.q4_0().kind == _ext.KIND_SYM4
    assert QuantConfig.q8_0().kind == _ext.KIND_SYM8
    assert QuantConfig.q4_1().kind == _ext.KIND_MIN4


def test_presets_take_keywords():
    c = QuantConfig.q4_0(compute="float32")
    assert c.compute == "float32" and c.format == "q4_0"
    assert QuantConfig.int8(scale_dtype="float16").scale_dtype == "float16"
    assert QuantConfig.int4(64, symmetric=False).symmetric is False
    assert QuantConfig.int8(granularity="tensor").granularity == "tensor"


def test_int4_preset_with_other_granularity():
    assert QuantConfig.int4(granularity="channel") == QuantConfig.int4().replace(
        granularity="channel")
    assert QuantConfig.int4(granularity="tensor").group_size is None


def test_scale_dtype_accepts_numpy_dtypes():
    assert QuantConfig(scale_dtype=np.float16).scale_dtype == "float16"
    assert QuantConfig(scale_dtype=np.dtype("float32")).scale_dtype == "float32"


@pytest.mark.parametrize("kwargs,param", [
    (dict(bits=3), "bits"), (dict(bits=16), "bits"), (dict(bits="8"), "bits"),
    (dict(bits=True), "bits"), (dict(bits=8.0), "bits"),
    (dict(group_size=24), "group_size"), (dict(group_size=8), "group_size"),
    (dict(group_size=True), "group_size"), (dict(group_size=0), "group_size"),
    (dict(group_size=-32), "group_size"), (dict(group_size=32.0), "group_size"),
    (dict(group_size="32"), "group_size"),
    (dict(group_size=32, granularity="channel"), "group_size"),
    (dict(group_size=32, granularity="tensor"), "group_size"),
    (dict(granularity="row"), "granularity"), (dict(granularity="Channel"), "granularity"),
    (dict(scale_dtype="int8"), "scale_dtype"), (dict(scale_dtype=np.int8), "scale_dtype"),
    (dict(scale_dtype="bfloat16"), "scale_dtype"),
    (dict(method="x"), "method"), (dict(method="MSE"), "method"),
    (dict(compute="x"), "compute"), (dict(compute="int4"), "compute"),
    (dict(symmetric=1), "symmetric"), (dict(symmetric="yes"), "symmetric"),
    (dict(format="q5_0"), "format"),
])
def test_invalid_config_names_parameter(kwargs, param):
    with pytest.raises(ValueError, match=param):
        QuantConfig(**kwargs)


_GGUF_MISMATCHES = [
    (preset, kwargs, param)
    for preset in ("q4_0", "q8_0", "q4_1")
    for kwargs, param in [(dict(bits=8), "bits"), (dict(bits=4), "bits"),
                          (dict(group_size=64), "group_size"),
                          (dict(symmetric=False), "symmetric"), (dict(symmetric=True), "symmetric"),
                          (dict(scale_dtype="float32"), "scale_dtype")]
    if getattr(getattr(QuantConfig, preset)(), param) != kwargs[param]
]


@pytest.mark.parametrize("preset,kwargs,param", _GGUF_MISMATCHES,
                         ids=[f"{p}-{k}" for p, k, _ in _GGUF_MISMATCHES])
def test_gguf_format_mismatch_names_parameter(preset, kwargs, param):
    with pytest.raises(ValueError, match=param):
        getattr(QuantConfig, preset)(**kwargs)


def test_invalid_config_message_lists_allowed_values():
    with pytest.raises(ValueError) as info:
        QuantConfig(granularity="row")
    assert all(v in str(info.value) for v in ("channel", "group", "tensor", "row"))
    with pytest.raises(ValueError) as info:
        QuantConfig(bits=3)
    assert "8" in str(info.value) and "4" in str(info.value)


def test_immutable_and_hashable():
    c = QuantConfig.int4()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.bits = 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.group_size = 64
    assert hash(c) == hash(QuantConfig(bits=4, group_size=32))
    assert c == QuantConfig(bits=4, group_size=32)
    assert c != QuantConfig.int4(64)
    assert len({QuantConfig.int8(), QuantConfig(), QuantConfig.int4(), QuantConfig.q4_0()}) == 3
    assert {QuantConfig.q4_0(): 1}[QuantConfig.q4_0()] == 1


def test_replace():
    c = QuantConfig.int8()
    r = c.replace(bits=4)
    assert r.bits == 4 and c.bits == 8 and r is not c
    assert c.replace(group_size=64).granularity == "group"
    assert QuantConfig.int4().replace(group_size=None).granularity == "channel"
    t = QuantConfig.int4().replace(granularity="tensor")
    assert t.granularity == "tensor" and t.group_size is None
    assert QuantConfig.int8().replace(granularity="group").group_size == 32
    assert QuantConfig.q4_0().replace(compute="int8").format == "q4_0"
    with pytest.raises(ValueError, match="bits"):
        c.replace(bits=5)
    with pytest.raises(ValueError, match="bits"):
        QuantConfig.q4_0().replace(bits=8)
    with pytest.raises(TypeError):
        c.replace(colour="red")


def test_to_dict_from_dict():
    for c in (QuantConfig.int8(), QuantConfig.int4(128, symmetric=False), QuantConfig.q4_1()):
        d = c.to_dict()
        assert isinstance(d, dict) and QuantConfig.from_dict(d) == c
    with pytest.raises(ValueError, match="colour"):
        QuantConfig.from_dict({"bits": 8, "colour": 1})
    with pytest.raises(TypeError):
        QuantConfig.from_dict([("bits", 8)])


# ---- QuantizedTensor attributes -----------------------------------------------------------------
ATTR_CONFIGS = {
    "int8": QuantConfig.int8(),
    "int8-tensor": QuantConfig.int8(granularity="tensor"),
    "asym8": QuantConfig(symmetric=False),
    "int4-g32": QuantConfig.int4(),
    "asym4-g16-f16": QuantConfig.int4(16, symmetric=False, scale_dtype="float16"),
    "asym4-tensor": QuantConfig(bits=4, symmetric=False, granularity="tensor"),
    "q4_0": QuantConfig.q4_0(),
    "q4_1": QuantConfig.q4_1(),
    "q8_0": QuantConfig.q8_0(),
}


@pytest.mark.parametrize("shape", [(5, 70), (2, 3, 33), (70,), (1, 1)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ATTR_CONFIGS)
def test_attributes(name, shape, values):
    cfg = ATTR_CONFIGS[name]
    x = values(shape)
    qt = quantcore.quantize(x, cfg)
    assert qt.shape == shape and qt.ndim == len(shape)
    assert qt.dtype == np.float32
    assert qt.config is cfg or qt.config == cfg
    assert (qt.bits, qt.group_size, qt.symmetric, qt.granularity) == (
        cfg.bits, cfg.group_size, cfg.symmetric, cfg.granularity)
    k = shape[-1]
    row_bytes = (k + 1) // 2 if cfg.bits == 4 else k
    assert qt.data.shape == shape[:-1] + (row_bytes,)
    assert qt.data.dtype == (np.int8 if cfg.kind == _ext.KIND_SYM8 else np.uint8)
    if cfg.granularity == "tensor":
        pshape = ()
    elif cfg.granularity == "channel":
        pshape = shape[:-1]
    else:
        pshape = shape[:-1] + (O.num_groups(k, cfg.group_size),)
    assert qt.scales.shape == pshape
    assert qt.scales.dtype == np.dtype(cfg.scale_dtype)
    if cfg.kind in (_ext.KIND_ASYM8, _ext.KIND_ASYM4):
        assert qt.zero_points.shape == pshape and qt.zero_points.dtype == np.uint8
    elif cfg.kind == _ext.KIND_MIN4:
        assert qt.zero_points.shape == pshape and qt.zero_points.dtype == np.float16
    else:
        assert qt.zero_points is None
    for arr in (qt.data, qt.scales, qt.zero_points):
        if arr is not None:
            assert not arr.flags.writeable
            with pytest.raises(ValueError):
                arr[...] = 0
    zbytes = 0 if qt.zero_points is None else qt.zero_points.nbytes
    assert qt.nbytes == qt.data.nbytes + qt.scales.nbytes + zbytes
    assert qt.size == int(np.prod(shape))
    assert qt.effective_bits == pytest.approx(8 * qt.nbytes / qt.size)


def test_input_dtype_recorded(values):
    for dt in (np.float16, np.float32, np.float64):
        assert quantcore.quantize(values((3, 40), dtype=dt)).dtype == dt


@pytest.mark.parametrize("cfg,bits", [(QuantConfig.q4_0(), 4.5), (QuantConfig.int4(), 5.0),
                                      (QuantConfig.q8_0(), 8.5), (QuantConfig.q4_1(), 5.0),
                                      (QuantConfig.int4(128, scale_dtype="float16"), 4.125)])
def test_effective_bits(cfg, bits, values):
    qt = quantcore.quantize(values((8, 256)), cfg)
    assert qt.effective_bits == pytest.approx(bits)


def test_quantize_default_config_and_alias(values):
    x = values((3, 40))
    assert quantcore.quantize(x) == QuantizedTensor.quantize(x, QuantConfig.int8())
    assert quantcore.quantize(x, None).config == QuantConfig.int8()


def test_asarray_dequantizes(values):
    x = values((3, 40))
    qt = quantcore.quantize(x, QuantConfig.int4(16))
    deq = qt.dequantize()
    assert deq.dtype == np.float32 and deq.shape == x.shape
    assert_bits_equal(np.asarray(qt), deq)
    assert_bits_equal(np.array(qt), deq)
    assert np.asarray(qt, dtype=np.float64).dtype == np.float64
    assert np.allclose(np.asarray(qt, dtype=np.float64), deq)


@pytest.mark.parametrize("name", ["int8", "q4_1", "asym4-tensor"])
def test_dequantize_out(name, values):
    x = values((2, 3, 70))
    qt = quantcore.quantize(x, ATTR_CONFIGS[name])
    out = np.full(x.shape, np.nan, np.float32)
    res = qt.dequantize(out=out)
    assert res is out
    assert_bits_equal(out, qt.dequantize())


@pytest.mark.parametrize("bad,exc", [
    (np.empty((3, 70), np.float64), TypeError),
    (np.empty((3, 70), np.float16), TypeError),
    (np.empty((70, 3), np.float32), ValueError),
    (np.empty((3, 71), np.float32), ValueError),
    (np.empty((210,), np.float32), ValueError),
    (np.empty((70, 3), np.float32).T, ValueError),         # non-contiguous
    (np.empty((3, 140), np.float32)[:, ::2], ValueError),  # non-contiguous
    ([[0.0] * 70] * 3, TypeError),
])
def test_dequantize_bad_out(bad, exc, values):
    qt = quantcore.quantize(values((3, 70)), QuantConfig.int4())
    with pytest.raises(exc, match="out"):
        qt.dequantize(out=bad)


def test_dequantize_readonly_out(values):
    qt = quantcore.quantize(values((3, 70)), QuantConfig.int4())
    out = np.zeros((3, 70), np.float32)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="writeable"):
        qt.dequantize(out=out)
    assert not out.any()


# ---- protocols ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ATTR_CONFIGS)
def test_pickle_round_trip(name, values):
    x = values((3, 2, 70), dtype=np.float16)
    qt = quantcore.quantize(x, ATTR_CONFIGS[name])
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(qt, protocol=proto))
        assert back == qt
        assert back.dtype == np.float16 and back.shape == qt.shape and back.config == qt.config
        assert_bits_equal(back.dequantize(), qt.dequantize())
        assert not back.data.flags.writeable


def test_copy_and_deepcopy(values):
    qt = quantcore.quantize(values((3, 70)), QuantConfig.q4_1())
    c = copy.copy(qt)
    assert c == qt
    d = copy.deepcopy(qt)
    assert d == qt
    assert not np.shares_memory(d.data, qt.data)
    assert not np.shares_memory(d.scales, qt.scales)
    assert not np.shares_memory(d.zero_points, qt.zero_points)
    assert not d.data.flags.writeable


def test_equality(values):
    x = values((3, 70))
    a = quantcore.quantize(x, QuantConfig.int4())
    assert a == quantcore.quantize(x.copy(), QuantConfig.int4())
    assert not (a != quantcore.quantize(x, QuantConfig.int4()))
    assert a != quantcore.quantize(x, QuantConfig.int4(64))            # config
    assert a != quantcore.quantize(x.astype(np.float64), QuantConfig.int4())  # dtype
    y = x.copy()
    y[1, 5] += 1.0
    assert a != quantcore.quantize(y, QuantConfig.int4())              # data
    assert a != quantcore.quantize(x.reshape(1, 3, 70), QuantConfig.int4())  # shape
    assert (a == "x") is False
    assert a != 1


def test_repr_readable(values):
    qt = quantcore.quantize(values((4, 64)), QuantConfig.q4_0())
    r = repr(qt)
    assert r.startswith("QuantizedTensor(") and "\n" not in r and len(r) < 300
    for part in ("q4_0", "(4, 64)", "float32", "group_size=32"):
        assert part in r
    r8 = repr(quantcore.quantize(values((4, 64)), QuantConfig(symmetric=False)))
    assert "int8" in r8 and "channel" in r8 and "asymmetric" in r8


# ---- from_arrays --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ATTR_CONFIGS)
def test_from_arrays_round_trip(name, values):
    x = values((2, 3, 70))
    cfg = ATTR_CONFIGS[name]
    qt = quantcore.quantize(x, cfg)
    back = QuantizedTensor.from_arrays(qt.data, qt.scales, qt.zero_points, qt.shape, cfg)
    assert back == qt
    q2 = as_2d(qt)  # the 2-D (rows, ...) form is accepted too
    assert QuantizedTensor.from_arrays(q2.data, q2.scales, q2.zeros, qt.shape, cfg) == qt


def test_from_arrays_copies(values):
    qt = quantcore.quantize(values((3, 70)), QuantConfig.int4(symmetric=False))
    data, scales, zeros = qt.data.copy(), qt.scales.copy(), qt.zero_points.copy()
    back = QuantizedTensor.from_arrays(data, scales, zeros, qt.shape, qt.config)
    data[...] = 0
    scales[...] = 0
    zeros[...] = 0
    assert back == qt


@pytest.mark.parametrize("change,exc,match", [
    ("data_dtype", TypeError, "data"),
    ("data_size", ValueError, "data"),
    ("data_list", TypeError, "data"),
    ("scales_dtype", TypeError, "scales"),
    ("scales_size", ValueError, "scales"),
    ("scales_inf", ValueError, "scales"),
    ("scales_nan", ValueError, "scales"),
    ("zeros_none", TypeError, "zero_points"),
    ("zeros_dtype", TypeError, "zero_points"),
    ("zeros_range", ValueError, "zero_points"),
    ("shape_wrong", ValueError, "data"),
    ("shape_empty", ValueError, "shape"),
    ("shape_zero", ValueError, "shape"),
    ("shape_none", TypeError, "shape"),
    ("config", TypeError, "config"),
    ("dtype_int", TypeError, "dtype"),
])
def test_from_arrays_validation(change, exc, match, values):
    qt = quantcore.quantize(values((4, 64)), QuantConfig.int4(symmetric=False))
    d, s, z = qt.data, qt.scales, qt.zero_points
    kw = dict(data=d, scales=s, zero_points=z, shape=qt.shape, config=qt.config)
    kw.update({
        "data_dtype": dict(data=d.view(np.int8)),
        "data_size": dict(data=d[:, :-1]),
        "data_list": dict(data=d.tolist()),
        "scales_dtype": dict(scales=s.astype(np.float16)),
        "scales_size": dict(scales=s[:, :1]),
        "scales_inf": dict(scales=np.where(s == s.max(), np.inf, s).astype(np.float32)),
        "scales_nan": dict(scales=np.full_like(s, np.nan)),
        "zeros_none": dict(zero_points=None),
        "zeros_dtype": dict(zero_points=z.astype(np.int32)),
        "zeros_range": dict(zero_points=np.full_like(z, 16)),
        "shape_wrong": dict(shape=(4, 66)),
        "shape_empty": dict(shape=()),
        "shape_zero": dict(shape=(4, 0)),
        "shape_none": dict(shape=None),
        "config": dict(config="int4"),
        "dtype_int": dict(dtype=np.int32),
    }[change])
    with pytest.raises(exc, match=match):
        QuantizedTensor.from_arrays(**kw)


def test_from_arrays_symmetric_rejects_zero_points(values):
    qt = quantcore.quantize(values((4, 64)), QuantConfig.int8())
    with pytest.raises(ValueError, match="zero_points"):
        QuantizedTensor.from_arrays(qt.data, qt.scales, np.zeros(4, np.uint8), qt.shape,
                                    qt.config)


@pytest.mark.parametrize("what", ["data", "scales"])
def test_from_arrays_rejects_wrong_shape_of_right_size(what, values):
    qt = quantcore.quantize(values((4, 64)), QuantConfig.int4(symmetric=False))
    kw = dict(data=qt.data, scales=qt.scales, zero_points=qt.zero_points, shape=qt.shape,
              config=qt.config)
    kw[what] = np.ascontiguousarray(kw[what].T)
    with pytest.raises(ValueError, match=what):
        QuantizedTensor.from_arrays(**kw)


# ---- bad input to quantize -------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    np.array([1, 2, 3]), np.array([[1, 2]], np.int8), np.array([1, 2], np.uint8),
    np.array([True, False]), np.array([1 + 2j]), np.array([1.0, None], dtype=object),
    np.array(["1.0"]), [1, 2, 3], "abc", None, {"a": 1.0},
    [[1.0, 2.0], [3.0]],  # ragged
] + ([np.array([1.0], np.longdouble)] if np.dtype(np.longdouble).itemsize > 8 else []),
    ids=lambda b: type(b).__name__ + (f"-{b.dtype}" if isinstance(b, np.ndarray) else ""))
def test_quantize_bad_dtype_raises_type_error(bad):
    with pytest.raises(TypeError, match="array"):
        quantcore.quantize(bad)


@pytest.mark.parametrize("bad,match", [
    (np.float32(1.0), "ndim"), (np.array(2.0), "ndim"), (1.5, "ndim"),
    (np.zeros((0,), np.float32), "empty"), (np.zeros((0, 4), np.float32), "empty"),
    (np.zeros((4, 0), np.float32), "empty"), (np.zeros((2, 0, 3), np.float32), "empty"),
    ([], "empty|dtype"),
])
def test_quantize_zero_dim_and_empty_raise_value_error(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        quantcore.quantize(bad)
    if not isinstance(bad, list):
        with pytest.raises(ValueError):
            quantcore.quantize(bad)


@pytest.mark.parametrize("bad_cfg", ["int8", 8, {"bits": 8}, QuantConfig.int8().to_dict()])
def test_quantize_non_config_raises_type_error(bad_cfg, values):
    with pytest.raises(TypeError, match="QuantConfig"):
        quantcore.quantize(values((2, 8)), bad_cfg)


NONFINITE_CONFIGS = {"int8": QuantConfig.int8(), "int4-g16": QuantConfig.int4(16),
                     "tensor": QuantConfig.int8(granularity="tensor"), "q4_1": QuantConfig.q4_1()}


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", NONFINITE_CONFIGS)
def test_quantize_nonfinite_names_location(name, bad, dtype, isa, values):
    x = values((5, 70), dtype=dtype)
    x[3, 66] = bad  # in the tail group of a group config
    x[4, 2] = bad   # a later one: the first is reported
    before = x.copy()
    with pytest.raises(ValueError) as info:
        quantcore.quantize(x, NONFINITE_CONFIGS[name])
    msg = str(info.value)
    assert "NaN or Inf" in msg and "row 3, column 66" in msg
    assert_bits_equal(x, before, "input after a failed quantize")


def test_quantize_nonfinite_location_nd_is_flattened_row(values):
    x = values((2, 3, 40))
    x[1, 2, 7] = np.nan
    with pytest.raises(ValueError, match=r"NaN or Inf at row 5, column 7"):
        quantcore.quantize(x)


def test_quantize_nonfinite_strided(values):
    base = values((6, 80))
    base[4, 10] = np.nan  # x = base[::2, ::2]: row 2, column 5
    with pytest.raises(ValueError, match="row 2, column 5"):
        quantcore.quantize(base[::2, ::2])


@pytest.mark.parametrize("cfg", [QuantConfig.int8(), QuantConfig.int4()], ids=["int8", "int4"])
def test_mse_method_beats_absmax(cfg, values):
    x = values((16, 256), dist="heavy")
    absmax = quantcore.quantize(x, cfg).mse(x)
    mse = quantcore.quantize(x, cfg.replace(method="mse")).mse(x)
    assert mse < absmax


def test_mse_against_reference(values):
    x = values((4, 64))
    qt = quantcore.quantize(x, QuantConfig.int4())
    want = np.mean((qt.dequantize().astype(np.float64) - x.astype(np.float64)) ** 2)
    assert qt.mse(x) == pytest.approx(want)
    with pytest.raises(ValueError, match="shape"):
        qt.mse(x[:, :32])


def test_quantize_from_multiple_python_threads(values):
    """Kernels release the GIL; concurrent calls from Python threads give the
    same bytes as serial ones."""
    xs = [values((256, 512), dist=d) for d in ("normal", "heavy", "uniform", "sparse")]
    cfgs = [QuantConfig.int8(), QuantConfig.int4(), QuantConfig.q4_1(), QuantConfig(symmetric=False)]
    serial = [quantcore.quantize(x, c) for x, c in zip(xs, cfgs)]
    results = [None] * len(xs)
    errors = []

    def work(i):
        try:
            for _ in range(5):
                results[i] = quantcore.quantize(xs[i], cfgs[i])
                assert results[i] == serial[i]
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    for got, want in zip(results, serial):
        assert got == want
    assert_quantized_equal(as_2d(serial[1]), run_oracle(xs[1], O.SYM4, "group", 32))


# ---- runtime ---------------------------------------------------------------------------------------
def test_num_threads(threads):
    n = quantcore.get_num_threads()
    assert isinstance(n, int) and n >= 1
    threads(1)
    assert quantcore.get_num_threads() == 1
    threads(3)
    assert quantcore.get_num_threads() == 3
    quantcore.set_num_threads(None)  # back to the default
    assert quantcore.get_num_threads() >= 1


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-1, ValueError), ("2", TypeError),
                                     (2.0, TypeError), (True, TypeError)])
def test_set_num_threads_rejects(bad, exc, threads):
    before = quantcore.get_num_threads()
    with pytest.raises(exc):
        quantcore.set_num_threads(bad)
    assert quantcore.get_num_threads() == before


def test_info():
    info = quantcore.info()
    for key in ("version", "build_flags", "thread_pool", "num_threads", "pool_workers",
                "pool_spin_us", "cpu_features",
                "isa_compiled", "isa_available", "isa_best", "isa"):
        assert key in info, key
    assert info["version"] == quantcore.__version__
    assert info["isa"] == quantcore.get_isa()
    assert info["isa_best"] in info["isa_available"]
    assert list(quantcore.available_isas()) == info["isa_available"]
    assert "scalar" in info["isa_available"] and info["isa_available"][0] == "scalar"
    assert set(info["isa_available"]) <= set(info["isa_compiled"])
    assert info["thread_pool"] in ("pthreads", "serial") and isinstance(info["cpu_features"], list)
    assert 0 <= info["pool_workers"] < 1024
    assert info["pool_spin_us"] >= 0
    assert info["num_threads"] == quantcore.get_num_threads()
    assert "-ffast-math" not in info["build_flags"]


def test_show_config_prints(capsys):
    quantcore.show_config()
    out = capsys.readouterr().out
    assert quantcore.__version__ in out
    assert quantcore.get_isa() in out
    assert "thread_pool" in out


def test_set_isa(all_isas):
    for name in all_isas:
        quantcore.set_isa(name)
        assert quantcore.get_isa() == name
    quantcore.set_isa(" SCALAR ")
    assert quantcore.get_isa() == "scalar"
    quantcore.set_isa(None)
    assert quantcore.get_isa() == quantcore.info()["isa_best"]


@pytest.mark.parametrize("name", ["bogus", "", "avx3"])
def test_set_isa_unknown_raises(name, all_isas):
    before = quantcore.get_isa()
    with pytest.raises(ValueError):
        quantcore.set_isa(name)
    assert quantcore.get_isa() == before


def test_set_isa_unavailable_raises(all_isas):
    missing = [n for n in _ext.ISA_NAMES if n not in all_isas]
    if not missing:
        pytest.skip("every ISA quantcore knows is available on this machine")
    for name in missing:
        with pytest.raises(ValueError, match=name):
            quantcore.set_isa(name)


def test_set_isa_type_error(all_isas):
    with pytest.raises(TypeError):
        quantcore.set_isa(2)


# ---- environment variables (fresh interpreters) ---------------------------------------------------
def _python(code, **env):
    e = {k: v for k, v in os.environ.items() if not k.startswith("QUANTCORE_")}
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True,
                          timeout=120)


def test_env_isa_scalar():
    r = _python("import quantcore; print(quantcore.get_isa())", QUANTCORE_ISA="scalar")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "scalar"


def test_env_isa_bogus_warns_and_uses_best():
    r = _python("import quantcore; print(quantcore.get_isa(), quantcore.info()['isa_best'])",
                QUANTCORE_ISA="bogus")
    assert r.returncode == 0, r.stderr
    got, best = r.stdout.split()
    assert got == best
    assert "RuntimeWarning" in r.stderr and "bogus" in r.stderr


@pytest.mark.parametrize("n", ["1", "3"])
def test_env_num_threads(n):
    r = _python("import quantcore; print(quantcore.get_num_threads())", QUANTCORE_NUM_THREADS=n)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == n


def test_env_num_threads_invalid_warns():
    r = _python("import quantcore; print(quantcore.get_num_threads())",
                QUANTCORE_NUM_THREADS="many")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) >= 1 and "RuntimeWarning" in r.stderr


def test_env_isa_scalar_quantizes_like_default():
    code = ("import numpy as np, quantcore, sys\n"
            "x = np.random.default_rng(5).standard_normal((9, 200)).astype(np.float32)\n"
            "sys.stdout.write(quantcore.quantize(x, quantcore.QuantConfig.q4_0()).data.tobytes().hex())")
    a = _python(code, QUANTCORE_ISA="scalar")
    b = _python(code)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout


@pytest.mark.skipif(importlib.util.find_spec("quantcore.cli") is None,
                    reason="quantcore/cli.py does not exist yet (the CLI is being written)")
def test_cli_info():
    e = {k: v for k, v in os.environ.items() if not k.startswith("QUANTCORE_")}
    r = subprocess.run([sys.executable, "-m", "quantcore", "info"], env=e, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert quantcore.__version__ in r.stdout


def _cpu_has_avx512_set():
    f = quantcore.info()["cpu_features"]
    return all(x in f for x in ("avx512f", "avx512bw", "avx512vl", "avx512_vnni"))


def test_avx512_set_listed_where_the_cpu_runs_it():
    """The avx512 set (F+BW+VL+VNNI) is available exactly when CPUID and XCR0 say
    so, and is then the best one; without VNNI an AVX-512 CPU runs avx2."""
    info = quantcore.info()
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86-64 only")
    assert "avx512" in info["isa_compiled"]
    assert ("avx512" in info["isa_available"]) == _cpu_has_avx512_set()
    if _cpu_has_avx512_set():
        assert info["isa_best"] == "avx512"


@pytest.mark.skipif(not _cpu_has_avx512_set(), reason="CPU lacks AVX-512 F+BW+VL+VNNI")
def test_env_isa_avx2_forces_avx2_on_an_avx512_cpu():
    r = _python("import quantcore, numpy as np\n"
                "l = quantcore.QuantizedLinear.from_linear(np.ones((4, 64), np.float32))\n"
                "l(np.ones((1, 64), np.float32)); print(quantcore.get_isa(), l.kernel)",
                QUANTCORE_ISA="avx2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["avx2", "gemv_i8_int8_avx2"]


def test_packed_data_is_cache_line_aligned(rng):
    """quantize and from_arrays put the codes on a 64-byte boundary (full-width
    SIMD loads of a row then never straddle two cache lines)."""
    x = rng.standard_normal((33, 100)).astype(np.float32)
    for cfg in (QuantConfig.int8(), QuantConfig.int4()):
        qt = quantcore.quantize(x, cfg)
        assert qt.data.ctypes.data % 64 == 0
        qt2 = QuantizedTensor.from_arrays(qt.data, qt.scales, qt.zero_points, qt.shape, qt.config)
        assert qt2.data.ctypes.data % 64 == 0 and qt2 == qt
