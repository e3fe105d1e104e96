"""Fake quantization for quantization-aware finetuning (QAT), as onnxruntime will quantize.

The int8 groups of a bundle are quantized after export by onnxruntime's ``quantize_static``
(QDQ, docs/QUANTIZATION.md). To finetune against that, :func:`attach_fake_quant` puts on each
Conv2d/Linear of those groups:

- its weight, per output channel (or per tensor), quantized the way onnxruntime quantizes the
  *exported* weight: the exporter folds a BatchNorm that directly follows a convolution into
  it, so the folded weight ``w * gamma / sqrt(var + eps)`` is what is fake-quantized (int8
  symmetric: ``scale = max|w| / 127``, as ``compute_scale_zp`` in onnxruntime), then divided
  back by the BatchNorm's factor (its running statistics), which must stay in eval mode while
  it trains so that the factor trained with is the one exported;
- its input, per tensor, with the target's activation type (uint8 asymmetric on x86, int8
  asymmetric on ARM), from a moving-average min/max observer (the ranges are learned in
  training mode, frozen in eval mode).

The builder attaches it switched off (``enabled=False``): the finetune runs in float with the
BatchNorms training for its first :data:`QAT_START` of the steps, then
:meth:`FakeQuantization.start` (``train_model(..., on_share=(QAT_START, fq.start))``) freezes
the BatchNorms and switches fake quantization on for the rest.

Gradients are straight-through (``torch.fake_quantize_per_channel_affine`` /
``torch.fake_quantize_per_tensor_affine``). :meth:`FakeQuantization.remove` bakes the
fake-quantized weights into the plain modules (what onnxruntime then quantizes without further
loss) and returns the learned input ranges by module path, for
``TensorQuantOverrides`` at export (:func:`spaces.onnx_graph.node_groups.module_inputs`).
torch.ao.quantization is not used: its ``prepare_qat`` is marked deprecated in torch 2.13 (in
favour of torchao), and its eager-mode modules would not reproduce onnxruntime's layout (the
BatchNorm-folded per-channel weights, its ``compute_scale_zp``) anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from spaces.errors import BuildError
from spaces.settings import QuantSettings

#: quantized integer range of each type, and its symmetric range (onnxruntime's)
_RANGES = {"uint8": (0, 255), "int8": (-128, 127)}
_SYMMETRIC_RANGES = {"int8": (-127, 127)}
#: the moving average of the observers (torch.ao's default averaging constant)
MOMENTUM = 0.01
#: the share of the finetune's steps run in float before fake quantization starts (and the
#: BatchNorms freeze)
QAT_START = 0.5
_TINY = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class FakeQuantSpec:
    """How the int8 groups will be quantized: activation and weight types, per channel.

    Example:
        >>> FakeQuantSpec.of(QuantSettings(activation_type="int8")).activation_type
        'int8'
    """

    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True

    def __post_init__(self) -> None:
        for name in (self.activation_type, self.weight_type):
            if name not in _RANGES:
                raise BuildError(f"quantization-aware finetune: type {name!r} is not one of "
                                 f"{', '.join(_RANGES)}")

    @classmethod
    def of(cls, settings: QuantSettings) -> FakeQuantSpec:
        return cls(activation_type=settings.activation_type, weight_type=settings.weight_type,
                   per_channel=settings.per_channel)

    def to_dict(self) -> dict[str, Any]:
        return {"activation_type": self.activation_type, "weight_type": self.weight_type,
                "per_channel": self.per_channel, "qat_start": QAT_START}


def qparams(rmin: torch.Tensor, rmax: torch.Tensor, dtype: str, symmetric: bool
            ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Scale, zero point and integer range of ``[rmin, rmax]`` (elementwise), as onnxruntime's
    ``compute_scale_zp``: the range is widened to hold 0, made symmetric for signed weights."""
    qmin, qmax = (_SYMMETRIC_RANGES.get(dtype, _RANGES[dtype]) if symmetric
                  else _RANGES[dtype])
    rmin = torch.minimum(rmin, torch.zeros_like(rmin))
    rmax = torch.maximum(rmax, torch.zeros_like(rmax))
    if symmetric:
        absmax = torch.maximum(rmin.abs(), rmax.abs())
        rmin, rmax = -absmax, absmax
    scale = (rmax - rmin) / (qmax - qmin)
    degenerate = scale < _TINY
    scale = torch.where(degenerate, torch.ones_like(scale), scale)
    if symmetric:
        zero = torch.full_like(scale, round((qmin + qmax) / 2))
    else:
        zero = torch.round(qmin - rmin / scale)
    zero = torch.where(degenerate, torch.zeros_like(zero), zero)
    return scale.float(), zero.to(torch.int32), qmin, qmax


@dataclass
class Switch:
    """Whether fake quantization is on (shared by the weights and the inputs of a model)."""

    on: bool = True


class FoldedWeightQuant(nn.Module):
    """The parametrization of a weight: fake-quantized as exported (folded with the BatchNorm
    after it, if any), then unfolded again so that the BatchNorm applies its factor."""

    def __init__(self, norm: nn.BatchNorm2d | None, spec: FakeQuantSpec,
                 switch: Switch | None = None) -> None:
        super().__init__()
        self._norm = (norm,)  # not a submodule: the BatchNorm stays where the model has it
        self.spec = spec
        self.switch = switch or Switch()

    def _factor(self, weight: torch.Tensor) -> torch.Tensor | None:
        norm = self._norm[0]
        if norm is None:
            return None
        assert norm.running_var is not None
        gamma = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
        factor = gamma / torch.sqrt(norm.running_var + norm.eps)
        factor = torch.where(factor.abs() < 1e-12, torch.full_like(factor, 1e-12), factor)
        return factor.view(-1, *([1] * (weight.dim() - 1)))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.switch.on:
            return weight
        factor = self._factor(weight)
        folded = weight if factor is None else weight * factor
        symmetric = self.spec.weight_type == "int8"
        flat = folded.detach().reshape(folded.shape[0], -1)
        if self.spec.per_channel:
            scale, zero, qmin, qmax = qparams(flat.min(1).values, flat.max(1).values,
                                              self.spec.weight_type, symmetric)
            quantized = torch.fake_quantize_per_channel_affine(folded, scale, zero, 0,
                                                               qmin, qmax)
        else:
            scale, zero, qmin, qmax = qparams(flat.min(), flat.max(), self.spec.weight_type,
                                              symmetric)
            quantized = torch.fake_quantize_per_tensor_affine(folded, scale, zero, qmin, qmax)
        return quantized if factor is None else quantized / factor


@dataclass
class ActivationObserver:
    """Moving-average min/max of a module's input, fake-quantized per tensor with it."""

    dtype: str
    rmin: float = 0.0
    rmax: float = 0.0
    seen: bool = False

    def update(self, x: torch.Tensor) -> None:
        low, high = float(x.detach().min()), float(x.detach().max())
        if not self.seen:
            self.rmin, self.rmax, self.seen = low, high, True
        else:
            self.rmin += MOMENTUM * (low - self.rmin)
            self.rmax += MOMENTUM * (high - self.rmax)

    def __call__(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        if training:
            self.update(x)
        if not self.seen:
            return x
        scale, zero, qmin, qmax = qparams(torch.tensor(self.rmin), torch.tensor(self.rmax),
                                          self.dtype, symmetric=False)
        return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero), qmin, qmax)


def _following_norms(model: nn.Module, example: torch.Tensor) -> dict[str, nn.BatchNorm2d]:
    """The BatchNorm2d that reads each Conv2d's output directly (what the exporter folds),
    by the conv's module path, found by running ``example`` through the model once."""
    outputs: dict[int, str] = {}
    alive: list[torch.Tensor] = []
    found: dict[str, nn.BatchNorm2d] = {}
    handles = []

    def conv_hook(path: str):
        def hook(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            outputs[id(output)] = path
            alive.append(output)
        return hook

    def norm_hook(norm: nn.BatchNorm2d):
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            path = outputs.get(id(args[0])) if args else None
            if path is not None:
                found[path] = norm
        return hook

    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook(path)))
        elif isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_pre_hook(norm_hook(module)))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return found


@dataclass
class FakeQuantization:
    """Fake quantization attached to a model; :meth:`remove` takes it off again."""

    model: nn.Module
    modules: tuple[str, ...]
    folded: tuple[str, ...]
    switch: Switch = field(default_factory=Switch)
    observers: dict[str, ActivationObserver] = field(default_factory=dict)
    _handles: list[Any] = field(default_factory=list)

    def start(self) -> None:
        """Freeze every BatchNorm (eval mode: the statistics the weights are folded with stay
        those exported) and switch fake quantization on."""
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        self.switch.on = True

    def ranges(self) -> dict[str, tuple[float, float]]:
        """The learned input range of each fake-quantized module, by module path."""
        return {path: (obs.rmin, obs.rmax) for path, obs in self.observers.items() if obs.seen}

    def remove(self) -> dict[str, tuple[float, float]]:
        """Bake the fake-quantized weights into plain parameters, drop the input hooks, and
        return the learned input ranges (:meth:`ranges`)."""
        modules = dict(self.model.named_modules())
        with torch.no_grad():
            for path in self.modules:
                module = modules[path]
                if parametrize.is_parametrized(module, "weight"):
                    parametrize.remove_parametrizations(module, "weight",
                                                        leave_parametrized=True)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return self.ranges()


def quantizable_modules(model: nn.Module, paths: Iterable[str]) -> list[str]:
    """Of the module paths ``paths``, those of Conv2d and Linear layers (what is quantized)."""
    modules = dict(model.named_modules())
    return [p for p in paths if isinstance(modules.get(p), (nn.Conv2d, nn.Linear))]


def attach_fake_quant(model: nn.Module, paths: Iterable[str], spec: FakeQuantSpec,
                      example: torch.Tensor, *, enabled: bool = True) -> FakeQuantization:
    """Fake-quantize the weights and inputs of the Conv2d/Linear modules at ``paths``
    (``enabled=False``: attached but off until :meth:`FakeQuantization.start`). Keep the
    BatchNorms in eval mode while it is on (:meth:`FakeQuantization.start` does).

    Example:
        >>> fq = attach_fake_quant(model, ["stages.0.0"], FakeQuantSpec(), x,
        ...                        enabled=False)  # doctest: +SKIP
        >>> train_model(model, ..., on_share=(QAT_START, fq.start))  # doctest: +SKIP
        >>> ranges = fq.remove()  # doctest: +SKIP
    """
    chosen = tuple(quantizable_modules(model, paths))
    if not chosen:
        raise BuildError("quantization-aware finetune: the int8 groups have no Conv2d or "
                         "Linear layer")
    norms = _following_norms(model, example)
    modules = dict(model.named_modules())
    result = FakeQuantization(model=model, modules=chosen,
                              folded=tuple(p for p in chosen if p in norms),
                              switch=Switch(on=enabled))
    for path in chosen:
        module = modules[path]
        parametrize.register_parametrization(module, "weight",
                                             FoldedWeightQuant(norms.get(path), spec,
                                                               result.switch))
        observer = ActivationObserver(spec.activation_type)
        result.observers[path] = observer

        def pre_hook(mod: nn.Module, args: tuple[Any, ...],
                     observer: ActivationObserver = observer) -> tuple[Any, ...]:
            if not result.switch.on:
                return args
            return (observer(args[0], mod.training), *args[1:])

        result._handles.append(module.register_forward_pre_hook(pre_hook))
    return result
