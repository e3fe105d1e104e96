"""QuantizationSpace: a group is offered only what its operators execute; naming more is an
error that names the group and its operators."""

from __future__ import annotations

import optuna
import pytest

from spaces import QuantizationSpace, SpaceError
from spaces.precisions import ALL_PRECISIONS
from spaces.quantization_space import (
    UnsupportedPrecisionError,
    describe_operators,
    why_not_runnable,
)

OPERATORS = {"first": ["Conv"], "stage0": ["Conv", "Conv", "Gemm"], "last": ["Gemm"],
             "mlp": ["MatMul", "Gemm"], "pool": []}


@pytest.mark.parametrize(("precision", "ops", "runs"), [
    ("fp32", [], True),
    ("int8", ["Conv"], True),
    ("int8", [], False),
    ("fp16", ["Conv", "Gemm"], True),
    ("int4_wo", ["Gemm"], True),
    ("int8_wo", ["MatMul", "Gemm"], True),
    ("int4_wo", ["Conv"], False),
    ("int8_wo", ["Conv", "Gemm"], False),
    ("int3", ["Gemm"], False),
])
def test_why_not_runnable(precision: str, ops: list[str], runs: bool) -> None:
    assert (why_not_runnable(precision, ops) is None) == runs


def test_unrunnable_precisions_are_not_offered() -> None:
    space = QuantizationSpace.for_operators(OPERATORS, precisions=ALL_PRECISIONS)
    assert space.choices_for("first") == ("fp32", "int8", "fp16")
    assert space.choices_for("stage0") == ("fp32", "int8", "fp16")
    assert space.choices_for("last") == ALL_PRECISIONS
    assert space.choices_for("mlp") == ALL_PRECISIONS
    assert space.choices_for("pool") == ("fp32",)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: dict[str, set[str]] = {g: set() for g in OPERATORS}
    for _ in range(60):
        for group, precision in zip(space.groups, space.suggest(study.ask()), strict=True):
            seen[group].add(precision)
    assert seen["first"] == {"fp32", "int8", "fp16"}
    assert seen["last"] == set(ALL_PRECISIONS)
    assert seen["pool"] == {"fp32"}


def test_group_precisions_override_the_default() -> None:
    space = QuantizationSpace.for_operators(OPERATORS, overrides={"last": ["int4_wo", "fp32"]})
    assert space.choices_for("last") == ("int4_wo", "fp32")
    assert space.choices_for("first") == ("fp32", "int8")


def test_naming_an_unrunnable_precision_is_an_error_naming_group_and_operators() -> None:
    with pytest.raises(UnsupportedPrecisionError) as caught:
        QuantizationSpace.for_operators(OPERATORS, overrides={"stage0": ["fp32", "int4_wo"]})
    message = str(caught.value)
    assert "layer group 'stage0'" in message
    assert "Conv x2, Gemm x1" in message
    assert "int4_wo" in message and "MatMul/Gemm" in message
    assert caught.value.group == "stage0" and caught.value.operators == ("Conv", "Conv", "Gemm")


def test_unknown_group_in_overrides() -> None:
    with pytest.raises(SpaceError, match=r"group_precisions\.nope: no such layer group"):
        QuantizationSpace.for_operators(OPERATORS, overrides={"nope": ["int8"]})


def test_params_round_trip() -> None:
    space = QuantizationSpace.for_operators(OPERATORS, precisions=ALL_PRECISIONS)
    quantization = ("int8", "fp16", "int4_wo", "int8_wo", "fp32")
    params = space.params(quantization)
    assert params == {"quant_first": "int8", "quant_stage0": "fp16", "quant_last": "int4_wo",
                      "quant_mlp": "int8_wo", "quant_pool": "fp32"}
    assert space.suggest(optuna.trial.FixedTrial(params)) == quantization
    with pytest.raises(SpaceError, match="not offered to group 'first'"):
        space.params(("int4_wo", "fp32", "fp32", "fp32", "fp32"))


def test_describe_operators() -> None:
    assert describe_operators(["Gemm", "Conv", "Conv"]) == "Conv x2, Gemm x1"
    assert describe_operators([]) == "none"
