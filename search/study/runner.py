"""The study loop: ask Optuna, build the candidate, measure it on an agent, tell, log.

Building trial k+1 overlaps measuring trial k. The fp32 baseline is trial 0 and is measured
before anything else, since the accuracy band is defined by it. A candidate that fails to build
or measure becomes a FAILED trial with its reason; the study goes on. The study stops asking
for trials at the first budget reached (:mod:`search.study.budget`) or at Ctrl-C
(:mod:`search.study.interrupts`); a resumed study re-runs what was in flight and finishes the
budget.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import Console

from device_agents import EvalSetPayload, Measurement, MeasurementProtocol, MeasureRequest
from device_agents.bundle import BundlePayload
from search.config import StudyConfig
from search.errors import ConfigError, SearchError
from search.fleet.build_pool import BuildDone, BuildPool
from search.fleet.dispatch import Completed, Dispatcher
from search.fleet.measurable import check_measurable
from search.fleet.runtime_offer import check_agents_offer
from search.fleet.study_pool import default_dispatcher
from search.objective_set import OBJECTIVES_ATTR, ObjectiveSet
from search.records import INTERRUPTED, INTERRUPTED_ATTR, TrialRecord
from search.results.pareto import ParetoFront
from search.study.budget import INTERRUPTED_BY_USER, SPACE_EXHAUSTED, TRIALS_DONE, Budget
from search.study.confirmation import (
    Confirmer,
    ConfirmSettings,
    confirm_records,
    store_confirmation,
    to_confirm,
)
from search.study.interrupts import GracefulStop, sigint_ignored
from search.study.monitor import StudyMonitor
from search.study.objectives import (
    constraint_values,
    missing_metrics,
    objective_values,
    ranked_percentiles,
    study_objectives,
    trial_metrics,
)
from search.study.phase_clock import ASK, BUILD, SUBMIT, TELL, TRACK, WAIT, PhaseClock, PhaseTimes
from search.study.preparation import Prepared, prepare
from search.study.progress import objective_summary
from search.study.promotion import FIDELITY_ATTR, PROMOTED_FROM_ATTR, PromotionRule
from search.study.samplers import make_sampler
from search.study.sensitivity import seed_study
from search.study.trial_log import TrialLog
from search.study_lock import StudyLock
from search.tracking.tracker import Tracker
from search.workspace import Workspace
from spaces import BuildError, BuiltBundle, Candidate
from spaces.candidate import candidate_label
from spaces.settings import FULL_FIDELITY

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Consecutive repeated candidates after which the search space counts as exhausted.
EXHAUSTED_AFTER_REPEATS = 25
#: Trial user attr (shared storage): the driver that runs the trial (host, pid, start time).
DRIVER_ATTR = "driver"
#: How often a driver of a shared study looks again at what the other drivers are doing.
SHARED_POLL_S = 0.5
__all__ = ["INTERRUPTED", "RunOptions", "StudyRunner", "StudySummary", "Tracker"]


@dataclass(frozen=True)
class RunOptions:
    """The budgets of one run: ``trials`` is the study's total, the baseline included."""

    trials: int
    timeout_s: float | None = None
    patience: int | None = None
    #: re-time the baseline and the front interleaved, and measure the test split, at the end
    confirm: bool = True


@dataclass(frozen=True)
class StudySummary:
    study: str
    records: list[TrialRecord]
    front: ParetoFront
    stop_reason: str
    hypervolume: float = 0.0
    #: Where the driver's time went in this run, from the agents being ready to the end.
    timing: PhaseTimes | None = None

    @property
    def completed(self) -> int:
        return sum(r.complete for r in self.records)

    @property
    def failed(self) -> int:
        return sum(r.state == "FAIL" and not r.interrupted for r in self.records)

    @property
    def interrupted(self) -> bool:
        return self.stop_reason == INTERRUPTED_BY_USER


@dataclass
class _Pending:
    trial: optuna.Trial
    candidate: Candidate
    built: BuiltBundle | None = None
    started: float = field(default_factory=time.perf_counter)
    #: measurements of this trial repeated because the agent's core was shared
    contention_retries: int = 0


def _in_phase(phase: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Count a ``StudyRunner`` method's time in ``phase`` of the runner's phase clock."""
    def wrap(method: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(method)
        def timed(self: StudyRunner, *args: Any, **kwargs: Any) -> T:
            with self.clock.phase(phase):
                return method(self, *args, **kwargs)
        return timed
    return wrap


class StudyRunner:
    """Runs (or resumes) one study.

    Example:
        >>> runner = StudyRunner(load_config("experiments/digits.yaml"),
        ...                      Workspace(Path("runs"), "digits"))  # doctest: +SKIP
        >>> summary = runner.run(RunOptions(trials=20, timeout_s=8 * 3600))  # doctest: +SKIP
    """

    def __init__(self, config: StudyConfig, workspace: Workspace, *,
                 dispatcher_factory: Callable[[StudyConfig, Workspace], Dispatcher] | None = None,
                 tracker: Tracker | None = None, console: Console | None = None,
                 live: bool | None = None,
                 preparer: Callable[[StudyConfig, Path], Prepared] | None = None,
                 build_pool_factory: Callable[[StudyConfig, Workspace, Prepared], BuildPool]
                 | None = None) -> None:
        self.config = config
        self.workspace = workspace
        self.dispatcher_factory = dispatcher_factory or default_dispatcher
        #: data, builder and space of the study (``prepare``; tests give fake builders)
        self.preparer = preparer or prepare
        #: the journal, or a database several drivers share (``search.storage``)
        self.storage = workspace.storage(config.search.storage)
        self._lock = StudyLock(workspace, shared=self.storage.shared)
        #: builds elsewhere (builder nodes); None: the driver builds, one at a time
        if build_pool_factory is None and config.device.builds == "cluster":
            from search.study.cluster_builds import cluster_build_pool

            build_pool_factory = cluster_build_pool
        self.build_pool_factory = build_pool_factory
        self._builds: BuildPool | None = None
        self._building: dict[int, _Pending] = {}
        self._budget_spent = False  # a shared study's budget was taken by every driver
        self.console = console or Console()
        self.objectives = study_objectives(config)
        self.monitor = StudyMonitor(config, workspace, self.console, tracker=tracker, live=live)
        self._baseline_accuracy: float | None = None
        self._pending: dict[int, _Pending] = {}
        self._log = TrialLog()
        self._ready: list[_Pending] = []
        self._repeats = 0  # consecutive candidates that repeated a measured one
        self._stop = GracefulStop()
        self.clock = PhaseClock()
        self._trials_budget = 0
        p = config.pruning
        self._promotion = PromotionRule(
            share=p.promotion.share, margin=p.promotion.margin,
            max_accuracy_drop=config.constraints.max_accuracy_drop,
            objectives=self.objectives, limits=config.constraints.limits(),
        ) if p.finetune_full is not None and config.model.onnx is None else None

    # -- set-up -------------------------------------------------------------------------------
    def _open_study(self, trials: int) -> Any:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.storage.remember()
        study = optuna.create_study(
            study_name=self.config.study, storage=self.storage.optuna(),
            directions=[optuna.study.StudyDirection[d.upper()]
                        for d in self.objectives.directions],
            sampler=make_sampler(self.config.search.sampler, self.config.search.seed, trials),
            load_if_exists=True)
        self._check_objectives(study)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(self.objectives.names))
        return study

    def _check_objectives(self, study: Any) -> None:
        """Store the objectives with a new study; refuse to resume one searched under others
        (a study without the attr that ran trials was searched under the defaults)."""
        from optuna.trial import TrialState

        ran = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
        if OBJECTIVES_ATTR not in study.user_attrs and not ran:  # a new study (maybe seeded)
            study.set_user_attr(OBJECTIVES_ATTR, self.objectives.to_attr())
            return
        stored = ObjectiveSet.of_study(study.user_attrs)
        if stored != self.objectives:
            raise ConfigError(f"objectives: study {self.config.study!r} was searched under "
                              f"{stored.describe()}, the config names "
                              f"{self.objectives.describe()}; use another study name (or "
                              f"the study's objectives)")

    def _requeue(self, trial: Any) -> None:
        """Run ``trial``'s candidate again later (it was interrupted, not judged)."""
        self._study.enqueue_trial(trial.params, user_attrs={
            k: v for k, v in trial.user_attrs.items()
            if k in ("baseline", FIDELITY_ATTR, PROMOTED_FROM_ATTR)})

    def _recover_interrupted(self) -> None:
        """Trials left RUNNING by a killed driver: mark them FAIL and enqueue them again."""
        from optuna.trial import TrialState

        left = self._study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if self.storage.shared:  # the running trials of living drivers are theirs
            left = [t for t in left if self._lock.owner_gone(t.user_attrs.get(DRIVER_ATTR))]
        if not left:
            return
        # fail_reason cannot be set on a trial of another process through Optuna's public API:
        # the study remembers them, and records read them as interrupted
        known = list(self._study.user_attrs.get(INTERRUPTED_ATTR, []))
        self._study.set_user_attr(INTERRUPTED_ATTR, known + [t.number for t in left])
        for trial in left:
            self._study.tell(trial.number, state=TrialState.FAIL)
            self._requeue(trial)
            self.monitor.print(f"[yellow]trial {trial.number} was interrupted; re-queued")
        self._log = TrialLog.load(self._study)

    # -- trials -------------------------------------------------------------------------------
    @_in_phase(ASK)
    def _ask(self, prepared: Prepared) -> _Pending:
        trial = self._study.ask()
        if self.storage.shared:  # who runs it: a driver that died leaves it to be re-queued
            trial.set_user_attr(DRIVER_ATTR, self._lock.owner())
        candidate = prepared.space.suggest(trial)
        fidelity = trial.user_attrs.get(FIDELITY_ATTR)
        if fidelity:  # a promotion (search.study.promotion): the same params, built again
            candidate = replace(candidate, fidelity=str(fidelity))
        trial.set_user_attr("candidate", candidate.to_dict())
        trial.set_user_attr("device_class", self.config.device.class_)
        self._log.told(trial, "RUNNING")
        return _Pending(trial, candidate)

    def _build(self, pending: _Pending, prepared: Prepared) -> bool:
        directory = self.workspace.bundle_dir(pending.trial.number)
        try:
            with self.clock.phase(BUILD):
                pending.built = prepared.builder.build(pending.candidate, directory)
        except BuildError as exc:
            self._fail(pending, f"build failed: {exc}")
            return False
        pending.trial.set_user_attr("bundle", self.workspace.relative(directory))
        pending.trial.set_user_attr("bundle_digest", pending.built.digest)
        return True

    def _request(self, pending: _Pending, eval_digest: str, eval_ref: Any) -> MeasureRequest:
        assert pending.built is not None
        m = self.config.measurement
        protocol = MeasurementProtocol(threads=self.config.device.threads,
                                       warmup_runs=m.warmup_runs,
                                       warmup_seconds=m.warmup_seconds, min_runs=m.min_runs,
                                       max_runs=m.max_runs, round_runs=m.round_runs,
                                       ci_rel_width=m.ci_rel_width,
                                       ranked_percentiles=ranked_percentiles(self.config),
                                       min_seconds=m.min_seconds, max_seconds=m.max_seconds)
        return MeasureRequest(bundle_digest=pending.built.digest,
                              bundle=BundlePayload.from_directory(pending.built.directory),
                              eval_set_digest=eval_digest, eval_set=eval_ref,
                              protocol=protocol, trial_number=pending.trial.number)

    @_in_phase(ASK)
    def _measured_twin(self, candidate: Candidate) -> TrialRecord | None:
        """An earlier completed trial of the same candidate, if any.

        The builder is deterministic and bundles are content-addressed, so an equal candidate
        means an identical bundle: its measurement is reused rather than redone.
        """
        key = candidate.to_dict()
        return next((r for r in self.records() if r.complete and not r.reused
                     and dict(r.candidate) == key), None)

    @_in_phase(TELL)
    def _reuse(self, pending: _Pending, twin: TrialRecord) -> None:
        """Tell Optuna the twin's values for a repeated candidate (no build, no measurement)."""
        trial = pending.trial
        metrics = dict(twin.metrics)
        constraints = self._set_constraints(trial, metrics)
        for key, value in (("metrics", metrics), ("reused_from", twin.number),
                           ("bundle", twin.bundle), ("bundle_digest", twin.bundle_digest),
                           ("agent_id", twin.agent_id), ("fingerprint", dict(twin.fingerprint))):
            trial.set_user_attr(key, value)
        self._study.tell(trial, objective_values(metrics, self.objectives))
        self._log.told(trial, "COMPLETE", constraints)
        self.monitor.print(f"trial {trial.number:>3} {pending.candidate.describe():<44} "
                           f"repeats trial {twin.number}: measurement reused")
        self._refresh()

    def _set_constraints(self, trial: optuna.Trial, metrics: dict[str, float]
                         ) -> dict[str, float]:
        """The accuracy band and every limit of ``constraints`` as Optuna constraints."""
        c = self.config.constraints
        assert self._baseline_accuracy is not None
        values = constraint_values(
            metrics, baseline_accuracy=self._baseline_accuracy,
            max_accuracy_drop=c.max_accuracy_drop, limits=c.limits())
        for name, value in values.items():
            trial.set_constraint(name, value)
        return values

    @_in_phase(TELL)
    def _fail(self, pending: _Pending, reason: str) -> None:
        from optuna.trial import TrialState

        pending.trial.set_user_attr("fail_reason", reason)
        self._study.tell(pending.trial, state=TrialState.FAIL)
        record = self._log.told(pending.trial, "FAIL")
        self.monitor.trial_finished(record)
        self.monitor.print(f"[red]trial {record.number:>3} FAILED[/red] "
                           f"{pending.candidate.describe()}: {reason}")
        self._refresh()

    def _interrupt(self, pending: _Pending) -> None:
        """Record a trial the driver will not finish, and queue its candidate again."""
        from optuna.trial import TrialState

        pending.trial.set_user_attr("fail_reason", INTERRUPTED)
        self._study.tell(pending.trial, state=TrialState.FAIL)
        self._log.told(pending.trial, "FAIL")
        self._requeue(pending.trial)
        self.monitor.print(f"[yellow]trial {pending.trial.number:>3} interrupted "
                           f"{pending.candidate.describe()}; it runs again on resume")

    @_in_phase(TELL)
    def _finish(self, pending: _Pending, done: Completed) -> None:
        if done.measurement is None:
            if self._stop.requested:  # the agents may have been stopped with the driver
                self._interrupt(pending)
            else:
                self._fail(pending, f"measurement failed: {done.error}")
            return
        assert pending.built is not None
        measurement = done.measurement
        if self._measure_again(pending, measurement):
            return
        baseline = bool(pending.trial.user_attrs.get("baseline"))
        metrics = trial_metrics(measurement, pending.candidate, pending.built.info,
                                measurement.accuracy if baseline else self._baseline_accuracy)
        missing = missing_metrics(metrics, self.objectives, self.config.constraints.limits())
        if missing:  # e.g. energy_mj where the counter could not be read: it cannot be ranked
            self._fail(pending, f"measurement lacks {', '.join(missing)} (objective or limit "
                                f"of the study)")
            return
        if baseline:
            self._baseline_accuracy = measurement.accuracy
            self._study.set_user_attr("baseline_accuracy", measurement.accuracy)
            self._study.set_user_attr("baseline_trial", pending.trial.number)
        metrics["build_s"] = pending.built.build_seconds
        metrics["overlap_builds"] = float(self.config.device.builds_overlap)
        metrics["contended"] = float(self._contended(measurement))
        metrics["contention_retries"] = float(pending.contention_retries)
        constraints = self._set_constraints(pending.trial, metrics)
        pending.trial.set_user_attr("metrics", metrics)
        pending.trial.set_user_attr("agent_id", done.agent_id or measurement.agent_id)
        pending.trial.set_user_attr("fingerprint", dict(measurement.fingerprint))
        self._study.tell(pending.trial, objective_values(metrics, self.objectives))
        record = self._log.told(pending.trial, "COMPLETE", constraints)
        front = self.monitor.trial_finished(record)
        flag = "[green]feasible[/green]" if record.feasible else "[yellow]outside band[/yellow]"
        if metrics.get("latency_converged", 1.0) == 0.0:
            flag += " [yellow]not converged[/yellow]"
        if record.contended:
            flag += (f" [red]contended[/red] (cpu share {metrics['latency_cpu_share']:.2f} after "
                     f"{pending.contention_retries} retries; not ranked)")
        self.monitor.print(
            f"trial {record.number:>3} {candidate_label(dict(record.candidate)):<44} "
            f"{objective_summary(metrics, self.objectives)}  {flag}"
            + (" [bold]front[/bold]" if front else ""))
        self._promote(pending, record)
        self._refresh()

    def _promote(self, pending: _Pending, record: TrialRecord) -> None:
        """Queue a screened candidate again at the full fidelity when the rule says so."""
        if self._promotion is None:
            return
        promoted = {int(t.user_attrs[PROMOTED_FROM_ATTR])
                    for t in self._study.get_trials(deepcopy=False)
                    if PROMOTED_FROM_ATTR in t.user_attrs}
        why = self._promotion.reason(record, self.records(), promoted=promoted,
                                     trials=self._trials_budget)
        if why is None:
            return
        self._study.enqueue_trial(pending.trial.params, user_attrs={
            FIDELITY_ATTR: FULL_FIDELITY, PROMOTED_FROM_ATTR: record.number})
        self.monitor.print(f"trial {record.number:>3} promoted to the full finetune ({why}; "
                           f"{len(promoted) + 1} of at most "
                           f"{self._promotion.allowance(self._trials_budget)})")

    def _contended(self, measurement: Measurement) -> bool:
        share = measurement.latency.cpu_share
        return share is not None and share < self.config.measurement.min_cpu_share

    def _measure_again(self, pending: _Pending, measurement: Measurement) -> bool:
        """A contended measurement (something else ran on the agent's core) goes back to the
        agents after a pause, up to ``measurement.contention_retries`` times."""
        m = self.config.measurement
        if not self._contended(measurement) or pending.contention_retries >= m.contention_retries:
            return False
        pending.contention_retries += 1
        self.monitor.print(f"[yellow]trial {pending.trial.number:>3} cpu share "
                           f"{measurement.latency.cpu_share:.2f} < {m.min_cpu_share:g}: "
                           f"measuring again ({pending.contention_retries}/"
                           f"{m.contention_retries})")
        time.sleep(m.contention_pause_s)
        self._ready.insert(0, pending)
        return True

    @_in_phase(TRACK)
    def _refresh(self, note: str = "") -> None:
        """After a trial: redraw the progress, and mirror the study into MLflow."""
        self._show(note)
        self.monitor.sync(self.records())

    @_in_phase(TRACK)
    def _show(self, note: str = "") -> None:
        if self._stop.requested and not note:
            note = (f"stopping: waiting for {len(self._pending)} trial(s) in flight; Ctrl-C "
                    f"again to abort them" if self._pending else "stopping")
        self.monitor.show(self.records(),
                          len(self._pending) + len(self._ready) + len(self._building), note)

    def records(self) -> list[TrialRecord]:
        return self._log.records()

    def _finished(self) -> int:
        """Trials that count against the budget (interrupted ones are run again)."""
        return sum(r.finished for r in self.records())

    def _in_flight(self) -> int:
        """Trials asked for and not yet told: this driver's, or (shared storage) every
        driver's, as the storage last read says."""
        if self.storage.shared:
            return sum(r.state == "RUNNING" for r in self.records())
        return len(self._pending) + len(self._ready) + len(self._building)

    def _reload(self) -> None:
        """Read every driver's trials from the shared storage (a no-op on the journal)."""
        if self.storage.shared:
            self._log = TrialLog.load(self._study)

    def _ask_next(self, prepared: Prepared) -> _Pending | None:
        """Ask for the next trial; None when the budget is spent. On a shared storage the
        budget is checked again, with every driver's trials, under the study's lock: the
        study's trials (finished + running) never exceed it."""
        if not self.storage.shared:
            return self._ask(prepared)
        with self.storage.exclusive():
            self._reload()
            if self.monitor.stop_reason(self._finished(), in_flight=self._in_flight()):
                return None
            return self._ask(prepared)

    # -- the loop -----------------------------------------------------------------------------
    def run(self, options: RunOptions) -> StudySummary:
        self.workspace.create()
        lock = self._lock
        for note in lock.acquire():
            self.monitor.print(f"[yellow]{note}")
        try:
            return self._run_locked(options, lock)
        finally:
            lock.release()
            self.storage.close()

    def _run_locked(self, options: RunOptions, lock: StudyLock) -> StudySummary:
        check_measurable(self.config)  # before anything is trained or started
        with self.storage.exclusive():  # drivers of a shared study open it one at a time
            self._study = self._open_study(options.trials)  # refuses other objectives at once
        self._trials_budget = options.trials
        prepared = self.preparer(self.config, self.workspace.cache)
        with self.storage.exclusive():
            self._log = TrialLog.load(self._study)
            self._study.set_user_attr("config",
                                      self.config.model_dump(mode="json", by_alias=True))
            self._study.set_user_attr("max_accuracy_drop",
                                      self.config.constraints.max_accuracy_drop)
            self._study.set_user_attr("config_dir", str(self.config.base_dir.resolve()))
            self._recover_interrupted()
        self.monitor.begin(self.records(),
                           Budget(options.trials, options.timeout_s, options.patience))
        stop_reason = TRIALS_DONE
        timing: PhaseTimes | None = None
        with self.monitor.display:
            # catch up with what a killed or offline run could not log
            self._refresh("starting the agents")
            with sigint_ignored():  # Ctrl-C must reach the driver only (search.study.interrupts)
                dispatcher = self.dispatcher_factory(self.config, self.workspace)
                if self.build_pool_factory is not None:
                    self._builds = self.build_pool_factory(self.config, self.workspace,
                                                           prepared)
            lock.remember_children()
            try:  # the runtime knobs of a running cluster's agents (local ones: checked above)
                check_agents_offer(self.config, dispatcher)
            except ConfigError:
                dispatcher.close()
                raise
            self.monitor.clock.agents_ready(self._finished())
            self.clock = PhaseClock()  # the trials' time, from the agents being ready
            self._show()
            try:
                with self._stop:
                    eval_payload = EvalSetPayload.from_eval_set(prepared.data.selection_set())
                    eval_ref = dispatcher.share(eval_payload)
                    self._run_baseline(prepared, dispatcher, eval_payload.digest, eval_ref)
                    with self.storage.exclusive():  # seeded once, by the first driver
                        seed_study(self._study, prepared, self.config, self.workspace,
                                   self.console)
                    stop_reason = self._loop(prepared, dispatcher, eval_payload.digest, eval_ref)
                    timing = self.clock.times()  # the trials' time: confirming is not
                    if options.confirm and self.config.confirm.enabled and \
                            stop_reason != INTERRUPTED_BY_USER:  # Ctrl-C: `confirm` later
                        self._confirm(prepared, dispatcher)
                        if self.config.profiling.enabled:
                            self._profile(prepared, dispatcher)
            except (KeyboardInterrupt, SystemExit):
                stop_reason = INTERRUPTED_BY_USER
                with contextlib.suppress(Exception):  # keep what finished just before
                    self._collect(dispatcher, timeout=0.0)
                for pending in [*self._pending.values(), *self._ready,
                                *self._building.values()]:
                    self._interrupt(pending)
                self._pending, self._ready, self._building = {}, [], {}
            finally:
                if stop_reason == INTERRUPTED_BY_USER or timing is None:
                    timing = self.clock.times()  # the trials' time: stopping agents is not
                if self._builds is not None:
                    self._builds.close()
                dispatcher.close()
            self._show(f"stopped: {stop_reason}")
        self._reload()  # the summary of a shared study has every driver's trials
        self._study.set_user_attr("timing", timing.to_dict())
        self.monitor.sync(self.records(), final=True)
        records = self.records()
        return StudySummary(self.config.study, records,
                            ParetoFront.from_records(records,
                                                     self.config.constraints.max_accuracy_drop,
                                                     objectives=self.objectives),
                            stop_reason, self.monitor.history.hypervolume, timing)

    def _confirm(self, prepared: Prepared, dispatcher: Dispatcher) -> None:
        """The baseline and the front, re-timed interleaved by one agent and evaluated on the
        held-out test split (:mod:`search.study.confirmation`)."""
        c = self.config.confirm
        members = to_confirm(self.records(), self.config.constraints.max_accuracy_drop,
                             self.objectives)
        if not members:
            return
        if not isinstance(dispatcher, Confirmer):
            self.monitor.print(f"[yellow]{type(dispatcher).__name__} cannot confirm; the front "
                               f"is not confirmed")
            return
        self._show(f"confirming {len(members)} bundles: {c.rounds} interleaved rounds x "
                   f"{c.runs_per_round} runs, test split")
        test = EvalSetPayload.from_eval_set(prepared.data.test_set())
        settings = ConfirmSettings(rounds=c.rounds, runs_per_round=c.runs_per_round,
                                   threads=self.config.device.threads)
        try:
            attr = confirm_records(self.records(), self.workspace, dispatcher, test,
                                   dispatcher.share(test), settings,
                                   self.config.constraints.max_accuracy_drop, self.objectives)
        except Exception as exc:  # the study's trials stand; `paretoedge confirm` retries
            self.monitor.print(f"[red]confirmation failed[/red] ({type(exc).__name__}: {exc}); "
                               f"run `paretoedge confirm {self.config.study}` later")
            return
        if attr:
            store_confirmation(self._study, attr)
            self._log = TrialLog.load(self._study)

    def _profile(self, prepared: Prepared, dispatcher: Dispatcher) -> None:
        """Where the baseline's and the front's time goes, per operator, by one agent over the
        test split (:mod:`search.study.profiling`); a failure leaves the study as it is."""
        from search.study.profiling import Profiler, profile_records, split_profilable

        members, on_openvino = split_profilable(to_confirm(
            self.records(), self.config.constraints.max_accuracy_drop, self.objectives))
        if on_openvino:
            self._show(f"not profiled (they run on OpenVINO; the profiler is onnxruntime's): "
                       f"trials {', '.join(str(r.number) for r in on_openvino)}")
        if not members or not isinstance(dispatcher, Profiler):
            return
        runs = self.config.profiling.runs
        self._show(f"profiling {len(members)} bundles: {runs} inferences each, test split")
        test = EvalSetPayload.from_eval_set(prepared.data.test_set())
        try:
            profile_records(members, self.workspace, dispatcher, test, dispatcher.share(test),
                            runs=runs, threads=self.config.device.threads)
        except Exception as exc:  # the study stands; `paretoedge profile` takes one later
            self.monitor.print(f"[red]profiling failed[/red] ({type(exc).__name__}: {exc}); "
                               f"run `paretoedge profile {self.config.study} --trial N` later")

    def _run_baseline(self, prepared: Prepared, dispatcher: Dispatcher, eval_digest: str,
                      eval_ref: Any) -> None:
        pending = self._ask_baseline(prepared)
        if pending is None:  # measured already (by this study's earlier run, or another driver)
            return
        if not self._build(pending, prepared):
            raise SearchError("the fp32 baseline could not be built (see the trial above)")
        self._submit(dispatcher, pending, eval_digest, eval_ref)
        while pending.trial.number in self._pending or pending in self._ready:
            self._dispatch_ready(dispatcher, eval_digest, eval_ref)
            self._collect(dispatcher, timeout=1.0)
        if self._stop.requested and self._baseline_accuracy is None:
            raise KeyboardInterrupt
        if self._baseline_accuracy is None:
            raise SearchError("the fp32 baseline could not be measured (see the trial above)")

    def _ask_baseline(self, prepared: Prepared) -> _Pending | None:
        """The baseline's trial, or None when it is measured already. On a shared storage a
        baseline another driver is measuring is waited for, not measured twice."""
        from optuna.trial import TrialState

        while True:
            with self.storage.exclusive():
                self._reload()
                done = [r for r in self.records() if r.baseline and r.complete]
                if done:
                    self._baseline_accuracy = done[0].metrics["accuracy"]
                    return None
                if not any(r.baseline and r.state == "RUNNING" for r in self.records()):
                    waiting = self._study.get_trials(deepcopy=False,
                                                     states=(TrialState.WAITING,))
                    if not any(t.user_attrs.get("baseline") for t in waiting):
                        self._study.enqueue_trial(prepared.space.baseline_params(),
                                                  user_attrs={"baseline": True})
                    pending = self._ask(prepared)
                    if not pending.trial.user_attrs.get("baseline"):
                        raise SearchError("the fp32 baseline was not the next trial; is "
                                          "another driver running this study?")
                    return pending
            # another driver of the shared study measures the baseline now
            self._show("waiting for the baseline another driver measures")
            if self._stop.requested:
                raise KeyboardInterrupt
            time.sleep(SHARED_POLL_S)

    def _loop(self, prepared: Prepared, dispatcher: Dispatcher, eval_digest: str,
              eval_ref: Any) -> str:
        stop_reason: str | None = None
        while True:
            if self._stop.requested:
                stop_reason = INTERRUPTED_BY_USER
                if self._stop.announce():
                    self._show()
                for pending in self._ready:  # built, not yet measured: run it on resume
                    self._interrupt(pending)
                self._ready = []
            self._dispatch_ready(dispatcher, eval_digest, eval_ref)
            if self._ready and not self._pending and dispatcher.free_slots() == 0 and \
                    not dispatcher.wait_for_free_slot():  # waits device.wait_for_agents_s
                for pending in self._ready:  # every agent is gone: fail rather than wait
                    self._fail(pending, "no agent of the device class is available")
                self._ready = []
                return "no agent available"
            if self._stop.requested:
                stop_reason = INTERRUPTED_BY_USER
            if stop_reason is None:
                stop_reason = self.monitor.stop_reason(self._finished(),
                                                       in_flight=self._in_flight())
            if self._builds is not None:
                if stop_reason is None and self._budget_spent:
                    stop_reason = TRIALS_DONE
                if stop_reason is None and self._repeats >= EXHAUSTED_AFTER_REPEATS:
                    stop_reason = SPACE_EXHAUSTED
                if self._pool_step(prepared, dispatcher, eval_digest, eval_ref, stop_reason):
                    continue
                if not self._pending and not self._ready and not self._building:
                    if stop_reason is None and self._builds.free_slots() > 0:
                        continue  # the builds in flight all failed: ask for more
                    return stop_reason or "no builder available"  # no slot, nothing built
                continue
            may_build = self.config.device.builds_overlap or not self._pending
            if stop_reason is None and not self._ready and may_build:
                # build while the agents measure, only where that cannot distort the timing
                asked = self._ask_next(prepared)
                if asked is None:  # the other drivers took the rest of the budget
                    stop_reason = TRIALS_DONE
                    continue
                pending = asked
                self._await_in_flight_twin(pending, dispatcher, eval_digest, eval_ref)
                twin = self._measured_twin(pending.candidate)
                if twin is not None:
                    self._reuse(pending, twin)
                    self._repeats += 1
                    if self._repeats >= EXHAUSTED_AFTER_REPEATS:
                        stop_reason = SPACE_EXHAUSTED
                    continue
                self._repeats = 0
                if self._build(pending, prepared):
                    self._ready.append(pending)
                self._collect(dispatcher, timeout=0.0)  # what finished during the build
                continue
            if not self._pending and not self._ready:
                return stop_reason or TRIALS_DONE
            self._collect(dispatcher, timeout=1.0)

    def _pool_step(self, prepared: Prepared, dispatcher: Dispatcher, eval_digest: str,
                   eval_ref: Any, stop_reason: str | None) -> bool:
        """One turn of the loop with builds on builder nodes: ask for as many candidates as
        free builders and agents can absorb (a builder is free, and fewer candidates wait
        for an agent than the free agents plus the builders), then collect what finished.
        True when a candidate was asked for."""
        assert self._builds is not None
        absorb = dispatcher.free_slots() + self._builds.free_slots() + len(self._building)
        if stop_reason is None and self._builds.free_slots() > 0 and \
                len(self._building) + len(self._ready) < max(1, absorb):
            asked = self._ask_next(prepared)
            if asked is None:  # the other drivers took the rest of the budget
                self._budget_spent = True
                return False
            self._await_in_flight_twin(asked, dispatcher, eval_digest, eval_ref)
            twin = self._measured_twin(asked.candidate)
            if twin is not None:
                self._reuse(asked, twin)
                self._repeats += 1
                return True
            self._repeats = 0
            self._building[asked.trial.number] = asked
            with self.clock.phase(BUILD):
                self._builds.submit(asked.trial.number, asked.candidate,
                                    self.workspace.bundle_dir(asked.trial.number))
            self._collect_builds(timeout=0.0)
            return True
        self._collect_builds(timeout=0.0)
        self._dispatch_ready(dispatcher, eval_digest, eval_ref)
        self._collect(dispatcher, timeout=0.2 if self._building or self._pending else 0.0)
        self._collect_builds(timeout=0.2 if self._building else 0.0)
        return False

    def _collect_builds(self, timeout: float) -> None:
        """Builds that finished on builder nodes: ready for an agent, or a FAILED trial."""
        if self._builds is None or not self._building:
            return
        with self.clock.phase(WAIT):
            finished: list[BuildDone] = self._builds.poll(timeout=timeout)
        for done in finished:
            pending = self._building.pop(done.key)
            if done.built is None:
                self._fail(pending, f"build failed: {done.error}")
                continue
            pending.built = done.built
            pending.trial.set_user_attr("bundle", self.workspace.relative(done.built.directory))
            pending.trial.set_user_attr("bundle_digest", done.built.digest)
            if done.builder_id:
                pending.trial.set_user_attr("builder", done.builder_id)
            self._ready.append(pending)

    def _dispatch_ready(self, dispatcher: Dispatcher, eval_digest: str, eval_ref: Any) -> None:
        while self._ready and dispatcher.free_slots() > 0:
            self._submit(dispatcher, self._ready.pop(0), eval_digest, eval_ref)

    @_in_phase(SUBMIT)
    def _submit(self, dispatcher: Dispatcher, pending: _Pending, eval_digest: str,
                eval_ref: Any) -> None:
        self._pending[pending.trial.number] = pending
        dispatcher.submit(pending.trial.number, self._request(pending, eval_digest, eval_ref))

    def _await_in_flight_twin(self, pending: _Pending, dispatcher: Dispatcher,
                              eval_digest: str, eval_ref: Any) -> None:
        """Let an in-flight trial of the same candidate finish, so that it can be reused: one
        of this driver's, or (shared storage) an earlier one another driver runs."""
        key = pending.candidate.to_dict()

        def twin_in_flight() -> bool:
            return any(p.candidate.to_dict() == key
                       for p in (*self._pending.values(), *self._ready,
                                 *self._building.values()))

        def twin_elsewhere() -> bool:
            mine = {pending.trial.number, *self._pending, *(p.trial.number for p in self._ready)}
            return self.storage.shared and any(
                r.state == "RUNNING" and r.number < pending.trial.number
                and r.number not in mine and dict(r.candidate) == key for r in self.records())

        m = self.config.measurement
        give_up = time.monotonic() + m.timeout_s * (m.retries + 1)
        while True:
            if twin_in_flight():
                self._collect_builds(timeout=0.0)
                self._dispatch_ready(dispatcher, eval_digest, eval_ref)
                if not self._pending and not self._building:  # nothing can finish (no
                    return                                    # agent): build and measure anew
                self._collect(dispatcher, timeout=1.0 if not self._building else 0.2)
                self._collect_builds(timeout=0.2 if self._building else 0.0)
            elif twin_elsewhere() and time.monotonic() < give_up and not self._stop.requested:
                self._collect(dispatcher, timeout=SHARED_POLL_S)
                self._reload()
            else:
                return

    def _collect(self, dispatcher: Dispatcher, timeout: float) -> None:
        with self.clock.phase(WAIT):
            completed = dispatcher.poll(timeout=timeout)
        for done in completed:
            self._finish(self._pending.pop(done.key), done)
