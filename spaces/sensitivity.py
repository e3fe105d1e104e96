"""Quantization sensitivity: the accuracy drop when only one layer group is quantized, and the
mixed configurations it suggests.

The drops of single groups are treated as additive (the usual first-order assumption of mixed
precision search): quantizing the least sensitive groups first keeps the most accuracy for the
most integer kernels. The result seeds a study; the study's measurements decide.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spaces.candidate import Candidate
from spaces.quantization_space import QuantizationSpace


@dataclass(frozen=True)
class GroupSensitivity:
    """Accuracy with one group at ``precision`` and every other group at fp32."""

    group: str
    precision: str
    accuracy: float
    drop: float

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "precision": self.precision, "accuracy": self.accuracy,
                "drop": self.drop}


@dataclass(frozen=True)
class SensitivityReport:
    """Per group and precision, the accuracy drop against the fp32 model on one split.

    Example:
        >>> report = SensitivityReport(groups=("a", "b"), baseline_accuracy=0.9, split="val",
        ...     samples=100, entries=(GroupSensitivity("a", "int8", 0.85, 0.05),
        ...                           GroupSensitivity("b", "int8", 0.9, 0.0)))
        >>> report.ranking("int8")
        ['b', 'a']
    """

    groups: tuple[str, ...]
    baseline_accuracy: float
    split: str
    samples: int
    entries: tuple[GroupSensitivity, ...]
    key: str = ""

    def drop(self, group: str, precision: str = "int8") -> float | None:
        for entry in self.entries:
            if entry.group == group and entry.precision == precision:
                return entry.drop
        return None

    def ranking(self, precision: str = "int8") -> list[str]:
        """Groups measured at ``precision``, least sensitive first (ties: model order)."""
        measured = [g for g in self.groups if self.drop(g, precision) is not None]
        return sorted(measured, key=lambda g: (self.drop(g, precision), self.groups.index(g)))

    def to_dict(self) -> dict[str, Any]:
        return {"groups": list(self.groups), "baseline_accuracy": self.baseline_accuracy,
                "split": self.split, "samples": self.samples, "key": self.key,
                "entries": [e.to_dict() for e in self.entries]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SensitivityReport:
        return cls(groups=tuple(data["groups"]),
                   baseline_accuracy=float(data["baseline_accuracy"]), split=str(data["split"]),
                   samples=int(data["samples"]), key=str(data.get("key", "")),
                   entries=tuple(GroupSensitivity(str(e["group"]), str(e["precision"]),
                                                  float(e["accuracy"]), float(e["drop"]))
                                 for e in data["entries"]))


def single_group_candidates(space: QuantizationSpace, precisions: Sequence[str] = ("int8",)
                            ) -> list[tuple[str, str, Candidate]]:
    """``(group, precision, candidate)`` with only that group at that precision, for every
    group that is offered the precision (no pruning, no exits)."""
    out = []
    for k, group in enumerate(space.groups):
        for precision in precisions:
            if precision == "fp32" or precision not in space.choices_for(group):
                continue
            quantization = tuple(precision if i == k else "fp32"
                                 for i in range(len(space.groups)))
            out.append((group, precision, Candidate(quantization=quantization)))
    return out


def measure_sensitivity(space: QuantizationSpace, accuracy_of: Callable[[Candidate], float], *,
                        precisions: Sequence[str] = ("int8",), split: str, samples: int,
                        key: str = "") -> SensitivityReport:
    """Run ``accuracy_of`` (which builds and evaluates a candidate) on the fp32 model and on
    each single-group candidate."""
    baseline = accuracy_of(Candidate(quantization=space.baseline()))
    entries = []
    for group, precision, candidate in single_group_candidates(space, precisions):
        accuracy = accuracy_of(candidate)
        entries.append(GroupSensitivity(group, precision, accuracy, baseline - accuracy))
    return SensitivityReport(groups=space.groups, baseline_accuracy=baseline, split=split,
                             samples=samples, entries=tuple(entries), key=key)


def seed_configurations(report: SensitivityReport, space: QuantizationSpace, *,
                        max_accuracy_drop: float, count: int,
                        precision: str = "int8") -> list[tuple[str, ...]]:
    """Up to ``count`` mixed quantizations, most promising first.

    1. the largest set of least sensitive groups whose summed drops stay inside the band;
    2. every measured group quantized but the most sensitive one, then but the two most, ...
    3. every group whose own drop stays inside the band.
    All-fp32 and repeated configurations are left out.
    """
    ranking = report.ranking(precision)
    index = {g: i for i, g in enumerate(space.groups)}

    def config(chosen: Sequence[str]) -> tuple[str, ...]:
        out = ["fp32"] * len(space.groups)
        for group in chosen:
            out[index[group]] = precision
        return tuple(out)

    budget: list[str] = []
    total = 0.0
    for group in ranking:
        drop = max(report.drop(group, precision) or 0.0, 0.0)
        if total + drop > max_accuracy_drop:
            break
        budget.append(group)
        total += drop
    proposals = [config(budget)]
    proposals += [config(ranking[:n]) for n in range(len(ranking) - 1, 0, -1)]
    proposals.append(config([g for g in ranking
                             if (report.drop(g, precision) or 0.0) <= max_accuracy_drop]))
    seeds: list[tuple[str, ...]] = []
    for proposal in proposals:
        if precision in proposal and proposal not in seeds:
            seeds.append(proposal)
    return seeds[:count]
