from __future__ import annotations

import pytest

from search.errors import NothingFoundError, QueryError
from search.results.query import best, parse_where


@pytest.fixture
def records(record):
    return [
        record(0, accuracy=0.95, p95=1.0, size=400, baseline=True),
        record(1, accuracy=0.94, p95=0.4, size=200),
        record(2, accuracy=0.96, p95=0.6, size=300, feasible=False),
        record(3, accuracy=0.93, p95=0.2, size=100),
        record(4, accuracy=0.94, p95=0.4, size=150),
        record(5, accuracy=0.99, p95=0.1, state="FAIL", feasible=False),
    ]


def test_parse_where_reads_clauses_joined_by_and() -> None:
    conditions = parse_where("latency_p95_ms <= 2 and size_kb<500 AND accuracy >= 0.9")
    assert [(c.metric, c.op, c.value) for c in conditions] == [
        ("latency_p95_ms", "<=", 2.0), ("size_kb", "<", 500.0), ("accuracy", ">=", 0.9)]
    assert parse_where("exit_rate_0 > 1e-1")[0].value == pytest.approx(0.1)


@pytest.mark.parametrize("expression", ["latency_p95_ms <", "latency_p95_ms ~ 2",
                                        "latency_p95_ms < 2 or size_kb < 3", "2 < size_kb"])
def test_parse_where_rejects_what_it_cannot_read(expression: str) -> None:
    with pytest.raises(QueryError, match="--where"):
        parse_where(expression)


def test_unknown_metric_is_named(records) -> None:
    with pytest.raises(QueryError, match="'latncy_p95_ms'"):
        parse_where("latncy_p95_ms < 2")
    with pytest.raises(QueryError, match="--maximize"):
        best(records, maximize="acc")


def test_best_maximizes_under_a_constraint_among_feasible_trials(records) -> None:
    assert best(records, where="latency_p95_ms < 0.5", maximize="accuracy").number == 4
    assert best(records, maximize="accuracy").number == 0  # trial 2 is infeasible, 5 failed
    assert best(records, minimize="latency_p95_ms").number == 3


def test_ties_go_to_lower_p95_then_smaller_size(records) -> None:
    # trials 1 and 4 tie on accuracy and p95; 4 is smaller.
    assert best(records, where="accuracy == 0.94", maximize="accuracy").number == 4


def test_nothing_found_and_argument_errors(records) -> None:
    with pytest.raises(NothingFoundError, match=r"latency_p95_ms < 0\.01"):
        best(records, where="latency_p95_ms < 0.01", maximize="accuracy")
    with pytest.raises(NothingFoundError, match="rpi4"):
        best(records, maximize="accuracy", device_class="rpi4")
    with pytest.raises(QueryError, match="exactly one"):
        best(records, maximize="accuracy", minimize="size_kb")
