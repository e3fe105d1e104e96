"""Layer groups: which layers of a model share one precision, and which ONNX nodes they are.

A group is a list of module paths of the :class:`StagedModel` (``stages.1``, ``heads.2.2``); a
layer belongs to the group with the longest matching path, so ``first: [stages.0.0]`` carves the
first conv out of ``stage0: [stages.0]``. The groups are derived automatically (the first layer,
each stage, the last layer) or given in the config.

ONNX nodes are mapped back onto module paths through the scope names of the TorchScript exporter
(``/stages.0/stages.0.3/conv1/Conv`` is module ``stages.0.3.conv1``); nodes without a scope (or
added by a quantizer) take the group of the node that produces their input, and an activation
directly after a compute node follows that node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from spaces.errors import SpaceError
from spaces.staged_model import StagedModel

COMPUTE_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                   nn.ConvTranspose3d, nn.Linear)
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Element-wise ops that ride along with the compute node before them (fused by ORT).
ACTIVATION_OPS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
                  "BatchNormalization")
FULL = -1  # graph kind: the whole model in one graph (FullGraph); k >= 0: stage k's graph


@dataclass(frozen=True)
class LayerGroup:
    """A named set of module paths that get one precision."""

    name: str
    modules: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "modules": list(self.modules)}


def _covers(prefix: str, path: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


@dataclass(frozen=True)
class LayerGroups:
    """The layer groups of one model, in execution order.

    Example:
        >>> groups = LayerGroups((LayerGroup("first", ("stages.0.0",)),
        ...                       LayerGroup("stage0", ("stages.0", "heads.0"))))
        >>> groups.group_of("stages.0.0"), groups.group_of("stages.0.3.conv1")
        ('first', 'stage0')
    """

    groups: tuple[LayerGroup, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    def group_of(self, module_path: str | None) -> str | None:
        """The group of a module: the one with the longest path that covers it."""
        if module_path is None:
            return None
        best, length = None, -1
        for group in self.groups:
            for prefix in group.modules:
                if _covers(prefix, module_path) and len(prefix) > length:
                    best, length = group.name, len(prefix)
        return best

    def to_dict(self) -> list[dict[str, object]]:
        return [g.to_dict() for g in self.groups]


# -- derivation from the model ------------------------------------------------------------------
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
    final_head = [p for p in order if _covers(f"heads.{last_stage}", p)]
    last = final_head[-1] if final_head else order[-1]
    if first == last:
        return LayerGroups((LayerGroup("all", ("stages", "heads")),))
    groups: dict[str, list[str]] = {"first": [first]}
    owner: dict[str, str] = {first: "first", last: "last"}
    for k in range(model.num_stages):
        own = [p for p in order if _covers(f"stages.{k}", p) and p not in (first, last)]
        if own:
            groups[f"stage{k}"] = [f"stages.{k}"]
            owner.update({p: f"stage{k}" for p in own})
    groups["last"] = [f"heads.{last_stage}"] if final_head else [last]
    for k in range(last_stage):  # exit heads follow the layer that feeds them
        head = [i for i, p in enumerate(order) if _covers(f"heads.{k}", p)]
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


# -- ONNX nodes -> groups ------------------------------------------------------------------------
def scope_path(node_name: str) -> str | None:
    """The module path of an exported node: ``/stages.1/shortcut/shortcut.0/Conv`` ->
    ``stages.1.shortcut.0`` (a container's child scope repeats the container's scope)."""
    if not node_name.startswith("/"):
        return None
    segments = node_name.split("/")[1:-1]
    path, previous = "", ""
    for segment in segments:
        if previous and segment.startswith(previous + "."):
            path += segment[len(previous):]
        else:
            path = f"{path}.{segment}" if path else segment
        previous = segment
    return path or None


def model_path(wrapper_path: str | None, kind: int, num_stages: int) -> str | None:
    """Translate a path inside an export wrapper to the StagedModel's path.

    ``kind`` is :data:`FULL` for the single graph (``stages`` and ``head`` = the last head) or a
    stage index for a cascade stage graph (``stage`` and ``head`` of that stage).
    """
    if wrapper_path is None:
        return None
    head, _, rest = wrapper_path.partition(".")
    index = num_stages - 1 if kind == FULL else kind
    if head == "head":
        base = f"heads.{index}"
    elif head == "stage" and kind != FULL:
        base = f"stages.{index}"
    else:
        return wrapper_path
    return f"{base}.{rest}" if rest else base


def assign_nodes(nodes: Iterable, groups: LayerGroups, *, kind: int,
                 num_stages: int) -> dict[str, str | None]:
    """Group of every node of a (topologically sorted) ONNX graph, by node name."""
    assigned: dict[str, str | None] = {}
    producer_group: dict[str, str | None] = {}
    producer_op: dict[str, str] = {}
    for node in nodes:
        group = groups.group_of(model_path(scope_path(node.name), kind, num_stages))
        sources = [i for i in node.input if i in producer_group]
        follows = node.op_type in ACTIVATION_OPS and producer_op.get(
            sources[0] if sources else "", "") in COMPUTE_OPS
        if sources and (follows or group is None):
            group = producer_group[sources[0]]
        assigned[node.name] = group
        for out in node.output:
            producer_group[out] = group
            producer_op[out] = node.op_type
    return assigned


def group_operators(nodes: Iterable, assignment: Mapping[str, str | None]) -> dict[str, list[str]]:
    """Compute op types (Conv, Gemm, MatMul, ...) of each group's nodes, with repeats."""
    found: dict[str, list[str]] = {}
    for node in nodes:
        group = assignment.get(node.name)
        if group is not None and node.op_type in COMPUTE_OPS:
            found.setdefault(group, []).append(node.op_type)
    return found


def operators_by_group(model: StagedModel, example: torch.Tensor,
                       groups: LayerGroups) -> dict[str, tuple[str, ...]]:
    """The compute operators (Conv, Gemm, MatMul) of each group, exit heads included: what
    decides which precisions a group can run. Read from the model exported as a cascade (which
    holds every layer once); needs only the architecture, not trained weights."""
    import tempfile
    from pathlib import Path

    import onnx

    from spaces.export import export_model

    found: dict[str, list[str]] = {name: [] for name in groups.names}
    with tempfile.TemporaryDirectory() as tmp:
        for k, path in enumerate(export_model(model, example, Path(tmp), cascade=True)):
            nodes = onnx.load(str(path)).graph.node
            assignment = assign_nodes(nodes, groups, kind=k, num_stages=model.num_stages)
            for group, ops in group_operators(nodes, assignment).items():
                found[group].extend(ops)
    return {name: tuple(ops) for name, ops in found.items()}
