"""When a study stops asking for trials: a trial budget, a deadline, and patience.

A study stops asking for new trials when the first of these is reached; trials already in
flight still finish. ``trials`` counts the study's finished trials (completed or failed for a
reason of their own, the fp32 baseline included) across every run of it, so a resumed study
completes the same budget; interrupted trials run again and are not counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from search.results.pareto import HypervolumeHistory

TRIALS_DONE = "trial budget reached"
SPACE_EXHAUSTED = "search space exhausted (the sampler only repeats measured candidates)"
TIMEOUT = "timeout reached"
INTERRUPTED_BY_USER = "interrupted"


@dataclass(frozen=True)
class Budget:
    """The budgets of one run of a study.

    Example:
        >>> budget = Budget(trials=50, timeout_s=8 * 3600, patience=15)
        >>> budget.stop_reason(finished=50, in_flight=0, history=HypervolumeHistory(),
        ...                    elapsed_s=10.0)
        'trial budget reached'
    """

    trials: int
    timeout_s: float | None = None
    patience: int | None = None

    def stop_reason(self, *, finished: int, in_flight: int, history: HypervolumeHistory,
                    elapsed_s: float) -> str | None:
        """Why no further trial should be asked for, or None while the study may go on."""
        if finished + in_flight >= self.trials:
            return TRIALS_DONE
        if self.timeout_s is not None and elapsed_s >= self.timeout_s:
            return TIMEOUT
        if self.patience is not None and history.trials_since_improvement() >= self.patience:
            return f"hypervolume did not improve for {self.patience} trials"
        return None


class BudgetClock:
    """A :class:`Budget` started now: elapsed time, and the ETA of the trial budget."""

    def __init__(self, budget: Budget, finished_at_start: int) -> None:
        self.budget = budget
        self.started = time.monotonic()
        self.finished_at_start = finished_at_start
        self._rate_from = self.started

    def agents_ready(self, finished: int) -> None:
        """Measure the rate of trials from now (start-up time is not a trial's)."""
        self._rate_from = time.monotonic()
        self.finished_at_start = finished

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def stop_reason(self, *, finished: int, in_flight: int,
                    history: HypervolumeHistory) -> str | None:
        return self.budget.stop_reason(finished=finished, in_flight=in_flight, history=history,
                                       elapsed_s=self.elapsed_s)

    def eta_s(self, finished: int) -> float | None:
        """Seconds until the trial budget is spent, at this run's rate; None before a trial.

        The deadline caps it (``--timeout``); patience cannot be foreseen and is ignored.
        """
        done_here = finished - self.finished_at_start
        if done_here <= 0:
            return None
        remaining = max(0, self.budget.trials - finished)
        eta = remaining * (time.monotonic() - self._rate_from) / done_here
        if self.budget.timeout_s is not None:
            eta = min(eta, max(0.0, self.budget.timeout_s - self.elapsed_s))
        return eta


def format_seconds(seconds: float | None) -> str:
    """``3h05m``, ``4m10s``, ``12s``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
