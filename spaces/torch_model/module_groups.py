"""Layer groups derived from a torch model: one per stage, automatic (first layer, each stage,
last layer) or named in the config, and the compute operators each group exports to."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from spaces.errors import SpaceError
from spaces.layer_groups import LayerGroup, LayerGroups, covers
from spaces.onnx_graph.node_groups import assign_nodes, group_operators
from spaces.torch_model.staged_model import StagedModel

COMPUTE_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                   nn.ConvTranspose3d, nn.Linear)


def compute_layers_in_order(model: StagedModel, example: torch.Tensor) -> list[str]:
    """Paths of the Conv/Linear modules in the order a forward pass calls them (all exits)."""
    names = {id(m): name for name, m in model.named_modules() if isinstance(m, COMPUTE_MODULES)}
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda module, args, out: order.append(names[id(module)]))
             for m in model.modules() if id(m) in names]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
    seen: dict[str, None] = {}
    for name in order:
        seen.setdefault(name, None)
    return list(seen)


def stage_groups(model: StagedModel) -> LayerGroups:
    """One group per stage (``stage<k>``: the stage and its exit head)."""
    return LayerGroups(tuple(LayerGroup(f"stage{k}", (f"stages.{k}", f"heads.{k}"))
                             for k in range(model.num_stages)))


def auto_groups(model: StagedModel, example: torch.Tensor) -> LayerGroups:
    """``first`` (the first layer), ``stage<k>`` (the rest of each stage), ``last`` (the final
    classifier head). An exit head goes with the group of the last layer before it; a stage with
    no layer of its own besides the first/last gets no group."""
    order = compute_layers_in_order(model, example)
    if not order:
        raise SpaceError("quantization.groups: the model has no Conv or Linear layer to quantize")
    last_stage = model.num_stages - 1
    first = order[0]
    final_head = [p for p in order if covers(f"heads.{last_stage}", p)]
    last = final_head[-1] if final_head else order[-1]
    if first == last:
        return LayerGroups((LayerGroup("all", ("stages", "heads")),))
    groups: dict[str, list[str]] = {"first": [first]}
    owner: dict[str, str] = {first: "first", last: "last"}
    for k in range(model.num_stages):
        own = [p for p in order if covers(f"stages.{k}", p) and p not in (first, last)]
        if own:
            groups[f"stage{k}"] = [f"stages.{k}"]
            owner.update({p: f"stage{k}" for p in own})
    groups["last"] = [f"heads.{last_stage}"] if final_head else [last]
    for k in range(last_stage):  # exit heads follow the layer that feeds them
        head = [i for i, p in enumerate(order) if covers(f"heads.{k}", p)]
        before = [p for p in order[:head[0]] if p in owner] if head else []
        if before:
            groups[owner[before[-1]]].append(f"heads.{k}")
    return LayerGroups(tuple(LayerGroup(name, tuple(paths)) for name, paths in groups.items()))


def explicit_groups(model: StagedModel, spec: Mapping[str, Sequence[str]],
                    example: torch.Tensor) -> LayerGroups:
    """Groups named in the config; every Conv/Linear layer must fall into exactly one."""
    modules = {name for name, _ in model.named_modules() if name}
    groups = []
    for name, paths in spec.items():
        if not paths:
            raise SpaceError(f"quantization.groups.{name}: lists no module")
        for path in paths:
            if path not in modules:
                raise SpaceError(f"quantization.groups.{name}: the model has no module {path!r} "
                                 f"(e.g. {', '.join(sorted(modules)[:6])})")
        groups.append(LayerGroup(str(name), tuple(paths)))
    result = LayerGroups(tuple(groups))
    layers = compute_layers_in_order(model, example)
    uncovered = [p for p in layers if result.group_of(p) is None]
    if uncovered:
        raise SpaceError(f"quantization.groups: layers {', '.join(uncovered[:5])} are in no group")
    empty = [g.name for g in groups if not any(result.group_of(p) == g.name for p in layers)]
    if empty:
        raise SpaceError(f"quantization.groups.{empty[0]}: covers no Conv or Linear layer")
    return result


def operators_by_group(model: StagedModel, example: torch.Tensor,
                       groups: LayerGroups) -> dict[str, tuple[str, ...]]:
    """The compute operators (Conv, Gemm, MatMul) of each group, exit heads included: what
    decides which precisions a group can run. Read from the model exported as a cascade (which
    holds every layer once); needs only the architecture, not trained weights."""
    import tempfile
    from pathlib import Path

    import onnx

    from spaces.torch_model.export import export_model

    found: dict[str, list[str]] = {name: [] for name in groups.names}
    with tempfile.TemporaryDirectory() as tmp:
        for k, path in enumerate(export_model(model, example, Path(tmp), cascade=True)):
            nodes = onnx.load(str(path)).graph.node
            assignment = assign_nodes(nodes, groups, kind=k, num_stages=model.num_stages)
            for group, ops in group_operators(nodes, assignment).items():
                found[group].extend(ops)
    return {name: tuple(ops) for name, ops in found.items()}
