"""The feasible Pareto front and its hypervolume, relative to the fp32 baseline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from search.metrics import OBJECTIVES
from search.records import TrialRecord


def _losses(records: Sequence[TrialRecord]) -> np.ndarray:
    """Objective values turned into losses (every objective minimised)."""
    rows = []
    for record in records:
        values = record.objective_values()
        rows.append([-v if direction == "maximize" else v
                     for v, (_, direction) in zip(values, OBJECTIVES, strict=True)])
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(OBJECTIVES))


def non_dominated(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The records no other record dominates (ties on every objective are all kept)."""
    if not records:
        return []
    losses = _losses(records)
    keep = []
    for i in range(len(records)):
        dominated = np.any(np.all(losses <= losses[i], axis=1) & np.any(losses < losses[i], axis=1))
        if not dominated:
            keep.append(records[i])
    return keep


@dataclass(frozen=True)
class ParetoFront:
    """The feasible, completed, non-dominated trials of a study.

    Example:
        >>> front = ParetoFront.from_records(records)  # doctest: +SKIP
        >>> [r.number for r in front.members]  # doctest: +SKIP
        [0, 4, 7]
    """

    members: tuple[TrialRecord, ...]
    baseline: TrialRecord | None
    max_accuracy_drop: float

    @classmethod
    def from_records(cls, records: Sequence[TrialRecord], max_accuracy_drop: float = 0.01, *,
                     include_contended: bool = False) -> ParetoFront:
        # a reused trial repeats an earlier one's measurement: the original stands for both;
        # a contended measurement describes the contention, not the bundle
        feasible = [r for r in records
                    if r.ranked(include_contended=include_contended) and not r.reused]
        members = sorted(non_dominated(feasible), key=lambda r: r.metrics["latency_p95_ms"])
        baseline = next((r for r in records if r.baseline and r.complete), None)
        return cls(tuple(members), baseline, max_accuracy_drop)

    @property
    def numbers(self) -> set[int]:
        return {r.number for r in self.members}

    def hypervolume(self) -> float:
        """Volume dominated in (accuracy drop / band, p95 / baseline p95, size / baseline size).

        The reference point is the baseline's latency and size at the edge of the accuracy band,
        so 0 means nothing beats the baseline and the value grows as the front improves.
        """
        if self.baseline is None or not self.members:
            return 0.0
        from optuna._hypervolume import compute_hypervolume

        base = self.baseline.metrics
        band = max(self.max_accuracy_drop, 1e-3)
        points = np.asarray([[(base["accuracy"] - r.metrics["accuracy"]) / band,
                              r.metrics["latency_p95_ms"] / base["latency_p95_ms"],
                              r.metrics["size_kb"] / base["size_kb"]] for r in self.members])
        reference = np.asarray([1.0, 1.0, 1.0])
        inside = np.all(points < reference, axis=1)
        if not inside.any():
            return 0.0
        return float(compute_hypervolume(points[inside], reference))


@dataclass(frozen=True)
class HypervolumePoint:
    """The front after ``step`` finished trials (the last of which was ``trial``)."""

    step: int
    trial: int
    hypervolume: float
    front_size: int


class HypervolumeHistory:
    """The hypervolume after each finished trial, in the order trials finished.

    Incremental: adding a trial costs one dominance check against the current front. Replaying
    a stored study (:meth:`replay`) gives the same history the live study saw, which is what
    the patience budget and ``paretoedge sync`` rely on.

    Example:
        >>> history = HypervolumeHistory.replay(records, max_accuracy_drop=0.01)  # doctest: +SKIP
        >>> history.trials_since_improvement()  # doctest: +SKIP
        3
    """

    def __init__(self, max_accuracy_drop: float = 0.01) -> None:
        self.max_accuracy_drop = max_accuracy_drop
        self.points: list[HypervolumePoint] = []
        self._front: list[TrialRecord] = []
        self._baseline: TrialRecord | None = None

    @classmethod
    def replay(cls, records: Sequence[TrialRecord],
               max_accuracy_drop: float = 0.01) -> HypervolumeHistory:
        from search.records import finish_order

        history = cls(max_accuracy_drop)
        for record in finish_order(records):
            history.add(record)
        return history

    @property
    def front(self) -> ParetoFront:
        members = sorted(self._front, key=lambda r: r.metrics["latency_p95_ms"])
        return ParetoFront(tuple(members), self._baseline, self.max_accuracy_drop)

    @property
    def hypervolume(self) -> float:
        return self.points[-1].hypervolume if self.points else 0.0

    def add(self, record: TrialRecord) -> HypervolumePoint:
        """Account for one finished trial (complete or failed) and return the new point."""
        if record.baseline and record.complete and self._baseline is None:
            self._baseline = record
        if record.ranked():
            self._front = non_dominated([*self._front, record])
        front = self.front
        point = HypervolumePoint(len(self.points) + 1, record.number, front.hypervolume(),
                                 len(front.members))
        self.points.append(point)
        return point

    def trials_since_improvement(self, tolerance: float = 1e-12) -> int:
        """Finished trials since the hypervolume last grew (all of them if it never did).

        The fp32 baseline does not count: it defines the reference point.
        """
        baseline = self._baseline.number if self._baseline is not None else None
        best, since = 0.0, 0
        for point in self.points:
            if point.trial == baseline:
                continue
            if point.hypervolume > best + tolerance:
                best, since = point.hypervolume, 0
            else:
                since += 1
        return since
