"""The search space: what Optuna may change, and how a trial becomes a :class:`Candidate`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spaces.candidate import PRECISIONS, Candidate
from spaces.errors import SpaceError


@dataclass(frozen=True)
class SpaceSpec:
    """Bounds of the three knobs.

    Attributes:
        groups: layer groups that each get a precision (one per stage of the model).
        precisions: the precisions offered to every group.
        prune_ratio_max: the largest structured pruning ratio; 0 disables pruning.
        prune_ratio_step: ratios are multiples of this step (so that builds are cached).
        early_exit: whether exits may be enabled (needs a model with more than one stage).
        threshold_low, threshold_high: the range of the exit threshold.
    """

    groups: tuple[str, ...]
    precisions: tuple[str, ...] = PRECISIONS
    prune_ratio_max: float = 0.5
    prune_ratio_step: float = 0.125
    early_exit: bool = True
    threshold_low: float = 0.5
    threshold_high: float = 0.999

    def __post_init__(self) -> None:
        if not self.groups:
            raise SpaceError("search space: no layer groups")
        unknown = set(self.precisions) - set(PRECISIONS)
        if unknown:
            raise SpaceError(f"search space: unknown precisions {sorted(unknown)}")
        if not 0.0 <= self.prune_ratio_max <= 0.95:
            raise SpaceError(f"search space: prune_ratio_max {self.prune_ratio_max} is outside "
                             f"[0, 0.95]")
        if not 0.0 < self.threshold_low <= self.threshold_high <= 1.0:
            raise SpaceError("search space: thresholds must satisfy 0 < low <= high <= 1")


class SearchSpace:
    """Suggests candidates from an Optuna trial.

    Example:
        >>> space = SearchSpace(SpaceSpec(groups=("stage0", "stage1")))
        >>> space.baseline()
        Candidate(quantization=('fp32', 'fp32'), prune_ratio=0.0, exit_thresholds=())
    """

    def __init__(self, spec: SpaceSpec) -> None:
        self.spec = spec

    @property
    def num_exits(self) -> int:
        return len(self.spec.groups) - 1

    def baseline(self) -> Candidate:
        return Candidate(quantization=("fp32",) * len(self.spec.groups))

    def baseline_params(self) -> dict[str, Any]:
        """Optuna params of the baseline, to enqueue it as trial 0."""
        params: dict[str, Any] = {f"quant_{g}": "fp32" for g in self.spec.groups}
        if self.spec.prune_ratio_max > 0:
            params["prune_ratio"] = 0.0
        if self._exits_possible:
            params["early_exit"] = False
        return params

    @property
    def _exits_possible(self) -> bool:
        return self.spec.early_exit and self.num_exits > 0

    def suggest(self, trial: Any) -> Candidate:
        """Sample a candidate with ``trial.suggest_*`` (an ``optuna.Trial``)."""
        spec = self.spec
        quantization = tuple(trial.suggest_categorical(f"quant_{g}", list(spec.precisions))
                             for g in spec.groups)
        ratio = 0.0
        if spec.prune_ratio_max > 0:
            ratio = trial.suggest_float("prune_ratio", 0.0, spec.prune_ratio_max,
                                        step=spec.prune_ratio_step)
        thresholds: tuple[float, ...] = ()
        if self._exits_possible and trial.suggest_categorical("early_exit", [False, True]):
            threshold = trial.suggest_float("exit_threshold", spec.threshold_low,
                                            spec.threshold_high)
            thresholds = (round(threshold, 6),) * self.num_exits
        return Candidate(quantization=quantization, prune_ratio=round(ratio, 6),
                         exit_thresholds=thresholds)
