"""QuantizedLinear's module surface, as users of PyTorch-like frameworks expect it:
parameters(), frozen_parameters(), trainable_params_count(), training mode with
train()/eval(), and agreement with quantcore.torch.QuantizedLinearModule."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from quantcore import QuantConfig, QuantizedLinear

CONFIGS = [QuantConfig.int8(), QuantConfig.int4(group_size=32), QuantConfig.q4_1(),
           QuantConfig.int8(symmetric=False, compute="float32")]


def _layer(rng, cfg=QuantConfig.int8(), n=13, k=64, bias=True):
    w = rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    return QuantizedLinear.from_linear(w, b, cfg), w, b


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.format or f"int{c.bits}")
def test_parameters_is_the_bias(cfg, rng):
    layer, _, b = _layer(rng, cfg)
    params = layer.parameters()
    assert isinstance(params, list) and len(params) == 1
    (p,) = params
    assert p.dtype == np.float32 and p.shape == (13,)
    np.testing.assert_array_equal(p, b)
    assert layer.trainable_params_count() == 13
    no_bias, _, _ = _layer(rng, cfg, bias=False)
    assert no_bias.parameters() == [] and no_bias.trainable_params_count() == 0
    assert no_bias.frozen_parameters() == []


def test_parameters_are_the_layers_own_array(rng):
    """An in-place update of parameters() reaches forward (as a framework's
    optimizer step would); the bias given to the constructor is not touched."""
    layer, _, b = _layer(rng)
    b_before = b.copy()
    x = rng.standard_normal((3, 64)).astype(np.float32)
    y0 = layer(x)
    (p,) = layer.parameters()
    assert p.flags.writeable
    assert layer.parameters()[0] is p  # the same array every call
    p -= 0.5
    np.testing.assert_allclose(layer(x), y0 - np.float32(0.5), rtol=0, atol=1e-5)
    assert not np.allclose(layer(x), y0, rtol=0, atol=0.25)
    np.testing.assert_array_equal(layer.bias, p)  # the read-only view follows
    assert not layer.bias.flags.writeable
    np.testing.assert_array_equal(b, b_before)  # the caller's array is not the layer's
    assert not np.shares_memory(b, p)


def test_frozen_parameters_are_read_only_copies(rng):
    layer, _, b = _layer(rng)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    y0 = layer(x)
    (f,) = layer.frozen_parameters()
    np.testing.assert_array_equal(f, b)
    assert not f.flags.writeable
    assert not np.shares_memory(f, layer.parameters()[0])
    with pytest.raises(ValueError):
        f[0] = 1.0
    g = np.array(f)  # a writable copy of the copy: still nothing reaches the layer
    g += 100
    np.testing.assert_array_equal(layer(x), y0)
    # later changes to the layer do not show in an earlier frozen copy
    layer.parameters()[0][:] = 0
    np.testing.assert_array_equal(f, b)


def test_training_mode(rng):
    layer, _, _ = _layer(rng)
    assert layer.training is True  # a new layer, as a framework's default
    assert layer.eval() is layer and layer.training is False
    assert layer.train() is layer and layer.training is True
    assert layer.train(False).training is False
    assert layer.train(True).eval().train(mode=True).training is True
    for bad in (1, 0, "yes", None):
        with pytest.raises(TypeError, match="mode"):
            layer.train(bad)
    assert layer.training is True


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.format or f"int{c.bits}")
def test_forward_is_the_same_in_both_modes(cfg, rng):
    layer, _, _ = _layer(rng, cfg)
    for m in (1, 3, 20):  # GEMV and GEMM paths
        x = rng.standard_normal((m, 64)).astype(np.float32)
        y_train = layer.train()(x)
        y_eval = layer.eval()(x)
        assert y_train.tobytes() == y_eval.tobytes()


def test_repr_does_not_show_the_mode(rng):
    layer, _, _ = _layer(rng)
    r_train = repr(layer)
    assert "training" not in r_train
    assert repr(layer.eval()) == r_train


@pytest.mark.parametrize("mode", [True, False])
def test_mode_survives_pickle_and_copies(mode, rng):
    layer, _, _ = _layer(rng)
    layer.train(mode)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    for again in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer), copy.copy(layer)):
        assert again.training is mode
        assert again(x).tobytes() == layer(x).tobytes()
    deep = copy.deepcopy(layer)
    deep.parameters()[0][:] = 7  # the copy owns its bias
    assert not np.array_equal(layer.parameters()[0], deep.parameters()[0])


def test_bad_pickle_state_is_refused(rng):
    layer, _, _ = _layer(rng)
    cls, args, state = layer.__reduce__()
    for bad in ({"training": "no"}, ["training"]):
        fresh = cls(*args)
        with pytest.raises(TypeError, match="training"):
            fresh.__setstate__(bad)


def test_the_quantized_tensor_and_files_are_unaffected(rng, tmp_path):
    import quantcore as qc
    layer, _, _ = _layer(rng)
    layer.eval()
    qt = layer.weight_quantized
    qc.save(tmp_path / "w.safetensors", {"w": qt})
    assert qc.load(tmp_path / "w.safetensors")["w"] == qt
    assert not hasattr(qt, "training")


# ---- quantcore.torch agrees ------------------------------------------------------------

def test_torch_module_agrees(rng):
    torch = pytest.importorskip("torch", reason="torch is an optional extra (pip install torch)")
    from quantcore.torch import QuantizedLinearModule, quantize_module

    lin = torch.nn.Linear(64, 13)
    mod = QuantizedLinearModule.from_linear(lin)
    assert mod.training is True and mod.layer.training is True
    assert mod.eval() is mod
    assert mod.training is False and mod.layer.training is False
    mod.train()
    assert mod.training is True and mod.layer.training is True
    # no torch parameters (no backward); the bias lives in the quantcore layer
    assert list(mod.parameters()) == []
    np.testing.assert_array_equal(mod.layer.parameters()[0], lin.bias.detach().numpy())
    assert mod.layer.trainable_params_count() == 13
    # an update of the layer's parameter reaches the module's forward
    x = torch.randn(2, 64)
    with torch.no_grad():
        y0 = mod(x)
        mod.layer.parameters()[0][:] += 1.0
        np.testing.assert_allclose(mod(x).numpy(), y0.numpy() + 1.0, rtol=0, atol=1e-5)

    # a model in eval mode keeps it through quantize_module; the modes agree after
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    model.eval()
    quantize_module(model, QuantConfig.int4())
    for m in (model[0], model[2]):
        assert isinstance(m, QuantizedLinearModule)
        assert m.training is False and m.layer.training is False
    model.train()
    assert all(m.layer.training for m in (model[0], model[2]))
    # wrapping a layer takes its mode, without changing it
    layer = QuantizedLinear.from_linear(rng.standard_normal((4, 8)).astype(np.float32)).eval()
    wrapped = QuantizedLinearModule(layer)
    assert wrapped.training is False and layer.training is False
    # state_dict round trip: the rebuilt layer takes the module's mode
    state = model.state_dict()
    model2 = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    quantize_module(model2, QuantConfig.int4())
    model2.eval()
    model2.load_state_dict(state)
    assert model2[0].layer.training is False
    # pickling the module keeps both modes
    again = pickle.loads(pickle.dumps(model2))
    assert again[0].training is False and again[0].layer.training is False
