"""What watches a running study: its hypervolume history and budgets, the progress display,
and the MLflow mirror. The study loop reports each finished trial here; nothing here can stop
the study except the budgets."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from rich.console import Console

from search.config import StudyConfig
from search.records import TrialRecord
from search.results.pareto import HypervolumeHistory
from search.study.budget import Budget, BudgetClock
from search.study.objectives import study_objectives
from search.study.progress import ProgressDisplay, ProgressState, best_feasible
from search.tracking.tracker import Tracker
from search.workspace import Workspace

log = logging.getLogger(__name__)
#: While a study runs, its pictures in MLflow are redrawn at most this often (the final sync
#: always draws the final front).
LIVE_REDRAW_EVERY_S = 30.0


class StudyMonitor:
    """The progress, the budgets and the MLflow mirror of one run of a study.

    Example:
        >>> monitor = StudyMonitor(config, workspace, Console())  # doctest: +SKIP
        >>> monitor.begin(records, Budget(trials=50, patience=10))  # doctest: +SKIP
        >>> monitor.trial_finished(record)  # doctest: +SKIP
        >>> monitor.refresh(records, running=1)  # doctest: +SKIP
    """

    def __init__(self, config: StudyConfig, workspace: Workspace, console: Console, *,
                 tracker: Tracker | None = None, live: bool | None = None) -> None:
        self.config = config
        self.workspace = workspace
        self.display = ProgressDisplay(console, live=live)
        self.objectives = study_objectives(config)
        self.history = HypervolumeHistory(config.constraints.max_accuracy_drop, self.objectives)
        self.clock = BudgetClock(Budget(config.search.trials), 0)
        self._given_tracker = tracker
        self.tracker: Tracker | None = None

    def begin(self, records: Sequence[TrialRecord], budget: Budget) -> None:
        """Start this run: replay the study's history so far, start the clock and tracking."""
        self.history = HypervolumeHistory.replay(
            records, self.config.constraints.max_accuracy_drop, self.objectives)
        self.clock = BudgetClock(budget, sum(r.finished for r in records))
        self.tracker = self._given_tracker or self._make_tracker()

    def _make_tracker(self) -> Tracker:
        from search.tracking.tracker import NullTracker

        t = self.config.tracking
        if not t.mlflow:
            return NullTracker()
        from search.tracking.background import BackgroundTracking
        from search.tracking.mlflow_sync import LiveTracking, MlflowMirror

        mirror = MlflowMirror(self.workspace.workdir, self.config.study, t.experiment,
                              bundles=t.bundles, plots=t.plots,
                              redraw_every_s=LIVE_REDRAW_EVERY_S)
        return BackgroundTracking(LiveTracking(mirror, retry_after_s=t.retry_after_s,
                                               warn=self.warn), warn=self.warn)

    def print(self, text: str) -> None:
        self.display.print(text)

    def warn(self, message: str) -> None:
        log.warning("%s", message)
        self.display.print(f"[yellow]{message}")

    def trial_finished(self, record: TrialRecord) -> bool:
        """Account for a finished trial; whether it is on the front now."""
        self.history.add(record)
        return record.number in self.history.front.numbers

    def stop_reason(self, finished: int, in_flight: int) -> str | None:
        return self.clock.stop_reason(finished=finished, in_flight=in_flight,
                                      history=self.history)

    def show(self, records: Sequence[TrialRecord], running: int, note: str = "") -> None:
        finished = sum(r.finished for r in records)
        self.display.update(ProgressState(
            study=self.config.study, budget=self.clock.budget.trials, finished=finished,
            failed=sum(r.state == "FAIL" and not r.interrupted for r in records),
            running=running, best=best_feasible(records, self.objectives),
            front_size=len(self.history.front.members), hypervolume=self.history.hypervolume,
            eta_s=self.clock.eta_s(finished), note=note))

    def sync(self, records: Sequence[TrialRecord], *, final: bool = False) -> None:
        """Mirror the study into MLflow; a failure is reported, never raised."""
        from search.tracking.mlflow_sync import StudySnapshot

        if self.tracker is None:
            return
        snapshot = StudySnapshot.of(self.config.study, records, self.history,
                                    self.config.model_dump(mode="json", by_alias=True),
                                    self.workspace.workdir, running=not final)
        try:
            self.tracker.sync(snapshot, final=final)
        except Exception as exc:  # tracking must never stop a study
            self.warn(f"MLflow: could not log: {type(exc).__name__}: {exc}")
