"""One ONNX graph, a precision per layer group: the transforms that build it, in order.

1. Gemm -> MatMul + Add for the weight-only groups (MatMulNBits runs only MatMul);
2. static QDQ int8 for the ``int8`` groups, every other group's nodes excluded;
3. MatMulNBits for the ``int8_wo`` and ``int4_wo`` groups;
4. float16 weight storage for the ``fp16`` groups.
Groups left at fp32 keep their float nodes. When int8 shares a graph with another precision the
bundle must run without :data:`~spaces.onnx_graph.quantize.RUNTIME_DISABLED_OPTIMIZERS`
(:func:`runtime_disabled_optimizers`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spaces.layer_groups import LayerGroups
from spaces.onnx_graph.node_groups import COMPUTE_OPS, assign_nodes
from spaces.onnx_graph.quantize import (
    RUNTIME_DISABLED_OPTIMIZERS,
    inline_constant_identities,
    quantize_int8,
)
from spaces.onnx_graph.weight_only import gemm_to_matmul, quantize_matmul_nbits, store_fp16
from spaces.precisions import WEIGHT_ONLY_BITS
from spaces.settings import QuantSettings

#: The group of every node of a graph, by node name (None: no group, kept in float).
NodeAssigner = Callable[[Iterable[Any]], dict[str, str | None]]


def runtime_disabled_optimizers(precisions: Sequence[str]) -> tuple[str, ...]:
    """Optimizers the bundle's sessions must disable: int8 next to any other precision."""
    used = set(precisions)
    return RUNTIME_DISABLED_OPTIMIZERS if "int8" in used and len(used) > 1 else ()


def _nodes_at(model, assignment: Mapping[str, str | None], precisions: Mapping[str, str],
              wanted: Collection[str], ops: Collection[str]) -> list[str]:
    """Names of the nodes with an op in ``ops`` whose group has a precision in ``wanted``."""
    return [n.name for n in model.graph.node if n.op_type in ops
            and precisions.get(assignment.get(n.name) or "", "fp32") in wanted]


def quantize_graph(source: Path, target: Path, *, precisions: Mapping[str, str],
                   groups: LayerGroups, kind: int, num_stages: int,
                   calibration: np.ndarray, settings: QuantSettings,
                   input_name: str = "input",
                   assign: NodeAssigner | None = None,
                   tensor_ranges: Mapping[str, tuple[float, float]] | None = None
                   ) -> dict[str, str | None]:
    """Write ``source`` with each group at its precision to ``target``.

    ``precisions`` maps group names to precisions; ``kind`` is the graph kind of
    :func:`~spaces.layer_groups.model_path`; ``calibration`` holds this graph's inputs (for a
    cascade stage, what the previous stage outputs). Returns the group of every node before
    int8 quantization, by node name (for reports and tests). ``assign`` maps nodes onto the
    groups (default: through the torch exporter's scope names,
    :func:`~spaces.onnx_graph.node_groups.assign_nodes`; a graph given as a file has its own,
    :meth:`~spaces.onnx_graph.graph_groups.GraphGroups.assign`). ``tensor_ranges`` are
    ranges of tensors (by name) that replace the calibrated ones in the int8 groups (those a
    quantization-aware finetune learned, :func:`~spaces.onnx_graph.quantize.quantize_int8`).
    """
    import onnx

    def by_scope(nodes: Iterable[Any]) -> dict[str, str | None]:
        return assign_nodes(nodes, groups, kind=kind, num_stages=num_stages)

    assign = assign or by_scope
    model = onnx.load(str(source))
    assignment = assign(model.graph.node)
    used = {precisions.get(g, "fp32") for g in assignment.values() if g is not None}
    if used <= {"fp32"}:
        shutil.copyfile(source, target)
        return assignment
    inline_constant_identities(model)
    if used & set(WEIGHT_ONLY_BITS):
        # the MatMul and Add that replace a Gemm keep its scope, hence its group
        gemm_to_matmul(model, set(_nodes_at(model, assignment, precisions, WEIGHT_ONLY_BITS,
                                            ("Gemm",))))
        assignment = assign(model.graph.node)
    weight_only = {p: _nodes_at(model, assignment, precisions, (p,), ("MatMul",))
                   for p in WEIGHT_ONLY_BITS}
    if "int8" in used:
        excluded = [n.name for n in model.graph.node
                    if (group := assignment.get(n.name)) is not None
                    and precisions.get(group, "fp32") != "int8"]
        with tempfile.TemporaryDirectory() as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            onnx.save(model, str(prepared))
            quantize_int8(prepared, Path(tmp) / "int8.onnx", calibration, settings=settings,
                          input_name=input_name, nodes_to_exclude=excluded,
                          tensor_ranges=tensor_ranges)
            model = onnx.load(str(Path(tmp) / "int8.onnx"))
    for precision, bits in WEIGHT_ONLY_BITS.items():
        model = quantize_matmul_nbits(model, set(weight_only[precision]), bits, settings)
    fp16 = _nodes_at(model, assignment, precisions, ("fp16",), COMPUTE_OPS)
    if fp16:
        store_fp16(model, set(fp16))
    onnx.save(model, str(target))
    return assignment
