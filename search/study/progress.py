"""What a running study shows: a live rich panel on a terminal, plain log lines otherwise."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from search.metrics import METRICS
from search.objective_set import ObjectiveSet
from search.records import TrialRecord
from search.study.budget import format_seconds


def best_feasible(records: Sequence[TrialRecord],
                  objectives: ObjectiveSet | None = None) -> dict[str, float]:
    """The best feasible value of each objective (default: the default objectives), each on
    its own (not one trial's values)."""
    feasible = [r for r in records if r.complete and r.feasible]
    best: dict[str, float] = {}
    for o in (objectives or ObjectiveSet.default()).objectives:
        values = [r.metrics[o.metric] for r in feasible if o.metric in r.metrics]
        if values:
            best[o.metric] = max(values) if o.direction == "max" else min(values)
    return best


def _short(metric: str) -> str:
    """``acc``, ``p95``, ``mean``, ``size``; other metrics as they are named."""
    if metric == "accuracy":
        return "acc"
    if metric.startswith("latency_") and metric.endswith("_ms"):
        return metric.removeprefix("latency_").removesuffix("_ms")
    return metric.removesuffix("_kb").removesuffix("_mb").removesuffix("_mj")


def objective_summary(metrics: Mapping[str, float], objectives: ObjectiveSet) -> str:
    """A trial's objective values for its log line: ``acc 0.9500  p95 1.0000 ms  size
    100.0 KB``."""
    parts = []
    for name in objectives.names:
        value = metrics.get(name, float("nan"))
        unit = METRICS[name].unit if name in METRICS else ""
        number = f"{value:7.1f}" if unit in ("KB", "MB") else f"{value:.4f}"
        parts.append(f"{_short(name)} {number}" + (f" {unit}" if unit else ""))
    return "  ".join(parts)


@dataclass(frozen=True)
class ProgressState:
    """One moment of a study, as the display shows it."""

    study: str
    budget: int
    finished: int
    failed: int
    running: int
    best: dict[str, float] = field(default_factory=dict)
    front_size: int = 0
    hypervolume: float = 0.0
    eta_s: float | None = None
    note: str = ""

    def line(self) -> str:
        """The plain log line of this state."""
        best = ", ".join(f"{name} {_fmt(value)}" for name, value in self.best.items()) or "-"
        text = (f"progress {self.study}: {self.finished}/{self.budget} trials done, "
                f"{self.failed} failed, {self.running} running; best feasible {best}; "
                f"front {self.front_size}, hypervolume {self.hypervolume:.4f}; "
                f"ETA {format_seconds(self.eta_s)}")
        return text + (f"; {self.note}" if self.note else "")


def _fmt(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"


class ProgressDisplay:
    """Shows a study's progress: a live panel when ``console`` is a terminal, else log lines.

    Trial lines go through :meth:`print` so they scroll above the live panel.

    Example:
        >>> with ProgressDisplay(Console()) as display:  # doctest: +SKIP
        ...     display.print("trial 1 done")
        ...     display.update(ProgressState("digits", 20, 1, 0, 1))
    """

    def __init__(self, console: Console, *, live: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.live_enabled = console.is_terminal if live is None else live
        self._clock = clock
        self._state: ProgressState | None = None
        self._stamp = clock()
        self._live: Live | None = None

    def __enter__(self) -> ProgressDisplay:
        if self.live_enabled:
            self._live = Live(get_renderable=self.renderable, console=self.console,
                              refresh_per_second=2, transient=False)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def print(self, *objects: object) -> None:
        self.console.print(*objects)

    def update(self, state: ProgressState, *, log: bool = True) -> None:
        """Show ``state``: the live panel redraws; without one, ``log`` prints a line."""
        self._state, self._stamp = state, self._clock()
        if self._live is None and log:
            self.console.print(state.line(), markup=False, highlight=False, soft_wrap=True)

    def renderable(self) -> Group:
        state = self._state
        if state is None:
            return Group(Text("starting the study...", style="dim"))
        eta = None if state.eta_s is None else max(0.0, state.eta_s - (self._clock()
                                                                        - self._stamp))
        head = Text.assemble(
            ("study ", "dim"), (state.study, "bold"),
            f"  {state.finished}/{state.budget} done  ",
            (f"{state.failed} failed", "red" if state.failed else "dim"), "  ",
            (f"{state.running} running", "cyan"), "  ETA ", (format_seconds(eta), "bold"))
        best = Text("best feasible  ", style="dim")
        for name, value in state.best.items():
            best.append(f"{name} ", style="dim")
            best.append(f"{_fmt(value)}  ", style="green")
        front = Text.assemble(("front ", "dim"), f"{state.front_size} trials  ",
                              ("hypervolume ", "dim"), f"{state.hypervolume:.4f}")
        lines = [head, best, front]
        if state.note:
            lines.append(Text(state.note, style="yellow"))
        return Group(*lines)
