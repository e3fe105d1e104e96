"""The front and its hypervolume follow the objectives they are computed under."""

from __future__ import annotations

import pytest

from search.objective_set import ObjectiveSet
from search.records import TrialRecord
from search.results.pareto import HypervolumeHistory, ParetoFront
from search.results.query import best

MEAN = ObjectiveSet.of({"accuracy": "max", "latency_mean_ms": "min"})


def trial(number: int, *, accuracy: float, p95: float, mean: float, size: float,
          exits: bool = False) -> TrialRecord:
    return TrialRecord(number=number, state="COMPLETE", feasible=True, baseline=number == 0,
                       candidate={"exit_thresholds": [0.9] if exits else []},
                       bundle=None, bundle_digest=None,
                       metrics={"accuracy": accuracy, "latency_p95_ms": p95,
                                "latency_mean_ms": mean, "size_kb": size})


@pytest.fixture
def records() -> list[TrialRecord]:
    # 2 is a cascade: most samples leave early (the lowest mean) but its slowest ones run the
    # exit heads too (the highest p95), and the heads make it bigger
    return [trial(0, accuracy=0.95, p95=1.0, mean=0.9, size=100.0),
            trial(1, accuracy=0.95, p95=0.8, mean=0.7, size=60.0),
            trial(2, accuracy=0.95, p95=1.1, mean=0.4, size=70.0, exits=True),
            trial(3, accuracy=0.96, p95=1.2, mean=1.0, size=100.0)]


def test_the_front_under_mean_latency_holds_the_cascade(records) -> None:
    default = ParetoFront.from_records(records, 0.01)
    mean = ParetoFront.from_records(records, 0.01, objectives=MEAN)
    assert default.numbers == {1, 3}   # p95 and size: the cascade is dominated by trial 1
    assert mean.numbers == {2, 3}      # the mean: the cascade dominates 0 and 1
    assert [r.number for r in mean.members] == [2, 3]  # along the mean latency
    assert mean.objectives == MEAN


def test_the_hypervolume_has_a_reference_point_per_objective(records) -> None:
    front = ParetoFront.from_records(records[:3], 0.01, objectives=MEAN)
    # cascade: accuracy drop 0 of the band (the reference is 1), mean 0.4 / 0.9 of the baseline
    assert front.hypervolume() == pytest.approx(1.0 * (1 - 0.4 / 0.9))
    history = HypervolumeHistory.replay(records[:3], 0.01, MEAN)
    assert history.hypervolume == pytest.approx(front.hypervolume())
    assert history.front.numbers == {2}
    default = ParetoFront.from_records(records[:3], 0.01)
    assert default.hypervolume() == pytest.approx((1 - 0.8) * (1 - 0.6))


def test_best_breaks_ties_along_the_study_objectives(records) -> None:
    tied = records[:3]  # equally accurate
    assert best(tied, maximize="accuracy").number == 1
    assert best(tied, maximize="accuracy", objectives=MEAN).number == 2
