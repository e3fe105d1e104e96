"""Where the study driver's time goes: building, waiting for agents, and its own overhead.

The driver's wall time is split into exclusive phases; a phase entered inside another pauses
the outer one, so the phases add up to the wall time (the rest is ``other``). The orchestration
overhead is what is neither building nor waiting for an agent: asking Optuna, submitting,
telling Optuna and recording the trial, tracking (the display and MLflow).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

#: Build the candidate's bundle (pruning, finetuning, export, quantization).
BUILD = "build"
#: Blocked waiting for an agent's result.
WAIT = "wait"
#: Orchestration: ask Optuna (and look for a measured twin), submit to an agent, tell Optuna
#: and store the trial, track it (display, MLflow).
ASK, SUBMIT, TELL, TRACK = "ask", "submit", "tell", "track"
PHASES = (ASK, BUILD, SUBMIT, WAIT, TELL, TRACK)
OVERHEAD_PHASES = (ASK, SUBMIT, TELL, TRACK)


@dataclass(frozen=True)
class PhaseTimes:
    """Seconds per phase over one run of the driver, and the run's wall time."""

    wall_s: float
    seconds: dict[str, float]

    @property
    def other_s(self) -> float:
        return max(self.wall_s - sum(self.seconds.values()), 0.0)

    @property
    def overhead_s(self) -> float:
        """Driver time that is neither building nor waiting for an agent."""
        return sum(self.seconds.get(p, 0.0) for p in OVERHEAD_PHASES) + self.other_s

    def to_dict(self) -> dict[str, float]:
        return {"wall_s": self.wall_s, **{f"{p}_s": s for p, s in self.seconds.items()},
                "other_s": self.other_s, "overhead_s": self.overhead_s}


class PhaseClock:
    """Accumulates the driver's time per phase; nested phases pause the outer one.

    Example:
        >>> clock = PhaseClock()
        >>> with clock.phase(BUILD):
        ...     with clock.phase(TELL):  # a failed build is told inside the build
        ...         pass
        >>> sorted(k for k, v in clock.times().seconds.items() if v > 0)
        ['build', 'tell']
    """

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self._now = now
        self._started = now()
        self._mark = self._started
        self._stack: list[str] = []
        self._seconds = dict.fromkeys(PHASES, 0.0)

    def _charge(self) -> None:
        now = self._now()
        if self._stack:
            self._seconds[self._stack[-1]] += now - self._mark
        self._mark = now

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name not in self._seconds:
            raise ValueError(f"unknown phase {name!r}; phases are {PHASES}")
        self._charge()
        self._stack.append(name)
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()

    def times(self) -> PhaseTimes:
        self._charge()
        return PhaseTimes(wall_s=self._now() - self._started, seconds=dict(self._seconds))
