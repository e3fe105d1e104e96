"""The early-exit knob: whether exits are on, and their confidence threshold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spaces.errors import SpaceError


@dataclass(frozen=True)
class ExitSpace:
    """Optuna params ``early_exit`` (bool) and ``exit_threshold``, shared by every exit."""

    num_exits: int
    enabled: bool = True
    threshold_low: float = 0.5
    threshold_high: float = 0.999

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold_low <= self.threshold_high <= 1.0:
            raise SpaceError("early_exit.threshold: must be [low, high] with "
                             "0 < low <= high <= 1")

    @property
    def possible(self) -> bool:
        return self.enabled and self.num_exits > 0

    def baseline(self) -> tuple[float, ...]:
        return ()

    def baseline_params(self) -> dict[str, Any]:
        return {"early_exit": False} if self.possible else {}

    def suggest(self, trial: Any) -> tuple[float, ...]:
        if not self.possible or not trial.suggest_categorical("early_exit", [False, True]):
            return ()
        threshold = trial.suggest_float("exit_threshold", self.threshold_low,
                                        self.threshold_high)
        return (round(threshold, 6),) * self.num_exits
