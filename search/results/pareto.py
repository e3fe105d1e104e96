"""The feasible Pareto front and its hypervolume under a study's objectives, relative to the
fp32 baseline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from search.objective_set import Objective, ObjectiveSet
from search.records import TrialRecord, at_highest_fidelity


def _losses(records: Sequence[TrialRecord], objectives: ObjectiveSet) -> np.ndarray:
    """Objective values turned into losses (every objective minimised)."""
    rows = [objectives.losses(record.metrics) for record in records]
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(objectives))


def non_dominated(records: Sequence[TrialRecord],
                  objectives: ObjectiveSet | None = None) -> list[TrialRecord]:
    """The records no other record dominates under ``objectives`` (default: the default
    objectives); ties on every objective are all kept."""
    if not records:
        return []
    losses = _losses(records, objectives or ObjectiveSet.default())
    keep = []
    for i in range(len(records)):
        dominated = np.any(np.all(losses <= losses[i], axis=1) & np.any(losses < losses[i], axis=1))
        if not dominated:
            keep.append(records[i])
    return keep


def normalised(objective: Objective, value: float, base: float, band: float) -> float:
    """One coordinate of the hypervolume: 1.0 is the reference point, smaller is better.

    Accuracy (maximised) is the drop below the baseline over the accuracy band, so the
    reference is the edge of the band; a metric that is minimised is the trial's value over the
    baseline's, one that is maximised the baseline's over the trial's.
    """
    if objective.metric == "accuracy" and objective.direction == "max":
        return (base - value) / band
    tiny = 1e-12
    if objective.direction == "min":
        return value / max(base, tiny)
    return base / max(value, tiny)


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
    objectives: ObjectiveSet = field(default_factory=ObjectiveSet.default)

    @classmethod
    def from_records(cls, records: Sequence[TrialRecord], max_accuracy_drop: float = 0.01, *,
                     include_contended: bool = False,
                     objectives: ObjectiveSet | None = None) -> ParetoFront:
        """The front of ``records`` under ``objectives`` (default: the default objectives),
        listed along the first latency objective (:attr:`ObjectiveSet.order_by`)."""
        objectives = objectives or ObjectiveSet.default()
        # a reused trial repeats an earlier one's measurement: the original stands for both;
        # a contended measurement describes the contention, not the bundle; a configuration
        # measured at several fidelities is its highest one
        feasible = [r for r in at_highest_fidelity(records)
                    if r.ranked(include_contended=include_contended) and not r.reused
                    and not objectives.missing(r.metrics)]
        members = sorted(non_dominated(feasible, objectives),
                         key=lambda r: objectives.order_key(r.metrics))
        baseline = next((r for r in records if r.baseline and r.complete), None)
        return cls(tuple(members), baseline, max_accuracy_drop, objectives)

    @property
    def numbers(self) -> set[int]:
        return {r.number for r in self.members}

    def hypervolume(self) -> float:
        """Volume dominated in the normalised objectives (:func:`normalised`: for the defaults,
        accuracy drop / band, p95 / baseline p95, size / baseline size).

        The reference point is the baseline's value of every objective, accuracy at the edge of
        the accuracy band, so 0 means nothing beats the baseline and the value grows as the
        front improves.
        """
        if self.baseline is None or not self.members:
            return 0.0
        from optuna._hypervolume import compute_hypervolume

        base = self.baseline.metrics
        band = max(self.max_accuracy_drop, 1e-3)
        points = np.asarray([[normalised(o, r.metrics[o.metric], base[o.metric], band)
                              for o in self.objectives.objectives] for r in self.members])
        reference = np.ones(len(self.objectives))
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

    def __init__(self, max_accuracy_drop: float = 0.01,
                 objectives: ObjectiveSet | None = None) -> None:
        self.max_accuracy_drop = max_accuracy_drop
        self.objectives = objectives or ObjectiveSet.default()
        self.points: list[HypervolumePoint] = []
        self._front: list[TrialRecord] = []
        self._ranked: list[TrialRecord] = []
        self._promoted: set[str] = set()  # configurations measured at the full fidelity
        self._baseline: TrialRecord | None = None

    @classmethod
    def replay(cls, records: Sequence[TrialRecord], max_accuracy_drop: float = 0.01,
               objectives: ObjectiveSet | None = None) -> HypervolumeHistory:
        from search.records import finish_order

        history = cls(max_accuracy_drop, objectives)
        for record in finish_order(records):
            history.add(record)
        return history

    @property
    def front(self) -> ParetoFront:
        members = sorted(self._front, key=lambda r: self.objectives.order_key(r.metrics))
        return ParetoFront(tuple(members), self._baseline, self.max_accuracy_drop,
                           self.objectives)

    @property
    def hypervolume(self) -> float:
        return self.points[-1].hypervolume if self.points else 0.0

    def add(self, record: TrialRecord) -> HypervolumePoint:
        """Account for one finished trial (complete or failed) and return the new point."""
        if record.baseline and record.complete and self._baseline is None:
            self._baseline = record
        ranked = record.ranked() and not self.objectives.missing(record.metrics)
        if ranked:
            self._ranked.append(record)
        if record.complete and record.fidelity:
            # its configuration's screening trial no longer stands for it, whatever this says
            self._promoted.add(record.configuration)
            standing = [r for r in self._ranked
                        if r.fidelity or r.configuration not in self._promoted]
            self._front = non_dominated(standing, self.objectives)
        elif ranked and record.configuration not in self._promoted:
            self._front = non_dominated([*self._front, record], self.objectives)
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
