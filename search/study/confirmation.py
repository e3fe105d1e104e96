"""Confirming a study: its fp32 baseline and every front member timed again by one agent,
interleaved in rounds in one process (the order rotated each round), and evaluated on the
held-out test split that took part in no decision.

What the search measured decides; what the confirmation measured is what is reported: the
speed-ups are ratios of bundles timed side by side in one process (``confirmed_speedup_p95``),
and ``test_accuracy`` is the only accuracy that is not biased by the selection. The results are
kept in the study (user attr ``confirmation``), read back into every record's metrics, and
added to the trials' MLflow runs by the mirror.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from device_agents import EvalSetPayload
from search.objective_set import ObjectiveSet
from search.records import CONFIRMATION_ATTR, TrialRecord
from search.results.pareto import ParetoFront
from search.workspace import Workspace

if TYPE_CHECKING:
    import optuna
    from ray import ObjectRef

    from device_agents import Confirmation, ConfirmRequest
    from search.config import StudyConfig
    from search.fleet.dispatch import Dispatcher

    DispatcherFactory = Callable[[StudyConfig, Workspace], Dispatcher]


@runtime_checkable
class Confirmer(Protocol):
    """Runs a confirmation on one agent (the agent pool, or a fake)."""

    def confirm(self, request: ConfirmRequest) -> Confirmation: ...


@dataclass(frozen=True)
class ConfirmSettings:
    """How long the confirmation times each bundle: ``rounds`` x ``runs_per_round`` runs."""

    rounds: int = 5
    runs_per_round: int = 1000
    threads: int = 1
    warmup_runs: int = 100
    warmup_seconds: float = 0.2


def covering_runs(settings: ConfirmSettings, eval_samples: int) -> int:
    """Runs per round, raised so that the rounds together run every test sample through each
    bundle at least once (a cascade's latency depends on which samples exit early)."""
    return max(settings.runs_per_round, math.ceil(eval_samples / settings.rounds))


def round_speedups(base: Sequence[float], trial: Sequence[float]) -> float:
    """The median over the rounds of the baseline's figure over the trial's in the same round
    (seconds apart), or 0 without rounds. Robust where a ratio of pooled figures is not: on a
    shared host a slow spell of a few seconds during one of the baseline's turns would move
    every speed-up."""
    ratios = [b / t for b, t in zip(base, trial, strict=True) if t > 0]
    return statistics.median(ratios) if ratios else 0.0


def confirmed_metrics(confirmation: Confirmation, numbers: Sequence[int],
                      baseline_number: int) -> dict[int, dict[str, float]]:
    """Per trial: test accuracy and its drop, confirmed latencies (over every round's samples
    pooled) and the speed-ups against the baseline timed in the same process (the median of
    the per-round ratios; the ratio of the pooled figures where rounds are not reported)."""
    by_number = dict(zip(numbers, confirmation.measurements, strict=True))
    rounds = {n: (p50, p95) for n, p50, p95 in zip(
        numbers, confirmation.round_p50_ms, confirmation.round_p95_ms, strict=False)}
    base = by_number[baseline_number]
    out: dict[int, dict[str, float]] = {}
    for number, m in by_number.items():
        lat = m.latency
        speedup_p50 = base.latency.p50_ms / lat.p50_ms
        speedup_p95 = base.latency.p95_ms / lat.p95_ms
        if number in rounds and baseline_number in rounds and rounds[number][0]:
            speedup_p50 = round_speedups(rounds[baseline_number][0], rounds[number][0])
            speedup_p95 = round_speedups(rounds[baseline_number][1], rounds[number][1])
        out[number] = {
            "test_accuracy": m.accuracy,
            "test_accuracy_drop": base.accuracy - m.accuracy,
            "confirmed_latency_p50_ms": lat.p50_ms,
            "confirmed_latency_p95_ms": lat.p95_ms,
            "confirmed_latency_mean_ms": lat.mean_ms,
            "confirmed_speedup_p50": speedup_p50,
            "confirmed_speedup_p95": speedup_p95,
        }
    return out


def to_confirm(records: Sequence[TrialRecord], max_accuracy_drop: float,
               objectives: ObjectiveSet | None = None) -> list[TrialRecord]:
    """The baseline first, then the members of the front under the study's ``objectives``
    (default: the default objectives), by their first latency objective."""
    front = ParetoFront.from_records(records, max_accuracy_drop, objectives=objectives)
    if front.baseline is None:
        return []
    return [front.baseline, *(r for r in front.members if not r.baseline)]


def confirm_records(records: Sequence[TrialRecord], workspace: Workspace, confirmer: Confirmer,
                    eval_payload: EvalSetPayload, eval_ref: object, settings: ConfirmSettings,
                    max_accuracy_drop: float, objectives: ObjectiveSet | None = None
                    ) -> dict[str, Any]:
    """Confirm the baseline and the front of ``records``; return the study attr to store."""
    from device_agents import BundlePayload, BundleRef, ConfirmRequest, MeasurementProtocol

    chosen = to_confirm(records, max_accuracy_drop, objectives)
    if not chosen:
        return {}
    refs = []
    for r in chosen:
        path = r.bundle_path(workspace.workdir)
        assert path is not None and r.bundle_digest is not None
        refs.append(BundleRef(key=r.number, bundle_digest=r.bundle_digest,
                              bundle=BundlePayload.from_directory(path)))
    protocol = MeasurementProtocol(threads=settings.threads, warmup_runs=settings.warmup_runs,
                                   warmup_seconds=settings.warmup_seconds)
    started = time.time()
    runs = covering_runs(settings, len(eval_payload.load()))
    confirmation = confirmer.confirm(ConfirmRequest(
        bundles=tuple(refs), eval_set_digest=eval_payload.digest,
        eval_set=cast("EvalSetPayload | ObjectRef[EvalSetPayload]", eval_ref),
        protocol=protocol, rounds=settings.rounds,
        runs_per_round=runs))
    numbers = [r.number for r in chosen]
    metrics = confirmed_metrics(confirmation, numbers, chosen[0].number)
    return {"trials": {str(n): m for n, m in metrics.items()}, "rounds": confirmation.rounds,
            "runs_per_round": runs, "agent_id": confirmation.agent_id,
            "fingerprint": dict(confirmation.fingerprint), "at": started,
            "duration_s": confirmation.duration_s, "split": "test",
            "n_test": confirmation.measurements[0].n_eval}


def store_confirmation(study: optuna.Study, attr: Mapping[str, Any]) -> None:
    """Keep the confirmation in the study: records read it back into their metrics, and the
    MLflow mirror adds it to the trials' runs at its next sync."""
    study.set_user_attr(CONFIRMATION_ATTR, dict(attr))


def stored_study(workspace: Workspace, doing: str
                 ) -> tuple[optuna.Study, StudyConfig, ObjectiveSet]:
    """A finished study, its config (as it was run) and its objectives, to ``doing`` with its
    own agents; a study still running, or one without a stored config, is an error."""
    import optuna

    from search.errors import ConfigError, SearchError
    from search.study_lock import StudyLock
    from search.workspace import study_storage

    workspace.require()
    driver = StudyLock(workspace).running_driver()
    if driver is not None:
        raise SearchError(f"study {workspace.study!r} is running (driver pid {driver}); it "
                          f"will {doing} itself when it ends")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=workspace.study, storage=study_storage(workspace).optuna())
    attrs = study.user_attrs
    if "config" not in attrs or "config_dir" not in attrs:
        raise ConfigError(f"study {workspace.study!r} keeps no config to {doing} with (run "
                          f"it once with this version of paretoedge)")
    return study, stored_config(attrs), ObjectiveSet.of_study(attrs)


def stored_config(attrs: Mapping[str, Any]) -> StudyConfig:
    """The config a study was run with, from its user attrs, under the objectives it was
    searched with. The stored dump holds every field, defaults too, which a model given
    trained must not name: ``model.train`` beside a checkpoint or an ONNX file, ``pruning``
    and ``early_exit`` beside an ONNX file; they are dropped."""
    from search.config import StudyConfig

    stored = dict(attrs["config"])
    model = dict(stored.get("model") or {})
    if model.get("checkpoint") is not None or model.get("onnx") is not None:
        model.pop("train", None)
    if model.get("onnx") is not None:
        stored.pop("pruning", None)
        stored.pop("early_exit", None)
    objectives = ObjectiveSet.of_study(attrs)
    return StudyConfig.model_validate({**stored, "model": model, "base_dir": attrs["config_dir"],
                                       "objectives": objectives.to_attr()})


def confirm_stored_study(workspace: Workspace, *, rounds: int | None = None,
                         runs_per_round: int | None = None,
                         dispatcher_factory: DispatcherFactory | None = None
                         ) -> tuple[list[TrialRecord], StudyConfig, ConfirmSettings]:
    """``paretoedge confirm STUDY``: confirm a stored study with agents like its run's (the
    study's ``confirm`` settings unless ``rounds``/``runs_per_round`` are given)."""
    from search.errors import ConfigError
    from search.fleet.study_pool import default_dispatcher
    from search.records import records_of
    from search.study.preparation import load_data

    study, config, objectives = stored_study(workspace, "confirm its front")
    settings = ConfirmSettings(rounds=rounds or config.confirm.rounds,
                               runs_per_round=runs_per_round or config.confirm.runs_per_round,
                               threads=config.device.threads)
    eval_payload = EvalSetPayload.from_eval_set(load_data(config).test_set())
    dispatcher: Dispatcher = (dispatcher_factory or default_dispatcher)(config, workspace)
    try:
        if not isinstance(dispatcher, Confirmer):
            raise ConfigError(f"{type(dispatcher).__name__} cannot confirm (no confirm method)")
        eval_ref = dispatcher.share(eval_payload)
        attr = confirm_records(records_of(study), workspace, dispatcher, eval_payload, eval_ref,
                               settings, config.constraints.max_accuracy_drop, objectives)
    finally:
        dispatcher.close()
    if attr:
        store_confirmation(study, attr)
        settings = replace(settings, runs_per_round=int(attr["runs_per_round"]))
    return records_of(study), config, settings
