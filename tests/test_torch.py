"""quantcore.torch: QuantizedLinearModule against torch.nn.Linear holding the
dequantized weight (the oracle), quantize_module on small networks, awkward
shapes, dtypes and strides, the inference-only rule, state_dict and pickling."""
from __future__ import annotations

import copy
import io
import pickle
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'quantcore[torch]')")
from torch import nn  # noqa: E402

from quantcore import QuantConfig, QuantizedLinear  # noqa: E402
from quantcore.torch import QuantizedLinearModule, QuantizeReport, quantize_module  # noqa: E402

CONFIGS = {
    "int8": QuantConfig.int8(),
    "int8_f32": QuantConfig.int8(compute="float32"),
    "int4_g32": QuantConfig.int4(),
    "int4_g32_f32": QuantConfig.int4(compute="float32"),
    "int4_g64_asym": QuantConfig(bits=4, group_size=64, symmetric=False),
    "q4_1": QuantConfig.q4_1(),
}
# (in_features, out_features): odd K and N, K not a multiple of the group, N below a SIMD width
SHAPES = [(1, 1), (17, 3), (31, 33), (33, 31), (63, 65), (65, 64), (100, 7), (257, 130)]


def _linear(k, n, bias=True, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.2)
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g))
    return lin.to(dtype)


def _oracle(mod: QuantizedLinearModule, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear with the dequantized weight, in float64."""
    w = mod.dequantized_weight().double()
    b = None if mod.layer.bias is None else torch.from_numpy(mod.layer.bias.copy()).double()
    return torch.nn.functional.linear(x.double(), w, b)


def _tolerance(mod: QuantizedLinearModule, x: torch.Tensor) -> np.ndarray:
    """Per-output bound: float rounding (K * eps scaled by |x| @ |W|), plus the
    activation rounding of the int8 compute path where it runs."""
    xa = x.detach().double().abs().numpy()
    wa = np.abs(mod.layer.dequantized_weight().astype(np.float64))
    tol = (xa @ wa.T) * (mod.in_features + 2) * 2.0 ** -23 + 1e-6
    if mod.layer.compute == "int8":
        tol = tol + mod.layer.int8_error_bound(x.detach().float().numpy()) * 1.001
    return tol


def _check(mod, x, y):
    want = _oracle(mod, x).numpy()
    tol = _tolerance(mod, x)
    got = y.double().numpy()
    assert got.shape == want.shape
    bad = np.abs(got - want) > tol
    assert not bad.any(), f"max excess {(np.abs(got - want) - tol).max():.3g}"


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("k,n", SHAPES, ids=lambda v: str(v))
def test_matches_linear_with_dequantized_weight(name, k, n):
    lin = _linear(k, n, seed=k * 1000 + n)
    mod = QuantizedLinearModule.from_linear(lin, CONFIGS[name])
    x = torch.randn(5, k, generator=torch.Generator().manual_seed(n))
    with torch.no_grad():
        y = mod(x)
    assert y.dtype == torch.float32 and y.shape == (5, n)
    _check(mod, x, y)
    # and the quantization is quantcore's: same as QuantizedLinear.from_linear on the arrays
    ref = QuantizedLinear.from_linear(lin.weight.detach().numpy(), lin.bias.detach().numpy(),
                                      CONFIGS[name])
    np.testing.assert_array_equal(y.numpy(), ref(x.numpy()))


@pytest.mark.parametrize("m", [1, 2, 7, 8, 9, 33])
def test_rows_gemv_and_gemm_paths(m):
    lin = _linear(96, 40, seed=m)
    mod = QuantizedLinearModule.from_linear(lin, QuantConfig.int4())
    x = torch.randn(m, 96, generator=torch.Generator().manual_seed(m))
    with torch.inference_mode():
        y = mod(x)
    _check(mod, x, y)


def test_close_to_the_float_linear():
    """The whole point: int8 output stays close to the float layer's."""
    lin = _linear(256, 64, seed=3)
    x = torch.randn(16, 256, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = lin(x)
        y8 = QuantizedLinearModule.from_linear(lin, QuantConfig.int8())(x)
        y4 = QuantizedLinearModule.from_linear(lin, QuantConfig.int4())(x)
    rel8 = (y8 - want).norm() / want.norm()
    rel4 = (y4 - want).norm() / want.norm()
    assert rel8 < 0.01 and rel4 < 0.1 and rel8 < rel4


@pytest.mark.parametrize("lead", [(), (1,), (3,), (2, 3), (2, 1, 4), (0,), (3, 0, 2)])
def test_leading_dims(lead):
    mod = QuantizedLinearModule.from_linear(_linear(33, 17, seed=1), QuantConfig.int8())
    x = torch.randn(*lead, 33, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = mod(x)
    assert y.shape == lead + (17,)
    _check(mod, x.reshape(-1, 33), y.reshape(-1, 17))


@pytest.mark.parametrize("view", ["transposed", "sliced_rows", "sliced_cols", "expanded", "permuted"])
def test_strided_inputs(view):
    mod = QuantizedLinearModule.from_linear(_linear(40, 9, seed=5), QuantConfig.int4())
    g = torch.Generator().manual_seed(6)
    if view == "transposed":
        x = torch.randn(40, 6, generator=g).t()
    elif view == "sliced_rows":
        x = torch.randn(12, 40, generator=g)[::3]
    elif view == "sliced_cols":
        x = torch.randn(5, 80, generator=g)[:, ::2]
    elif view == "expanded":
        x = torch.randn(1, 40, generator=g).expand(4, 40)
    else:
        x = torch.randn(40, 3, 2, generator=g).permute(2, 1, 0)
    assert not x.is_contiguous()
    before = x.clone()
    with torch.no_grad():
        y = mod(x)
        y_contig = mod(x.contiguous())
    assert torch.equal(x, before)
    assert torch.equal(y, y_contig)
    _check(mod, x.reshape(-1, 40), y.reshape(-1, 9))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_keep_the_input_dtype(dtype):
    mod = QuantizedLinearModule.from_linear(_linear(64, 10, seed=7), QuantConfig.int8())
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(8)).to(dtype)
    with torch.no_grad():
        y = mod(x)
    assert y.dtype == dtype
    want = mod(x.float())  # the computation is float32 either way
    torch.testing.assert_close(y, want.to(dtype), rtol=0, atol=0)


def test_half_precision_linear_is_quantized_from_its_weight():
    lin = _linear(64, 16, seed=9, dtype=torch.float16)
    mod = QuantizedLinearModule.from_linear(lin, QuantConfig.int8())
    ref = QuantizedLinear.from_linear(lin.weight.detach().float().numpy(),
                                      lin.bias.detach().float().numpy(), QuantConfig.int8())
    assert mod.weight_quantized == ref.weight_quantized


def test_zero_copy_for_contiguous_float32(monkeypatch):
    mod = QuantizedLinearModule.from_linear(_linear(32, 8), QuantConfig.int8())
    seen = {}
    real = mod.layer.forward

    class Spy:
        def __init__(self, layer):
            self.layer = layer

        def __getattr__(self, name):
            return getattr(self.layer, name)

        def forward(self, a, out=None):
            seen["x"] = a.__array_interface__["data"][0]
            seen["out"] = out.__array_interface__["data"][0]
            return real(a, out=out)

    spy = Spy(mod.layer)
    mod.__dict__["layer"] = spy  # bypass the type check: only the call path is observed
    x = torch.randn(4, 32)
    with torch.no_grad():
        y = mod(x)
    assert seen["x"] == x.data_ptr(), "a contiguous float32 input must be read in place"
    assert seen["out"] == y.data_ptr(), "the result must be written into the returned tensor"


def test_inference_only():
    mod = QuantizedLinearModule.from_linear(_linear(16, 4), QuantConfig.int8())
    x = torch.randn(2, 16, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference only.*no_grad"):
        mod(x)
    with torch.no_grad():
        y = mod(x)
    assert not y.requires_grad
    with torch.inference_mode():
        assert mod(x).shape == (2, 4)
    assert list(mod.parameters()) == []  # nothing for an optimizer to train


def test_bad_inputs():
    mod = QuantizedLinearModule.from_linear(_linear(16, 4), QuantConfig.int8())
    with torch.no_grad():
        with pytest.raises(TypeError, match="x must be a torch.Tensor"):
            mod(np.zeros((2, 16), np.float32))
        with pytest.raises(TypeError, match="x must be a float.*int64"):
            mod(torch.zeros(2, 16, dtype=torch.int64))
        with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., in_features=16\)"):
            mod(torch.zeros(2, 15))
        with pytest.raises(ValueError, match="x must have shape"):
            mod(torch.tensor(1.0))
        with pytest.raises(ValueError, match="CPU tensor.*meta"):
            mod(torch.zeros(2, 16, device="meta"))
    with pytest.raises(TypeError, match="layer must be a quantcore.QuantizedLinear"):
        QuantizedLinearModule(_linear(4, 4))
    with pytest.raises(TypeError, match="linear must be a torch.nn.Linear"):
        QuantizedLinearModule.from_linear(np.zeros((4, 4), np.float32))
    with pytest.raises(TypeError, match="config must be a QuantConfig"):
        QuantizedLinearModule.from_linear(_linear(4, 4), "int8")
    lin = _linear(8, 4)
    with torch.no_grad():
        lin.weight[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        QuantizedLinearModule.from_linear(lin)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_input_is_refused():  # pragma: no cover - no GPU in CI
    mod = QuantizedLinearModule.from_linear(_linear(16, 4), QuantConfig.int8())
    with torch.no_grad(), pytest.raises(ValueError, match="CPU tensor.*cuda"):
        mod(torch.zeros(2, 16, device="cuda"))


def test_nan_in_activations_propagates_per_row():
    mod = QuantizedLinearModule.from_linear(_linear(32, 8), QuantConfig.int8())
    x = torch.randn(3, 32)
    x[1, 5] = float("nan")
    with torch.no_grad():
        y = mod(x)
        clean = mod(x[[0, 2]])
    assert torch.isnan(y[1]).all()
    assert torch.equal(y[[0, 2]], clean)


def test_torch_threads_do_not_matter():
    mod = QuantizedLinearModule.from_linear(_linear(300, 70, seed=11), QuantConfig.int4())
    x = torch.randn(20, 300, generator=torch.Generator().manual_seed(12))
    before = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            with torch.no_grad():
                outs.append(mod(x))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


# ---- quantize_module --------------------------------------------------------------------

class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 48)
        self.block = nn.Sequential(nn.Linear(48, 96), nn.GELU(), nn.Linear(96, 48))
        self.norm = nn.LayerNorm(48)
        self.head = nn.Linear(48, 5, bias=False)

    def forward(self, ids):
        h = self.embed(ids)
        h = self.norm(h + self.block(h))
        return self.head(h.mean(-2))


def _net(seed=0):
    torch.manual_seed(seed)
    return _Net().eval()


def test_sequential_swapped_in_place():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(33, 64), nn.ReLU(), nn.Linear(64, 17), nn.Tanh(), nn.Linear(17, 3))
    x = torch.randn(6, 33)
    with torch.no_grad():
        want = net(x)
    # what the quantized network must give: each Linear replaced by its dequantized weight
    deq = copy.deepcopy(net)
    cfg = QuantConfig.int8(compute="float32")
    with torch.no_grad():
        for i in (0, 2, 4):
            w = QuantizedLinear.from_linear(net[i], config=cfg).dequantized_weight()
            deq[i].weight.copy_(torch.from_numpy(w))
        want_deq = deq(x)
    out = quantize_module(net, cfg)
    assert out is net
    assert [type(m).__name__ for m in net] == ["QuantizedLinearModule", "ReLU",
                                               "QuantizedLinearModule", "Tanh",
                                               "QuantizedLinearModule"]
    with torch.no_grad():
        y = net(x)
    torch.testing.assert_close(y, want_deq, rtol=1e-5, atol=1e-5)
    assert (y - want).abs().max() < 0.02 * want.abs().max()


def test_nested_module_filter_and_report():
    net = _net()
    ids = torch.randint(0, 50, (4, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = net(ids)
    seen = []

    def only_block(name, mod):
        seen.append((name, type(mod).__name__))
        return name.startswith("block.")

    out, rep = quantize_module(net, QuantConfig.int4(), filter=only_block, report=True)
    assert out is net
    assert seen == [("block.0", "Linear"), ("block.2", "Linear"), ("head", "Linear")]
    assert isinstance(rep, QuantizeReport)
    assert list(rep.swapped) == ["block.0", "block.2"] and rep.skipped == {"head": "filter"}
    assert isinstance(net.block[0], QuantizedLinearModule) and isinstance(net.block[2], QuantizedLinearModule)
    assert type(net.head) is nn.Linear
    assert rep.bytes_before == 4 * (48 * 96 + 96 + 96 * 48 + 48)
    assert rep.bytes_after == net.block[0].nbytes + net.block[2].nbytes < rep.bytes_before / 4
    assert "2 nn.Linear swapped, 1 skipped" in str(rep)
    with torch.no_grad():
        y = net(ids)
    assert (y - want).abs().max() < 0.1 * want.abs().max() + 0.05


def test_not_inplace_leaves_the_model_alone():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    q = quantize_module(net, QuantConfig.int8(), inplace=False)
    assert q is not net
    assert type(net.head) is nn.Linear and isinstance(q.head, QuantizedLinearModule)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_root_linear_and_shared_layers():
    lin = _linear(20, 6)
    q = quantize_module(lin, QuantConfig.int8())
    assert isinstance(q, QuantizedLinearModule) and q.out_features == 6
    shared = _linear(8, 8)
    net = nn.Sequential(shared, nn.ReLU(), shared)
    _, rep = quantize_module(net, report=True)
    assert net[0] is net[2] and isinstance(net[0], QuantizedLinearModule)
    assert list(rep.swapped) == ["0", "2"] and rep.bytes_before == 4 * (64 + 8)


def test_multihead_attention_out_proj_is_left_alone():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(16, 16))
    net.add_module("attn", nn.MultiheadAttention(16, 2, batch_first=True))
    _, rep = quantize_module(net, report=True)
    assert "attn.out_proj" in rep.skipped and list(rep.swapped) == ["0"]
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        h = net[0](x)
        net.attn(h, h, h)  # still runs


def test_quantize_module_bad_arguments():
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        quantize_module(np.zeros(3))
    with pytest.raises(TypeError, match="config must be a QuantConfig"):
        quantize_module(_net(), {"bits": 8})
    with pytest.raises(TypeError, match="filter must be a callable"):
        quantize_module(_net(), filter="block")
    with pytest.raises(ValueError, match="cannot quantize block.0.*group_size >= 32"):
        quantize_module(_net(), QuantConfig(bits=4, group_size=16))


# ---- state, copies, pickling, repr ---------------------------------------------------------

@pytest.mark.parametrize("name", ["int8", "int4_g64_asym", "q4_1"])
def test_state_dict_round_trip(name):
    net = quantize_module(_net(), CONFIGS[name])
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = net(ids)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert {"block.0.weight_data", "block.0.weight_scales", "block.0.bias",
            "head.weight_data"} <= set(sd)
    assert ("block.0.weight_zero_points" in sd) == (not CONFIGS[name].symmetric)
    # into a model quantized differently (other weights, other format): all replaced
    other = quantize_module(_net(seed=5), QuantConfig.int8())
    other.load_state_dict(sd)
    assert other.block[0].config == CONFIGS[name]
    with torch.no_grad():
        assert torch.equal(other(ids), want)


def test_load_state_dict_reports_missing_and_bad_arrays():
    mod = QuantizedLinearModule.from_linear(_linear(32, 8), QuantConfig.int8())
    sd = mod.state_dict()
    broken = dict(sd)
    del broken["weight_scales"]
    res = mod.load_state_dict(broken, strict=False)
    assert "weight_scales" in res.missing_keys
    with pytest.raises(RuntimeError, match="weight_scales"):
        mod.load_state_dict(broken)
    bad = dict(sd)
    bad["weight_data"] = sd["weight_data"][:, :5]
    with pytest.raises(RuntimeError, match="cannot rebuild the quantized layer.*data"):
        mod.load_state_dict(bad)
    extra = dict(sd)
    extra["surprise"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="surprise"):
        mod.load_state_dict(extra)


def test_pickle_deepcopy_and_to_dtype():
    net = quantize_module(_net(), QuantConfig.int4())
    ids = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = net(ids)
        for other in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
            assert torch.equal(other(ids), want)
        net.half()  # the quantized weights stay as they are; the rest goes to float16
        assert net.block[0].weight_quantized.config == QuantConfig.int4()
        assert net.block[0](torch.randn(2, 48, dtype=torch.float16)).dtype == torch.float16


def test_repr():
    mod = QuantizedLinearModule.from_linear(_linear(64, 10), QuantConfig.int4())
    r = repr(mod)
    assert r.startswith("QuantizedLinearModule(in_features=64, out_features=10, bias=True")
    assert "int4 g32" in r and "compute=" in r
    assert "q4_0" in repr(QuantizedLinearModule.from_linear(_linear(64, 10), QuantConfig.q4_0()))


def test_import_quantcore_does_not_import_torch():
    code = "import sys, quantcore; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
