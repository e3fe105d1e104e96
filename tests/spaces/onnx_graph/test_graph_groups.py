"""Layer groups of a bare ONNX graph: first / body cut where the graph narrows / last, and
node-name prefixes."""

from __future__ import annotations

import pytest
from onnx import helper

from spaces.errors import SpaceError
from spaces.onnx_graph.graph_groups import (
    auto_graph_groups,
    cut_points,
    graph_groups,
    prefix_graph_groups,
)


def _groups_of(groups, prefix: str) -> set:
    return {g for name, g in groups.nodes.items() if name.startswith(prefix)}


def test_a_plain_cnn_gets_first_body_and_last(graphs) -> None:
    model = graphs.plain_cnn(convs=5)
    groups = auto_graph_groups(model.graph)
    assert groups.names == ("first", "body0", "body1", "body2", "last")
    assert groups.operators(model.graph.node) == {
        "first": ("Conv",), "body0": ("Conv",), "body1": ("Conv", "Conv"), "body2": ("Conv",),
        "last": ("Gemm",)}  # four body convs in three groups of about equal counts
    # an activation stays with the compute node before it; pool and flatten join the body
    assert groups.nodes["conv0_relu"] == "first"
    assert groups.nodes["conv1_relu"] == groups.nodes["conv1"] == "body0"
    assert groups.nodes["pool"] == groups.nodes["flatten"] == "body2"
    assert groups.nodes["fc"] == "last"
    assert groups.layer_groups.names == groups.names


def test_residual_blocks_are_never_cut_inside(graphs) -> None:
    model = graphs.residual_cnn(blocks=2)
    nodes = [n.name for n in model.graph.node]
    cuts = {nodes[k] for k in cut_points(model.graph)}
    # inside a block both the shortcut and the main path are live: no cut there
    assert "block0.conv_a_relu" not in cuts and "block0.conv_b" not in cuts
    assert {"stem_relu", "block0.relu", "block1.relu", "flatten"} <= cuts
    groups = auto_graph_groups(model.graph)
    assert groups.names == ("first", "body0", "body1", "last")
    assert _groups_of(groups, "block0") == {"body0"}
    assert _groups_of(groups, "block1") == {"body1"}


def test_small_graphs_get_fewer_groups(graphs) -> None:
    assert auto_graph_groups(graphs.plain_cnn(convs=1).graph).names == ("first", "last")
    assert auto_graph_groups(graphs.plain_cnn(convs=2).graph).names == ("first", "body0",
                                                                       "last")
    two = auto_graph_groups(graphs.plain_cnn(convs=4).graph, max_body_groups=2)
    assert two.names == ("first", "body0", "body1", "last")
    assert graph_groups(graphs.plain_cnn().graph, "stages").names == ("stage0",)


def test_a_graph_without_compute_nodes_has_no_groups() -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", 1, [1, 4])],
                              [helper.make_tensor_value_info("y", 1, [1, 4])])
    with pytest.raises(SpaceError, match="no Conv, Gemm or MatMul"):
        auto_graph_groups(graph)


def test_prefix_groups_take_the_longest_prefix(graphs) -> None:
    model = graphs.residual_cnn(blocks=2)
    groups = prefix_graph_groups(model.graph, {"stem": ["stem"], "blocks": ["block"],
                                               "late": ["block1.conv_b"], "head": ["fc"]})
    assert groups.names == ("stem", "blocks", "late", "head")
    assert groups.nodes["block1.conv_a"] == "blocks"
    assert groups.nodes["block1.conv_b"] == "late"
    assert groups.nodes["pool"] == "blocks"  # in no group: follows the node before it
    assert groups.operators(model.graph.node)["late"] == ("Conv",)
    assert groups.layer_groups.to_dict()[0] == {"name": "stem", "modules": ["stem"]}


def test_nodes_added_by_a_transform_keep_the_group_of_the_node_they_replace(graphs) -> None:
    model = graphs.plain_cnn(convs=2)
    groups = auto_graph_groups(model.graph)
    nodes = [n for n in model.graph.node if n.name != "fc"]
    nodes += [helper.make_node("MatMul", ["flatten_out", "w"], ["m"], name="fc_MatMul"),
              helper.make_node("Add", ["m", "b"], ["fc_out"], name="fc_Add")]
    assigned = groups.assign(nodes)
    assert assigned["fc_MatMul"] == assigned["fc_Add"] == "last"


@pytest.mark.parametrize(("spec", "message"), [
    ({"stem": ["stem"], "rest": ["nope"]}, "quantization.groups.rest: no node name of the "
                                           "graph starts with 'nope'"),
    ({"stem": ["stem"]}, "quantization.groups: compute nodes block0.conv_a"),
    ({"all": ["b", "s", "f"], "relus": ["block0.relu"]},
     "quantization.groups.relus: covers no Conv, Gemm or MatMul node"),
])
def test_bad_prefix_groups_are_one_line_errors(graphs, spec, message) -> None:
    with pytest.raises(SpaceError) as raised:
        prefix_graph_groups(graphs.residual_cnn().graph, spec)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
