"""Layer groups of a bare ONNX graph (a model given as a file, without its code).

Nodes are grouped by their place in the graph, not by module paths:

- ``auto``: ``first`` (from the graph's input through the first compute node), ``body<k>``
  (the nodes between the first and the last compute node, cut into at most
  :data:`MAX_BODY_GROUPS` groups of about as many compute nodes, only where the dataflow narrows
  to a single tensor: between two residual blocks, never inside one) and ``last`` (the last
  compute node and what follows it);
- ``stages``: one group ``stage0`` (the graph is one stage);
- ``{name: [node-name prefixes]}``: a node goes to the group with the longest prefix of its
  name; a prefix that matches no node is an error, as is a compute node that no prefix
  matches, or a group that holds no compute node. The groups are ordered by their first node.

As for an exported torch model (:mod:`spaces.onnx_graph.node_groups`), an activation directly
after a compute node follows that node, and a node in no group takes the group of the node that
produces its input. Nodes that a transform adds later are named after the node they replace
(``<name>_MatMul``, ``<name>_Add``) and keep its group (:meth:`GraphGroups.assign`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spaces.errors import SpaceError
from spaces.layer_groups import LayerGroup, LayerGroups
from spaces.onnx_graph.node_groups import ACTIVATION_OPS, COMPUTE_OPS, group_operators

#: At most this many ``body<k>`` groups between ``first`` and ``last``.
MAX_BODY_GROUPS = 3
#: ``auto``, ``stages``, or group name -> node-name prefixes.
GraphGroupsSpec = str | Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class GraphGroups:
    """The layer groups of one graph: their names in order, the group of every node, and a
    :class:`LayerGroups` describing them (node names, or the configured prefixes) for cache
    keys and provenance.

    Example:
        >>> groups = auto_graph_groups(graph)  # doctest: +SKIP
        >>> groups.names  # doctest: +SKIP
        ('first', 'body0', 'body1', 'last')
    """

    names: tuple[str, ...]
    nodes: Mapping[str, str | None]
    layer_groups: LayerGroups

    def assign(self, nodes: Iterable[Any]) -> dict[str, str | None]:
        """The group of every node of this graph or of a transform of it, by node name."""
        assigned: dict[str, str | None] = {}
        producer: dict[str, str | None] = {}
        for node in nodes:
            group = self.nodes[node.name] if node.name in self.nodes else \
                self._replaced_group(node.name)
            sources = [i for i in node.input if i in producer]
            if group is None and sources:
                group = producer[sources[0]]
            assigned[node.name] = group
            for out in node.output:
                producer[out] = group
        return assigned

    def _replaced_group(self, name: str) -> str | None:
        head = name
        while "_" in head:
            head = head.rsplit("_", 1)[0]
            if head in self.nodes:
                return self.nodes[head]
        return None

    def operators(self, nodes: Iterable[Any]) -> dict[str, tuple[str, ...]]:
        """The compute operators of each group (every group listed, in order)."""
        nodes = list(nodes)
        found = group_operators(nodes, self.assign(nodes))
        return {name: tuple(found.get(name, ())) for name in self.names}


def _follow_activations(nodes: Sequence[Any], direct: Mapping[str, str | None]
                        ) -> dict[str, str | None]:
    """``direct`` with an activation directly after a compute node moved to that node's group,
    and a node in no group given the group of its input's producer."""
    assigned: dict[str, str | None] = {}
    producer: dict[str, tuple[str | None, str]] = {}
    for node in nodes:
        group = direct.get(node.name)
        sources = [i for i in node.input if i in producer]
        if sources:
            source_group, source_op = producer[sources[0]]
            if group is None or (node.op_type in ACTIVATION_OPS and source_op in COMPUTE_OPS):
                group = source_group
        assigned[node.name] = group
        for out in node.output:
            producer[out] = (group, node.op_type)
    return assigned


def static_tensors(graph: Any) -> set[str]:
    """Tensors that do not depend on the graph's input: initializers, constants, and what is
    computed from them alone."""
    found = {i.name for i in graph.initializer}
    for node in graph.node:
        if all(not name or name in found for name in node.input):
            found.update(node.output)
    return found


def cut_points(graph: Any) -> list[int]:
    """Positions ``i`` after which exactly one tensor computed from the input is still needed
    (by a later node or as an output): where the graph can be cut into consecutive parts."""
    nodes = list(graph.node)
    static = static_tensors(graph)
    last_use: dict[str, int] = {}
    for k, node in enumerate(nodes):
        for name in node.input:
            if name and name not in static:
                last_use[name] = k
    for out in graph.output:
        last_use[out.name] = len(nodes)
    live: set[str] = {i.name for i in graph.input if i.name not in static}
    cuts = []
    for k, node in enumerate(nodes):
        live.update(o for o in node.output if o and o not in static)
        live = {name for name in live if last_use.get(name, -1) > k}
        if len(live) == 1:
            cuts.append(k)
    return cuts


def _body_cuts(compute_before: Sequence[int], cuts: Sequence[int], body: range,
               parts: int) -> list[int]:
    """Up to ``parts - 1`` cut positions inside ``body`` that split its compute nodes most
    evenly (``compute_before[i]``: compute nodes of the body up to position ``i``)."""
    total = compute_before[body.stop - 1] if len(body) else 0
    usable = [c for c in cuts if body.start <= c < body.stop - 1]
    chosen: list[int] = []
    for j in range(1, parts):
        target = j * total / parts
        floor = compute_before[chosen[-1]] if chosen else 0
        options = [c for c in usable if floor < compute_before[c] < total]
        if options:
            # the nearest count, cut as late as possible (after the activations of a node)
            chosen.append(min(options, key=lambda c: (abs(compute_before[c] - target), -c)))
    return sorted(set(chosen))


def auto_graph_groups(graph: Any, *, max_body_groups: int = MAX_BODY_GROUPS) -> GraphGroups:
    """``first``, ``body<k>`` and ``last`` (see the module docstring)."""
    nodes = list(graph.node)
    compute = [k for k, n in enumerate(nodes) if n.op_type in COMPUTE_OPS]
    if not compute:
        raise SpaceError("quantization.groups: the graph has no Conv, Gemm or MatMul node")
    first, last = compute[0], compute[-1]
    segments: list[tuple[str, int]] = [("first", first + 1)]  # (group, end position)
    if len(compute) > 1:
        body = range(first + 1, last)
        body_compute = len([k for k in compute if first < k < last])
        if body_compute:
            compute_before, count = [0] * len(nodes), 0
            for k, node in enumerate(nodes):
                count += first < k < last and node.op_type in COMPUTE_OPS
                compute_before[k] = count
            ends = [c + 1 for c in _body_cuts(compute_before, cut_points(graph), body,
                                              min(max_body_groups, body_compute))]
            segments += [(f"body{k}", end) for k, end in enumerate([*ends, last])]
        segments.append(("last", len(nodes)))
    else:
        segments = [("first", len(nodes))]
    direct: dict[str, str | None] = {}
    start = 0
    for name, end in segments:
        direct.update((node.name, name) for node in nodes[start:end])
        start = end
    assigned = _follow_activations(nodes, direct)
    names = tuple(name for name, _ in segments)
    members = LayerGroups(tuple(LayerGroup(g, tuple(n for n, a in assigned.items() if a == g))
                                for g in names))
    return GraphGroups(names=names, nodes=assigned, layer_groups=members)


def prefix_graph_groups(graph: Any, spec: Mapping[str, Sequence[str]]) -> GraphGroups:
    """Groups of node-name prefixes; raises :class:`SpaceError` naming what is wrong."""
    nodes = list(graph.node)
    names = [n.name for n in nodes]
    for group, prefixes in spec.items():
        if not prefixes:
            raise SpaceError(f"quantization.groups.{group}: lists no node-name prefix")
        for prefix in prefixes:
            if not any(name.startswith(prefix) for name in names):
                raise SpaceError(f"quantization.groups.{group}: no node name of the graph "
                                 f"starts with {prefix!r} (nodes are e.g. "
                                 f"{', '.join(names[:4])})")
    direct: dict[str, str | None] = {}
    for name in names:
        best, length = None, -1
        for group, prefixes in spec.items():
            for prefix in prefixes:
                if name.startswith(prefix) and len(prefix) > length:
                    best, length = str(group), len(prefix)
        direct[name] = best
    assigned = _follow_activations(nodes, direct)
    uncovered = [n.name for n in nodes if n.op_type in COMPUTE_OPS and direct[n.name] is None]
    if uncovered:
        raise SpaceError(f"quantization.groups: compute nodes {', '.join(uncovered[:5])} are "
                         f"in no group")
    covered = {assigned[n.name] for n in nodes if n.op_type in COMPUTE_OPS}
    empty = [str(g) for g in spec if g not in covered]
    if empty:
        raise SpaceError(f"quantization.groups.{empty[0]}: covers no Conv, Gemm or MatMul node")
    first_node: dict[str | None, int] = {}
    for k, node in enumerate(nodes):
        first_node.setdefault(assigned[node.name], k)
    in_order = sorted(spec, key=lambda g: first_node[str(g)])
    layer_groups = LayerGroups(tuple(LayerGroup(str(g), tuple(spec[g])) for g in in_order))
    return GraphGroups(names=layer_groups.names, nodes=assigned, layer_groups=layer_groups)


def graph_groups(graph: Any, spec: GraphGroupsSpec) -> GraphGroups:
    """The layer groups ``spec`` (the config's ``quantization.groups``) asks for."""
    if spec == "auto":
        return auto_graph_groups(graph)
    if spec == "stages":
        nodes = list(graph.node)
        return GraphGroups(names=("stage0",), nodes={n.name: "stage0" for n in nodes},
                           layer_groups=LayerGroups((LayerGroup(
                               "stage0", tuple(n.name for n in nodes)),)))
    if isinstance(spec, str):
        raise SpaceError(f"quantization.groups: expected auto, stages or a mapping, got {spec!r}")
    return prefix_graph_groups(graph, spec)
