"""From a measurement to metrics, objective values and constraint values, under the study's
configured objectives (``objectives:``) and limits (``constraints:``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from device_agents import Measurement
from device_agents.runtime_options import GRAPH_OPTIMIZATION_LEVELS
from search.config import StudyConfig
from search.metrics import METRICS
from search.objective_set import ObjectiveSet
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
    if candidate.qat:  # quantization-aware finetune (left out otherwise, as before it existed)
        metrics["qat"] = 1.0
    # the runtime knobs (docs/RUNTIME.md): the level always (all, 4, unless searched)
    metrics["graph_optimization_level"] = float(
        GRAPH_OPTIMIZATION_LEVELS.index(candidate.graph_optimization))
    if candidate.intra_op_threads:
        metrics["intra_op_threads"] = float(candidate.intra_op_threads)
    if candidate.static_shape is not None:
        metrics["static_shape"] = float(candidate.static_shape)
    metrics["measure_s"] = measurement.duration_s
    if measurement.agent_s > 0:
        metrics["agent_s"] = measurement.agent_s
    for key, value in build_info.items():
        if isinstance(value, (int, float)):
            metrics[key] = float(value)
    return metrics


def study_objectives(config: StudyConfig) -> ObjectiveSet:
    """The objectives the config names (the defaults when it names none)."""
    return ObjectiveSet.of(config.objectives)


def ranked_percentiles(config: StudyConfig) -> tuple[float, ...]:
    """The latency percentiles the study ranks or caps (objectives and limits): the ones whose
    confidence interval the measurement must bound. ``latency_mean_ms`` is no percentile: a
    study that ranks and caps no percentile bounds the median's interval."""
    names = [*config.objectives, *config.constraints.limits()]
    found = sorted({float(m.group(1)) for name in names
                    if (m := re.fullmatch(r"latency_p(\d+)_ms", name))})
    return tuple(found) or (50.0,)


def objective_values(metrics: Mapping[str, float], objectives: ObjectiveSet) -> list[float]:
    """The values Optuna is told, in the order of ``objectives``."""
    return list(objectives.values(metrics))


def missing_metrics(metrics: Mapping[str, float], objectives: ObjectiveSet,
                    limits: Mapping[str, float]) -> list[str]:
    """The objectives and limited metrics a trial's ``metrics`` lack (e.g. ``energy_mj`` when
    the counter could not be read): such a trial cannot be ranked and fails."""
    wanted = [*objectives.names, *(name for name in limits if name not in objectives.names)]
    return [name for name in wanted if name not in metrics]


def constraint_values(metrics: Mapping[str, float], *, baseline_accuracy: float,
                      max_accuracy_drop: float,
                      limits: Mapping[str, float] | None = None) -> dict[str, float]:
    """Optuna constraints, feasible when every value is <= 0: the accuracy band, and one per
    limit (``constraints.limits()``): an upper bound on a metric where less is better
    (``value - bound``), a lower bound on one where more is (``bound - value``)."""
    values = {"accuracy_band": (baseline_accuracy - max_accuracy_drop) - metrics["accuracy"]}
    for name, bound in (limits or {}).items():
        value = float(metrics[name])
        values[name] = bound - value if METRICS[name].direction == "max" else value - bound
    return values
