"""Bring MLflow up to date with a study: live after every trial, or later with ``paretoedge sync``.

The Optuna journal is the study's record; MLflow mirrors it. :class:`MlflowMirror` compares
the two and writes only what MLflow lacks (a missing trial run, a ``pareto`` tag that changed,
hypervolume steps, the study's pictures, front members' bundles), so the same call serves the
live study and the replay after MLflow was down, locked, or switched off.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from search.metrics import CONFIRMATION_METRICS
from search.objective_set import ObjectiveSet
from search.records import TrialRecord
from search.results.pareto import HypervolumeHistory, HypervolumePoint, ParetoFront
from search.tracking.mlflow_store import MlflowStore, flatten, store_writable

log = logging.getLogger(__name__)
BundleMode = Literal["front", "all", "none"]
DRAWN_TAG = "paretoedge.artifacts"


@dataclass(frozen=True)
class StudySnapshot:
    """A study as MLflow should show it."""

    study: str
    records: tuple[TrialRecord, ...]
    history: tuple[HypervolumePoint, ...]
    front: ParetoFront
    config: Mapping[str, Any]
    device_class: str
    workdir: Path
    running: bool = True

    @classmethod
    def of(cls, study: str, records: Sequence[TrialRecord], history: HypervolumeHistory,
           config: Mapping[str, Any], workdir: Path, *, running: bool = True) -> StudySnapshot:
        return cls(study, tuple(records), tuple(history.points), history.front, config,
                   str(config.get("device", {}).get("class", "local")), Path(workdir), running)


@dataclass
class SyncReport:
    """What one sync wrote."""

    parent_created: bool = False
    trials_logged: int = 0
    pareto_tags: int = 0
    hypervolume_steps: int = 0
    bundles_logged: int = 0
    confirmed_logged: int = 0
    profiles_logged: int = 0
    artifacts: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = [f"{self.trials_logged} trial run(s) added",
                 f"{self.pareto_tags} pareto tag(s) updated",
                 f"{self.hypervolume_steps} hypervolume step(s)",
                 f"{self.bundles_logged} bundle(s) logged"]
        if self.confirmed_logged:
            parts.append(f"{self.confirmed_logged} confirmed trial(s)")
        if self.profiles_logged:
            parts.append(f"{self.profiles_logged} profile(s)")
        if self.parent_created:
            parts.insert(0, "study run created")
        if self.artifacts:
            parts.append("artifacts " + ", ".join(self.artifacts))
        return "; ".join(parts)


class MlflowMirror:
    """Writes what MLflow lacks of a study. Idempotent: syncing twice writes nothing new.

    Example:
        >>> mirror = MlflowMirror(Path("runs"), "digits")  # doctest: +SKIP
        >>> mirror.sync(StudySnapshot.of(...)).describe()  # doctest: +SKIP
        'study run created; 20 trial run(s) added; ...'
    """

    def __init__(self, workdir: Path, study: str, experiment: str | None = None, *,
                 bundles: BundleMode = "front", plots: bool = True,
                 redraw_every_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.workdir = Path(workdir)
        self.study = study
        self.experiment = experiment
        self.bundles = bundles
        self.plots = plots
        self.store: MlflowStore | None = None
        self._params_done = False
        self._baseline_done = False
        self._steps: set[int] | None = None
        self._drawn: str | None = None
        self.redraw_every_s = redraw_every_s
        self._clock = clock
        self._drawn_at: float | None = None

    def reset(self) -> None:
        """Forget what is known about the store (after a failure: re-read it next time)."""
        self.store = None
        self._params_done = self._baseline_done = False
        self._steps = None
        self._drawn = None

    def sync(self, snapshot: StudySnapshot) -> SyncReport:
        report = SyncReport()
        if self.store is None:
            self.store = MlflowStore.open(self.workdir, self.study, self.experiment)
        store = self.store
        report.parent_created = store.ensure_parent({"device_class": snapshot.device_class})
        parent = store.parent_id
        assert parent is not None
        if not self._params_done:
            store.log_params(parent, flatten("", snapshot.config, {}))
            self._params_done = True
        self._sync_baseline(store, parent, snapshot)
        for record in snapshot.records:
            if record.state not in ("COMPLETE", "FAIL"):
                continue
            known = store.children.get(record.number)
            if known is None or known.status not in ("FINISHED", "FAILED"):
                store.log_trial(record)
                report.trials_logged += 1
        report.confirmed_logged = self._sync_confirmed(store, snapshot)
        members = snapshot.front.numbers
        for number, child in list(store.children.items()):
            if child.pareto != (number in members):
                store.set_pareto(number, number in members)
                report.pareto_tags += 1
        report.hypervolume_steps = self._sync_history(store, parent, snapshot)
        report.bundles_logged = self._sync_bundles(store, snapshot)
        report.profiles_logged = self._sync_profiles(store, snapshot)
        report.artifacts = self._sync_artifacts(store, parent, snapshot)
        status = "RUNNING" if snapshot.running else "FINISHED"
        if store.parent().info.status != status:
            store.set_status(parent, status)
        return report

    def _sync_confirmed(self, store: MlflowStore, snapshot: StudySnapshot) -> int:
        """The confirmed metrics of trials whose runs lack this confirmation's."""
        logged = 0
        for record in snapshot.records:
            confirmed = {k: record.metrics[k] for k in CONFIRMATION_METRICS
                         if k in record.metrics}
            child = store.children.get(record.number)
            if not confirmed or child is None:
                continue
            key = ";".join(f"{confirmed[k]:.9g}" for k in sorted(confirmed))
            if child.confirmed != key:
                store.log_confirmed(record.number, confirmed, key)
                logged += 1
        return logged

    def _sync_baseline(self, store: MlflowStore, parent: str, snapshot: StudySnapshot) -> None:
        baseline = snapshot.front.baseline
        if self._baseline_done or baseline is None:
            return
        if store.parent().data.tags.get("baseline_trial") == str(baseline.number):
            self._baseline_done = True  # written by an earlier run or sync
            return
        tags = {"baseline_trial": str(baseline.number)}
        tags.update({f"device.{k}": json.dumps(v) if isinstance(v, (list, dict)) else str(v)
                     for k, v in baseline.fingerprint.items()})
        stamp = int((baseline.finished_at or time.time()) * 1000)
        store.log_metrics(parent, [(f"baseline_{k}", v, stamp, 0)
                                   for k, v in sorted(baseline.metrics.items())])
        store.log_files(parent, {"device_fingerprint.json": json.dumps(
            dict(baseline.fingerprint), indent=2, sort_keys=True)})
        store.set_tags(parent, tags)  # last: it marks the baseline as written
        self._baseline_done = True

    def _sync_history(self, store: MlflowStore, parent: str, snapshot: StudySnapshot) -> int:
        if self._steps is None:
            self._steps = store.logged_steps(parent, "hypervolume")
        finished_at = {r.number: r.finished_at for r in snapshot.records}
        rows = []
        for point in snapshot.history:
            if point.step in self._steps:
                continue
            stamp = int((finished_at.get(point.trial) or time.time()) * 1000)
            rows += [("hypervolume", point.hypervolume, stamp, point.step),
                     ("front_size", float(point.front_size), stamp, point.step),
                     ("trials_finished", float(point.step), stamp, point.step)]
        store.log_metrics(parent, rows)
        new = {p.step for p in snapshot.history} - self._steps
        self._steps |= new
        return len(new)

    def _sync_bundles(self, store: MlflowStore, snapshot: StudySnapshot) -> int:
        if self.bundles == "none":
            return 0
        wanted = [r for r in snapshot.records if r.complete and r.bundle
                  and (self.bundles == "all" or r.number in snapshot.front.numbers)]
        logged = 0
        for record in wanted:
            child = store.children.get(record.number)
            path = record.bundle_path(snapshot.workdir)
            if child is None or child.bundle_logged or path is None or not path.is_dir():
                continue
            store.log_bundle(record.number, path)
            logged += 1
        return logged

    def _sync_profiles(self, store: MlflowStore, snapshot: StudySnapshot) -> int:
        """Per-operator profiles (``<study>/profiles``) the trials' runs do not hold yet: a
        table (CSV and JSON) and a bar chart under ``profile/``."""
        from search.results.profile_report import profile_csv, profile_html
        from search.results.profile_store import read_profile, stored_profile_paths
        from search.workspace import Workspace

        workspace = Workspace(snapshot.workdir, snapshot.study)
        logged = 0
        for number, path in stored_profile_paths(workspace).items():
            child = store.children.get(number)
            if child is None:
                continue
            key_stamp = f":{path.stat().st_mtime_ns}"
            if child.profiled.endswith(key_stamp):
                continue  # logged already: not read again at every sync
            profile = read_profile(workspace, number)
            if profile is None:
                continue
            key = f"{profile.bundle_digest[:16]}{key_stamp}"
            title = f"{snapshot.study} trial {number}: time per inference by operator"
            files: dict[str, str | bytes] = {
                "profile/operators.csv": profile_csv(profile),
                "profile/profile.json": json.dumps(profile.to_dict(), indent=2)}
            if self.plots:
                files["profile/profile.html"] = profile_html(profile, title)
            store.log_profile(number, files, key)
            logged += 1
        return logged

    def _sync_artifacts(self, store: MlflowStore, parent: str,
                        snapshot: StudySnapshot) -> list[str]:
        from search.results.front_table import records_csv
        from search.tracking.pareto_plots import history_csv, pareto_html, pareto_png

        front = ",".join(str(n) for n in sorted(snapshot.front.numbers))
        drawn = f"front={front};steps={len(snapshot.history)}"
        if self._drawn is None:
            self._drawn = store.parent().data.tags.get(DRAWN_TAG, "")
        if self._drawn == drawn or (snapshot.running
                                    and self._drawn.split(";")[0] == drawn.split(";")[0]):
            return []  # the front did not change: the pictures would be the same
        if snapshot.running and self._drawn_at is not None and \
                self._clock() - self._drawn_at < self.redraw_every_s:
            return []  # drawn a moment ago: the next sync (or the final one) draws this front
        files: dict[str, str | bytes] = {
            "pareto.csv": records_csv(list(snapshot.front.members)),
            "hypervolume_history.csv": history_csv(snapshot.history)}
        if self.plots:
            title = (f"{snapshot.study}: {len(snapshot.front.members)} trials on the feasible "
                     f"front of {sum(r.complete for r in snapshot.records)} completed")
            members = set(snapshot.front.numbers)
            objectives = snapshot.front.objectives
            files["pareto.html"] = pareto_html(snapshot.records, members, snapshot.history, title,
                                               objectives)
            files["pareto.png"] = pareto_png(snapshot.records, members, snapshot.history, title,
                                             objectives)
        store.log_files(parent, files)
        store.set_tags(parent, {DRAWN_TAG: drawn})
        self._drawn = drawn
        self._drawn_at = self._clock()
        return sorted(files)


class LiveTracking:
    """The study's view of MLflow: never stops the study, never stalls it for long.

    Before writing it checks that the sqlite store takes a write lock at once; when the store is
    locked or a write fails, it waits ``retry_after_s`` (doubling up to ten minutes) before it
    tries again, and the next sync that succeeds catches up on everything missed.
    """

    def __init__(self, mirror: MlflowMirror, *, retry_after_s: float = 30.0,
                 warn: Callable[[str], None] = log.warning,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.mirror = mirror
        self.retry_after_s = retry_after_s
        self.warn = warn
        self.clock = clock
        self.skipped = 0
        self.failures = 0
        self._retry_at = 0.0
        self._backoff = retry_after_s

    @property
    def behind(self) -> bool:
        """Whether MLflow may lack something (the last sync did not succeed)."""
        return self.failures > 0

    def sync(self, snapshot: StudySnapshot, *, final: bool = False) -> None:
        if not final and self.clock() < self._retry_at:
            self.skipped += 1
            return
        try:
            if not store_writable(self.mirror.workdir):
                raise RuntimeError(f"{self.mirror.workdir / 'mlflow.db'} is locked by another "
                                   f"process")
            self.mirror.sync(snapshot)
        except Exception as exc:
            self.failures += 1
            self.mirror.reset()
            self._retry_at = self.clock() + self._backoff
            again = ("run 'paretoedge sync " + snapshot.study + "' once it is reachable"
                     if final else f"the study goes on; retrying in {self._backoff:g} s")
            self.warn(f"MLflow: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}; "
                      f"{again}")
            self._backoff = min(self._backoff * 2, 600.0)
            return
        if self.failures:
            self.warn("MLflow: reachable again; caught up with the study")
        self.failures = 0
        self._backoff = self.retry_after_s


def sync_study(workdir: Path, study: str) -> SyncReport:
    """``paretoedge sync``: replay into MLflow whatever it lacks of a stored study.

    Raises:
        StudyNotFoundError: no such study in ``workdir``.
        SearchError: the study is running (its driver keeps MLflow up to date itself).
    """
    from search.errors import SearchError
    from search.study_lock import StudyLock
    from search.workspace import Workspace, load_records

    workspace = Workspace(Path(workdir).resolve(), study)
    records, attrs = load_records(workspace)
    driver = StudyLock(workspace).running_driver()
    if driver is not None:
        raise SearchError(f"study {study!r} is running (driver pid {driver}); it keeps MLflow "
                          f"up to date itself: sync it once it has stopped")
    config = attrs.get("config", {})
    tracking = config.get("tracking", {})
    # the front under the objectives the study was searched with (stored with it)
    history = HypervolumeHistory.replay(records, float(attrs.get("max_accuracy_drop", 0.01)),
                                        ObjectiveSet.of_study(attrs))
    mirror = MlflowMirror(workspace.workdir, study, tracking.get("experiment"),
                          bundles=tracking.get("bundles", "front"),
                          plots=tracking.get("plots", True))
    return mirror.sync(StudySnapshot.of(study, records, history, config, workspace.workdir,
                                        running=False))
