"""The pruning knob: a structured channel-pruning ratio, global or one per stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spaces.errors import SpaceError
from spaces.settings import MAX_RATIO


def normalize_stage_ratios(ratios: tuple[float, ...]) -> tuple[float, tuple[float, ...]]:
    """``(prune_ratio, stage_prune_ratios)`` of a candidate with these per-stage ratios.

    Equal ratios are the global ratio (no per-stage tuple), so the same pruning has one
    representation and one cache entry; otherwise ``prune_ratio`` is their mean (a summary for
    filtering and display) and the tuple says what is pruned.

    Example:
        >>> normalize_stage_ratios((0.25, 0.25))
        (0.25, ())
        >>> normalize_stage_ratios((0.0, 0.5))
        (0.25, (0.0, 0.5))
    """
    ratios = tuple(round(float(r), 6) for r in ratios)
    if not ratios:
        return 0.0, ()
    if len(set(ratios)) == 1:
        return ratios[0], ()
    return round(sum(ratios) / len(ratios), 6), ratios


@dataclass(frozen=True)
class PruningSpace:
    """Ratios are multiples of ``ratio_step`` up to ``ratio_max`` (0 turns pruning off), so
    that pruned and finetuned models are cached and reused.

    One Optuna param ``prune_ratio`` for the whole model, or, with ``per_stage`` and a model of
    more than one stage, one param ``prune_ratio_stage<k>`` per stage.

    Example:
        >>> PruningSpace(per_stage=True, num_stages=3).baseline_params()
        {'prune_ratio_stage0': 0.0, 'prune_ratio_stage1': 0.0, 'prune_ratio_stage2': 0.0}
    """

    ratio_max: float = 0.5
    ratio_step: float = 0.125
    per_stage: bool = False
    num_stages: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio_max <= MAX_RATIO:
            raise SpaceError(f"pruning.ratio_max: {self.ratio_max} is outside [0, {MAX_RATIO}]")
        if not 0.0 < self.ratio_step <= MAX_RATIO:
            raise SpaceError(f"pruning.ratio_step: {self.ratio_step} is outside (0, "
                             f"{MAX_RATIO}]")
        if self.num_stages < 1:
            raise SpaceError(f"pruning: a model of {self.num_stages} stages cannot be pruned")

    @property
    def enabled(self) -> bool:
        return self.ratio_max > 0

    @property
    def stagewise(self) -> bool:
        return self.enabled and self.per_stage and self.num_stages > 1

    def param_names(self) -> tuple[str, ...]:
        if not self.enabled:
            return ()
        if self.stagewise:
            return tuple(f"prune_ratio_stage{k}" for k in range(self.num_stages))
        return ("prune_ratio",)

    def baseline(self) -> float:
        return 0.0

    def baseline_params(self) -> dict[str, Any]:
        return {name: 0.0 for name in self.param_names()}

    def suggest(self, trial: Any) -> tuple[float, tuple[float, ...]]:
        """``(prune_ratio, stage_prune_ratios)``; the tuple is empty for a global ratio."""
        ratios = tuple(trial.suggest_float(name, 0.0, self.ratio_max, step=self.ratio_step)
                       for name in self.param_names())
        return normalize_stage_ratios(ratios)
