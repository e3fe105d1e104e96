"""Trials as the rest of paretoedge sees them, read back from the Optuna storage."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from search.objective_set import ObjectiveSet

#: ``fail_reason`` of a trial the driver did not finish (Ctrl-C, SIGKILL): it runs again.
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class TrialRecord:
    """One trial: its candidate, what was measured, and where its bundle is."""

    number: int
    state: str
    candidate: Mapping[str, Any]
    metrics: Mapping[str, float]
    feasible: bool
    baseline: bool
    bundle: str | None
    bundle_digest: str | None
    fail_reason: str | None = None
    agent_id: str | None = None
    device_class: str | None = None
    fingerprint: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    finished_at: float | None = None
    reused_from: int | None = None

    @property
    def complete(self) -> bool:
        return self.state == "COMPLETE"

    @property
    def contended(self) -> bool:
        """Measured while something else ran on the agent's core, after every retry: kept and
        logged, but left out of the front, the hypervolume and queries unless asked."""
        return self.metrics.get("contended", 0.0) > 0

    def ranked(self, *, include_contended: bool = False) -> bool:
        """Completed, feasible and (unless ``include_contended``) measured uncontended."""
        return self.complete and self.feasible and (include_contended or not self.contended)

    @property
    def interrupted(self) -> bool:
        """Failed because the driver stopped: re-run on resume, not counted in the budget."""
        return self.state == "FAIL" and self.fail_reason == INTERRUPTED

    @property
    def reused(self) -> bool:
        """A repeat of an earlier trial's candidate: its measurement was reused, not redone."""
        return self.reused_from is not None

    @property
    def finished(self) -> bool:
        """Measured, or failed for a reason of its own: counts against the trial budget."""
        if self.reused:
            return False
        return self.complete or (self.state == "FAIL" and not self.interrupted)

    @property
    def fidelity(self) -> str:
        """``""`` (the study's finetune) or ``"full"`` (promoted to ``pruning.finetune_full``)."""
        return str(self.candidate.get("fidelity", ""))

    @property
    def configuration(self) -> str:
        """The candidate whatever its fidelity, as a key (its trials at every fidelity share
        it)."""
        return json.dumps({k: v for k, v in self.candidate.items() if k != "fidelity"},
                          sort_keys=True)

    def objective_values(self, objectives: ObjectiveSet) -> tuple[float, ...]:
        """The values of the study's ``objectives``, in their order."""
        return objectives.values(self.metrics)

    def bundle_path(self, workdir: Path) -> Path | None:
        return (Path(workdir) / self.bundle) if self.bundle else None

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.number, "state": self.state, "baseline": self.baseline,
                "feasible": self.feasible, "candidate": dict(self.candidate),
                "metrics": dict(self.metrics), "bundle": self.bundle,
                "bundle_digest": self.bundle_digest, "fail_reason": self.fail_reason,
                "agent_id": self.agent_id, "device_class": self.device_class,
                "reused_from": self.reused_from}


#: Study user attr: numbers of trials a killed driver left RUNNING (failed as interrupted).
INTERRUPTED_ATTR = "interrupted_trials"
#: Study user attr: the latest confirmation (search.study.confirmation), metrics per trial.
CONFIRMATION_ATTR = "confirmation"


def record_from_parts(*, number: int, state: str, params: Mapping[str, Any],
                      user_attrs: Mapping[str, Any], constraints: Sequence[float] | None,
                      finished_at: float | None) -> TrialRecord:
    """A record from what a trial holds: its state, params, user attrs and constraints."""
    attrs = user_attrs
    feasible = state == "COMPLETE" and all(v <= 0 for v in constraints or ())
    return TrialRecord(
        number=number,
        state=state,
        candidate=attrs.get("candidate", {}),
        metrics={k: float(v) for k, v in attrs.get("metrics", {}).items()},
        feasible=feasible,
        baseline=bool(attrs.get("baseline", False)),
        bundle=attrs.get("bundle"),
        bundle_digest=attrs.get("bundle_digest"),
        fail_reason=attrs.get("fail_reason"),
        agent_id=attrs.get("agent_id"),
        device_class=attrs.get("device_class"),
        fingerprint=attrs.get("fingerprint", {}),
        params=dict(params),
        finished_at=finished_at,
        reused_from=attrs.get("reused_from"),
    )


def record_from_trial(trial: FrozenTrial, interrupted: Collection[int] = ()) -> TrialRecord:
    """Build a record from an ``optuna.trial.FrozenTrial``; ``interrupted`` are the numbers of
    trials a killed driver left behind (the study's ``interrupted_trials`` user attr)."""
    attrs = dict(trial.user_attrs)
    if trial.number in interrupted:
        attrs.setdefault("fail_reason", INTERRUPTED)
    return record_from_parts(
        number=trial.number, state=trial.state.name, params=trial.params, user_attrs=attrs,
        constraints=list((getattr(trial, "constraints", None) or {}).values()),
        finished_at=(trial.datetime_complete.timestamp()
                     if trial.datetime_complete is not None else None))


def records_of(study: optuna.Study) -> list[TrialRecord]:
    """Every trial of a study as a record (read from its storage), confirmed metrics included."""
    attrs = study.user_attrs
    interrupted = set(attrs.get(INTERRUPTED_ATTR, ()))
    return with_confirmation([record_from_trial(t, interrupted)
                              for t in study.get_trials(deepcopy=False)],
                             attrs.get(CONFIRMATION_ATTR))


def with_confirmation(records: Sequence[TrialRecord], confirmation: Mapping[str, Any] | None
                      ) -> list[TrialRecord]:
    """``records`` with the metrics of the study's confirmation (``test_accuracy``,
    ``confirmed_speedup_p95``, ...) merged into those of the trials it confirmed."""
    trials = (confirmation or {}).get("trials", {})
    return [replace(r, metrics={**r.metrics, **trials[str(r.number)]})
            if str(r.number) in trials else r for r in records]


def superseded(records: Sequence[TrialRecord]) -> set[int]:
    """Numbers of completed screening trials whose configuration was also measured at the
    full fidelity: the highest fidelity stands for the configuration on the front, in the
    hypervolume and in queries."""
    full = {r.configuration for r in records if r.complete and r.fidelity}
    return {r.number for r in records
            if r.complete and not r.fidelity and r.configuration in full}


def at_highest_fidelity(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """``records`` without the :func:`superseded` ones."""
    gone = superseded(records)
    return [r for r in records if r.number not in gone] if gone else list(records)


def finish_order(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The finished trials (see :attr:`TrialRecord.finished`) in the order they finished."""
    done = [r for r in records if r.finished]
    return sorted(done, key=lambda r: (r.finished_at if r.finished_at is not None
                                       else float("inf"), r.number))
