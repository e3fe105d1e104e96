from __future__ import annotations

import pytest

from search.results.pareto import ParetoFront, non_dominated


def test_non_dominated_keeps_exactly_the_trade_offs(record) -> None:
    a = record(1, accuracy=0.95, p95=1.0, size=100)
    b = record(2, accuracy=0.90, p95=0.5, size=100)   # faster, less accurate: a trade-off
    c = record(3, accuracy=0.90, p95=0.6, size=100)   # dominated by b
    d = record(4, accuracy=0.95, p95=1.0, size=100)   # ties a on every objective: kept
    assert {r.number for r in non_dominated([a, b, c, d])} == {1, 2, 4}


def test_front_ignores_infeasible_and_failed_trials(record) -> None:
    records = [record(0, accuracy=0.95, p95=1.0, size=400, baseline=True),
               record(1, accuracy=0.99, p95=0.1, size=10, feasible=False),
               record(2, accuracy=0.99, p95=0.1, size=10, state="FAIL", feasible=False),
               record(3, accuracy=0.945, p95=0.5, size=200)]
    front = ParetoFront.from_records(records, max_accuracy_drop=0.01)
    assert front.numbers == {0, 3}
    assert front.baseline is not None and front.baseline.number == 0
    assert [r.number for r in front.members] == [3, 0]  # sorted by p95


def test_hypervolume_is_zero_for_the_baseline_alone_and_grows_with_better_trials(record):
    base = record(0, accuracy=0.95, p95=1.0, size=400, baseline=True)
    assert ParetoFront.from_records([base], 0.01).hypervolume() == 0.0
    half = record(1, accuracy=0.95, p95=0.5, size=200)
    one = ParetoFront.from_records([base, half], 0.01).hypervolume()
    # (1 - 0) * (1 - 0.5) * (1 - 0.5) in (drop/band, p95 ratio, size ratio)
    assert one == pytest.approx(0.25)
    better = record(2, accuracy=0.95, p95=0.25, size=200)
    assert ParetoFront.from_records([base, half, better], 0.01).hypervolume() > one
