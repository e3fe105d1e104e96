"""Every name a measurement reports is in the one metric vocabulary, and so is every name the
study logs; the objectives take their direction from it."""

from __future__ import annotations

from device_agents import LatencyStats, Measurement
from device_agents.metric_names import METRICS, is_measured
from search.metrics import DEFAULT_OBJECTIVES, is_known_metric, metric_names
from search.metrics import METRICS as STUDY_METRICS
from search.objective_set import ObjectiveSet


def full_measurement() -> Measurement:
    latency = LatencyStats(mean_ms=1.0, std_ms=0.1, p50_ms=1.0, p90_ms=1.2, p95_ms=1.3,
                           p99_ms=1.5, n=300, median_ci_low_ms=0.99, median_ci_high_ms=1.01,
                           converged=True, cpu_share=0.98)
    return Measurement(bundle_digest="d", accuracy=0.9, n_eval=100, ece=0.02,
                       exit_rates=(0.25, 0.75), latency=latency, size_kb=12.0,
                       peak_mem_mb=20.0, energy_mj=1.5, exit_eces=(0.03, 0.01))


def test_every_measured_name_is_in_the_vocabulary() -> None:
    names = full_measurement().metrics()
    assert {"energy_mj", "latency_cpu_share", "exit_rate_1", "ece_exit_0"} <= set(names)
    assert [n for n in names if not is_measured(n)] == []
    assert [n for n in names if not is_known_metric(n)] == []


def test_objectives_follow_the_vocabulary() -> None:
    default = ObjectiveSet.default()
    assert default.names == ("accuracy", "latency_p95_ms", "size_kb")
    assert default.directions == ("maximize", "minimize", "minimize")
    assert all(STUDY_METRICS[name] == METRICS[name] and METRICS[name].direction == direction
               for name, direction in DEFAULT_OBJECTIVES)


def test_families_and_unknown_names() -> None:
    assert is_known_metric("prune_ratio_stage2") and is_known_metric("exit_threshold_0")
    assert not is_known_metric("exit_rate_") and not is_known_metric("latency_p42_ms")
    assert "exit_rate_<k>" in metric_names() and "accuracy" in metric_names()
