"""Models cut into stages, with a classifier head after each stage (early exits)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from spaces.errors import ModelError


class StagedModel(nn.Module):
    """A backbone as a sequence of stages, each followed by a classifier head.

    ``heads[k]`` maps the output of ``stages[k]`` to logits. The last head is the model's own
    classifier; the others are early exits. ``forward`` returns the logits of every exit, so
    training, distillation and pruning see all heads.

    Example:
        >>> model = StagedModel(stages=[nn.Flatten(), nn.Identity()],
        ...                     heads=[nn.Linear(4, 3), nn.Linear(4, 3)])
        >>> [tuple(t.shape) for t in model(torch.zeros(2, 4))]
        [(2, 3), (2, 3)]
    """

    def __init__(self, stages: Sequence[nn.Module], heads: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(stages) == 0 or len(stages) != len(heads):
            raise ModelError(f"StagedModel needs one head per stage, got {len(stages)} stages "
                             f"and {len(heads)} heads")
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList(heads)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for stage, head in zip(self.stages, self.heads, strict=True):
            x = stage(x)
            outputs.append(head(x))
        return outputs

    def features_and_logits(self, x: torch.Tensor
                            ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The output of every stage and the logits of every exit, in one pass."""
        features, outputs = [], []
        for stage, head in zip(self.stages, self.heads, strict=True):
            x = stage(x)
            features.append(x)
            outputs.append(head(x))
        return features, outputs

    @torch.no_grad()
    def stage_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The input each stage receives for a batch ``x`` (stage 0 receives ``x``)."""
        inputs = []
        for stage in self.stages:
            inputs.append(x)
            x = stage(x)
        return inputs


def as_staged(model: nn.Module) -> StagedModel:
    """A user's model as a :class:`StagedModel` (a plain classifier becomes one stage)."""
    if isinstance(model, StagedModel):
        return model
    if not isinstance(model, nn.Module):
        raise ModelError(f"model factory returned {type(model).__name__}, not a torch.nn.Module")
    return StagedModel(stages=[model], heads=[nn.Identity()])


def classifier_layers(model: StagedModel) -> list[nn.Module]:
    """The last Linear/Conv of each head: their outputs are classes and are never pruned."""
    layers: list[nn.Module] = []
    for k, head in enumerate(model.heads):
        candidates = [m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        if not candidates and k == model.num_stages - 1:
            stage_layers = [m for m in model.stages[k].modules()
                            if isinstance(m, (nn.Linear, nn.Conv2d))]
            candidates = stage_layers[-1:]
        layers.extend(candidates[-1:])
    return layers
