"""``paretoedge deploy``: the bundle a ``best`` query chooses, made a deployed copy (the
fallback policy, and the monitor's reference measured on the study's selection split) and
registered as a new version of a registered model whose alias then points at it, unless the
canary comparison against the alias's holder refuses it. See docs/DEPLOYMENT.md.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from search.records import TrialRecord
from search.registry.canary import P95_TOLERANCE, Comparison, compare_versions
from search.registry.model_ref import ModelRef
from search.registry.model_registry import ModelRegistry, RegisteredVersion
from search.registry.study_source import StoredStudy, StudyQuery
from search.registry.version_tags import version_tags

if TYPE_CHECKING:
    from device_agents.deployment import FallbackPolicy, MonitorReference
    from search.registry.canary import DispatcherFactory


@dataclass(frozen=True)
class DeployRequest:
    """What ``paretoedge deploy`` was asked."""

    study: str
    workdir: Path
    name: str
    query: StudyQuery
    alias: str = "production"
    tracking_uri: str | None = None
    fallback: FallbackPolicy | None = None
    canary: bool = False
    #: the class the canary comparison runs on (default: the study's)
    device_class: str | None = None
    p95_tolerance: float = P95_TOLERANCE


@dataclass(frozen=True)
class Deployed:
    """What ``deploy`` did: the version registered, where the alias was, whether it moved."""

    version: RegisteredVersion
    record: TrialRecord
    alias: str
    previous: str | None
    moved: bool
    comparison: Comparison | None = None


def study_reference(study: StoredStudy, record: TrialRecord, bundle: Path) -> MonitorReference:
    """The monitor's reference: the bundle's exit rates and confidence histogram on the study's
    selection split (what the search measured accuracy on) and the trial's measured p50/p95."""
    from device_agents import CascadeRunner
    from device_agents.deployment import reference_from_evaluation
    from search.study.preparation import load_data

    config = study.config()
    selection = load_data(config).selection_set()
    runner = CascadeRunner.load(bundle, threads=config.device.threads,
                                expected_digest=record.bundle_digest)
    inputs = [selection.inputs[i] for i in range(len(selection))]
    evaluation = runner.evaluate(inputs, selection.labels)
    return reference_from_evaluation(evaluation, record.metrics["latency_p50_ms"],
                                     record.metrics["latency_p95_ms"])


def deploy(request: DeployRequest, *, dispatcher_factory: DispatcherFactory | None = None
           ) -> Deployed:
    """Register the chosen bundle and point the alias at it (see the module's docstring).

    With ``canary`` and an alias that has a holder, the newcomer is registered, then compared
    with the holder; when it is refused the alias stays (``moved`` is False, ``comparison``
    says why) and ``paretoedge deploy`` exits 1.
    """
    from device_agents.deployment import deployed_copy

    study = StoredStudy.load(request.workdir, request.study)
    record = study.best(request.query)
    bundle = study.bundle_of(record)
    escalate_to = None
    if request.fallback is not None and request.fallback.action == "escalate":
        escalate_to = study.bundle_of(study.baseline())
    reference = study_reference(study, record, bundle)
    registry = ModelRegistry.open(workdir=request.workdir, tracking_uri=request.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="paretoedge-deploy-") as tmp:
        target = Path(tmp) / "bundle"
        deployed_copy(bundle, target, fallback=request.fallback, reference=reference,
                      escalate_to=escalate_to)
        version = registry.register(
            request.name, target,
            version_tags(request.study, record, request.query, request.fallback),
            description=f"trial {record.number} of study {request.study} "
                        f"({request.query.describe()})")
    holder = registry.aliases(request.name).get(request.alias)
    comparison = None
    if request.canary and holder is not None and holder != version.version:
        comparison = compare_versions(
            registry, ModelRef(name=request.name, alias=request.alias),
            ModelRef(name=request.name, version=version.version), workdir=request.workdir,
            device_class=request.device_class, p95_tolerance=request.p95_tolerance,
            dispatcher_factory=dispatcher_factory)
        if not comparison.accepted:
            return Deployed(version=version, record=record, alias=request.alias,
                            previous=holder, moved=False, comparison=comparison)
    registry.point(request.name, request.alias, version.version)
    return Deployed(version=registry.resolve(ModelRef(name=request.name,
                                                      version=version.version)),
                    record=record, alias=request.alias, previous=holder, moved=True,
                    comparison=comparison)


def refusal(deployed: Deployed) -> str:
    """The one line ``deploy --canary`` fails with when the alias did not move."""
    assert deployed.comparison is not None
    return (f"{deployed.version.name}@{deployed.alias} stays at version {deployed.previous}: "
            f"version {deployed.version.version} is registered but refused: "
            + "; ".join(deployed.comparison.reasons()))
