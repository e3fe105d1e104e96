"""ONNX nodes mapped onto layer groups.

ONNX nodes are mapped back onto module paths through the scope names of the TorchScript exporter
(``/stages.0/stages.0.3/conv1/Conv`` is module ``stages.0.3.conv1``); nodes without a scope (or
added by a quantizer) take the group of the node that produces their input, and an activation
directly after a compute node follows that node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from spaces.layer_groups import FULL, LayerGroups

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


#: Ops that only reshape their input: onnxruntime's QDQ quantizes their output like their input.
SHAPE_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose")


#: Element-wise ops that ride along with the compute node before them (fused by ORT).
ACTIVATION_OPS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
                  "BatchNormalization")


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


def module_inputs(nodes: Iterable, *, kind: int, num_stages: int) -> dict[str, list[str]]:
    """The input activations of every compute node, by the module path of its layer (the
    StagedModel's, as :func:`model_path` translates it): ``{"stages.0.0": ["input"]}``.

    How the ranges a quantization-aware finetune learned at a module's input become the
    ranges of the graph's tensors (``TensorQuantOverrides``). An input made by a shape-only op
    (a ``Flatten`` before a ``Gemm``) brings that op's input too: onnxruntime gives such an op's
    output its input's quantization, and both hold the same values."""
    nodes = list(nodes)
    producers = {out: node for node in nodes for out in node.output}
    found: dict[str, list[str]] = {}
    for node in nodes:
        path = model_path(scope_path(node.name), kind, num_stages)
        if path is None or node.op_type not in COMPUTE_OPS or not node.input:
            continue
        tensor = node.input[0]
        tensors = [tensor]
        while (producer := producers.get(tensor)) is not None and \
                producer.op_type in SHAPE_OPS and producer.input:
            tensor = producer.input[0]
            tensors.append(tensor)
        found.setdefault(path, []).extend(tensors)
    return found


def group_operators(nodes: Iterable, assignment: Mapping[str, str | None]) -> dict[str, list[str]]:
    """Compute op types (Conv, Gemm, MatMul, ...) of each group's nodes, with repeats."""
    found: dict[str, list[str]] = {}
    for node in nodes:
        group = assignment.get(node.name)
        if group is not None and node.op_type in COMPUTE_OPS:
            found.setdefault(group, []).append(node.op_type)
    return found
