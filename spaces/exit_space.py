"""The early-exit knob: whether exits are on, their thresholds, and the confidence measure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from device_agents.bundle import CONFIDENCE_MEASURES
from spaces.errors import SpaceError

SCALES = ("linear", "log")
#: Smallest ``1 - threshold`` sampled on the log scale when the range reaches 1.0.
MIN_GAP = 1e-6


@dataclass(frozen=True)
class ExitSpace:
    """Optuna params of early exit: ``early_exit`` (bool), then the thresholds.

    Thresholds are one per exit (``per_exit``: params ``exit_threshold_<k>``) or one shared by
    every exit (``exit_threshold``). On the ``log`` scale the params are ``exit_gap_<k>`` (or
    ``exit_gap``) ``= 1 - threshold``, sampled log-uniformly: calibrated confidences crowd near
    1, where 0.99 and 0.999 differ a lot and 0.6 and 0.61 hardly. With several
    ``confidences``, the measure is searched too (param ``exit_confidence``).

    Example:
        >>> import optuna
        >>> space = ExitSpace(num_exits=2, per_exit=True, scale="log", threshold_low=0.8)
        >>> trial = optuna.trial.FixedTrial({"early_exit": True, "exit_gap_0": 0.01,
        ...                                  "exit_gap_1": 0.1})
        >>> space.suggest(trial)
        ((0.99, 0.9), '')
    """

    num_exits: int
    enabled: bool = True
    threshold_low: float = 0.5
    threshold_high: float = 0.999
    per_exit: bool = False
    scale: str = "linear"
    confidences: tuple[str, ...] = ("max_softmax",)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold_low <= self.threshold_high <= 1.0:
            raise SpaceError("early_exit.threshold: must be [low, high] with "
                             "0 < low <= high <= 1")
        if self.scale not in SCALES:
            raise SpaceError(f"early_exit.scale: {self.scale!r} is not one of "
                             f"{', '.join(SCALES)}")
        if not self.confidences or any(c not in CONFIDENCE_MEASURES for c in self.confidences):
            raise SpaceError(f"early_exit.confidence: must be one or more of "
                             f"{', '.join(CONFIDENCE_MEASURES)}")

    @property
    def possible(self) -> bool:
        return self.enabled and self.num_exits > 0

    def baseline(self) -> tuple[float, ...]:
        return ()

    def baseline_params(self) -> dict[str, Any]:
        return {"early_exit": False} if self.possible else {}

    def _threshold(self, trial: Any, suffix: str) -> float:
        if self.scale == "linear":
            value = trial.suggest_float("exit_threshold" + suffix, self.threshold_low,
                                        self.threshold_high)
            return round(value, 6)
        low, high = self.gap_range()
        gap = trial.suggest_float("exit_gap" + suffix, low, high, log=True)
        return round(1.0 - gap, 6)

    def suggest(self, trial: Any) -> tuple[tuple[float, ...], str]:
        """``(thresholds, confidence)``: no thresholds when exits are off; the confidence
        measure is ``""`` unless it is searched (then the builder's default applies)."""
        if not self.possible or not trial.suggest_categorical("early_exit", [False, True]):
            return (), ""
        if self.per_exit:
            thresholds = tuple(self._threshold(trial, f"_{k}") for k in range(self.num_exits))
        else:
            thresholds = (self._threshold(trial, ""),) * self.num_exits
        measure = (trial.suggest_categorical("exit_confidence", list(self.confidences))
                   if len(self.confidences) > 1 else "")
        return thresholds, measure

    def gap_range(self) -> tuple[float, float]:
        """The ``1 - threshold`` range the log scale samples from."""
        low = max(round(1.0 - self.threshold_high, 12), MIN_GAP)
        return low, max(round(1.0 - self.threshold_low, 12), low)

