"""pack_int4 / unpack_int4 against the oracle (ONNX order: element 2i in the low
nibble of byte i, 2i+1 in the high nibble), on every kernel set."""

from __future__ import annotations

import numpy as np
import pytest

import oracle as O
import quantcore
from helpers import assert_bits_equal
from quantcore import pack_int4, unpack_int4

LENGTHS = list(range(1, 18)) + [31, 32, 33, 63, 64, 65, 127, 128, 129, 1031]


def random_int4(rng, shape, signed):
    if signed:
        return rng.integers(-8, 8, shape).astype(np.int8)
    return rng.integers(0, 16, shape).astype(np.uint8)


@pytest.mark.parametrize("signed", [False, True], ids=["uint4", "int4"])
@pytest.mark.parametrize("n", LENGTHS)
def test_pack_and_unpack_match_oracle(n, signed, isa, rng):
    v = random_int4(rng, (3, n), signed)
    packed = pack_int4(v)
    assert packed.dtype == np.uint8 and packed.shape == (3, (n + 1) // 2)
    assert_bits_equal(packed, O.pack_int4(v), "packed")
    if n % 2:
        assert np.all(packed[:, -1] >> 4 == 0), "an odd row ends with a zero high nibble"
    back = unpack_int4(packed, n, signed=signed)
    assert_bits_equal(back, v, "unpacked")
    # unpack of arbitrary bytes (high nibble of an odd row's last byte is ignored)
    raw = rng.integers(0, 256, (3, (n + 1) // 2)).astype(np.uint8)
    got = unpack_int4(raw, n, signed=signed)
    assert_bits_equal(got, O.unpack_int4(raw, n, signed), "unpacked random bytes")


def test_nibble_order_explicit():
    assert pack_int4(np.array([1, 2, 3], np.uint8)).tolist() == [0x21, 0x03]
    assert pack_int4(np.array([-1, -8, 7], np.int8)).tolist() == [0x8F, 0x07]
    assert unpack_int4(np.array([0x21, 0x03], np.uint8), 3).tolist() == [1, 2, 3]
    assert unpack_int4(np.array([0x8F, 0x07], np.uint8), 3, signed=True).tolist() == [-1, -8, 7]
    assert unpack_int4(np.array([0x8F, 0x07], np.uint8), 3).dtype == np.uint8
    assert unpack_int4(np.array([0x8F, 0x07], np.uint8), 3, signed=True).dtype == np.int8


@pytest.mark.parametrize("shape", [(7,), (2, 3, 9), (2, 1, 2, 64), (1, 1), (5, 1)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("signed", [False, True], ids=["uint4", "int4"])
def test_nd(shape, signed, isa, rng):
    v = random_int4(rng, shape, signed)
    packed = pack_int4(v)
    assert packed.shape == shape[:-1] + ((shape[-1] + 1) // 2,)
    assert_bits_equal(packed, O.pack_int4(v), "packed")
    assert_bits_equal(unpack_int4(packed, shape[-1], signed=signed), v, "unpacked")


VIEWS = {
    "every-other": lambda a: np.repeat(a, 2, axis=-1)[..., ::2],
    "reversed": lambda a: a[..., ::-1].copy()[..., ::-1],
    "transposed": lambda a: np.ascontiguousarray(a.T).T,
    "readonly": lambda a: (lambda c: (c.setflags(write=False), c)[1])(a.copy()),
}


@pytest.mark.parametrize("view", VIEWS)
def test_strided_and_readonly_inputs(view, isa, rng):
    v = random_int4(rng, (4, 37), True)
    x = VIEWS[view](v)
    before = x.copy()
    packed = pack_int4(x)
    assert_bits_equal(packed, O.pack_int4(v), "packed")
    assert_bits_equal(np.ascontiguousarray(x), before, "input after pack")
    p = VIEWS[view](packed)
    assert_bits_equal(unpack_int4(p, 37, signed=True), v, "unpacked")


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.uint16, np.uint64])
def test_other_integer_dtypes(dtype, isa, rng):
    """Other integer dtypes: unsigned when no value is negative, else signed."""
    u = rng.integers(0, 16, (3, 11)).astype(dtype)
    assert_bits_equal(pack_int4(u), O.pack_int4(u), "unsigned")
    if np.dtype(dtype).kind == "i":
        s = rng.integers(-8, 8, (3, 11)).astype(dtype)
        s[0, 0] = -1
        assert_bits_equal(pack_int4(s), O.pack_int4(s), "signed")


def test_python_lists(isa):
    assert pack_int4([1, 2, 3]).tolist() == [0x21, 0x03]
    assert pack_int4([[-1, 2], [3, 4]]).tolist() == [[0x2F], [0x43]]
    with pytest.raises(TypeError):
        unpack_int4([[0x21]], 2)  # a list becomes int64, and packed must be uint8


def test_threads_give_identical_bytes(threads, rng):
    v = random_int4(rng, (300, 1001), True)  # 300k values: the parallel path
    results = []
    for n in (1, 2, 3):
        threads(n)
        p = pack_int4(v)
        results.append((p, unpack_int4(p, 1001, signed=True)))
    for p, u in results:
        assert_bits_equal(p, O.pack_int4(v), "packed")
        assert_bits_equal(u, v, "unpacked")


def test_simd_equals_scalar(all_isas, rng):
    v = random_int4(rng, (9, 1031), True)
    raw = rng.integers(0, 256, (9, 516)).astype(np.uint8)
    out = {}
    for name in all_isas:
        quantcore.set_isa(name)
        out[name] = (pack_int4(v), unpack_int4(raw, 1031, True), unpack_int4(raw, 1031))
    for name in all_isas:
        for got, want in zip(out[name], out["scalar"]):
            assert_bits_equal(got, want, name)


# ---- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,bad,lo_hi", [(np.int8, 8, "[-8, 7]"), (np.int8, -9, "[-8, 7]"),
                                             (np.int8, 127, "[-8, 7]"), (np.uint8, 16, "[0, 15]"),
                                             (np.uint8, 255, "[0, 15]")])
def test_out_of_range_names_value_and_position(dtype, bad, lo_hi, isa):
    v = np.zeros((4, 33), dtype)
    v[2, 17] = bad
    v[3, 0] = bad  # a later one: the first in row-major order is reported
    before = v.copy()
    with pytest.raises(ValueError) as info:
        pack_int4(v)
    msg = str(info.value)
    assert lo_hi in msg and str(bad) in msg
    assert "position 17 of row 2" in msg
    assert_bits_equal(v, before, "input after a failed pack")


@pytest.mark.parametrize("values", [np.array([-1, 8], np.int64), np.array([0, 16], np.int32),
                                    np.array([-9, 0], np.int16)])
def test_out_of_range_other_dtypes(values):
    with pytest.raises(ValueError, match=str(values[np.argmax(np.abs(values))])):
        pack_int4(values)


def test_out_of_range_message_states_int4_range():
    with pytest.raises(ValueError) as info:
        pack_int4(np.array([1, 99, 2], np.int64))
    assert "[0, 15] (int4)" not in str(info.value)
    assert "[-8, 7]" in str(info.value)


@pytest.mark.parametrize("values", [np.array([1.0, 2.0]), np.array([True, False]),
                                    np.array([1 + 0j]), np.array(["a"]),
                                    np.array([1, 2], dtype=object), [1.5, 2.0]])
def test_pack_wrong_dtype_raises_type_error(values):
    with pytest.raises(TypeError, match="integer"):
        pack_int4(values)


def test_pack_zero_dim_raises():
    with pytest.raises(ValueError, match="ndim"):
        pack_int4(np.int8(3))


@pytest.mark.parametrize("packed", [np.zeros(3, np.int8), np.zeros(3, np.float32),
                                    np.zeros(3, np.uint16), [1, 2]])
def test_unpack_wrong_dtype_raises_type_error(packed):
    with pytest.raises(TypeError, match="uint8"):
        unpack_int4(packed, 6)


@pytest.mark.parametrize("n", [7, 4, 0, 100])
def test_unpack_n_mismatch_raises(n):
    packed = np.zeros((2, 3), np.uint8)  # holds n = 5 or 6
    with pytest.raises(ValueError, match=f"n={n}"):
        unpack_int4(packed, n)


@pytest.mark.parametrize("n", [5, 6])
def test_unpack_n_that_fits(n):
    assert unpack_int4(np.zeros((2, 3), np.uint8), n).shape == (2, n)


@pytest.mark.parametrize("n", [-1, 2.0, None, "6"])
def test_unpack_bad_n_raises(n):
    with pytest.raises((ValueError, TypeError), match="n"):
        unpack_int4(np.zeros((2, 3), np.uint8), n)


def test_unpack_zero_dim_raises():
    with pytest.raises(ValueError, match="ndim"):
        unpack_int4(np.uint8(3), 1)


def test_no_rows():
    assert pack_int4(np.zeros((0, 5), np.uint8)).shape == (0, 3)
    assert unpack_int4(np.zeros((0, 3), np.uint8), 5).shape == (0, 5)


def test_empty_last_axis():
    assert pack_int4(np.zeros((3, 0), np.uint8)).shape == (3, 0)
    assert unpack_int4(np.zeros((3, 0), np.uint8), 0).shape == (3, 0)
