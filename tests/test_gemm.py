"""The tiled GEMM paths of the linear layer (m >= 8 rows of x; csrc/x86/gemm_avx2.c and,
where the CPU has AVX-512 VNNI, csrc/x86/gemm_avx512.c: every test runs on each).

Every kind x compute mode x scale group x scale dtype, over shapes that cover
every M in {8, 9, 17, 64, 130}, and every pair of K in {32, 33, 100, 256, 1000}
and N in {1, 7, 16, 33, 100} (partial 32-blocks, partial 16-row panels, tails of
the microkernels, groups split by K).  The AVX2 result is held against
(a) the float64 NumPy oracle x @ dequantize(W).T + bias, within 1e-4 of the sum
    of the magnitudes of the terms (plus the documented int8 bound in int8
    mode), and
(b) the scalar kernel set (the reference GEMV), within the same 1e-4.
Then: columns of `out` outside the layer are never written, reading the weights
stops at the end of the last row (a PROT_NONE page follows it), a thread count
does not change a single bit, and a NaN row stays in its row.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np
import pytest

import oracle as O
import quantcore
from helpers import seed_for
from quantcore import QuantConfig, QuantizedLinear, QuantizedTensor, _ext

pytestmark = pytest.mark.skipif("avx2" not in quantcore.available_isas(),
                                reason="the AVX2 kernel set is not available here")
# the kernel sets with a tiled GEMM of their own (gemm_avx2.c, gemm_avx512.c)
GEMM_ISAS = [i for i in ("avx2", "avx512") if i in quantcore.available_isas()]

MS = (8, 9, 17, 64, 130)
KS = (32, 33, 100, 256, 1000)
NS = (1, 7, 16, 33, 100)
# every (K, N) pair once, M cycling so that each M meets each K and each N
SHAPES = [(MS[(i + j) % len(MS)], k, n) for i, k in enumerate(KS) for j, n in enumerate(NS)]
GROUPS = [("channel", None), ("group", 32), ("group", 64), ("tensor", None)]
GROUP_IDS = ["row", "g32", "g64", "tensor"]
MODES = {"float32": _ext.COMPUTE_F32, "int8": _ext.COMPUTE_I8}
REL = 1e-4


@pytest.fixture(params=GEMM_ISAS)
def restore_isa(request):
    """The GEMM kernel set under test (every one this CPU runs); the tests switch
    kernel sets, and the best one is in use again afterwards."""
    try:
        yield request.param
    finally:
        quantcore.set_isa(None)


class Layer:
    """A quantized (n, k) weight and a way to run its forward on the kernel set in
    use: through QuantizedLinear where a public QuantConfig exists, else (MIN4
    other than Q4_1) through the extension's QWeight directly."""

    def __init__(self, w, bias, kind, granularity, group_size, scale_dtype, mode):
        n, k = w.shape
        self.kind, self.n, self.k, self.bias = kind, n, k, bias
        self.group = group_size if granularity == "group" else 0
        self.per_tensor = granularity == "tensor"
        self.mode = MODES[mode]
        cfg = self._config(kind, granularity, group_size, scale_dtype, mode)
        if cfg is not None:
            qt = QuantizedTensor.quantize(w, cfg)
            self.layer = QuantizedLinear(qt, bias, prepack=False)  # the row-layout kernels
            self.qw = self.layer._qw
            rows = O.Quantized(qt.data.reshape(n, -1), qt.scales, qt.zero_points)
            self.data, self.scales, self.zeros = rows
            self.scales = self.scales.reshape((1, 1) if self.per_tensor else (n, -1))
            if self.zeros is not None:
                self.zeros = self.zeros.reshape(self.scales.shape)
        else:
            self.layer = None
            self.data, self.scales, self.zeros = _ext.quantize_2d(
                w, kind, self.group, self.per_tensor, scale_dtype == "float16")
            self.qw = _ext.QWeight(self.data, self.scales, self.zeros, kind, n, k, self.group,
                                   self.per_tensor)

    @staticmethod
    def _config(kind, granularity, group_size, scale_dtype, mode):
        if kind == O.MIN4:
            if (granularity, group_size, scale_dtype) == ("group", 32, "float16"):
                return QuantConfig.q4_1(compute=mode)
            return None
        return QuantConfig(bits=O.BITS[kind], symmetric=kind in (O.SYM8, O.SYM4),
                           granularity=granularity, group_size=group_size,
                           scale_dtype=scale_dtype, compute=mode)

    def forward(self, x):
        if self.layer is not None:
            return self.layer.forward(x)
        y = np.empty((x.shape[0], self.n), np.float32)
        return self.qw.forward(x, self.bias, y, self.mode)

    def uses_gemm(self, m):
        return self.qw.uses_gemm(m, self.mode)

    def dequantized(self):
        return O.dequantize(self.data, self.scales, self.zeros, self.kind, self.n, self.k,
                            self.group, self.per_tensor).astype(np.float64)

    def term_magnitudes(self):
        """|d q| + |c| per weight element: the size of the terms that the kernels add
        (d * sum(q x) + c * sum(x)), which bounds their rounding errors."""
        n, k, kind = self.n, self.k, self.kind
        data = np.asarray(self.data)
        if O.BITS[kind] == 4:
            q = O.unpack_int4(data.view(np.uint8), k).astype(np.float64)
        elif kind == O.SYM8:
            q = data.view(np.int8).astype(np.float64)
        else:
            q = data.view(np.uint8).astype(np.float64)
        d = O._expand(self.scales.astype(np.float64), n, k, self.group, self.per_tensor)
        if kind in O.HAS_INT_ZERO:
            c = -d * O._expand(self.zeros.astype(np.float64), n, k, self.group, self.per_tensor)
        elif kind == O.SYM4:
            c = -8.0 * d
        elif kind == O.MIN4:
            c = O._expand(self.zeros.astype(np.float64), n, k, self.group, self.per_tensor)
        else:
            c = 0.0 * d
        return np.abs(d * q) + np.abs(c)

    def int8_bound(self, x):
        if self.layer is not None:
            return self.layer.int8_error_bound(x)
        kp = -(-self.k // 32) * 32
        xp = np.zeros((x.shape[0], kp))
        xp[:, :self.k] = x
        half = np.abs(xp).reshape(x.shape[0], -1, 32).max(-1) / 127.0 / 2.0
        wabs = np.zeros((self.n, kp))
        wabs[:, :self.k] = np.abs(self.dequantized())
        return half @ wabs.reshape(self.n, -1, 32).sum(-1).T


def check_layer(layer: Layer, x: np.ndarray, what: str, isa: str) -> None:
    m = x.shape[0]
    quantcore.set_isa(isa)
    assert layer.uses_gemm(m), f"{what}: the GEMM path was not taken"
    y = layer.forward(x)
    quantcore.set_isa("scalar")
    assert not layer.uses_gemm(m)
    y_scalar = layer.forward(x)
    quantcore.set_isa(None)

    x64 = x.astype(np.float64)
    ref = x64 @ layer.dequantized().T + layer.bias
    mag = np.abs(x64) @ layer.term_magnitudes().T + np.abs(layer.bias)
    tol = REL * mag + 1e-30
    bound = tol + (layer.int8_bound(x) if layer.mode == _ext.COMPUTE_I8 else 0.0)
    for got, want, lim, against in ((y, ref, bound, "the float64 oracle"),
                                    (y, y_scalar, tol, "the scalar kernels")):
        err = np.abs(got.astype(np.float64) - want)
        if not np.all(err <= lim):
            i = np.unravel_index(np.argmax(err - lim), err.shape)
            raise AssertionError(f"{what}: off {against} at {i}: got {got[i]!r}, want "
                                 f"{want[i]!r}, |diff| {err[i]:.3g} > {lim[i]:.3g}")


@pytest.mark.parametrize("scale_dtype", ["float32", "float16"])
@pytest.mark.parametrize("granularity,group_size", GROUPS, ids=GROUP_IDS)
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", list(O.KIND_NAMES), ids=list(O.KIND_NAMES.values()))
def test_gemm_matches_oracle_and_scalar(kind, mode, granularity, group_size, scale_dtype,
                                        restore_isa):
    name = f"{O.KIND_NAMES[kind]}-{mode}-{granularity}{group_size or ''}-{scale_dtype}"
    rng = np.random.default_rng(seed_for(name))
    for m, k, n in SHAPES:
        w = rng.standard_normal((n, k)).astype(np.float32)
        if kind in (O.ASYM8, O.ASYM4, O.MIN4):
            w += np.float32(0.7)  # off-centre rows, so zero points and minima matter
        bias = rng.standard_normal(n).astype(np.float32)
        x = rng.standard_normal((m, k)).astype(np.float32)
        layer = Layer(w, bias, kind, granularity, group_size, scale_dtype, mode)
        check_layer(layer, x, f"{restore_isa} {name} M={m} K={k} N={n}", restore_isa)


# Tile edges of both GEMMs: microkernel rows (AVX2 4/6, AVX-512 6/14) split at
# M = 10..17 and 31..33; 16- and 32-row panels at N = 15, 31..33, 63, 65 and the
# 256-row N tile plus one; K tiles (AVX2 I8 16 blocks, AVX-512 I8 32 blocks, F32
# 256 columns) plus one block (K = 544, 2080, 4128), K not a multiple of 32 nor of
# the group.
EDGE_SHAPES = [(10, 544, 257), (13, 33, 31), (16, 520, 65), (31, 100, 63), (32, 1000, 32),
               (33, 64, 15), (14, 96, 2), (15, 513, 47), (17, 2080, 40), (12, 4128, 33)]


@pytest.mark.parametrize("granularity,group_size", [("channel", None), ("group", 64)],
                         ids=["row", "g64"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", list(O.KIND_NAMES), ids=list(O.KIND_NAMES.values()))
def test_gemm_tile_edges(kind, mode, granularity, group_size, restore_isa):
    name = f"edges-{O.KIND_NAMES[kind]}-{mode}-{granularity}"
    rng = np.random.default_rng(seed_for(name))
    for m, k, n in EDGE_SHAPES:
        w = rng.standard_normal((n, k)).astype(np.float32)
        if kind in (O.ASYM8, O.ASYM4, O.MIN4):
            w += np.float32(0.5)
        bias = rng.standard_normal(n).astype(np.float32)
        x = rng.standard_normal((m, k)).astype(np.float32)
        layer = Layer(w, bias, kind, granularity, group_size, "float16", mode)
        check_layer(layer, x, f"{restore_isa} {name} M={m} K={k} N={n}", restore_isa)


def _int8_exact_reference(layer: Layer, x: np.ndarray) -> np.ndarray:
    """int8 compute in float64 from the same quantized activations as the kernels
    (Q8_0 blocks of 32): per block d * da * sum(q * aq) + c * da * sum(aq), the
    integer dots exact."""
    m, k = x.shape
    kp = -(-k // 32) * 32
    xp = np.zeros((m, kp), np.float32)
    xp[:, :k] = x
    blocks = xp.reshape(m, -1, 32)
    amax = np.abs(blocks).max(-1)
    da = (amax / np.float32(127.0)).astype(np.float32)
    ida = np.where(da != 0, np.float32(1.0) / np.where(da != 0, da, 1), 0).astype(np.float32)
    aq = np.round(np.abs(blocks * ida[..., None])) * np.sign(blocks)  # half away from zero
    aq = aq.reshape(m, kp)[:, :k].astype(np.float64)
    wdq = layer.dequantized()  # d * (q - z) etc., exact in float64
    return (aq * np.repeat(da.astype(np.float64), 32, axis=1)[:, :k]) @ wdq.T


@pytest.mark.parametrize("kind", list(O.KIND_NAMES), ids=list(O.KIND_NAMES.values()))
def test_gemm_int8_dots_are_exact(kind, restore_isa):
    """int8 compute with small integers: the weights take a few exact values and
    x rows are multiples of one step, so every product and block sum is exact in
    float32 and the kernels must agree with the float64 reference to the last
    few ulps (an error in the integer part, such as a wrong SYM compensation,
    shows up as whole units)."""
    rng = np.random.default_rng(seed_for(f"exact-{kind}"))
    m, k, n = 19, 544, 67
    levels = 15 if O.BITS[kind] == 4 else 255
    w = rng.integers(0, levels + 1, (n, k)).astype(np.float32) - np.float32(levels // 2)
    w[:, 0] = -(levels // 2)  # each row spans the whole code range: scale 1 (or close)
    w[:, 1] = levels - levels // 2
    x = rng.integers(-127, 128, (m, k)).astype(np.float32)
    x[:, ::32] = 127.0  # every 32-block's absmax is 127: da = 1, aq = x exactly
    layer = Layer(w, np.zeros(n, np.float32), kind, "channel", None, "float32", "int8")
    quantcore.set_isa(restore_isa)
    assert layer.uses_gemm(m)
    got = layer.forward(x).astype(np.float64)
    quantcore.set_isa(None)
    want = _int8_exact_reference(layer, x)
    tol = 4e-7 * (np.abs(x.astype(np.float64)) @ np.abs(layer.dequantized()).T) + 1e-6
    np.testing.assert_array_less(np.abs(got - want), tol)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", list(O.KIND_NAMES), ids=list(O.KIND_NAMES.values()))
def test_gemm_large_values_and_wide_range(kind, mode, restore_isa):
    """Rows of very different magnitudes (1e-3 .. 1e3) in x and in W."""
    rng = np.random.default_rng(seed_for(f"wide-{kind}-{mode}"))
    m, k, n = 37, 515, 45
    w = (rng.standard_normal((n, k)) * 10.0 ** rng.integers(-3, 4, (n, 1))).astype(np.float32)
    x = (rng.standard_normal((m, k)) * 10.0 ** rng.integers(-3, 4, (m, 1))).astype(np.float32)
    layer = Layer(w, np.zeros(n, np.float32), kind, "group", 64, "float32", mode)
    check_layer(layer, x, f"{restore_isa} wide {O.KIND_NAMES[kind]} {mode}", restore_isa)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", list(O.KIND_NAMES), ids=list(O.KIND_NAMES.values()))
def test_gemm_writes_only_its_columns(kind, mode, restore_isa):
    """y rows wider than n (a view into a larger buffer): the GEMM writes y[:, :n]
    only, whatever the panel and microkernel tails."""
    rng = np.random.default_rng(seed_for(f"cols-{kind}-{mode}"))
    for m, k, n in ((9, 33, 7), (17, 100, 33), (13, 64, 1)):
        w = rng.standard_normal((n, k)).astype(np.float32)
        data, scales, zeros = _ext.quantize_2d(w, kind, 32, False, False)
        qw = _ext.QWeight(data, scales, zeros, kind, n, k, 32, False)
        x = rng.standard_normal((m, k)).astype(np.float32)
        quantcore.set_isa(restore_isa)
        big = np.full((m, n + 21), 12345.0, np.float32)
        qw.forward(x, None, big[:, :n], MODES[mode])
        want = qw.forward(x, None, np.empty((m, n), np.float32), MODES[mode])
        assert np.all(big[:, n:] == 12345.0), "a column outside y was written"
        np.testing.assert_array_equal(big[:, :n], want)


def _guarded(arr: np.ndarray):
    """A copy of arr that ends exactly where a PROT_NONE page begins, or None where
    mprotect is not reachable (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    page = mmap.PAGESIZE
    body = -(-arr.nbytes // page) * page
    buf = mmap.mmap(-1, body + page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    out = np.frombuffer(buf, dtype=arr.dtype, count=arr.size,
                        offset=body - arr.nbytes).reshape(arr.shape)
    out[...] = arr
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.mprotect(base + body, page, 0) != 0:  # PROT_NONE
        return None
    return out


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", list(O.KIND_NAMES), ids=list(O.KIND_NAMES.values()))
def test_gemm_stops_at_the_end_of_the_weights(kind, mode, restore_isa):
    """The last row's last block is partial (K = 33, 100, 1000): the GEMM must copy
    it rather than load 16 or 32 bytes past the end (a fault here)."""
    rng = np.random.default_rng(seed_for(f"guard-{kind}-{mode}"))
    for m, k, n in ((8, 33, 5), (19, 100, 17), (9, 1000, 3)):
        w = rng.standard_normal((n, k)).astype(np.float32)
        data, scales, zeros = _ext.quantize_2d(w, kind, 0, False, False)
        gdata = _guarded(data)
        if gdata is None:
            pytest.skip("no mprotect here")
        qw = _ext.QWeight(gdata, scales, zeros, kind, n, k, 0, False)
        ref = _ext.QWeight(data, scales, zeros, kind, n, k, 0, False)
        x = rng.standard_normal((m, k)).astype(np.float32)
        quantcore.set_isa(restore_isa)
        assert qw.uses_gemm(m, MODES[mode])
        got = qw.forward(x, None, np.empty((m, n), np.float32), MODES[mode])
        want = ref.forward(x, None, np.empty((m, n), np.float32), MODES[mode])
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("bits,group", [(8, None), (4, 32)], ids=["int8", "int4-g32"])
def test_gemm_thread_count_changes_no_bit(bits, group, mode, restore_isa):
    """Each output is summed in the same order whatever N range a thread gets."""
    rng = np.random.default_rng(seed_for(f"threads-{bits}-{mode}"))
    m, k, n = 70, 1000, 600
    w = rng.standard_normal((n, k)).astype(np.float32)
    cfg = QuantConfig(bits=bits, group_size=group, compute=mode)
    layer = QuantizedLinear(QuantizedTensor.quantize(w, cfg), prepack=False)
    x = rng.standard_normal((m, k)).astype(np.float32)
    quantcore.set_isa(restore_isa)
    before = quantcore.get_num_threads()
    try:
        quantcore.set_num_threads(1)
        one = layer.forward(x)
        quantcore.set_num_threads(2)
        two = layer.forward(x)
        quantcore.set_num_threads(3)
        three = layer.forward(x)
    finally:
        quantcore.set_num_threads(before)
    assert layer.kernel.startswith("gemm_")
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, three)


def test_gemm_nan_row_stays_in_its_row(restore_isa):
    """int8 compute: a row with NaN is redone in float32; the other rows of the
    GEMM are those of the same x without the NaN."""
    rng = np.random.default_rng(seed_for("nan-row"))
    m, k, n = 12, 96, 40
    w = rng.standard_normal((n, k)).astype(np.float32)
    cfg = QuantConfig(bits=4, group_size=32, compute="int8")
    layer = QuantizedLinear(QuantizedTensor.quantize(w, cfg), prepack=False)
    x = rng.standard_normal((m, k)).astype(np.float32)
    quantcore.set_isa(restore_isa)
    clean = layer.forward(x)
    x[5, 17] = np.nan
    dirty = layer.forward(x)
    assert np.all(np.isnan(dirty[5]))
    keep = np.arange(m) != 5
    np.testing.assert_array_equal(dirty[keep], clean[keep])
