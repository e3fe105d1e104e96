"""The quantization knob: a precision per layer group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spaces.candidate import PRECISIONS
from spaces.errors import SpaceError


@dataclass(frozen=True)
class QuantizationSpace:
    """Each layer group gets one of ``precisions`` (Optuna params ``quant_<group>``)."""

    groups: tuple[str, ...]
    precisions: tuple[str, ...] = PRECISIONS

    def __post_init__(self) -> None:
        if not self.groups:
            raise SpaceError("quantization: no layer groups")
        unknown = set(self.precisions) - set(PRECISIONS)
        if unknown or not self.precisions:
            raise SpaceError(f"quantization.precisions: unknown or empty {sorted(unknown)}")

    def baseline(self) -> tuple[str, ...]:
        return ("fp32",) * len(self.groups)

    def baseline_params(self) -> dict[str, Any]:
        return {f"quant_{g}": "fp32" for g in self.groups}

    def suggest(self, trial: Any) -> tuple[str, ...]:
        return tuple(trial.suggest_categorical(f"quant_{g}", list(self.precisions))
                     for g in self.groups)
