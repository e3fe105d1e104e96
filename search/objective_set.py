"""The objectives of a study: the 2 to 4 metrics Optuna ranks, each with the way that is better.

A study's objectives come from its config (``objectives:``, default
:data:`search.metrics.DEFAULT_OBJECTIVES`) and are stored with the study when it is created
(user attr ``objectives``), so that ``front``, ``best``, ``sync`` and ``confirm`` rank a stored
study the way it was searched. A study created before objectives were configurable has no such
attr: it was searched under the defaults.

Example:
    >>> objectives = ObjectiveSet.of({"accuracy": "max", "latency_mean_ms": "min"})
    >>> objectives.names, objectives.directions
    (('accuracy', 'latency_mean_ms'), ('maximize', 'minimize'))
    >>> objectives.losses({"accuracy": 0.9, "latency_mean_ms": 2.0})
    [-0.9, 2.0]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from search.metrics import DEFAULT_OBJECTIVES

#: Study user attr: the objectives the study was created with (``{metric: min|max}``).
OBJECTIVES_ATTR = "objectives"
Direction = Literal["min", "max"]


@dataclass(frozen=True)
class Objective:
    """One objective: a metric and whether more (``max``) or less (``min``) is better."""

    metric: str
    direction: Direction

    @property
    def optuna_direction(self) -> str:
        return "maximize" if self.direction == "max" else "minimize"

    def loss(self, value: float) -> float:
        """``value`` as a loss (smaller is better)."""
        return -value if self.direction == "max" else value

    @property
    def latency_like(self) -> bool:
        return self.metric.startswith("latency_")


@dataclass(frozen=True)
class ObjectiveSet:
    """The ordered objectives of one study (Optuna's values are in this order)."""

    objectives: tuple[Objective, ...]

    @classmethod
    def of(cls, mapping: Mapping[str, str]) -> ObjectiveSet:
        """From ``{metric: min|max}`` (the config's ``objectives``, or the stored attr)."""
        for name, direction in mapping.items():
            if direction not in ("min", "max"):
                raise ValueError(f"objective {name}: direction must be min or max, "
                                 f"got {direction!r}")
        return cls(tuple(Objective(name, cast(Direction, d)) for name, d in mapping.items()))

    @classmethod
    def default(cls) -> ObjectiveSet:
        return cls.of(dict(DEFAULT_OBJECTIVES))

    @classmethod
    def of_study(cls, user_attrs: Mapping[str, Any]) -> ObjectiveSet:
        """The objectives a stored study was created with (the defaults for a study older than
        the ``objectives`` attr)."""
        stored = user_attrs.get(OBJECTIVES_ATTR)
        return cls.of(stored) if stored else cls.default()

    def to_attr(self) -> dict[str, str]:
        """``{metric: min|max}``, as stored with the study."""
        return {o.metric: o.direction for o in self.objectives}

    def describe(self) -> str:
        return "{" + ", ".join(f"{o.metric}: {o.direction}" for o in self.objectives) + "}"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.metric for o in self.objectives)

    @property
    def directions(self) -> tuple[str, ...]:
        """Optuna's directions (``maximize`` / ``minimize``), in order."""
        return tuple(o.optuna_direction for o in self.objectives)

    def __len__(self) -> int:
        return len(self.objectives)

    def missing(self, metrics: Mapping[str, float]) -> list[str]:
        """The objectives ``metrics`` has no value for."""
        return [name for name in self.names if name not in metrics]

    def values(self, metrics: Mapping[str, float]) -> tuple[float, ...]:
        """The objective values, in order (``KeyError`` when one is missing)."""
        return tuple(float(metrics[name]) for name in self.names)

    def losses(self, metrics: Mapping[str, float]) -> list[float]:
        """The objective values as losses (every objective minimised)."""
        return [o.loss(float(metrics[o.metric])) for o in self.objectives]

    @property
    def latency(self) -> Objective | None:
        """The first latency objective (``latency_p95_ms``, ``latency_mean_ms``, ...)."""
        return next((o for o in self.objectives if o.latency_like), None)

    @property
    def order_by(self) -> Objective:
        """What fronts are listed by: the first latency objective, else the first objective
        other than accuracy."""
        return self.latency or next((o for o in self.objectives if o.metric != "accuracy"),
                                    self.objectives[0])

    def order_key(self, metrics: Mapping[str, float]) -> float:
        """Sort key of a trial along :attr:`order_by` (best first; missing values last)."""
        o = self.order_by
        return o.loss(metrics[o.metric]) if o.metric in metrics else float("inf")
