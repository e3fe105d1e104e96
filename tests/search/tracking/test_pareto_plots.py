"""The study's pictures plot its own objectives: one 2-D plot for two, accuracy and the rest
against the first latency objective otherwise."""

from __future__ import annotations

from search.objective_set import ObjectiveSet
from search.records import TrialRecord
from search.results.pareto import HypervolumeHistory
from search.tracking.pareto_plots import pareto_html, pareto_png


def trial(number: int, mean: float, mem: float) -> TrialRecord:
    return TrialRecord(number=number, state="COMPLETE", candidate={}, feasible=True,
                       baseline=number == 0, bundle=None, bundle_digest=None,
                       metrics={"accuracy": 0.9, "latency_mean_ms": mean, "peak_mem_mb": mem})


def test_two_objectives_make_one_plot_and_more_plot_each_against_the_latency() -> None:
    records = [trial(0, 1.0, 20.0), trial(1, 0.5, 30.0)]
    two = ObjectiveSet.of({"accuracy": "max", "latency_mean_ms": "min"})
    history = HypervolumeHistory.replay(records, 0.01, two).points
    page = pareto_html(records, {1}, history, "t", two)
    assert "accuracy vs mean latency (ms)" in page and "peak_mem" not in page
    three = ObjectiveSet.of({"peak_mem_mb": "min", "latency_mean_ms": "min", "accuracy": "max"})
    page = pareto_html(records, {0, 1}, history, "t", three)
    assert "accuracy vs mean latency (ms)" in page
    assert "peak_mem_mb (MB) vs mean latency (ms)" in page
    assert pareto_png(records, {1}, history, "t", two).startswith(b"\x89PNG")
