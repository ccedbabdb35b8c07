"""quantcore.torch.collect_stats and quantize_module(..., calibration=): the
statistics equal those of the inputs captured by hand, hooks leave nothing
behind, GPTQ through quantize_module gives the layers quantize() gives."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'quantcore[torch]')")
from torch import nn  # noqa: E402

import quantcore as qc  # noqa: E402
from quantcore import QuantConfig  # noqa: E402
from quantcore.calibrate import LayerStats  # noqa: E402
from quantcore.torch import collect_stats, quantize_module  # noqa: E402


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(24, 48)
        self.block = nn.Sequential(nn.GELU(), nn.Linear(48, 32), nn.ReLU())
        self.out = nn.Linear(32, 8, bias=False)
        self.shared = self.out  # one module under two names

    def forward(self, x, scale=1.0):
        return self.out(self.block(self.inp(x * scale)))


def _batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 5, 24, generator=g), torch.randn(7, 24, generator=g)]


def test_collect_stats_matches_the_inputs():
    net = Net().eval()
    seen = {}
    hooks = [m.register_forward_hook(lambda m, a, y, n=n: seen.setdefault(n, []).append(a[0].detach()))
             for n, m in (("inp", net.inp), ("block.1", net.block[1]), ("out", net.out))]
    batches = _batches()
    with torch.no_grad():
        for b in batches:
            net(b)
    for h in hooks:
        h.remove()
    stats = collect_stats(net, batches)
    assert set(stats) == {"inp", "block.1", "out"}  # the shared layer once, by its first name
    for name, xs in seen.items():
        want = LayerStats(xs[0].shape[-1])
        for x in xs:
            want.update(x.numpy())
        np.testing.assert_allclose(stats[name].xtx, want.xtx, rtol=1e-12)
        assert stats[name].count == want.count == 27
    assert all(not m._forward_pre_hooks for m in net.modules())
    # tuples, dicts and a custom forward; filter; diagonal only
    s2 = collect_stats(net, [(batches[1], 2.0)], hessian=False, filter=lambda n, m: n != "inp")
    assert set(s2) == {"block.1", "out"} and not s2["out"].has_hessian
    s3 = collect_stats(net, [{"x": batches[1], "scale": 2.0}])
    np.testing.assert_allclose(s3["out"].xtx, collect_stats(net, [(batches[1], 2.0)])["out"].xtx)
    s4 = collect_stats(net, [batches[1]], forward=lambda m, b: m(b, scale=2.0))
    np.testing.assert_allclose(s4["inp"].xtx, s3["inp"].xtx)


def test_collect_stats_errors_remove_the_hooks():
    net = Net()
    with pytest.raises(RuntimeError):
        collect_stats(net, [torch.randn(3, 5)])  # wrong width: the model itself fails
    assert all(not m._forward_pre_hooks for m in net.modules())
    with pytest.raises(TypeError, match="nn.Module"):
        collect_stats(object(), [])
    with pytest.raises(TypeError, match="filter"):
        collect_stats(net, [], filter=3)


def test_quantize_module_with_gptq():
    net = Net().eval()
    batches = _batches()
    stats = collect_stats(net, batches)
    cfg = QuantConfig.int4(method="gptq")
    qnet, rep = quantize_module(net, cfg, calibration=stats, inplace=False, report=True)
    assert sorted(rep.calibrated) == ["block.1", "inp", "out"]  # "shared" is "out", quantized once
    assert "(calibrated)" in str(rep)
    w = net.inp.weight.detach().numpy()
    assert qnet.inp.weight_quantized == qc.quantize(w, cfg, calibration=stats["inp"])
    with torch.inference_mode():
        x = batches[1]
        ref = net(x)
        got = qnet(x)
        plain = quantize_module(net, QuantConfig.int4(), inplace=False)(x)
    err = lambda y: float((y - ref).norm())  # noqa: E731
    assert err(got) < err(plain)
    with pytest.raises(ValueError, match="block.1.*collect_stats"):
        quantize_module(net, cfg, calibration={"inp": stats["inp"]}, inplace=False)
    with pytest.raises(ValueError, match="block.1.*width 24 for a weight with 48"):
        quantize_module(net, cfg, calibration={**stats, "block.1": stats["inp"]}, inplace=False)
    with pytest.raises(TypeError, match="calibration"):
        quantize_module(net, cfg, calibration=[1], inplace=False)
