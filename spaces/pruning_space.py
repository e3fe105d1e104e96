"""The pruning knob: a structured channel-pruning ratio."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spaces.errors import SpaceError

MAX_RATIO = 0.95


@dataclass(frozen=True)
class PruningSpace:
    """Ratios are multiples of ``ratio_step`` up to ``ratio_max`` (0 turns pruning off), so
    that pruned and finetuned models are cached and reused (Optuna param ``prune_ratio``)."""

    ratio_max: float = 0.5
    ratio_step: float = 0.125

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio_max <= MAX_RATIO:
            raise SpaceError(f"pruning.ratio_max: {self.ratio_max} is outside [0, {MAX_RATIO}]")
        if not 0.0 < self.ratio_step <= MAX_RATIO:
            raise SpaceError(f"pruning.ratio_step: {self.ratio_step} is outside (0, "
                             f"{MAX_RATIO}]")

    @property
    def enabled(self) -> bool:
        return self.ratio_max > 0

    def baseline(self) -> float:
        return 0.0

    def baseline_params(self) -> dict[str, Any]:
        return {"prune_ratio": 0.0} if self.enabled else {}

    def suggest(self, trial: Any) -> float:
        if not self.enabled:
            return 0.0
        ratio = trial.suggest_float("prune_ratio", 0.0, self.ratio_max, step=self.ratio_step)
        return round(ratio, 6)
