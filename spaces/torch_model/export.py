"""Export a staged model to ONNX: one graph per stage (cascade) or one graph (no exits)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from spaces.torch_model.staged_model import StagedModel

OPSET = 17
INPUT_NAME = "input"


class StageGraph(nn.Module):
    """Stage ``k`` and its head: returns ``(features, logits)``, or ``logits`` when last."""

    def __init__(self, stage: nn.Module, head: nn.Module, last: bool) -> None:
        super().__init__()
        self.stage = stage
        self.head = head
        self.last = last

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        features = self.stage(x)
        logits = self.head(features)
        return logits if self.last else (features, logits)


class FullGraph(nn.Module):
    """All stages and the last head, no early exits: the model as the user deploys it.

    ONNX node names keep the module paths (``/stages.<k>/...``), which is how quantization maps
    layer groups onto nodes of a single graph.
    """

    def __init__(self, model: StagedModel) -> None:
        super().__init__()
        self.stages = model.stages
        self.head = model.heads[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


def _export(module: nn.Module, example: torch.Tensor, path: Path, outputs: list[str],
            dynamic_batch: bool = False) -> None:
    # The TorchScript exporter is deprecated but exports a small graph in ~0.15 s against ~2.5 s
    # for the dynamo exporter (measured here); candidates are exported by the dozen.
    # The exporter restores the wrapper's own training flag afterwards, recursively: a wrapper
    # left in training mode would put the shared stages (BatchNorm) of the model in training mode.
    module.eval()
    # batch 1, static, by default; dynamic_batch names axis 0 of every input and output
    # "batch" (the runtime knob static_shape: false, docs/RUNTIME.md)
    axes = ({name: {0: "batch"} for name in [INPUT_NAME, *outputs]} if dynamic_batch
            else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=[INPUT_NAME], output_names=outputs,
                              do_constant_folding=True, dynamic_axes=axes)
        except TypeError:  # a torch without the legacy exporter
            torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME],
                              output_names=outputs, external_data=False)


@torch.no_grad()
def export_model(model: StagedModel, example: torch.Tensor, directory: Path, *,
                 cascade: bool, dynamic_batch: bool = False) -> list[Path]:
    """Write ``stage<k>.onnx`` files for a cascade, or a single ``model.onnx``; with
    ``dynamic_batch``, axis 0 of every input and output is symbolic (else fixed to 1)."""
    model.eval()
    directory.mkdir(parents=True, exist_ok=True)
    if not cascade:
        path = directory / "model.onnx"
        _export(FullGraph(model), example, path, ["logits"], dynamic_batch)
        return [path]
    paths = []
    x = example
    last = model.num_stages - 1
    for k, (stage, head) in enumerate(zip(model.stages, model.heads, strict=True)):
        path = directory / f"stage{k}.onnx"
        _export(StageGraph(stage, head, k == last), x, path,
                ["logits"] if k == last else ["features", "logits"], dynamic_batch)
        paths.append(path)
        x = stage(x)
    return paths
