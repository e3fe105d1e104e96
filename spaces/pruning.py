"""Structured channel pruning with torch-pruning's dependency graph (channels really removed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from spaces.errors import BuildError
from spaces.staged_model import StagedModel, classifier_layers

IMPORTANCE = ("l1", "l2")


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


def prune_model(model: StagedModel, ratio: float, example: torch.Tensor, *,
                importance: str = "l2", round_to: int = 8) -> PruningResult:
    """Remove ``ratio`` of the channels of every prunable layer, in place.

    The heads' classifier layers keep their outputs (the classes); everything coupled to a
    pruned channel (BatchNorm, the next layer's inputs, the heads' inputs) shrinks with it.
    """
    import torch_pruning as tp

    if not 0.0 <= ratio < 1.0:
        raise BuildError(f"pruning ratio {ratio} is outside [0, 1)")
    if importance not in IMPORTANCE:
        raise BuildError(f"pruning importance {importance!r} is not one of {IMPORTANCE}")
    model.eval()
    if ratio > 0.0:
        criterion = tp.importance.MagnitudeImportance(p=1 if importance == "l1" else 2)
        pruner = tp.pruner.MetaPruner(model, example, importance=criterion,
                                      pruning_ratio=ratio, round_to=round_to,
                                      ignored_layers=classifier_layers(model),
                                      output_transform=_sum_outputs)
        pruner.step()
        history = [list(h) for h in pruner.pruning_history()]
    else:
        history = []
    macs, params = count_macs_params(model, example)
    return PruningResult(model=model, history=history, macs=macs, params=params)


def replay_pruning(model: StagedModel, history: list[Any], example: torch.Tensor) -> StagedModel:
    """Apply a recorded pruning history to a fresh copy of the unpruned architecture."""
    import torch_pruning as tp

    if history:
        graph = tp.DependencyGraph().build_dependency(model, example,
                                                      output_transform=_sum_outputs)
        graph.load_pruning_history([tuple(h) for h in history])
    return model
