"""Structured channel pruning with torch-pruning's dependency graph (channels really removed)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spaces.errors import BuildError, SpaceError
from spaces.settings import IMPORTANCE, MAX_RATIO
from spaces.torch_model.staged_model import StagedModel, classifier_layers


@dataclass(frozen=True)
class PruningResult:
    """The pruned model and the replayable record of which channels left which layer."""

    model: StagedModel
    history: list[Any]
    macs: float
    params: int


def _sum_outputs(outputs: list[torch.Tensor]) -> torch.Tensor:
    return sum(o.sum() for o in outputs)  # type: ignore[return-value]


def count_macs_params(model: StagedModel, example: torch.Tensor) -> tuple[float, int]:
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, example)
    return float(macs), int(params)


def check_ratio(ratio: float, what: str = "pruning ratio") -> float:
    if not 0.0 <= ratio <= MAX_RATIO:
        raise BuildError(f"{what} {ratio} is outside [0, {MAX_RATIO}]")
    return ratio


def named_layers(model: nn.Module, names: Sequence[str], field: str) -> list[nn.Module]:
    """The modules called ``names`` in ``model``; a :class:`SpaceError` names a missing one."""
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules or not name:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpaceError(f"{field}: the model has no module named {name!r}{hint}")
    return [modules[name] for name in names]


def _pruner_class() -> type:
    """MetaPruner that never empties a layer: rounding down to a multiple of ``round_to`` keeps
    at least ``round_to`` channels (or all of them, if the layer had fewer)."""
    import torch_pruning as tp

    class KeepingPruner(tp.pruner.MetaPruner):
        def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
            kept = current_channels - n_pruned
            kept = max(kept - kept % round_to, min(round_to, current_channels))
            return max(current_channels - kept, 0)

    return KeepingPruner


def _taylor_gradients(model: StagedModel, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
                      ) -> None:
    """Accumulate the gradient of every exit's cross-entropy over ``batches`` (eval mode, so
    BatchNorm statistics are untouched); TaylorImportance reads ``weight.grad``."""
    if not batches:
        raise BuildError("taylor importance needs training batches for its gradients")
    model.eval()
    model.zero_grad(set_to_none=True)
    for inputs, labels in batches:
        loss = sum(F.cross_entropy(logits, labels) for logits in model(inputs))
        loss.backward()  # type: ignore[union-attr]


def prune_model(model: StagedModel, ratio: float, example: torch.Tensor, *,
                importance: str = "l2", round_to: int = 8,
                stage_ratios: Sequence[float] = (),
                ignored_layers: Sequence[str] = (),
                taylor_batches: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()
                ) -> PruningResult:
    """Remove ``ratio`` of the channels of every prunable layer, in place.

    ``stage_ratios`` (one per stage) replace the single ratio with one per stage: a layer of
    ``stages[k]`` loses ``stage_ratios[k]`` of its output channels (its consumers in the next
    stage and in head ``k`` shrink with it). The heads never lose output channels, so exits keep
    their classes; everything coupled to a pruned channel (BatchNorm, the next layer's inputs,
    the heads' inputs) shrinks with it.
    """
    import torch_pruning as tp

    check_ratio(ratio)
    if stage_ratios and len(stage_ratios) != model.num_stages:
        raise BuildError(f"{len(stage_ratios)} stage pruning ratios for a model of "
                         f"{model.num_stages} stages")
    for k, r in enumerate(stage_ratios):
        check_ratio(r, f"pruning ratio of stage {k}")
    if importance not in IMPORTANCE:
        raise BuildError(f"pruning importance {importance!r} is not one of {IMPORTANCE}")
    ignored = [*model.heads, *classifier_layers(model),
               *named_layers(model, ignored_layers, "pruning.ignored_layers")]
    model.eval()
    history: list[Any] = []
    if ratio > 0.0 or any(r > 0.0 for r in stage_ratios):
        if importance == "taylor":
            criterion: Any = tp.importance.TaylorImportance()
        else:
            criterion = tp.importance.MagnitudeImportance(p=1 if importance == "l1" else 2)
        per_stage: Mapping[nn.Module, float] = (
            {stage: float(r) for stage, r in zip(model.stages, stage_ratios, strict=True)}
            if stage_ratios else {})
        pruner = _pruner_class()(model, example, importance=criterion,
                                 pruning_ratio=ratio, pruning_ratio_dict=dict(per_stage),
                                 round_to=round_to, ignored_layers=ignored,
                                 output_transform=_sum_outputs)
        if importance == "taylor":
            _taylor_gradients(model, taylor_batches)
        pruner.step()
        model.zero_grad(set_to_none=True)
        history = [list(h) for h in pruner.pruning_history()]
    macs, params = count_macs_params(model, example)
    return PruningResult(model=model, history=history, macs=macs, params=params)


def replay_pruning(model: StagedModel, history: list[Any], example: torch.Tensor) -> StagedModel:
    """Apply a recorded pruning history to a fresh copy of the unpruned architecture.

    The history is what a bundle's provenance stores (``pruning_history``): with the model
    factory alone it gives back the pruned architecture, ready for the pruned weights.
    """
    import torch_pruning as tp

    if history:
        graph = tp.DependencyGraph().build_dependency(model, example,
                                                      output_transform=_sum_outputs)
        graph.load_pruning_history([tuple(h) for h in history])
    return model


def _head_input_layer(head: nn.Module) -> nn.Linear | nn.Conv2d | None:
    layers = [m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return layers[0] if layers else None


def kept_stage_channels(unpruned: StagedModel, history: list[Any], example: torch.Tensor
                        ) -> list[torch.Tensor | None]:
    """Which of the unpruned model's channels each stage's output kept, in their new order.

    Read from the pruning ``history`` by replaying it on a copy of the unpruned model whose
    heads' input weights carry the index of the input they read: the surviving indices are the
    kept channels. ``None`` for a stage whose head has no Linear/Conv input layer (its output
    cannot be matched channel by channel). Used by feature distillation: the pruned stage's
    output learns to reproduce the teacher's kept channels.
    """
    with torch.no_grad():
        features, _ = unpruned.eval().features_and_logits(example)
    layers = [_head_input_layer(head) for head in unpruned.heads]
    per_channel: list[int | None] = []  # inputs of the head layer per stage-output channel
    for layer, feature in zip(layers, features, strict=True):
        width = 0 if layer is None else layer.weight.shape[1]
        channels = feature.shape[1] if feature.dim() > 1 else 0
        if layer is None or channels == 0 or width % channels:
            per_channel.append(None)
            continue
        per_channel.append(width // channels)
        tags = torch.arange(width, dtype=layer.weight.dtype)
        with torch.no_grad():
            layer.weight[0] = tags.view(-1, *([1] * (layer.weight.dim() - 2)))
    replay_pruning(unpruned, history, example)
    kept: list[torch.Tensor | None] = []
    for layer, inputs_per_channel in zip(layers, per_channel, strict=True):
        if layer is None or inputs_per_channel is None:
            kept.append(None)
            continue
        tags = layer.weight.detach()[0].reshape(layer.weight.shape[1], -1)[:, 0].round().long()
        kept.append(torch.unique(tags // inputs_per_channel, sorted=True))
    return kept
