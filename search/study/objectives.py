"""From a measurement to metrics, objective values and constraint values."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from device_agents import Measurement
from search.config import StudyConfig
from search.metrics import OBJECTIVES
from spaces import Candidate


def trial_metrics(measurement: Measurement, candidate: Candidate, build_info: Mapping[str, Any],
                  baseline_accuracy: float | None) -> dict[str, float]:
    """Every metric of a trial: measured ones, knobs and build facts (the names of
    docs/ARCHITECTURE.md)."""
    metrics = measurement.metrics()
    metrics["accuracy_drop"] = (baseline_accuracy - measurement.accuracy
                                if baseline_accuracy is not None else 0.0)
    metrics["prune_ratio"] = candidate.prune_ratio
    for k, ratio in enumerate(candidate.stage_prune_ratios):
        metrics[f"prune_ratio_stage{k}"] = ratio
    metrics["early_exit"] = float(candidate.early_exit)
    if candidate.exit_thresholds:
        metrics["exit_threshold"] = min(candidate.exit_thresholds)
        for k, threshold in enumerate(candidate.exit_thresholds):
            metrics[f"exit_threshold_{k}"] = threshold
    metrics["int8_groups"] = float(sum(q == "int8" for q in candidate.quantization))
    metrics["measure_s"] = measurement.duration_s
    if measurement.agent_s > 0:
        metrics["agent_s"] = measurement.agent_s
    for key, value in build_info.items():
        if isinstance(value, (int, float)):
            metrics[key] = float(value)
    return metrics


def ranked_percentiles(config: StudyConfig) -> tuple[float, ...]:
    """The latency percentiles the study ranks or caps (objectives and constraints): the ones
    whose confidence interval the measurement must bound."""
    names = [name for name, _ in OBJECTIVES]
    if config.constraints.latency_p95_ms is not None:
        names.append("latency_p95_ms")
    found = sorted({float(m.group(1)) for name in names
                    if (m := re.fullmatch(r"latency_p(\d+)_ms", name))})
    return tuple(found) or (50.0,)


def objective_values(metrics: Mapping[str, float]) -> list[float]:
    return [float(metrics[name]) for name, _ in OBJECTIVES]


def constraint_values(metrics: Mapping[str, float], *, baseline_accuracy: float,
                      max_accuracy_drop: float, latency_p95_ms: float | None = None,
                      size_kb: float | None = None) -> dict[str, float]:
    """Optuna constraints: feasible when every value is <= 0."""
    values = {"accuracy_band": (baseline_accuracy - max_accuracy_drop) - metrics["accuracy"]}
    if latency_p95_ms is not None:
        values["latency_p95_ms"] = metrics["latency_p95_ms"] - latency_p95_ms
    if size_kb is not None:
        values["size_kb"] = metrics["size_kb"] - size_kb
    return values
