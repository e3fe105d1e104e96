"""Every metric name of a trial, with its direction and unit: what the device measured
(:mod:`device_agents.metric_names`) plus the knobs and build facts the study logs as metrics so
that MLflow filters and ``--where`` can use them. The default objectives are named here too (a
study's own are :class:`search.objective_set.ObjectiveSet`)."""

from __future__ import annotations

from typing import Literal

from device_agents.metric_names import MEASURED, MetricName

_KNOBS_AND_FACTS: tuple[MetricName, ...] = (
    MetricName("accuracy_drop", "min", "", "baseline accuracy minus the trial's"),
    MetricName("prune_ratio", "", "", "share of channels removed (mean over stages)"),
    MetricName("prune_ratio_stage", "", "", "share of channels removed in stage k"),
    MetricName("exit_threshold", "", "", "lowest exit threshold"),
    MetricName("exit_threshold_", "", "", "threshold of exit k"),
    MetricName("early_exit", "", "", "1 when the bundle is a cascade with exits"),
    MetricName("int8_groups", "", "groups", "layer groups at int8"),
    MetricName("qat", "", "", "1 when the int8 groups were finetuned quantization-aware "
               "(absent otherwise)"),
    MetricName("graph_optimization_level", "", "", "onnxruntime's level: 0 disabled, 1 basic, "
               "2 extended, 3 layout, 4 all (runtime knobs only)"),
    MetricName("intra_op_threads", "", "threads", "the bundle's intra-op threads (runtime knob)"),
    MetricName("static_shape", "", "", "1: input fixed to batch 1, 0: dynamic batch axis "
               "(runtime knob)"),
    MetricName("macs_m", "min", "M", "multiply-accumulates of the full path"),
    MetricName("params_k", "min", "k", "parameters"),
    MetricName("fused_int_ops_ratio", "", "", "quantized compute ops fused into integer kernels"),
    MetricName("integer_ops", "", "ops", "integer kernels in the optimized graphs"),
    MetricName("contended", "", "", "1 when the agent's core was shared after every retry"),
    MetricName("contention_retries", "", "", "measurements repeated for contention"),
    MetricName("overlap_builds", "", "", "1 when builds ran while agents measured"),
    MetricName("test_accuracy", "max", "", "accuracy on the held-out test split (confirmed)"),
    MetricName("test_accuracy_drop", "min", "", "baseline test accuracy minus the trial's"),
    MetricName("confirmed_latency_p50_ms", "min", "ms", "median latency, confirmation"),
    MetricName("confirmed_latency_p95_ms", "min", "ms", "p95 latency, confirmation"),
    MetricName("confirmed_latency_mean_ms", "min", "ms", "mean latency, confirmation"),
    MetricName("confirmed_speedup_p50", "max", "x", "median per-round baseline p50 / trial's"),
    MetricName("confirmed_speedup_p95", "max", "x", "median per-round baseline p95 / trial's"),
    MetricName("build_s", "", "s", "time to build the bundle"),
    MetricName("measure_s", "", "s", "time the measurement took"),
    MetricName("agent_s", "", "s", "the agent's whole time for the request"),
)
#: Every metric a trial can carry, by name (``*_`` and ``*stage`` names are families).
METRICS: dict[str, MetricName] = {m.name: m for m in (*MEASURED, *_KNOBS_AND_FACTS)}
#: What a confirmation adds to a trial (search.study.confirmation).
CONFIRMATION_METRICS: tuple[str, ...] = (
    "test_accuracy", "test_accuracy_drop", "confirmed_latency_p50_ms", "confirmed_latency_p95_ms",
    "confirmed_latency_mean_ms", "confirmed_speedup_p50", "confirmed_speedup_p95")
#: The objectives of a study that names none (``objectives:`` in the config).
DEFAULT_OBJECTIVES: tuple[tuple[str, Literal["min", "max"]], ...] = (
    ("accuracy", "max"), ("latency_p95_ms", "min"), ("size_kb", "min"))


def limitable_metrics() -> list[str]:
    """The metrics an objective or a limit may name: measured during the search, with a
    direction (not the confirmation's, not per exit)."""
    return [m.name for m in METRICS.values()
            if m.direction and not m.per_index and m.name not in CONFIRMATION_METRICS
            and m.name != "accuracy_drop"]


def is_known_metric(name: str) -> bool:
    """Whether ``name`` is a trial metric (``exit_rate_2``, ``prune_ratio_stage1`` included)."""
    return (name in METRICS and not METRICS[name].per_index) or any(
        m.per_index and name.startswith(m.name) and name.removeprefix(m.name).isdigit()
        for m in METRICS.values())


def metric_names() -> list[str]:
    """The names for an error message: plain names, then families as ``<name><k>``."""
    return ([m.name for m in METRICS.values() if not m.per_index]
            + [m.name + "<k>" for m in METRICS.values() if m.per_index])
