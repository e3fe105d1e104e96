"""Objective values, constraints on any limited metric, and the percentiles a study ranks."""

from __future__ import annotations

import pytest

from search.config import parse_config
from search.objective_set import ObjectiveSet
from search.study.objectives import (
    constraint_values,
    missing_metrics,
    objective_values,
    ranked_percentiles,
)


def config(**changes):
    data = {"study": "s", "model": {"factory": "m.py:f"}, "data": {"loader": "m.py:d"},
            **changes}
    return parse_config(data, "test.yaml", base_dir=__import__("pathlib").Path("."))


METRICS = {"accuracy": 0.9, "latency_p95_ms": 2.0, "latency_mean_ms": 1.5, "size_kb": 50.0,
           "peak_mem_mb": 70.0, "ece": 0.05}


def test_limits_are_upper_bounds_when_less_is_better_and_lower_when_more_is() -> None:
    c = config(constraints={"max_accuracy_drop": 0.02, "peak_mem_mb": 64, "size_kb": 60,
                            "accuracy": 0.85}).constraints
    values = constraint_values(METRICS, baseline_accuracy=0.91, max_accuracy_drop=0.02,
                               limits=c.limits())
    assert values == pytest.approx({"accuracy_band": 0.89 - 0.9, "size_kb": 50.0 - 60,
                                    "peak_mem_mb": 70.0 - 64, "accuracy": 0.85 - 0.9})
    assert values["peak_mem_mb"] > 0 and values["size_kb"] <= 0 and values["accuracy"] <= 0


def test_objective_values_follow_the_configured_order() -> None:
    objectives = ObjectiveSet.of(config(objectives={"latency_mean_ms": "min",
                                                    "accuracy": "max"}).objectives)
    assert objective_values(METRICS, objectives) == [1.5, 0.9]
    assert missing_metrics(METRICS, ObjectiveSet.of({"accuracy": "max", "energy_mj": "min"}),
                           {"peak_mem_mb": 64.0, "latency_p99_ms": 3.0}) == [
        "energy_mj", "latency_p99_ms"]


def test_ranked_percentiles_are_those_of_the_objectives_and_limits() -> None:
    assert ranked_percentiles(config()) == (95.0,)
    assert ranked_percentiles(config(objectives={"accuracy": "max", "latency_p50_ms": "min"},
                                     constraints={"latency_p99_ms": 5})) == (50.0, 99.0)
    assert ranked_percentiles(config(objectives={"accuracy": "max", "latency_mean_ms": "min"},
                                     constraints={"latency_p95_ms": 5})) == (95.0,)
    # the mean is no percentile: with nothing else ranked, the median's interval is bounded
    assert ranked_percentiles(config(objectives={"accuracy": "max",
                                                 "latency_mean_ms": "min"})) == (50.0,)


def test_qat_is_a_metric_only_of_qat_trials() -> None:
    from device_agents import LatencyStats, Measurement
    from search.metrics import METRICS as KNOWN
    from search.study.objectives import trial_metrics
    from spaces import Candidate

    latency = LatencyStats(mean_ms=1.0, std_ms=0.01, p50_ms=1.0, p90_ms=1.0, p95_ms=1.0,
                           p99_ms=1.0, n=500, median_ci_low_ms=1.0, median_ci_high_ms=1.0,
                           converged=True)
    measured = Measurement(bundle_digest="d", accuracy=0.9, n_eval=10, ece=0.0,
                           exit_rates=(1.0,), latency=latency, size_kb=1.0, peak_mem_mb=1.0)
    plain = Candidate(quantization=("int8", "fp32"), prune_ratio=0.5)
    assert "qat" not in trial_metrics(measured, plain, {}, 0.9)
    qat = Candidate(quantization=("int8", "fp32"), prune_ratio=0.5, qat=True)
    assert trial_metrics(measured, qat, {}, 0.9)["qat"] == 1.0
    assert "qat" in KNOWN
