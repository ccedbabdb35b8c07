"""quantcore.gguf: GGUF files written and read, against the gguf package.

* save: the tensor bytes in the file (read back by gguf.GGUFReader) are those of
  gguf.quants.quantize for the same weights;
* load: a file written by gguf.GGUFWriter from gguf.quants.quantize gives the
  QuantizedTensor quantcore.quantize builds (no requantizing), its values are
  gguf's dequantized ones bit for bit, and QuantizedLinear runs on it;
* corrupt or truncated files raise ValueError (every truncation point of a small
  file, random byte flips, hand-made bad headers).
"""

from __future__ import annotations

import struct
import sys

import numpy as np
import pytest

import quantcore
from quantcore import QuantConfig, QuantizedLinear, QuantizedTensor
from quantcore import gguf as qg

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install gguf)")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402

FORMATS = {"q8_0": T.Q8_0, "q4_0": T.Q4_0, "q4_1": T.Q4_1}
SHAPES = [(32,), (1, 32), (5, 96), (3, 4, 64), (2, 2, 3, 32), (33, 160)]


def add_quantized(w, name, x, qtype):
    """x quantized by gguf's reference, stored as a tensor of GGML type qtype."""
    b = gguf_quantize(x, qtype)
    w.add_tensor(name, b, raw_shape=b.shape, raw_dtype=qtype)


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_with_gguf(path, tensors):
    """A file made by the gguf package alone: {name: (array, GGML type)}."""
    w = gguf.GGUFWriter(str(path), "test")
    for name, (x, qtype) in tensors.items():
        if qtype in (T.F32, T.F16):
            w.add_tensor(name, x.astype(np.float32 if qtype == T.F32 else np.float16))
        else:
            add_quantized(w, name, x, qtype)
    finish(w)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("fmt", FORMATS)
def test_saved_bytes_are_gguf_quantize(tmp_path, fmt, shape, values):
    x = values(shape, dist="heavy")
    p = tmp_path / "w.gguf"
    qg.save(p, {"w": quantcore.quantize(x, getattr(QuantConfig, fmt)())})
    r = gguf.GGUFReader(str(p))
    (t,) = r.tensors
    assert t.name == "w" and t.tensor_type == FORMATS[fmt]
    assert tuple(int(d) for d in t.shape) == tuple(reversed(shape))  # GGUF: innermost first
    ref = gguf_quantize(x, FORMATS[fmt])
    got = np.asarray(t.data)
    assert got.tobytes() == ref.tobytes()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("fmt", FORMATS)
def test_load_file_written_by_gguf(tmp_path, fmt, shape, values):
    x = values(shape, scale=3.0)
    p = tmp_path / "g.gguf"
    write_with_gguf(p, {"blk.0.w": (x, FORMATS[fmt])})
    (qt,) = qg.load(p).values()
    assert isinstance(qt, QuantizedTensor) and qt.shape == shape
    assert qt == quantcore.quantize(x, getattr(QuantConfig, fmt)())
    want = gguf_dequantize(gguf_quantize(x, FORMATS[fmt]), FORMATS[fmt]).reshape(shape)
    assert qt.dequantize().tobytes() == want.astype(np.float32).tobytes()
    assert qg.to_blocks(qt).tobytes() == gguf_quantize(x, FORMATS[fmt]).tobytes()


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantized_linear_runs_on_loaded_tensors(tmp_path, fmt, values, rng):
    n, k = 37, 96
    w = values((n, k))
    p = tmp_path / "m.gguf"
    write_with_gguf(p, {"w": (w, FORMATS[fmt])})
    w_gguf = gguf_dequantize(gguf_quantize(w, FORMATS[fmt]), FORMATS[fmt]).astype(np.float64)
    x = rng.standard_normal((5, k)).astype(np.float32)
    ref = x.astype(np.float64) @ w_gguf.T
    tol = 8 * k * np.finfo(np.float32).eps * (np.abs(x) @ np.abs(w_gguf).T)
    layer = QuantizedLinear(qg.load(p, compute="float32")["w"])
    assert np.all(np.abs(layer(x) - ref) <= tol)
    layer8 = QuantizedLinear(qg.load(p)["w"])  # compute="auto": int8 activations
    assert layer8.compute == "int8"
    assert np.all(np.abs(layer8(x) - ref) <= layer8.int8_error_bound(x) + tol)


def test_float_and_other_types(tmp_path, values):
    x = values((4, 256))
    p = tmp_path / "mix.gguf"
    w = gguf.GGUFWriter(str(p), "test")
    w.add_tensor("f32", x)
    w.add_tensor("f16", x.astype(np.float16))
    w.add_tensor("f64", x.astype(np.float64))
    w.add_tensor("i16", np.arange(12, dtype=np.int16).reshape(3, 4))
    for name, qtype in (("bf16", T.BF16), ("q5_0", T.Q5_0), ("q5_1", T.Q5_1)):
        add_quantized(w, name, x, qtype)
    finish(w)
    got = qg.load(p)
    assert list(got) == ["f32", "f16", "f64", "i16", "bf16", "q5_0", "q5_1"]
    np.testing.assert_array_equal(got["f32"], x)
    assert got["f16"].dtype == np.float16 and np.array_equal(got["f16"], x.astype(np.float16))
    assert got["f64"].dtype == np.float64
    np.testing.assert_array_equal(got["i16"], np.arange(12, dtype=np.int16).reshape(3, 4))
    for name, qtype in (("bf16", T.BF16), ("q5_0", T.Q5_0), ("q5_1", T.Q5_1)):
        want = gguf_dequantize(gguf_quantize(x, qtype), qtype).astype(np.float32)
        assert got[name].dtype == np.float32 and got[name].shape == x.shape
        assert got[name].tobytes() == want.tobytes(), name
    assert list(qg.load(p, names=["q5_0", "f32"])) == ["q5_0", "f32"]
    with pytest.raises(KeyError, match="nope"):
        qg.load(p, names=["nope"])


def test_submodule_is_reachable_from_the_package():
    assert quantcore.gguf is qg and quantcore.matmulnbits.MatMulNBitsWeights is not None


def test_reader_agrees_with_gguf_reader(tmp_path, values):
    p = tmp_path / "mix.gguf"
    x = values((3, 5, 64))
    qg.save(p, {"a": quantcore.quantize(x, QuantConfig.q4_1()), "b": x[0, 0],
                "c": quantcore.quantize(x[1], QuantConfig.q8_0()), "d": np.arange(3, dtype=np.int64)},
            metadata={"t.u32": 7, "t.big": -2 ** 40, "t.f": 0.5, "t.b": True, "t.s": "héllo",
                      "t.list": ["x", "yz"], "t.ints": [1, 2, 3],
                      "t.exact": (9, gguf.GGUFValueType.UINT8)})
    r = gguf.GGUFReader(str(p))
    ours = qg.load(p)
    assert [t.name for t in r.tensors] == list(ours)
    for t in r.tensors:
        v = ours[t.name]
        assert tuple(int(d) for d in reversed(t.shape)) == v.shape
        raw = qg.to_blocks(v) if isinstance(v, QuantizedTensor) else v
        assert np.asarray(t.data).tobytes() == raw.tobytes()
    meta = qg.load_metadata(p)
    assert meta["general.architecture"] == "quantcore"
    assert meta["t.u32"] == 7 and meta["t.big"] == -2 ** 40 and meta["t.f"] == 0.5
    assert meta["t.b"] is True and meta["t.s"] == "héllo" and meta["t.list"] == ["x", "yz"]
    assert meta["t.ints"].tolist() == [1, 2, 3] and meta["t.exact"] == 9
    for key, field in r.fields.items():
        if not key.startswith("GGUF."):
            assert key in meta


def test_save_rejects_what_gguf_cannot_hold(tmp_path, values):
    p = tmp_path / "x.gguf"
    x = values((4, 64))
    with pytest.raises(ValueError, match="Q8_0, Q4_0 and Q4_1"):
        qg.save(p, {"w": quantcore.quantize(x, QuantConfig.int4(group_size=64))})
    with pytest.raises(ValueError, match="multiple of 32"):
        qg.save(p, {"w": quantcore.quantize(values((4, 48)), QuantConfig.q4_0())})
    with pytest.raises(TypeError, match="QuantizedTensor or a numpy array"):
        qg.save(p, {"w": [1.0, 2.0]})
    with pytest.raises(TypeError, match="float16/32/64"):
        qg.save(p, {"w": np.zeros(3, np.uint32)})
    with pytest.raises(ValueError, match="empty"):
        qg.save(p, {})
    with pytest.raises(TypeError, match="metadata"):
        qg.save(p, {"w": x}, metadata={"k": object()})
    # an int8 g32 float16 config is Q8_0 by another name: written as Q8_0
    qt = quantcore.quantize(x, QuantConfig.int8(group_size=32, scale_dtype="float16"))
    qg.save(p, {"w": qt})
    assert gguf.GGUFReader(str(p)).tensors[0].tensor_type == T.Q8_0
    assert qg.load(p)["w"].dequantize().tobytes() == qt.dequantize().tobytes()


# ---- corrupt and truncated files --------------------------------------------------------
@pytest.fixture
def small_file(tmp_path, values):
    p = tmp_path / "small.gguf"
    x = values((2, 64))
    qg.save(p, {"q": quantcore.quantize(x, QuantConfig.q4_0()), "f": x[0, :8].copy()},
            metadata={"m.s": "abc", "m.a": [1, 2]})
    return p, p.read_bytes()


def _load_bytes(tmp_path, data: bytes, name="c.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    return qg.load(p)


def test_every_truncation_raises_value_error(tmp_path, small_file):
    p, data = small_file
    full = qg.load(p)
    for cut in range(len(data)):
        try:
            got = _load_bytes(tmp_path, data[:cut])
        except ValueError as e:
            assert "GGUF" in str(e) or "gguf" in str(e), (cut, e)
            continue
        # only the padding after the last tensor may go missing unnoticed
        assert cut >= len(data) - 32 and list(got) == list(full), cut
        assert all(np.array_equal(np.asarray(got[k]), np.asarray(full[k])) for k in full)


def test_random_corruption_never_crashes(tmp_path, small_file):
    p, data = small_file
    rng = np.random.default_rng(5)
    header_end = len(data) - 96  # the header and the metadata, most of the file
    outcomes = {"ok": 0, "ValueError": 0}
    for trial in range(400):
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(0, header_end if trial % 4 else len(b)))
            b[i] = int(rng.integers(0, 256))
        try:
            _load_bytes(tmp_path, bytes(b))
            outcomes["ok"] += 1
        except ValueError:
            outcomes["ValueError"] += 1
    assert outcomes["ValueError"] > 50, outcomes


def _header(version=3, n_tensors=0, n_kv=0, magic=b"GGUF"):
    return magic + struct.pack("<IQQ", version, n_tensors, n_kv)


def _kv_string(key, value):
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", 8) + struct.pack("<Q", len(v)) + v


def _tensor_info(name, dims, ttype, offset):
    n = name.encode()
    return (struct.pack("<Q", len(n)) + n + struct.pack("<I", len(dims))
            + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ttype, offset))


def _with_data(head: bytes, nbytes: int) -> bytes:
    pad = -len(head) % 32
    return head + b"\0" * pad + b"\0" * nbytes


BAD_FILES = {
    "empty": (b"", "empty file"),
    "short": (b"GGUF\x03\0\0\0", "shorter than a GGUF header"),
    "magic": (_header(magic=b"GGML") + b"\0" * 8, "not a GGUF file"),
    "version1": (_header(version=1), "version 1"),
    "big_endian": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "big-endian"),
    "huge_kv_count": (_header(n_kv=2 ** 60), "cannot fit"),
    "huge_tensor_count": (_header(n_tensors=2 ** 40), "cannot fit"),
    "huge_string": (_header(n_kv=1) + struct.pack("<Q", 2 ** 62) + b"abc", "needs"),
    "huge_array": (_header(n_kv=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 4, 2 ** 61),
                   "elements"),
    "huge_string_array": (_header(n_kv=1) + struct.pack("<Q", 1) + b"k"
                          + struct.pack("<IIQ", 9, 8, 2 ** 61), "elements"),
    "bad_value_type": (_header(n_kv=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 77)
                       + b"\0" * 8, "unknown metadata value type"),
    "not_utf8": (_header(n_kv=1) + struct.pack("<Q", 2) + b"\xff\xfe" + b"\0" * 16, "UTF-8"),
    "dup_key": (_header(n_kv=2) + _kv_string("a", "x") + _kv_string("a", "y"), "twice"),
    "alignment": (_header(n_kv=1) + struct.pack("<Q", 17) + b"general.alignment"
                  + struct.pack("<II", 4, 3), "power of two"),
    "bad_tensor_type": (_with_data(_header(n_tensors=1) + _tensor_info("t", [32], 200, 0), 64),
                        "unknown type id 200"),
    "zero_dims": (_with_data(_header(n_tensors=1) + _tensor_info("t", [], 0, 0), 64), "dimensions"),
    "many_dims": (_with_data(_header(n_tensors=1) + _tensor_info("t", [1] * 9, 0, 0), 64),
                  "dimensions"),
    "zero_dim": (_with_data(_header(n_tensors=1) + _tensor_info("t", [4, 0], 0, 0), 64), "zero"),
    "row_not_block": (_with_data(_header(n_tensors=1) + _tensor_info("t", [48], 2, 0), 64),
                      "multiple of its block"),
    "misaligned": (_with_data(_header(n_tensors=1) + _tensor_info("t", [4], 0, 4), 64), "alignment"),
    "past_end": (_with_data(_header(n_tensors=1) + _tensor_info("t", [64], 0, 0), 100),
                 "lies at bytes"),
    "huge_dims": (_with_data(_header(n_tensors=1) + _tensor_info("t", [2 ** 40, 2 ** 40], 0, 0), 8),
                  "lies at bytes"),
    "dup_tensor": (_with_data(_header(n_tensors=2) + _tensor_info("t", [4], 0, 0)
                              + _tensor_info("t", [4], 0, 32), 64), "twice"),
    "inf_scale": (_with_data(_header(n_tensors=1) + _tensor_info("t", [32], 2, 0),
                             0) + b"\x00\x7c" + b"\0" * 16, "non-finite"),
    "q8_minus_128": (_with_data(_header(n_tensors=1) + _tensor_info("t", [32], 8, 0), 0)
                     + b"\x00\x3c" + b"\x80" * 32, "-128"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_raise_value_error(tmp_path, case):
    data, match = BAD_FILES[case]
    with pytest.raises(ValueError, match=match):
        _load_bytes(tmp_path, data)


def test_hand_made_file_reads(tmp_path):
    """The helpers above make valid files too (so the bad cases differ by one thing)."""
    d = _with_data(_header(n_tensors=1) + _tensor_info("t", [4, 2], 0, 0), 0)
    d += np.arange(8, dtype="<f4").tobytes()
    got = _load_bytes(tmp_path, d)
    np.testing.assert_array_equal(got["t"], np.arange(8, dtype=np.float32).reshape(2, 4))


def test_load_without_the_gguf_package(tmp_path, small_file, monkeypatch):
    """Reading Q8_0/Q4_0/Q4_1/F32/F16 needs NumPy only; saving says what to install."""
    p, _ = small_file
    full = qg.load(p)
    monkeypatch.setitem(sys.modules, "gguf", None)
    monkeypatch.setitem(sys.modules, "gguf.quants", None)
    monkeypatch.setitem(sys.modules, "gguf.constants", None)
    got = qg.load(p)
    assert got["q"] == full["q"] and np.array_equal(got["f"], full["f"])
    with pytest.raises(ImportError, match="pip install"):
        qg.save(tmp_path / "y.gguf", {"w": np.zeros(4, np.float32)})
