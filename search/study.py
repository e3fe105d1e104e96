"""The study loop: ask Optuna, build the candidate, measure it on an agent, tell, log.

Building trial k+1 overlaps measuring trial k. The fp32 baseline is trial 0 and is measured
before anything else, since the accuracy band is defined by it. A candidate that fails to build
or measure becomes a FAILED trial with its reason; the study goes on.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from device_agents import EvalSetPayload, MeasurementProtocol, MeasureRequest
from device_agents.bundle import BundlePayload
from search.config import StudyConfig
from search.dispatch import Completed, Dispatcher
from search.errors import SearchError
from search.front_table import describe_candidate, records_csv
from search.objectives import constraint_values, objective_values, trial_metrics
from search.pareto import ParetoFront
from search.preparation import Prepared, prepare
from search.records import OBJECTIVES, TrialRecord, record_from_trial
from search.sensitivity_command import seed_study
from search.tracking import MlflowTracker, NullTracker, Tracker
from search.workspace import Workspace, open_storage
from spaces import BuildError, BuiltBundle, Candidate

log = logging.getLogger(__name__)
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class RunOptions:
    trials: int
    timeout_s: float | None = None


@dataclass(frozen=True)
class StudySummary:
    study: str
    records: list[TrialRecord]
    front: ParetoFront
    stop_reason: str

    @property
    def completed(self) -> int:
        return sum(r.complete for r in self.records)

    @property
    def failed(self) -> int:
        return sum(r.state == "FAIL" and r.fail_reason != INTERRUPTED for r in self.records)


@dataclass
class _Pending:
    trial: Any
    candidate: Candidate
    built: BuiltBundle | None = None
    started: float = field(default_factory=time.perf_counter)


def make_sampler(name: str, seed: int, trials: int) -> Any:
    import optuna

    if name == "tpe":
        with warnings.catch_warnings():  # multivariate and group are "experimental" since 2.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                              n_startup_trials=min(10, max(4, trials // 4)))
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=min(20, max(4, trials)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise SearchError(f"search.sampler: unknown sampler {name!r}")


def default_dispatcher(config: StudyConfig, workspace: Workspace) -> Dispatcher:
    from search.agent_pool import RayAgentPool

    d, m = config.device, config.measurement
    if d.address:
        raise SearchError("device.address: joining a remote cluster is not supported yet; "
                          "leave it empty to start local agents")
    return RayAgentPool.start_local(d.class_, d.agents, threads=d.threads,
                                    cache_dir=str(workspace.cache / "agent"),
                                    timeout_s=m.timeout_s, retries=m.retries,
                                    wait_for_agents_s=d.wait_for_agents_s)


class StudyRunner:
    """Runs (or resumes) one study.

    Example:
        >>> runner = StudyRunner(load_config("experiments/digits.yaml"),
        ...                      Workspace(Path("runs"), "digits"))  # doctest: +SKIP
        >>> summary = runner.run(RunOptions(trials=20))  # doctest: +SKIP
    """

    def __init__(self, config: StudyConfig, workspace: Workspace, *,
                 dispatcher_factory: Callable[[StudyConfig, Workspace], Dispatcher] | None = None,
                 tracker: Tracker | None = None, console: Console | None = None) -> None:
        self.config = config
        self.workspace = workspace
        self.dispatcher_factory = dispatcher_factory or default_dispatcher
        self.console = console or Console()
        self._tracker = tracker
        self._baseline_accuracy: float | None = None
        self._front_numbers: set[int] = set()

    # -- set-up -------------------------------------------------------------------------------
    def _open_study(self, trials: int) -> Any:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            study_name=self.config.study, storage=open_storage(self.workspace.journal),
            directions=[direction for _, direction in OBJECTIVES],
            sampler=make_sampler(self.config.search.sampler, self.config.search.seed, trials),
            load_if_exists=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([name for name, _ in OBJECTIVES])
        return study

    def _recover_interrupted(self, study: Any) -> None:
        """Trials left RUNNING by a killed driver: mark them FAIL and enqueue them again."""
        from optuna.trial import TrialState

        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", INTERRUPTED)
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={
                k: v for k, v in trial.user_attrs.items() if k == "baseline"})
            self.console.print(f"[yellow]trial {trial.number} was interrupted; re-queued")

    def _tracker_for_run(self) -> Tracker:
        if self._tracker is not None:
            return self._tracker
        if not self.config.tracking.mlflow:
            return NullTracker()
        return MlflowTracker(self.workspace.workdir, self.config.study,
                             self.config.tracking.experiment)

    # -- trials -------------------------------------------------------------------------------
    def _ask(self, study: Any, prepared: Prepared) -> _Pending:
        trial = study.ask()
        candidate = prepared.space.suggest(trial)
        trial.set_user_attr("candidate", candidate.to_dict())
        trial.set_user_attr("device_class", self.config.device.class_)
        return _Pending(trial, candidate)

    def _build(self, pending: _Pending, prepared: Prepared) -> bool:
        directory = self.workspace.bundle_dir(pending.trial.number)
        try:
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
                                       ci_rel_width=m.ci_rel_width)
        return MeasureRequest(bundle_digest=pending.built.digest,
                              bundle=BundlePayload.from_directory(pending.built.directory),
                              eval_set_digest=eval_digest, eval_set=eval_ref,
                              protocol=protocol, trial_number=pending.trial.number)

    def _fail(self, pending: _Pending, reason: str) -> None:
        from optuna.trial import TrialState

        pending.trial.set_user_attr("fail_reason", reason)
        self._study.tell(pending.trial, state=TrialState.FAIL)
        record = record_from_trial(self._study._storage.get_trial(pending.trial._trial_id))
        self._log_trial(record, pending)
        self.console.print(f"[red]trial {record.number:>3} FAILED[/red] "
                           f"{pending.candidate.describe()}: {reason}")

    def _finish(self, pending: _Pending, done: Completed) -> None:
        if done.measurement is None:
            self._fail(pending, f"measurement failed: {done.error}")
            return
        assert pending.built is not None
        measurement = done.measurement
        is_baseline = bool(pending.trial.user_attrs.get("baseline"))
        if is_baseline:
            self._baseline_accuracy = measurement.accuracy
            self._study.set_user_attr("baseline_accuracy", measurement.accuracy)
            self._study.set_user_attr("baseline_trial", pending.trial.number)
        metrics = trial_metrics(measurement, pending.candidate, pending.built.info,
                                self._baseline_accuracy)
        metrics["build_s"] = pending.built.build_seconds
        c = self.config.constraints
        assert self._baseline_accuracy is not None
        for name, value in constraint_values(
                metrics, baseline_accuracy=self._baseline_accuracy,
                max_accuracy_drop=c.max_accuracy_drop, latency_p95_ms=c.latency_p95_ms,
                size_kb=c.size_kb).items():
            pending.trial.set_constraint(name, value)
        pending.trial.set_user_attr("metrics", metrics)
        pending.trial.set_user_attr("agent_id", done.agent_id or measurement.agent_id)
        pending.trial.set_user_attr("fingerprint", dict(measurement.fingerprint))
        self._study.tell(pending.trial, objective_values(metrics))
        record = record_from_trial(self._study._storage.get_trial(pending.trial._trial_id))
        self._log_trial(record, pending)
        self._update_front()
        flag = "[green]feasible[/green]" if record.feasible else "[yellow]outside band[/yellow]"
        self.console.print(
            f"trial {record.number:>3} {describe_candidate(dict(record.candidate)):<44} "
            f"acc {metrics['accuracy']:.4f}  p95 {metrics['latency_p95_ms']:.4f} ms  "
            f"size {metrics['size_kb']:7.1f} KB  {flag}"
            + (" [bold]front[/bold]" if record.number in self._front_numbers else ""))

    def _log_trial(self, record: TrialRecord, pending: _Pending) -> None:
        params = {**pending.trial.params, "candidate": pending.candidate.to_dict()}
        self._safely("log trial", self._tracker_run.log_trial, record, params)

    def _update_front(self) -> None:
        records = self.records()
        front = ParetoFront.from_records(records, self.config.constraints.max_accuracy_drop)
        self._front_numbers = front.numbers
        summary = {"front_size": float(len(front.members)), "hypervolume": front.hypervolume(),
                   "trials_complete": float(sum(r.complete for r in records))}
        self._safely("update front", self._tracker_run.update_front, front.numbers, summary,
                     records_csv(list(front.members)))

    def _safely(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Tracking must never stop a study: a failure is reported and the study goes on."""
        try:
            fn(*args)
        except Exception as exc:
            log.warning("MLflow: could not %s: %s", what, exc)
            self.console.print(f"[yellow]MLflow: could not {what}: {exc}")

    def records(self) -> list[TrialRecord]:
        return [record_from_trial(t) for t in self._study.get_trials(deepcopy=False)]

    # -- the loop -----------------------------------------------------------------------------
    def run(self, options: RunOptions) -> StudySummary:
        from optuna.trial import TrialState

        self.workspace.create()
        import torch

        torch.set_num_threads(1)
        prepared = prepare(self.config, self.workspace.cache)
        self._study = self._open_study(options.trials)
        self._study.set_user_attr("config", self.config.model_dump(mode="json", by_alias=True))
        self._study.set_user_attr("max_accuracy_drop", self.config.constraints.max_accuracy_drop)
        self._recover_interrupted(self._study)
        self._tracker_run = self._tracker_for_run()
        self._safely("start the study run", self._tracker_run.start_study,
                     self.config.model_dump(mode="json", by_alias=True),
                     {"device_class": self.config.device.class_})
        dispatcher = self.dispatcher_factory(self.config, self.workspace)
        deadline = time.monotonic() + options.timeout_s if options.timeout_s else None
        stop_reason = "trial budget reached"
        try:
            eval_payload = EvalSetPayload.from_eval_set(prepared.data.test_set())
            eval_ref = dispatcher.share(eval_payload)
            self._run_baseline(prepared, dispatcher, eval_payload.digest, eval_ref)
            seed_study(self._study, prepared, self.config, self.workspace, self.console)
            stop_reason = self._loop(prepared, dispatcher, eval_payload.digest, eval_ref,
                                     options.trials, deadline)
        except KeyboardInterrupt:
            stop_reason = INTERRUPTED
            for pending in list(self._pending.values()):
                pending.trial.set_user_attr("fail_reason", INTERRUPTED)
                self._study.tell(pending.trial, state=TrialState.FAIL)
        finally:
            dispatcher.close()
            self._safely("close the study run", self._tracker_run.close)
        records = self.records()
        return StudySummary(self.config.study, records,
                            ParetoFront.from_records(records,
                                                     self.config.constraints.max_accuracy_drop),
                            stop_reason)

    def _counted(self) -> int:
        """Finished trials that count against the budget (interrupted ones are re-run)."""
        return sum(1 for r in self.records()
                   if r.complete or (r.state == "FAIL" and r.fail_reason != INTERRUPTED))

    def _run_baseline(self, prepared: Prepared, dispatcher: Dispatcher, eval_digest: str,
                      eval_ref: Any) -> None:
        from optuna.trial import TrialState

        self._pending: dict[int, _Pending] = {}
        done = [r for r in self.records() if r.baseline and r.complete]
        if done:
            self._baseline_accuracy = done[0].metrics["accuracy"]
            self._update_front()
            return
        waiting = self._study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if not any(t.user_attrs.get("baseline") for t in waiting):
            self._study.enqueue_trial(prepared.space.baseline_params(),
                                      user_attrs={"baseline": True})
        pending = self._ask(self._study, prepared)
        if not pending.trial.user_attrs.get("baseline"):
            raise SearchError("the fp32 baseline was not the next trial; is another driver "
                              "running this study?")
        if not self._build(pending, prepared):
            raise SearchError("the fp32 baseline could not be built (see the trial above)")
        self._pending[pending.trial.number] = pending
        dispatcher.submit(pending.trial.number, self._request(pending, eval_digest, eval_ref))
        while pending.trial.number in self._pending:
            for completed in dispatcher.poll(timeout=1.0):
                self._finish(self._pending.pop(completed.key), completed)
        if self._baseline_accuracy is None:
            raise SearchError("the fp32 baseline could not be measured (see the trial above)")

    def _loop(self, prepared: Prepared, dispatcher: Dispatcher, eval_digest: str, eval_ref: Any,
              trials: int, deadline: float | None) -> str:
        ready: list[_Pending] = []
        asked = self._counted()
        stop_reason = "trial budget reached"
        while True:
            while ready and dispatcher.free_slots() > 0:
                pending = ready.pop(0)
                self._pending[pending.trial.number] = pending
                dispatcher.submit(pending.trial.number,
                                  self._request(pending, eval_digest, eval_ref))
            if ready and not self._pending and dispatcher.free_slots() == 0:
                for pending in ready:  # every agent is gone: fail rather than wait forever
                    self._fail(pending, "no agent of the device class is available")
                return "no agent available"
            can_ask = asked + len(self._pending) + len(ready) < trials
            if deadline is not None and time.monotonic() >= deadline:
                can_ask, stop_reason = False, "timeout reached"
            if can_ask and not ready:  # build the next candidate while the agents measure
                pending = self._ask(self._study, prepared)
                if self._build(pending, prepared):
                    ready.append(pending)
                else:
                    asked += 1
                continue
            if not self._pending and not ready:
                return stop_reason
            for completed in dispatcher.poll(timeout=1.0):
                self._finish(self._pending.pop(completed.key), completed)
                asked += 1
