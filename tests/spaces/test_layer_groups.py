"""Layer groups: derived from the model, overridable, and mapped onto every exported node."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from spaces import SpaceError, StagedModel, as_staged, load_reference
from spaces.layer_groups import FULL, LayerGroup, LayerGroups
from spaces.onnx_graph.node_groups import (
    COMPUTE_OPS,
    assign_nodes,
    group_operators,
    model_path,
    scope_path,
)
from spaces.torch_model.export import export_model
from spaces.torch_model.module_groups import (
    auto_groups,
    compute_layers_in_order,
    explicit_groups,
    stage_groups,
)

from .conftest import EXPERIMENTS, tiny_model


@pytest.mark.parametrize(("node", "path"), [
    ("/stages.0/stages.0.0/Conv", "stages.0.0"),
    ("/stages.0/stages.0.3/conv1/Conv", "stages.0.3.conv1"),
    ("/stages.1/shortcut/shortcut.0/Conv", "stages.1.shortcut.0"),
    ("/head/head.2/Gemm", "head.2"),
    ("/head/head.2/Gemm_MatMul", "head.2"),
    ("/stage/stage.3/relu_1/Relu", "stage.3.relu_1"),
    ("Identity_0", None),
    ("input_QuantizeLinear", None),
])
def test_scope_path_recovers_the_module(node: str, path: str | None) -> None:
    assert scope_path(node) == path


def test_model_path_undoes_the_export_wrappers() -> None:
    assert model_path("head.2", FULL, 3) == "heads.2.2"
    assert model_path("stages.1.conv1", FULL, 3) == "stages.1.conv1"
    assert model_path("stage.0", 1, 3) == "stages.1.0"
    assert model_path("head.2", 1, 3) == "heads.1.2"
    assert model_path("head", 0, 3) == "heads.0"
    assert model_path(None, FULL, 3) is None


def test_longest_path_wins() -> None:
    groups = LayerGroups((LayerGroup("body", ("stages",)), LayerGroup("first", ("stages.0.0",))))
    assert groups.group_of("stages.0.0") == "first"
    assert groups.group_of("stages.0.01") == "body"  # a path component, not a string prefix
    assert groups.group_of("stages.0.0.weight") == "first"
    assert groups.group_of("heads.0") is None


def test_auto_groups_of_the_tiny_model(example: torch.Tensor) -> None:
    """One conv per stage: stage 0's only layer is the first layer, so stage 0 has no group of
    its own and its exit head goes with ``first``; the final head is ``last``."""
    groups = auto_groups(tiny_model(), example)
    assert groups.to_dict() == [
        {"name": "first", "modules": ["stages.0.0", "heads.0"]},
        {"name": "stage1", "modules": ["stages.1", "heads.1"]},
        {"name": "stage2", "modules": ["stages.2"]},
        {"name": "last", "modules": ["heads.2"]},
    ]


def test_auto_groups_of_the_digits_model(example: torch.Tensor) -> None:
    build = load_reference("digits_model.py:build_model", EXPERIMENTS)
    groups = auto_groups(build(width=8), example)
    assert groups.names == ("first", "stage0", "stage1", "stage2", "last")
    assert groups.group_of("stages.0.0") == "first"
    assert groups.group_of("stages.0.3") == "stage0"
    assert groups.group_of("heads.0.2") == "stage0"
    assert groups.group_of("heads.2.2") == "last"


def test_auto_groups_of_a_plain_classifier() -> None:
    mlp = as_staged(nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32),
                                  nn.ReLU(), nn.Linear(32, 10)))
    groups = auto_groups(mlp, torch.zeros(1, 1, 8, 8))
    assert groups.to_dict() == [{"name": "first", "modules": ["stages.0.1"]},
                                {"name": "stage0", "modules": ["stages.0"]},
                                {"name": "last", "modules": ["stages.0.5"]}]
    single = as_staged(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    assert auto_groups(single, torch.zeros(1, 1, 8, 8)).names == ("all",)


def test_execution_order_not_registration_order() -> None:
    class Reversed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.late = nn.Linear(8, 10)
            self.early = nn.Linear(4, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.late(self.early(x))

    model = as_staged(Reversed())
    assert compute_layers_in_order(model, torch.zeros(1, 4)) == ["stages.0.early",
                                                                 "stages.0.late"]
    assert auto_groups(model, torch.zeros(1, 4)).to_dict() == [
        {"name": "first", "modules": ["stages.0.early"]},
        {"name": "last", "modules": ["stages.0.late"]}]


def test_stage_groups() -> None:
    assert stage_groups(tiny_model()).to_dict() == [
        {"name": f"stage{k}", "modules": [f"stages.{k}", f"heads.{k}"]} for k in range(3)]


def test_explicit_groups(example: torch.Tensor) -> None:
    groups = explicit_groups(tiny_model(), {"stem": ["stages.0"], "rest": ["stages", "heads"]},
                             example)
    assert groups.group_of("stages.0.0") == "stem"
    assert groups.group_of("stages.2.0") == "rest"


@pytest.mark.parametrize(("spec", "message"), [
    ({"a": ["stages.7"]}, "quantization.groups.a: the model has no module 'stages.7'"),
    ({"a": ["stages"]}, "layers heads.0.2, heads.1.2, heads.2.2 are in no group"),
    ({"a": ["stages", "heads"], "b": ["stages.0.1"]}, "quantization.groups.b: covers no Conv"),
    ({"a": []}, "quantization.groups.a: lists no module"),
])
def test_explicit_groups_errors(spec: dict, message: str, example: torch.Tensor) -> None:
    with pytest.raises(SpaceError, match=message.replace(".", r"\.")):
        explicit_groups(tiny_model(), spec, example)


@pytest.fixture(scope="module")
def exported(trained, example: torch.Tensor, tmp_path_factory) -> dict[str, list[Path]]:
    directory = tmp_path_factory.mktemp("groups-export")
    model = trained.fresh()
    return {"full": export_model(model, example, directory / "full", cascade=False),
            "cascade": export_model(model, example, directory / "cascade", cascade=True)}


def test_every_node_of_every_graph_gets_a_group(exported, example: torch.Tensor) -> None:
    model: StagedModel = tiny_model()
    groups = auto_groups(model, example)
    graphs = [(FULL, exported["full"][0]), *enumerate(exported["cascade"])]
    seen: dict[str, list[str]] = {}
    for kind, path in graphs:
        nodes = onnx.load(str(path)).graph.node
        assignment = assign_nodes(nodes, groups, kind=kind, num_stages=3)
        unassigned = [n.name for n in nodes if assignment[n.name] is None]
        assert unassigned == [], (path.name, unassigned)
        if kind != FULL:  # the cascade holds every layer once, exits included
            for group, ops in group_operators(nodes, assignment).items():
                seen.setdefault(group, []).extend(ops)
        if kind == FULL:
            assert assignment["/stages.0/stages.0.0/Conv"] == "first"
            assert assignment["/stages.0/stages.0.2/Relu"] == "first"  # follows its conv
            assert assignment["/stages.1/stages.1.0/Conv"] == "stage1"
            assert assignment["/head/head.2/Gemm"] == "last"
            assert assignment["/head/head.0/GlobalAveragePool"] == "last"
        if kind == 0:
            assert assignment["/head/head.2/Gemm"] == "first"  # exit head 0 follows stage 0
    assert sorted(seen) == ["first", "last", "stage1", "stage2"]
    assert all(op in COMPUTE_OPS for ops in seen.values() for op in ops)
    assert sorted(seen["first"]) == ["Conv", "Gemm"]
    assert seen["last"] == ["Gemm"]
