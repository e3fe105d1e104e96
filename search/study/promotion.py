"""Multi-fidelity: which screened candidates are built again with the long finetune.

Every candidate is screened with the study's finetune (``pruning.finetune``). A pruned one is
promoted to the full fidelity (``pruning.finetune_full``: e.g. all training images x 4 epochs)
as a trial of its own, the same Optuna params with the user attr ``fidelity: full``, when it
finished uncontended and either

- it is on the feasible front (its configuration is worth its best accuracy), or
- it is outside the accuracy band by at most ``pruning.promotion.margin`` (and within every
  other limit) with objectives that would put it on the front if it were inside: the long
  finetune recovers accuracy that the short one lost (at ratio 0.375 on the reference model,
  -2.0 pp screened against -0.64 pp fully finetuned).

A configuration is promoted once, and promotions are at most ``pruning.promotion.share`` of the
study's trial budget (they are trials of the budget). Optuna's pruners do not support
multi-objective studies, so this rule is the search's own. The front, the hypervolume and
``best`` take each configuration at its highest fidelity (``search.records.at_highest_fidelity``).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from search.metrics import METRICS
from search.objective_set import ObjectiveSet
from search.records import TrialRecord
from search.results.pareto import ParetoFront, non_dominated

#: Trial user attrs of a promotion: its fidelity, and the screened trial it repeats.
FIDELITY_ATTR = "fidelity"
PROMOTED_FROM_ATTR = "promoted_from"


@dataclass(frozen=True)
class PromotionRule:
    """The rule above for one study: its band, limits, objectives and budget."""

    share: float
    margin: float
    max_accuracy_drop: float
    objectives: ObjectiveSet
    limits: Mapping[str, float]

    def allowance(self, trials: int) -> int:
        """How many of ``trials`` may be promotions."""
        return math.floor(self.share * trials)

    def reason(self, record: TrialRecord, records: Sequence[TrialRecord], *,
               promoted: Collection[int], trials: int) -> str | None:
        """Why ``record`` is promoted now, or ``None``. ``promoted``: the screened trials
        promoted so far (queued, running or done); ``trials``: the study's trial budget."""
        if not record.complete or record.fidelity or record.baseline or record.reused \
                or record.contended:
            return None
        candidate = record.candidate
        pruned = float(candidate.get("prune_ratio", 0.0)) > 0 or any(
            float(r) > 0 for r in candidate.get("stage_prune_ratios", ()))
        if not pruned or len(promoted) >= self.allowance(trials):
            return None
        sources = {r.number: r.configuration for r in records}
        done = {sources[n] for n in promoted if n in sources}
        done |= {r.configuration for r in records if r.fidelity}
        if record.number in promoted or record.configuration in done:
            return None
        front = ParetoFront.from_records(records, self.max_accuracy_drop,
                                         objectives=self.objectives)
        if record.feasible:
            return "on the feasible front" if record.number in front.numbers else None
        drop = record.metrics.get("accuracy_drop", math.inf)
        if drop > self.max_accuracy_drop + self.margin or not self._within_limits(record):
            return None
        if self.objectives.missing(record.metrics):
            return None
        standing = non_dominated([*front.members, record], self.objectives)
        if any(r.number == record.number for r in standing):
            return (f"{100 * (drop - self.max_accuracy_drop):.2f} pp outside the band, "
                    f"front-worthy otherwise")
        return None

    def _within_limits(self, record: TrialRecord) -> bool:
        for name, bound in self.limits.items():
            value = record.metrics.get(name)
            if value is None:
                return False
            if (value < bound) if METRICS[name].direction == "max" else (value > bound):
                return False
        return True
