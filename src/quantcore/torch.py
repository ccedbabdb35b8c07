"""PyTorch interop: run quantcore linear layers inside a ``torch.nn.Module`` network.

``torch`` is an optional dependency (``pip install "quantcore[torch]"``); this is the
only quantcore module that imports it, and importing quantcore itself never does.

* ``QuantizedLinearModule`` wraps a ``quantcore.QuantizedLinear`` as a module: a
  drop-in replacement for ``torch.nn.Linear`` on CPU float tensors.
* ``quantize_module(model, config)`` swaps the ``nn.Linear`` layers of a model
  (recursively, in place by default) for ``QuantizedLinearModule`` layers.
* ``collect_stats(model, batches)`` runs the model on calibration batches and
  returns the statistics of every ``nn.Linear`` input
  (``quantcore.calibrate.LayerStats`` by layer name), for
  ``quantize_module(model, QuantConfig(method="gptq"), calibration=stats)``.

Inference only.  The kernels have no backward: a forward on an input that
requires grad while autograd is recording raises ``RuntimeError`` (run the model
under ``torch.no_grad()`` or ``torch.inference_mode()``).  Inputs are CPU tensors
of dtype float32, float16, bfloat16 or float64, shape ``(..., in_features)``, any
strides; the result has the input's dtype (it is computed in float32).  A
contiguous float32 input is read in place (no copy), and the float32 result is
written straight into the returned tensor's storage.  Threads are quantcore's own
(``quantcore.set_num_threads``), not ``torch.set_num_threads``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .config import QuantConfig
from .linear import QuantizedLinear
from .tensor import QuantizedTensor

__all__ = ["QuantizedLinearModule", "quantize_module", "QuantizeReport", "collect_stats"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_STATE_KEYS = ("weight_data", "weight_scales", "weight_zero_points", "bias")


class QuantizedLinearModule(nn.Module):
    """``y = x @ W.T + bias`` with W quantized, as a ``torch.nn.Module``.

    Build one with ``QuantizedLinearModule.from_linear(linear, config)`` or wrap an
    existing layer: ``QuantizedLinearModule(quantcore.QuantizedLinear(...))``.
    ``forward`` takes a CPU float tensor ``(..., in_features)`` and returns a
    tensor of the same dtype, ``(..., out_features)``; see the module docstring
    for the inference-only rule and the zero-copy cases.

    Parameters and modes: the module registers no torch parameters, as PyTorch's
    own dynamically quantized ``Linear`` does not: its kernels have no backward,
    so nothing in it can train through autograd, and an optimizer given
    ``model.parameters()`` should not see a bias it cannot update.  The bias is
    reachable as ``module.layer.parameters()`` (the quantcore layer's writable
    array, which ``forward`` reads).  ``train()`` / ``eval()`` set ``training``
    on the module and on ``module.layer`` alike; ``forward`` computes the same in
    both modes.

    Its state is the packed weight, which
    ``state_dict()`` holds as ``weight_data`` (codes), ``weight_scales``,
    ``weight_zero_points`` (asymmetric formats) and ``bias`` tensors plus an extra
    state with the config and shape, so ``load_state_dict`` restores it into a
    module of any quantized weight.  ``.to(dtype)``, ``.half()`` and ``.float()``
    leave the weights as they are; pickling and ``copy.deepcopy`` work.
    """

    def __init__(self, layer: QuantizedLinear) -> None:
        super().__init__()
        if not isinstance(layer, QuantizedLinear):
            raise TypeError(f"layer must be a quantcore.QuantizedLinear, got {type(layer).__name__}")
        self.layer = layer
        self.training = layer.training  # the wrapped layer's mode (a new layer's: training)

    @classmethod
    def from_linear(cls, linear: Any, config: Optional[QuantConfig] = None, *,
                    calibration: Any = None) -> "QuantizedLinearModule":
        """Quantize a ``torch.nn.Linear`` (weight and bias; on any device, any float
        dtype) with `config` (default ``QuantConfig.int8()``); `calibration` (a
        ``quantcore.calibrate.LayerStats`` of its inputs) as in
        ``QuantizedTensor.quantize``."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        if config is None:
            config = QuantConfig.int8()
        if not isinstance(config, QuantConfig):
            raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
        with torch.no_grad():
            w = linear.weight.detach().to("cpu", torch.float32).numpy()
            b = None if linear.bias is None else linear.bias.detach().to("cpu", torch.float32).numpy()
        # the new module takes the replaced layer's training mode
        qt = QuantizedTensor.quantize(w, config, calibration=calibration)
        return cls(QuantizedLinear(qt, b).train(linear.training))

    def train(self, mode: bool = True) -> "QuantizedLinearModule":
        """torch's ``Module.train``, also setting the quantcore layer's mode."""
        super().train(mode)
        self.layer.train(mode)
        return self

    # ---- attributes ---------------------------------------------------------------
    @property
    def in_features(self) -> int:
        return self.layer.in_features

    @property
    def out_features(self) -> int:
        return self.layer.out_features

    @property
    def config(self) -> QuantConfig:
        return self.layer.config

    @property
    def weight_quantized(self) -> QuantizedTensor:
        return self.layer.weight_quantized

    @property
    def nbytes(self) -> int:
        """Bytes the layer holds (packed weight, scales, zero points, bias)."""
        return self.layer.nbytes

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight the layer computes with, as a new tensor."""
        return torch.from_numpy(self.layer.dequantized_weight())

    # ---- forward ------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T + bias`` for a CPU float tensor x of shape (..., in_features)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.device.type != "cpu":
            raise ValueError(f"x must be a CPU tensor (quantcore runs on the CPU), got device "
                             f"{x.device}; move it with x.cpu()")
        if x.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"x must be a float32/float16/bfloat16/float64 tensor, got {x.dtype}")
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("QuantizedLinearModule is inference only (its kernels have no "
                               "backward) and x requires grad: run the model under "
                               "torch.no_grad() or torch.inference_mode()")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape (..., in_features={self.in_features}), "
                             f"got {tuple(x.shape)}")
        xs = x.detach()
        if xs.dtype == torch.bfloat16:  # NumPy has no bfloat16
            xs = xs.float()
        a = xs.resolve_neg().numpy()  # a view: any strides, float16/32/64
        y = torch.empty(tuple(x.shape[:-1]) + (self.out_features,), dtype=torch.float32)
        self.layer.forward(a, out=y.numpy())
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    # ---- state --------------------------------------------------------------------
    def get_extra_state(self) -> Dict[str, Any]:
        qt = self.layer.weight_quantized
        return {"config": qt.config.to_dict(), "shape": tuple(qt.shape), "dtype": qt.dtype.str,
                "has_bias": self.layer.bias is not None}

    def set_extra_state(self, state: Any) -> None:
        # The arrays arrive in _load_from_state_dict, which rebuilds the layer.
        self._pending_extra: Optional[Dict[str, Any]] = state

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        qt = self.layer.weight_quantized
        arrays = {"weight_data": qt.data, "weight_scales": qt.scales,
                  "weight_zero_points": qt.zero_points, "bias": self.layer.bias}
        for key in _STATE_KEYS:
            if arrays[key] is not None:
                # The layer's arrays are read-only; the state dict gets its own copies.
                destination[prefix + key] = torch.from_numpy(np.array(arrays[key]))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        self._pending_extra = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        ours = {prefix + k for k in _STATE_KEYS}
        unexpected_keys[:] = [k for k in unexpected_keys if k not in ours]
        extra = self._pending_extra
        del self._pending_extra
        if extra is None:
            return  # super() reported the missing extra state
        try:
            config = QuantConfig.from_dict(extra["config"])
            sym = config.symmetric
            needed = ["weight_data", "weight_scales"]
            if not sym:
                needed.append("weight_zero_points")
            if extra["has_bias"]:
                needed.append("bias")
            got: Dict[str, Any] = {k: None for k in _STATE_KEYS}
            for key in needed:
                if prefix + key not in state_dict:
                    missing_keys.append(prefix + key)
                else:
                    got[key] = state_dict[prefix + key].detach().cpu().numpy()
            if any(prefix + k in missing_keys for k in needed):
                return
            qt = QuantizedTensor.from_arrays(got["weight_data"], got["weight_scales"],
                                             got["weight_zero_points"], extra["shape"], config,
                                             np.dtype(extra["dtype"]))
            self.layer = QuantizedLinear(qt, got["bias"]).train(self.training)
        except (TypeError, ValueError, KeyError) as e:
            error_msgs.append(f"{prefix}: cannot rebuild the quantized layer: {e}")

    def extra_repr(self) -> str:
        c = self.layer.config
        what = c.format or (f"int{c.bits} g{c.group_size}" if c.granularity == "group"
                            else f"int{c.bits} {c.granularity}")
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.layer.bias is not None}, weight={what}, compute={self.layer.compute!r}")


@dataclass
class QuantizeReport:
    """What ``quantize_module(..., report=True)`` did: the layers it swapped (name
    -> new module), those it left alone (name -> reason), the bytes of the
    swapped layers' weights and biases before (float32) and after, and the
    names of the layers quantized with calibration statistics."""

    swapped: Dict[str, QuantizedLinearModule] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)
    bytes_before: int = 0
    bytes_after: int = 0
    calibrated: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"quantize_module: {len(self.swapped)} nn.Linear swapped, {len(self.skipped)} skipped; "
                 f"{self.bytes_before / 2**20:.2f} MiB -> {self.bytes_after / 2**20:.2f} MiB"]
        for name, m in self.swapped.items():
            cal = " (calibrated)" if name in self.calibrated else ""
            lines.append(f"  {name or '<root>'}: {m.extra_repr()}{cal}")
        for name, why in self.skipped.items():
            lines.append(f"  {name or '<root>'}: skipped ({why})")
        return "\n".join(lines)


def quantize_module(module: nn.Module, config: Optional[QuantConfig] = None,
                    filter: Optional[Callable[[str, nn.Module], bool]] = None,
                    inplace: bool = True, report: bool = False,
                    calibration: Optional[Mapping[str, Any]] = None):
    """Replace every ``torch.nn.Linear`` in `module` (recursively) by a
    ``QuantizedLinearModule`` quantized with `config` (default ``QuantConfig.int8()``).

    filter : callable(name, linear) -> bool, optional
        Called with each linear layer's qualified name (as in ``named_modules()``,
        e.g. ``"encoder.0.fc1"``) and the layer; only those it returns True for
        are swapped.
    inplace : bool
        Modify `module` (default) or leave it untouched and work on a deep copy.
    report : bool
        Return ``(module, QuantizeReport)`` instead of the module alone.
    calibration : mapping of layer name -> ``quantcore.calibrate.LayerStats``
        From ``collect_stats(module, batches)`` (names as ``named_modules()``
        gives them).  method="gptq" needs an entry for every layer it swaps;
        method="mse" uses one where there is one.

    Returns the (modified) module; when `module` is itself an ``nn.Linear`` the
    result is a new ``QuantizedLinearModule``.  Linear layers that their parent
    does not call as modules (the ``out_proj`` of ``nn.MultiheadAttention``, which
    reads its weight directly) are left alone and listed in the report.  The
    resulting model is inference only (see this module's docstring).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if config is None:
        config = QuantConfig.int8()
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
    if filter is not None and not callable(filter):
        raise TypeError(f"filter must be a callable(name, module) -> bool or None, "
                        f"got {type(filter).__name__}")
    if calibration is not None and not isinstance(calibration, Mapping):
        raise TypeError(f"calibration must be a mapping of layer name -> LayerStats (from "
                        f"collect_stats), got {type(calibration).__name__}")
    if not inplace:
        module = copy.deepcopy(module)
    rep = QuantizeReport()

    def convert(name: str, lin: nn.Linear) -> Optional[QuantizedLinearModule]:
        if filter is not None and not filter(name, lin):
            rep.skipped[name] = "filter"
            return None
        st = None
        if calibration is not None and (config.method != "absmax" or config.ktype is not None):
            from ._layerstats import lookup
            st = lookup(calibration, name)
        if st is None and config.method == "gptq":
            raise ValueError(f"cannot quantize {name or 'module'}: method='gptq' needs calibration "
                             f"statistics of its inputs and calibration has no entry {name!r}; "
                             f"run collect_stats(model, batches) on this model (or skip the layer "
                             f"with filter=)")
        try:
            new = QuantizedLinearModule.from_linear(lin, config, calibration=st)
        except (TypeError, ValueError) as e:
            raise type(e)(f"cannot quantize {name or 'module'}: {e}") from e
        rep.swapped[name] = new
        if st is not None:
            rep.calibrated.append(name)
        rep.bytes_before += 4 * (lin.weight.numel() + (0 if lin.bias is None else lin.bias.numel()))
        rep.bytes_after += new.nbytes
        return new

    if isinstance(module, nn.Linear):
        new = convert("", module)
        out: nn.Module = module if new is None else new
        return (out, rep) if report else out

    # Collect first, swap after: never mutate the tree while walking it.
    # Pre-order, as named_modules() lists them, but every path to a shared layer.
    todo: List[Tuple[nn.Module, str, str, nn.Linear]] = []

    def walk(parent: nn.Module, prefix: str) -> None:
        for child_name, child in parent._modules.items():
            if child is None:
                continue
            name = prefix + child_name
            if not isinstance(child, nn.Linear):
                walk(child, name + ".")
            elif isinstance(parent, nn.MultiheadAttention):
                rep.skipped[name] = "read directly by nn.MultiheadAttention"
            else:
                todo.append((parent, child_name, name, child))

    walk(module, "")
    done: Dict[int, QuantizedLinearModule] = {}  # a layer shared by two parents is quantized once
    for parent, child_name, name, child in todo:
        new = done.get(id(child))
        if new is None:
            new = convert(name, child)
            if new is None:
                continue
            done[id(child)] = new
        else:
            rep.swapped[name] = new
        setattr(parent, child_name, new)
    return (module, rep) if report else module


def _call(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def collect_stats(model: nn.Module, batches: Iterable[Any], *, hessian: bool = True,
                  filter: Optional[Callable[[str, nn.Module], bool]] = None,
                  forward: Optional[Callable[[nn.Module, Any], Any]] = None) -> Dict[str, Any]:
    """Statistics of the inputs of every ``torch.nn.Linear`` in `model`, over
    calibration `batches`: ``{layer name: quantcore.calibrate.LayerStats}``,
    names as ``named_modules()`` gives them (what ``quantize_module(...,
    calibration=)`` looks up).

    Each batch is passed to the model under ``torch.inference_mode()``:
    ``model(**batch)`` for a mapping, ``model(*batch)`` for a tuple or list,
    ``model(batch)`` otherwise, or ``forward(model, batch)`` when given.  A
    forward pre-hook on each linear layer (those `filter(name, layer)` accepts)
    adds its input rows to float64 sums; nothing else is kept, the hooks are
    removed afterwards and the model is not modified.  Every input row counts,
    padding included: batch sentences of similar length, or pass unpadded
    batches.  ``hessian=False`` keeps only the per-channel mean squares (enough
    for method="mse"; method="gptq" needs the full matrix).  Inputs of any
    float dtype and device are read as float32 on the CPU.
    """
    from ._layerstats import StatsCollector
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if filter is not None and not callable(filter):
        raise TypeError(f"filter must be a callable(name, module) -> bool or None, "
                        f"got {type(filter).__name__}")
    if forward is not None and not callable(forward):
        raise TypeError(f"forward must be a callable(model, batch) or None, got {type(forward).__name__}")
    collector = StatsCollector(hessian=hessian)
    handles = []
    seen: Dict[int, str] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args: Tuple[Any, ...]) -> None:
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name}: the input of an nn.Linear must be a tensor, got "
                                f"{type(x).__name__}")
            collector.observe(name, x.detach().to("cpu", torch.float32))
        return hook

    try:
        for name, mod in model.named_modules():
            if not isinstance(mod, nn.Linear) or id(mod) in seen:
                continue
            if filter is not None and not filter(name, mod):
                continue
            seen[id(mod)] = name
            handles.append(mod.register_forward_pre_hook(hook_for(name)))
        with torch.inference_mode():
            for batch in batches:
                if forward is not None:
                    forward(model, batch)
                else:
                    _call(model, batch)
    finally:
        for h in handles:
            h.remove()
    return collector.stats
