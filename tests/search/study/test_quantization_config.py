"""The ``quantization`` section: new keys validate at the edge; defaults follow the target."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.config import parse_config
from search.errors import ConfigError
from search.study.quantization_setup import quant_settings, quant_target

BASE = {"study": "s", "model": {"factory": "m.py:f"}, "data": {"loader": "m.py:d"}}


def config(quantization: dict | None = None, **extra):
    return parse_config({**BASE, "quantization": quantization or {}, **extra}, "c.yaml",
                        Path("."))


def test_defaults() -> None:
    q = config().quantization
    assert q.precisions == ["fp32", "int8"]
    assert q.groups == "auto" and q.group_precisions == {}
    assert q.activation_type is None and q.target == "auto"
    assert not q.seed_from_sensitivity


def test_every_precision_and_an_explicit_grouping_validate() -> None:
    q = config({"precisions": ["fp32", "int8", "int8_wo", "int4_wo", "fp16"],
                "groups": {"stem": ["stages.0"], "rest": ["stages", "heads"]},
                "group_precisions": {"stem": ["fp32"]}, "weight_only": {"block_size": 64}}
               ).quantization
    assert q.groups == {"stem": ["stages.0"], "rest": ["stages", "heads"]}
    assert q.weight_only.block_size == 64


@pytest.mark.parametrize(("quantization", "words"), [
    ({"precisions": ["fp32", "int4"]}, "quantization.precisions.1"),
    ({"groups": "blocks"}, "quantization.groups"),
    ({"groups": {"has space": ["stages"]}}, "group name 'has space'"),
    ({"groups": {"a": []}}, "group 'a' lists no module"),
    ({"group_precisions": {"a": ["int2"]}}, "quantization.group_precisions.a.0"),
    ({"group_precisions": {"a": []}}, "group 'a': must list at least one precision"),
    ({"weight_only": {"block_size": 48}}, "power of 2"),
    ({"target": "riscv"}, "quantization.target"),
])
def test_bad_quantization_keys(quantization: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        config(quantization)


@pytest.mark.parametrize(("device", "quantization", "target", "activation"), [
    ({"class": "rpi4"}, {}, "arm", "int8"),
    ({"class": "x86-edge"}, {}, "x86", "uint8"),
    ({"class": "rpi4"}, {"activation_type": "uint8"}, "arm", "uint8"),
    ({"class": "x86-edge"}, {"target": "arm"}, "arm", "int8"),
])
def test_int8_defaults_follow_the_target(device: dict, quantization: dict, target: str,
                                         activation: str) -> None:
    cfg = config(quantization, device=device)
    assert quant_target(cfg) == target
    settings = quant_settings(cfg)
    assert settings.activation_type == activation
    assert settings.weight_type == "int8" and settings.per_channel


def test_qat_reaches_the_quantization_space() -> None:
    from search.study.quantization_setup import quantization_space

    operators = {"stage0": ["Conv"], "stage1": ["Conv", "Gemm"]}
    assert quantization_space(config(), operators).qat == (False,)
    space = quantization_space(config({"qat": [False, True]}), operators)
    assert space.qat == (False, True) and space.searches_qat
