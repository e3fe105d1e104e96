"""Sensitivity: single-group candidates measured with onnxruntime, and the seeds they suggest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device_agents import CascadeRunner
from spaces import Candidate, DataSplits, QuantizationSpace, TorchBuilder
from spaces.sensitivity import (
    GroupSensitivity,
    SensitivityReport,
    measure_sensitivity,
    seed_configurations,
    single_group_candidates,
)
from spaces.torch_model.module_groups import auto_groups

from .conftest import BUILD_SETTINGS

SPACE = QuantizationSpace.for_operators(
    {"first": ["Conv"], "stage0": ["Conv"], "stage1": ["Conv"], "last": ["Gemm"]},
    precisions=("fp32", "int8", "int4_wo"))


def report_of(drops: dict[str, float]) -> SensitivityReport:
    return SensitivityReport(groups=SPACE.groups, baseline_accuracy=0.9, split="val",
                             samples=1000, entries=tuple(
                                 GroupSensitivity(g, "int8", 0.9 - d, d)
                                 for g, d in drops.items()))


def test_single_group_candidates_only_where_offered() -> None:
    found = [(g, p, c.quantization) for g, p, c in
             single_group_candidates(SPACE, ("int8", "int4_wo", "fp32"))]
    assert found == [
        ("first", "int8", ("int8", "fp32", "fp32", "fp32")),
        ("stage0", "int8", ("fp32", "int8", "fp32", "fp32")),
        ("stage1", "int8", ("fp32", "fp32", "int8", "fp32")),
        ("last", "int8", ("fp32", "fp32", "fp32", "int8")),
        ("last", "int4_wo", ("fp32", "fp32", "fp32", "int4_wo")),
    ]


def test_seeds_quantize_the_least_sensitive_groups_first() -> None:
    report = report_of({"first": 0.02, "stage0": 0.001, "stage1": 0.004, "last": 0.0})
    assert report.ranking() == ["last", "stage0", "stage1", "first"]
    seeds = seed_configurations(report, SPACE, max_accuracy_drop=0.01, count=10)
    assert seeds == [
        ("fp32", "int8", "int8", "int8"),   # last + stage0 + stage1: 0.005 <= 0.01
        ("fp32", "int8", "fp32", "int8"),   # all but the two most sensitive
        ("fp32", "fp32", "fp32", "int8"),   # all but the three most sensitive
    ]
    assert seed_configurations(report, SPACE, max_accuracy_drop=0.01, count=2) == seeds[:2]
    assert seed_configurations(report, SPACE, max_accuracy_drop=0.05, count=1) == \
        [("int8",) * 4]


def test_no_seed_when_every_group_is_too_sensitive_alone() -> None:
    report = report_of({"first": 0.2, "stage0": 0.3, "stage1": 0.4, "last": 0.5})
    seeds = seed_configurations(report, SPACE, max_accuracy_drop=0.01, count=10)
    assert ("fp32",) * 4 not in seeds
    assert seeds[0] == ("int8", "int8", "int8", "fp32")  # all but the most sensitive


def test_report_round_trip() -> None:
    report = report_of({"first": 0.02, "last": 0.0})
    assert SensitivityReport.from_dict(report.to_dict()) == report
    assert report.drop("first") == 0.02 and report.drop("stage0") is None


def test_measure_sensitivity_with_onnxruntime(trained, digits: DataSplits, build_cache: Path,
                                              example, tmp_path: Path) -> None:
    builder = TorchBuilder(trained=trained, data=digits, cache_dir=build_cache,
                               settings=BUILD_SETTINGS,
                               groups=auto_groups(trained.fresh(), example))
    space = QuantizationSpace.for_operators(builder.operators(),
                                            precisions=("fp32", "int8", "int4_wo"))
    x, y = digits.val_x[:60], digits.val_y[:60]
    built: list[Candidate] = []

    def accuracy_of(candidate: Candidate) -> float:
        built.append(candidate)
        bundle = builder.build(candidate, tmp_path / "_".join(candidate.quantization))
        runner = CascadeRunner.load(bundle.directory)
        return float(np.mean([runner.predict(x[i]).label == y[i] for i in range(len(x))]))

    report = measure_sensitivity(space, accuracy_of, precisions=("int8", "int4_wo"),
                                 split="val", samples=60)
    assert built[0] == Candidate(quantization=("fp32",) * 4)
    assert [(e.group, e.precision) for e in report.entries] == [
        ("first", "int8"), ("stage1", "int8"), ("stage2", "int8"), ("last", "int8"),
        ("last", "int4_wo")]
    assert report.baseline_accuracy > 0.5
    for entry in report.entries:
        assert entry.drop == pytest.approx(report.baseline_accuracy - entry.accuracy)
        assert abs(entry.drop) < 0.2  # one int8 group of a trained model stays close
