"""Per-operator profiles of a study's bundles, taken by its agents and kept beside the study.

A profile (``device_agents.operator_profile``) says where a bundle's time goes: per operator
type and stage, exit heads, (de)quantize nodes and layout transposes apart, the gaps between
operators, the preprocessing and the Python around the sessions. At a study's end (after the
confirmation) the front's members are profiled on an agent of the study's class, over the test
split; ``paretoedge profile STUDY --trial N`` prints one (taking it then when it is missing).
Each is written to ``<study>/profiles/trial_<NNNN>.json`` (``search/results/profile_store.py``);
the MLflow mirror logs it on the trial's run (a table and a bar chart).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

from device_agents import BundlePayload, EvalSetPayload, OperatorProfile, ProfileRequest
from search.errors import SearchError
from search.records import TrialRecord
from search.results.profile_store import write_profile
from search.workspace import Workspace

if TYPE_CHECKING:
    from ray import ObjectRef

    from search.study.confirmation import DispatcherFactory


@runtime_checkable
class Profiler(Protocol):
    """Profiles one bundle on one agent (the agent pool, or an inline agent in tests)."""

    def profile(self, request: ProfileRequest) -> OperatorProfile: ...


def split_profilable(records: Sequence[TrialRecord]
                     ) -> tuple[list[TrialRecord], list[TrialRecord]]:
    """The records whose bundles the profiler can take, and those it cannot: the profiler is
    onnxruntime's, so bundles whose manifest runs them on OpenVINO (``runtime.engine``) have
    none (docs/RUNTIME.md)."""
    on_openvino = [r for r in records if r.candidate.get("engine") == "openvino"]
    return [r for r in records if r not in on_openvino], on_openvino


def profile_records(records: Sequence[TrialRecord], workspace: Workspace, profiler: Profiler,
                    eval_payload: EvalSetPayload, eval_ref: object, *, runs: int,
                    threads: int) -> dict[int, OperatorProfile]:
    """Profile each record's bundle on the profiler's agent and store it; return them."""
    profiles = {}
    for record in records:
        path = record.bundle_path(workspace.workdir)
        if path is None or record.bundle_digest is None or not path.is_dir():
            raise SearchError(f"trial {record.number} of study {workspace.study!r} has no "
                              f"bundle to profile")
        profile = profiler.profile(ProfileRequest(
            bundle_digest=record.bundle_digest, bundle=BundlePayload.from_directory(path),
            eval_set_digest=eval_payload.digest,
            eval_set=cast("EvalSetPayload | ObjectRef[EvalSetPayload]", eval_ref),
            threads=threads, runs=runs, trial_number=record.number))
        write_profile(workspace, record, profile)
        profiles[record.number] = profile
    return profiles


def profile_stored_study(workspace: Workspace, number: int, *, runs: int | None = None,
                         dispatcher_factory: DispatcherFactory | None = None
                         ) -> tuple[TrialRecord, OperatorProfile]:
    """``paretoedge profile STUDY --trial N``: profile one trial's bundle now, on an agent like
    the study's run used (the study's ``profiling.runs`` unless ``runs`` is given), over the
    test split; store it."""
    from search.errors import ConfigError
    from search.fleet.study_pool import default_dispatcher
    from search.records import records_of
    from search.study.confirmation import stored_study
    from search.study.preparation import load_data

    study, config, _ = stored_study(workspace, "profile its front")
    records = {r.number: r for r in records_of(study)}
    record = records.get(number)
    if record is None or not record.complete:
        known = ", ".join(str(n) for n, r in sorted(records.items()) if r.complete) or "none"
        raise ConfigError(f"--trial {number}: study {workspace.study!r} has no completed trial "
                          f"{number} (completed: {known})")
    if split_profilable([record])[1]:
        raise ConfigError(f"--trial {number}: trial {number} of study {workspace.study!r} runs "
                          f"on OpenVINO; the profiler is onnxruntime's (docs/RUNTIME.md)")
    payload = EvalSetPayload.from_eval_set(load_data(config).test_set())
    dispatcher = (dispatcher_factory or default_dispatcher)(config, workspace)
    try:
        if not isinstance(dispatcher, Profiler):
            raise ConfigError(f"{type(dispatcher).__name__} cannot profile (no profile method)")
        profiles = profile_records([record], workspace, dispatcher, payload,
                                   dispatcher.share(payload),
                                   runs=runs or config.profiling.runs,
                                   threads=config.device.threads)
    finally:
        dispatcher.close()
    return record, profiles[number]
