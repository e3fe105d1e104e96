"""Budgets: trials, a deadline and patience; the hypervolume history patience reads."""

from __future__ import annotations

import pytest

from search.results.pareto import HypervolumeHistory, ParetoFront
from search.study.budget import TIMEOUT, TRIALS_DONE, Budget, BudgetClock, format_seconds


def _history(record, points: list[tuple[float, float, float]]) -> HypervolumeHistory:
    """Baseline (0.95, 1 ms, 100 KB) then one finished trial per point, in order."""
    history = HypervolumeHistory(max_accuracy_drop=0.05)
    history.add(record(0, accuracy=0.95, p95=1.0, size=100.0, baseline=True))
    for number, (accuracy, p95, size) in enumerate(points, start=1):
        history.add(record(number, accuracy=accuracy, p95=p95, size=size,
                           feasible=accuracy >= 0.90))
    return history


def test_the_history_matches_the_front_of_all_trials(record) -> None:
    points = [(0.94, 0.5, 80.0), (0.90, 0.2, 50.0), (0.80, 0.1, 10.0), (0.945, 0.5, 80.0)]
    history = _history(record, points)
    records = [record(0, accuracy=0.95, p95=1.0, size=100.0, baseline=True)] + [
        record(n, accuracy=a, p95=p, size=s, feasible=a >= 0.90)
        for n, (a, p, s) in enumerate(points, start=1)]
    full = ParetoFront.from_records(records, 0.05)
    assert history.front.numbers == full.numbers
    assert history.hypervolume == pytest.approx(full.hypervolume())
    assert [p.step for p in history.points] == [1, 2, 3, 4, 5]
    # trial 3 is outside the band: it cannot move the front
    assert history.points[3].hypervolume == history.points[2].hypervolume
    # trial 4 dominates trial 1: the volume grows, the front keeps its size
    assert history.points[4].hypervolume > history.points[3].hypervolume
    assert history.points[4].front_size == history.points[3].front_size


def test_replay_orders_trials_by_when_they_finished(record) -> None:
    from dataclasses import replace

    late = replace(record(1, accuracy=0.94, p95=0.5, size=80.0), finished_at=20.0)
    early = replace(record(2, accuracy=0.93, p95=0.3, size=60.0), finished_at=10.0)
    base = replace(record(0, accuracy=0.95, p95=1.0, size=100.0, baseline=True), finished_at=1.0)
    history = HypervolumeHistory.replay([base, late, early], 0.05)
    assert [p.trial for p in history.points] == [0, 2, 1]


def test_trials_since_improvement_counts_the_plateau(record) -> None:
    history = _history(record, [(0.94, 0.5, 80.0), (0.80, 0.1, 10.0), (0.94, 0.6, 90.0)])
    assert history.trials_since_improvement() == 2
    never = _history(record, [(0.80, 0.1, 10.0)])  # nothing beats the baseline in the band
    assert never.hypervolume == 0.0 and never.trials_since_improvement() == 1


def test_budget_stop_reasons(record) -> None:
    plateau = _history(record, [(0.94, 0.5, 80.0), (0.80, 0.1, 10.0), (0.80, 0.1, 10.0)])
    assert Budget(trials=4).stop_reason(finished=3, in_flight=1, history=plateau,
                                        elapsed_s=0) == TRIALS_DONE
    assert Budget(trials=9).stop_reason(finished=3, in_flight=1, history=plateau,
                                        elapsed_s=0) is None
    assert Budget(trials=9, timeout_s=60).stop_reason(finished=3, in_flight=0, history=plateau,
                                                      elapsed_s=61) == TIMEOUT
    reason = Budget(trials=9, patience=2).stop_reason(finished=4, in_flight=0, history=plateau,
                                                      elapsed_s=0)
    assert reason == "hypervolume did not improve for 2 trials"
    assert Budget(trials=9, patience=3).stop_reason(finished=4, in_flight=0, history=plateau,
                                                    elapsed_s=0) is None


def test_eta_uses_this_runs_rate_and_the_deadline(monkeypatch) -> None:
    now = [100.0]
    monkeypatch.setattr("search.study.budget.time.monotonic", lambda: now[0])
    clock = BudgetClock(Budget(trials=10, timeout_s=50), finished_at_start=4)
    assert clock.eta_s(4) is None  # nothing finished in this run yet
    now[0] = 110.0
    assert clock.eta_s(6) == pytest.approx(4 * 10 / 2)  # 4 left at 5 s each: 20 s
    now[0] = 140.0
    assert clock.eta_s(6) == pytest.approx(10.0)  # the deadline comes first


@pytest.mark.parametrize(("seconds", "text"), [(None, "-"), (12.4, "12s"), (250, "4m10s"),
                                               (3 * 3600 + 300, "3h05m")])
def test_format_seconds(seconds, text) -> None:
    assert format_seconds(seconds) == text
