"""The objectives of a study: from the config, as stored with the study, and the defaults."""

from __future__ import annotations

import pytest

from search.metrics import DEFAULT_OBJECTIVES
from search.objective_set import OBJECTIVES_ATTR, ObjectiveSet


def test_order_directions_and_losses() -> None:
    objectives = ObjectiveSet.of({"accuracy": "max", "peak_mem_mb": "min",
                                  "latency_mean_ms": "min"})
    assert objectives.names == ("accuracy", "peak_mem_mb", "latency_mean_ms")
    assert objectives.directions == ("maximize", "minimize", "minimize")
    metrics = {"accuracy": 0.9, "peak_mem_mb": 30.0, "latency_mean_ms": 2.0}
    assert objectives.values(metrics) == (0.9, 30.0, 2.0)
    assert objectives.losses(metrics) == [-0.9, 30.0, 2.0]
    assert objectives.missing({"accuracy": 0.9}) == ["peak_mem_mb", "latency_mean_ms"]
    # fronts are listed along the first latency objective, whatever its place
    assert objectives.order_by.metric == "latency_mean_ms"
    assert ObjectiveSet.of({"accuracy": "max", "size_kb": "min"}).order_by.metric == "size_kb"


def test_stored_objectives_round_trip_and_default_for_an_old_study() -> None:
    objectives = ObjectiveSet.of({"accuracy": "max", "latency_mean_ms": "min"})
    assert ObjectiveSet.of_study({OBJECTIVES_ATTR: objectives.to_attr()}) == objectives
    assert ObjectiveSet.of_study({}) == ObjectiveSet.default()
    assert ObjectiveSet.default().to_attr() == dict(DEFAULT_OBJECTIVES)
    assert objectives.describe() == "{accuracy: max, latency_mean_ms: min}"
    with pytest.raises(ValueError, match="direction"):
        ObjectiveSet.of({"accuracy": "up"})
