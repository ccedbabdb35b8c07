"""save/load: bit-exact round trips for every format, files any safetensors reader
opens, plain safetensors files, and corrupt, truncated or hostile files rejected
with ValueError (never a crash or a huge allocation)."""

import json
import os
import struct

import numpy as np
import pytest

import quantcore as qc
from quantcore import QuantConfig, QuantizedTensor

st = pytest.importorskip("safetensors.numpy")

CONFIGS = {
    "int8": QuantConfig.int8(),
    "int8_asym": QuantConfig.int8(symmetric=False),
    "int8_tensor_f16": QuantConfig(bits=8, granularity="tensor", scale_dtype="float16"),
    "int4_g32": QuantConfig.int4(group_size=32),
    "int4_g32_asym": QuantConfig.int4(group_size=32, symmetric=False),
    "int4_g32_f16": QuantConfig.int4(group_size=32, scale_dtype="float16"),
    "int4_g16_asym_f16": QuantConfig.int4(group_size=16, symmetric=False, scale_dtype="float16"),
    "int4_channel": QuantConfig.int4(granularity="channel"),
    "q8_0": QuantConfig.q8_0(),
    "q4_0": QuantConfig.q4_0(),
    "q4_1": QuantConfig.q4_1(),
}
SHAPES = [(1, 1), (3, 33), (2, 65), (5, 40), (2, 3, 31), (7,), (4, 2, 2, 17)]


def same(a, b):
    if isinstance(a, QuantizedTensor):
        return isinstance(b, QuantizedTensor) and a == b and a.dtype == b.dtype
    return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and \
        a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_round_trip_bit_exact(tmp_path, rng, name, shape):
    w = rng.standard_normal(shape).astype(np.float32)
    qt = qc.quantize(w, CONFIGS[name])
    path = tmp_path / "t.safetensors"
    qc.save(path, {"w": qt})
    back = qc.load(path)
    assert list(back) == ["w"]
    assert same(qt, back["w"])
    assert np.array_equal(back["w"].dequantize(), qt.dequantize())
    # any safetensors reader sees the parts as ordinary tensors
    raw = st.load_file(str(path))
    assert np.array_equal(raw["w.qdata"], qt.data) and raw["w.qdata"].dtype == qt.data.dtype
    assert raw["w.scales"].tobytes() == qt.scales.tobytes()
    assert raw["w.scales"].shape == qt.scales.shape
    if qt.zero_points is None:
        assert "w.zeros" not in raw
    else:
        assert raw["w.zeros"].tobytes() == qt.zero_points.tobytes()


def test_mixed_model_round_trip(tmp_path, rng):
    w = {"a.weight": rng.standard_normal((16, 64)).astype(np.float32),
         "a.bias": rng.standard_normal(16).astype(np.float32),
         "h": rng.standard_normal((8, 32)).astype(np.float16),
         "d": rng.standard_normal((8, 32)),
         "ids": np.arange(10, dtype=np.int64),
         "flags": np.array([True, False, True]),
         "scalar": np.array(3.5, np.float32),
         "empty": np.zeros((0, 3), np.float32),
         "u16": np.arange(6, dtype=np.uint16).reshape(2, 3),
         "lm_head.weight": rng.standard_normal((10, 64)).astype(np.float32)}
    m = qc.quantize_model(w, QuantConfig.q4_0(), overrides={"lm_head*": QuantConfig.int8()},
                          exclude=["empty"], progress=False)
    path = tmp_path / "m.safetensors"
    qc.save(str(path), m, metadata={"note": "hello"})
    back = qc.load(path)
    assert list(back) == list(m)  # the order survives
    for k in m:
        assert same(m[k], back[k]), k
    assert isinstance(back["h"], QuantizedTensor) and back["h"].dtype == np.float16
    assert back.metrics == m.metrics  # recorded at save
    assert back["d"].dtype == np.float64
    raw = st.load_file(str(path))
    assert set(raw) >= {"a.bias", "ids", "flags", "a.weight.qdata", "lm_head.weight.scales"}
    hdr = qc.files.read_header(path)
    assert hdr.metadata["note"] == "hello"
    assert json.loads(hdr.metadata["quantcore"])["version"] == 1


def test_float16_and_float64_originals(tmp_path, rng):
    for dt in (np.float16, np.float64):
        w = rng.standard_normal((4, 64)).astype(dt)
        qt = qc.quantize(w, QuantConfig.int4())
        qc.save(tmp_path / "x.safetensors", {"w": qt})
        back = qc.load(tmp_path / "x.safetensors")["w"]
        assert back.dtype == dt and back == qt


def test_plain_safetensors_file(tmp_path, rng):
    arrays = {"x": rng.standard_normal((3, 5)).astype(np.float32),
              "y": np.arange(4, dtype=np.int32)}
    path = str(tmp_path / "plain.safetensors")
    st.save_file(arrays, path)
    back = qc.load(path)
    assert back.metrics is None
    assert set(back) == {"x", "y"}
    for k in arrays:
        assert same(arrays[k], back[k])
    back["x"][0, 0] = 1.0  # loaded arrays are writeable copies


def test_bf16_widened_exactly(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    t = torch.randn(4, 8).bfloat16()
    path = str(tmp_path / "bf16.safetensors")
    save_file({"w": t}, path)
    back = qc.load(path)["w"]
    assert back.dtype == np.float32
    assert np.array_equal(back, t.float().numpy())


def test_save_overwrites_atomically(tmp_path, rng):
    path = tmp_path / "x.safetensors"
    qc.save(path, {"a": np.ones(3, np.float32)})
    qc.save(path, {"b": np.zeros(2, np.float32)})
    assert list(qc.load(path)) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temp left


def test_save_rejects_bad_input(tmp_path, rng):
    qt = qc.quantize(rng.standard_normal((4, 32)).astype(np.float32))
    p = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="w.qdata"):
        qc.save(p, {"w": qt, "w.qdata": np.ones(3, np.float32)})
    with pytest.raises(TypeError, match="'o'"):
        qc.save(p, {"o": np.array(["a"], object)})
    with pytest.raises(TypeError, match="'s'"):
        qc.save(p, {"s": "text"})
    with pytest.raises(TypeError, match="mapping"):
        qc.save(p, [qt])
    with pytest.raises(TypeError, match="keys"):
        qc.save(p, {3: qt})
    with pytest.raises(ValueError, match="reserved"):
        qc.save(p, {"w": qt}, metadata={"quantcore": "x"})
    with pytest.raises(TypeError, match="metadata"):
        qc.save(p, {"w": qt}, metadata={"k": 3})
    with pytest.raises(OSError):
        qc.save(tmp_path / "missing_dir" / "x.safetensors", {"w": qt})
    assert not p.exists()


def test_save_strided_and_big_endian(tmp_path, rng):
    base = rng.standard_normal((6, 10)).astype(np.float32)
    arrays = {"view": base[::2, 1::3], "be": base.astype(">f4")}
    qc.save(tmp_path / "x.safetensors", arrays)
    back = qc.load(tmp_path / "x.safetensors")
    assert np.array_equal(back["view"], base[::2, 1::3])
    assert np.array_equal(back["be"], base) and back["be"].dtype == np.float32


# ---- corrupt, truncated, hostile -----------------------------------------------------------------

def _split(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write(path, header, data, pad=True):
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    if pad:
        text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


@pytest.fixture
def good(tmp_path, rng):
    """A valid quantcore file: int4 asym g32 tensor 'w' (with zeros), a q4_1
    tensor 'm', a plain float32 'b'."""
    path = tmp_path / "good.safetensors"
    w = rng.standard_normal((6, 70)).astype(np.float32)
    qc.save(path, {"w": qc.quantize(w, QuantConfig.int4(symmetric=False)),
                   "m": qc.quantize(w, QuantConfig.q4_1()),
                   "b": rng.standard_normal(6).astype(np.float32)})
    qc.load(path)
    return path


def _meta(header):
    return json.loads(header["__metadata__"]["quantcore"])


def _set_meta(header, meta):
    header["__metadata__"]["quantcore"] = json.dumps(meta)


def test_truncated_everywhere(good, tmp_path):
    raw = open(good, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    cuts = sorted({0, 1, 4, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1,
                   (8 + n + len(raw)) // 2, len(raw) - 1})
    for cut in cuts:
        p = tmp_path / f"cut{cut}.safetensors"
        p.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match="truncated|corrupt|header"):
            qc.load(p)


def test_header_length_2_62(tmp_path):
    p = tmp_path / "huge.safetensors"
    p.write_bytes(struct.pack("<Q", 1 << 62) + b"{}" + b" " * 30)
    with pytest.raises(ValueError, match="header claims"):
        qc.load(p)
    p.write_bytes(struct.pack("<Q", (1 << 64) - 1) + b"{}")
    with pytest.raises(ValueError, match="header claims"):
        qc.load(p)


def test_header_over_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(qc.files, "MAX_HEADER_BYTES", 64)
    p = tmp_path / "big.safetensors"
    _write(p, {"__metadata__": {"pad": "x" * 100}}, b"")
    with pytest.raises(ValueError, match="limit"):
        qc.load(p)


@pytest.mark.parametrize("text", [b"{not json at all}", b"[1, 2, 3]", b"\xff\xfe{}", b"nope",
                                  b'{"a": NaN}', b"{" * 20000 + b"}" * 20000,
                                  b'{"__metadata__": {"x": 1}}', b'{"__metadata__": [1]}'])
def test_garbage_header(tmp_path, text):
    p = tmp_path / "g.safetensors"
    _write(p, text, b"")
    with pytest.raises(ValueError):
        qc.load(p)


def test_duplicate_keys(tmp_path):
    p = tmp_path / "dup.safetensors"
    ent = '{"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}'
    _write(p, ('{"a": %s, "a": %s}' % (ent, ent)).encode(), b"\x00")
    with pytest.raises(ValueError, match="duplicate"):
        qc.load(p)


def _mutate(good, tmp_path, fn, data_fn=None):
    header, data = _split(good)
    fn(header)
    if data_fn is not None:
        data = data_fn(data)
    p = tmp_path / "bad.safetensors"
    _write(p, header, data)
    return p


def _entry_set(name, key, value):
    def f(h):
        h[name][key] = value
    return f


@pytest.mark.parametrize("fn, word", [
    (_entry_set("b", "data_offsets", [0, 10 ** 12]), "outside"),
    (_entry_set("b", "data_offsets", [-4, 20]), "outside"),
    (_entry_set("b", "data_offsets", [8, 32]), "overlaps|gap"),
    (_entry_set("b", "data_offsets", [0, 20]), "needs"),
    (_entry_set("b", "data_offsets", [0]), "data_offsets"),
    (_entry_set("b", "data_offsets", [0.0, 24.0]), "data_offsets"),
    (_entry_set("b", "shape", [10 ** 15]), "needs"),
    (_entry_set("b", "shape", [-6]), "shape"),
    (_entry_set("b", "shape", [True] * 6), "shape"),
    (_entry_set("b", "shape", [1] * 100), "shape"),
    (_entry_set("b", "shape", [0, 10 ** 30]), "shape"),
    (_entry_set("b", "shape", [2 ** 40, 2 ** 40, 0]), "needs"),
    (_entry_set("b", "dtype", "F128"), "dtype"),
    (_entry_set("b", "dtype", "F16"), "needs"),
    (_entry_set("b", "extra", 1), "keys"),
    (lambda h: h.__setitem__("b", [1, 2]), "object"),
    (lambda h: h.pop("b"), "cover|gap"),
])
def test_bad_entries(good, tmp_path, fn, word):
    with pytest.raises(ValueError, match=word):
        qc.load(_mutate(good, tmp_path, fn))


def test_overlapping_tensors(good, tmp_path):
    def f(h):
        a, b = h["b"]["data_offsets"]
        h["w.scales"]["data_offsets"], h["b"]["data_offsets"] = [a, b], list(h["w.scales"]["data_offsets"])
        h["b"]["data_offsets"] = [a, b]  # both at the same place now
    with pytest.raises(ValueError, match="overlaps|needs|gap"):
        qc.load(_mutate(good, tmp_path, f))


def test_trailing_bytes(good, tmp_path):
    with pytest.raises(ValueError, match="cover"):
        qc.load(_mutate(good, tmp_path, lambda h: None, lambda d: d + b"\x00" * 8))


@pytest.mark.parametrize("fn, word", [
    (lambda h: h.__setitem__("w.qdata", dict(h["w.qdata"], dtype="I8")), "must be U8"),
    (lambda h: h.__setitem__("w.scales", dict(h["w.scales"], shape=h["w.scales"]["shape"][::-1])),
     "shape"),
    (lambda h: h.__setitem__("m.zeros", dict(h["m.zeros"], dtype="I16")), "must be F16"),
    (lambda h: h.__setitem__("w.zeros", dict(h["w.zeros"], dtype="I8")), "must be U8"),
])
def test_wrong_part_dtype_or_shape(good, tmp_path, fn, word):
    with pytest.raises(ValueError, match=word):
        qc.load(_mutate(good, tmp_path, fn))


def _meta_edit(fn):
    def f(h):
        meta = _meta(h)
        fn(meta)
        _set_meta(h, meta)
    return f


@pytest.mark.parametrize("fn, word", [
    (_meta_edit(lambda m: m["tensors"]["w"]["config"].__setitem__("bogus", 1)), "unknown"),
    (_meta_edit(lambda m: m["tensors"]["w"]["config"].__setitem__("bits", 3)), "bits"),
    (_meta_edit(lambda m: m["tensors"]["w"]["config"].__setitem__("group_size", 64)), "shape"),
    (_meta_edit(lambda m: m["tensors"]["w"]["config"].__setitem__("symmetric", True)), "zero points"),
    (_meta_edit(lambda m: m["tensors"]["w"].__setitem__("shape", [6, 71])), "shape"),
    (_meta_edit(lambda m: m["tensors"]["w"].__setitem__("shape", [0, 70])), "shape"),
    (_meta_edit(lambda m: m["tensors"]["w"].__setitem__("shape", [1, 10 ** 30])), "claims more"),
    (_meta_edit(lambda m: m["tensors"]["w"].__setitem__("shape", [2 ** 40, 2 ** 40])), "claims more"),
    (_meta_edit(lambda m: m["tensors"]["w"].__setitem__("shape", [6, 1 << 20])), "shape"),
    (_meta_edit(lambda m: m["tensors"]["w"].__setitem__("dtype", "int8")), "dtype"),
    (_meta_edit(lambda m: m["tensors"]["w"].__setitem__("x", 1)), "keys"),
    (_meta_edit(lambda m: m.__setitem__("version", 99)), "newer"),
    (_meta_edit(lambda m: m.__setitem__("version", "1")), "version"),
    (_meta_edit(lambda m: m.__setitem__("surprise", 1)), "unknown"),
    (_meta_edit(lambda m: m.__setitem__("order", ["w", "m"])), "order"),
    (_meta_edit(lambda m: m.__setitem__("order", ["w", "m", "b", "b"])), "order"),
    (_meta_edit(lambda m: m["tensors"].__setitem__("ghost", m["tensors"]["w"])), "missing"),
    (_meta_edit(lambda m: m.__setitem__("tensors", [])), "tensors"),
    (_meta_edit(lambda m: m.__setitem__("metrics", {"layers": {"w": {"sparsity": 2}}})), "metrics"),
    (lambda h: h["__metadata__"].__setitem__("quantcore", "{broken"), "JSON"),
])
def test_bad_quantcore_metadata(good, tmp_path, fn, word):
    with pytest.raises(ValueError, match=word):
        qc.load(_mutate(good, tmp_path, fn))


def _tensor_bytes(good, name, fn):
    header, data = _split(good)
    a, b = header[name]["data_offsets"]
    data = data[:a] + fn(data[a:b]) + data[b:]
    return header, data


def test_bad_values_rejected(good, tmp_path):
    p = tmp_path / "v.safetensors"
    # a 4-bit zero point above 15
    _write(p, *_tensor_bytes(good, "w.zeros", lambda b: b"\xff" + b[1:]))
    with pytest.raises(ValueError, match="zero_points"):
        qc.load(p)
    # a NaN scale
    _write(p, *_tensor_bytes(good, "w.scales", lambda b: np.float32(np.nan).tobytes() + b[4:]))
    with pytest.raises(ValueError, match="scales"):
        qc.load(p)
    # an Inf Q4_1 minimum (float16)
    _write(p, *_tensor_bytes(good, "m.zeros", lambda b: np.float16(np.inf).tobytes() + b[2:]))
    with pytest.raises(ValueError, match="zero_points"):
        qc.load(p)


def test_plain_tensor_named_like_a_quantized_one(good, tmp_path):
    def f(h):
        h["w"] = h.pop("b")
        meta = _meta(h)
        meta["order"] = ["w", "m", "w"]
        _set_meta(h, meta)
    with pytest.raises(ValueError, match="both|order"):
        qc.load(_mutate(good, tmp_path, f))


def test_unsupported_dtype_raises(tmp_path):
    p = tmp_path / "f8.safetensors"
    _write(p, {"x": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, b"\x00\x01")
    with pytest.raises(ValueError, match="F8_E4M3"):
        qc.load(p)
    assert qc.files.read_header(p).entries["x"].dtype == "F8_E4M3"  # the header itself is fine


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors: no such file"):
        qc.load(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="is a directory, not a regular file"):
        qc.load(tmp_path)


def test_random_bytes_never_crash(tmp_path, rng):
    for i in range(40):
        n = int(rng.integers(0, 200))
        blob = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        if i % 2:
            blob = struct.pack("<Q", int(rng.integers(0, 300))) + blob
        p = tmp_path / f"r{i}.safetensors"
        p.write_bytes(blob)
        with pytest.raises(ValueError):
            qc.load(p)


def test_bit_flips_raise_value_error_or_load(good, tmp_path, rng):
    raw = bytearray(open(good, "rb").read())
    for i in range(60):
        b = raw[:]
        pos = int(rng.integers(0, len(b)))
        b[pos] ^= 1 << int(rng.integers(0, 8))
        p = tmp_path / f"f{i}.safetensors"
        p.write_bytes(bytes(b))
        try:
            out = qc.load(p)
        except ValueError:
            continue
        for v in out.values():  # what loads is usable
            np.asarray(v)


def test_zero_size_tensors(tmp_path):
    p = tmp_path / "z.safetensors"
    _write(p, {"e": {"dtype": "F32", "shape": [3, 0], "data_offsets": [0, 0]},
               "x": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"\x01\x02")
    out = qc.load(p)
    assert out["e"].shape == (3, 0) and out["x"].tolist() == [1, 2]
    _write(p, {"e": {"dtype": "F32", "shape": [2 ** 40, 2 ** 40, 0], "data_offsets": [0, 0]}}, b"")
    with pytest.raises(ValueError, match="'e'"):
        qc.load(p)
