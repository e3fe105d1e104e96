"""The quantization knob: a precision per layer group, only among those its operators run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spaces.errors import SpaceError
from spaces.precisions import ALL_PRECISIONS, PRECISIONS, WEIGHT_ONLY_BITS

MATMUL_OPS = ("Gemm", "MatMul")
#: the Optuna param of quantization-aware finetuning (sampled for candidates with int8 groups)
QAT_PARAM = "qat"


class UnsupportedPrecisionError(SpaceError):
    """A precision named for a layer group whose operators cannot execute it."""

    def __init__(self, group: str, precision: str, operators: Sequence[str], why: str) -> None:
        super().__init__(f"layer group {group!r} (operators: {describe_operators(operators)}) "
                         f"cannot run {precision}: {why}")
        self.group = group
        self.precision = precision
        self.operators = tuple(operators)


def describe_operators(operators: Sequence[str]) -> str:
    """``Conv x3, Gemm x1`` (or ``none``)."""
    counts: dict[str, int] = {}
    for op in operators:
        counts[op] = counts.get(op, 0) + 1
    return ", ".join(f"{op} x{n}" for op, n in sorted(counts.items())) or "none"


def why_not_runnable(precision: str, operators: Sequence[str]) -> str | None:
    """Why a group with these compute operators cannot execute ``precision`` (None: it can)."""
    if precision not in ALL_PRECISIONS:
        return f"unknown precision (one of {', '.join(ALL_PRECISIONS)})"
    if precision == "fp32":
        return None
    if not operators:
        return "it has no Conv, Gemm or MatMul operator to quantize"
    if precision in WEIGHT_ONLY_BITS and any(op not in MATMUL_OPS for op in operators):
        return ("weight-only MatMulNBits runs only MatMul/Gemm (Linear) layers; "
                "use int8 or fp32 for this group")
    return None


@dataclass(frozen=True)
class QuantizationSpace:
    """Each layer group gets one of its choices (Optuna params ``quant_<group>``).

    ``choices`` narrows the precisions per group (pairs of group name and precisions); groups
    not listed get ``precisions``. Build it with :meth:`for_operators` so that no group is
    offered a precision its operators cannot execute. ``qat`` holds the values quantization-
    aware finetuning may take (``quantization.qat``): ``(False, True)`` makes it the Optuna
    param ``qat``, sampled only for a candidate with at least one int8 group; a single value
    applies to every such candidate; a candidate without int8 is never QAT.

    Example:
        >>> space = QuantizationSpace.for_operators(
        ...     {"first": ["Conv"], "last": ["Gemm"]}, precisions=("fp32", "int8", "int4_wo"))
        >>> space.choices_for("first"), space.choices_for("last")
        (('fp32', 'int8'), ('fp32', 'int8', 'int4_wo'))
    """

    groups: tuple[str, ...]
    precisions: tuple[str, ...] = PRECISIONS
    choices: tuple[tuple[str, tuple[str, ...]], ...] = ()
    qat: tuple[bool, ...] = (False,)

    def __post_init__(self) -> None:
        if not self.qat or len(set(self.qat)) != len(self.qat):
            raise SpaceError(f"quantization.qat: {list(self.qat)} must list false and/or true, "
                             f"each once")
        if not self.groups:
            raise SpaceError("quantization: no layer groups")
        unknown = set(self.precisions) - set(ALL_PRECISIONS)
        if unknown or not self.precisions:
            raise SpaceError(f"quantization.precisions: unknown or empty {sorted(unknown)}")
        for group, options in self.choices:
            if group not in self.groups:
                raise SpaceError(f"quantization.group_precisions.{group}: no such layer group "
                                 f"(groups: {', '.join(self.groups)})")
            bad = set(options) - set(ALL_PRECISIONS)
            if bad or not options:
                raise SpaceError(f"quantization.group_precisions.{group}: unknown or empty "
                                 f"{sorted(bad)}")

    @classmethod
    def for_operators(cls, operators: Mapping[str, Sequence[str]], *,
                      precisions: Sequence[str] = PRECISIONS,
                      overrides: Mapping[str, Sequence[str]] | None = None,
                      qat: Sequence[bool] = (False,)) -> QuantizationSpace:
        """The space for groups with these compute operators (group -> op types, in order).

        A precision of ``precisions`` that a group cannot execute is not offered to it; one
        named for a group in ``overrides`` raises :class:`UnsupportedPrecisionError`.
        """
        groups = tuple(operators)
        overrides = dict(overrides or {})
        for group in overrides:
            if group not in operators:
                raise SpaceError(f"quantization.group_precisions.{group}: no such layer group "
                                 f"(groups: {', '.join(groups)})")
        choices = []
        for group, ops in operators.items():
            if group in overrides:
                for precision in overrides[group]:
                    why = why_not_runnable(precision, ops)
                    if why:
                        raise UnsupportedPrecisionError(group, precision, ops, why)
                options = tuple(dict.fromkeys(overrides[group]))
            else:
                options = tuple(p for p in precisions if why_not_runnable(p, ops) is None)
            choices.append((group, options or ("fp32",)))
        return cls(groups=groups, precisions=tuple(precisions), choices=tuple(choices),
                   qat=tuple(qat))

    def choices_for(self, group: str) -> tuple[str, ...]:
        return dict(self.choices).get(group, self.precisions)

    def baseline(self) -> tuple[str, ...]:
        return ("fp32",) * len(self.groups)

    def baseline_params(self) -> dict[str, Any]:
        return {f"quant_{g}": "fp32" for g in self.groups}

    def params(self, quantization: Sequence[str]) -> dict[str, Any]:
        """Optuna params of a quantization tuple (to enqueue it)."""
        if len(quantization) != len(self.groups):
            raise SpaceError(f"{len(quantization)} precisions for {len(self.groups)} groups")
        for group, precision in zip(self.groups, quantization, strict=True):
            if precision not in self.choices_for(group):
                raise SpaceError(f"precision {precision!r} is not offered to group {group!r}")
        return {f"quant_{g}": p for g, p in zip(self.groups, quantization, strict=True)}

    def suggest(self, trial: Any) -> tuple[str, ...]:
        return tuple(trial.suggest_categorical(f"quant_{g}", list(self.choices_for(g)))
                     for g in self.groups)

    @property
    def searches_qat(self) -> bool:
        """Whether quantization-aware finetuning is an Optuna param (both values listed)."""
        return len(self.qat) > 1

    def suggest_qat(self, trial: Any, quantization: Sequence[str]) -> bool:
        """Whether a candidate of these precisions is finetuned quantization-aware: the
        param ``qat`` when searched, else the one value listed; False without an int8
        group (the param is then not sampled)."""
        if "int8" not in quantization:
            return False
        if self.searches_qat:
            return bool(trial.suggest_categorical(QAT_PARAM, list(self.qat)))
        return self.qat[0]
