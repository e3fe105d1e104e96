"""The search space: the knobs together, and how a trial becomes a :class:`Candidate`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spaces.candidate import Candidate
from spaces.exit_space import ExitSpace
from spaces.pruning_space import PruningSpace
from spaces.quantization_space import QuantizationSpace
from spaces.runtime_space import RuntimeSpace


@dataclass(frozen=True)
class SearchSpace:
    """Suggests candidates from an Optuna trial; each knob owns its Optuna params.

    Example:
        >>> space = SearchSpace(quantization=QuantizationSpace(groups=("stage0", "stage1")),
        ...                     pruning=PruningSpace(), exits=ExitSpace(num_exits=1))
        >>> space.baseline().to_dict()
        {'quantization': ['fp32', 'fp32'], 'prune_ratio': 0.0, 'exit_thresholds': []}
    """

    quantization: QuantizationSpace
    pruning: PruningSpace = PruningSpace()
    exits: ExitSpace = ExitSpace(num_exits=0)
    runtime: RuntimeSpace = RuntimeSpace()

    def baseline(self) -> Candidate:
        return Candidate(quantization=self.quantization.baseline(),
                         prune_ratio=self.pruning.baseline(),
                         exit_thresholds=self.exits.baseline(), **self.runtime.baseline())

    def baseline_params(self) -> dict[str, Any]:
        """Optuna params of the baseline, to enqueue it as trial 0."""
        return {**self.quantization.baseline_params(), **self.pruning.baseline_params(),
                **self.exits.baseline_params(), **self.runtime.baseline_params()}

    def suggest(self, trial: Any) -> Candidate:
        """Sample a candidate with ``trial.suggest_*`` (an ``optuna.Trial``)."""
        quantization = self.quantization.suggest(trial)
        prune_ratio, stage_prune_ratios = self.pruning.suggest(trial)
        thresholds, confidence = self.exits.suggest(trial)
        return Candidate(quantization=quantization, prune_ratio=prune_ratio,
                         stage_prune_ratios=stage_prune_ratios,
                         qat=self.quantization.suggest_qat(trial, quantization),
                         exit_thresholds=thresholds, exit_confidence=confidence,
                         **self.runtime.suggest(trial))
