"""Deploying a bundle: a verified copy with the manifest's ``deployment`` section.

The section (:class:`DeploymentSpec`) holds the safe fallback (:class:`FallbackPolicy`) and the
reference the device's monitor compares against (:class:`MonitorReference`, made by
:func:`reference_from_evaluation` from the cascade's decisions on a labelled set, e.g. the
selection split). :func:`deployed_copy` writes the copy, with the escalation bundle inside it at
``fallback_bundle/`` when the fallback escalates, so that ``verify_bundle`` checks every file of
both. See docs/BUNDLE_FORMAT.md and docs/MONITORING.md.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from device_agents.bundle import (
    DEPLOYED_FORMAT_VERSION,
    MANIFEST,
    BundleManifest,
    bundle_digest,
    bundle_files,
    verify_bundle,
    write_bundle,
)
from device_agents.cascade import CascadeEvaluation
from device_agents.deployment_spec import (
    FALLBACK_ACTIONS,
    FALLBACK_BUNDLE_DIR,
    DeploymentSpec,
    FallbackAction,
    FallbackPolicy,
    MonitorReference,
    confidence_edges,
    confidence_histogram,
)
from device_agents.errors import BundleError

__all__ = [
    "FALLBACK_ACTIONS",
    "FALLBACK_BUNDLE_DIR",
    "DeploymentSpec",
    "FallbackAction",
    "FallbackPolicy",
    "MonitorReference",
    "confidence_edges",
    "confidence_histogram",
    "deployed_copy",
    "reference_from_evaluation",
]


def reference_from_evaluation(evaluation: CascadeEvaluation, latency_p50_ms: float,
                              latency_p95_ms: float, bins: int = 10) -> MonitorReference:
    """The monitor's reference from a cascade's decisions on a labelled set.

    Exit rates as the cascade answered; the histogram of the answering exit's calibrated
    confidence (its highest temperature-scaled probability) over equal-mass bins
    (:func:`confidence_edges`); the accuracy on that set; the latency percentiles as measured.

    Example:
        >>> ev = runner.evaluate(selection.inputs, selection.labels)  # doctest: +SKIP
        >>> reference_from_evaluation(ev, 0.21, 0.35).exit_rates  # doctest: +SKIP
        (0.62, 0.38)
    """
    edges = confidence_edges(evaluation.confidences, bins)
    return MonitorReference(exit_rates=evaluation.exit_rates, confidence_edges=edges,
                            confidence_hist=confidence_histogram(evaluation.confidences, edges),
                            latency_p50_ms=float(latency_p50_ms),
                            latency_p95_ms=float(latency_p95_ms),
                            accuracy=evaluation.accuracy)


def _check_escalation(manifest: BundleManifest, fallback: FallbackPolicy | None,
                      escalate_to: Path | None) -> BundleManifest | None:
    escalates = fallback is not None and fallback.action == "escalate"
    if escalates and escalate_to is None:
        raise BundleError("deploy: fallback action escalate needs the bundle to escalate to")
    if not escalates and escalate_to is not None:
        raise BundleError("deploy: an escalation bundle is only used by fallback action "
                          "escalate")
    if escalate_to is None:
        return None
    second = verify_bundle(escalate_to)
    if second.deployment is not None and second.deployment.fallback_digest is not None:
        raise BundleError(f"{escalate_to}: the escalation bundle escalates itself (one level "
                          f"only)")
    if second.input.shape != manifest.input.shape or second.num_classes != manifest.num_classes:
        raise BundleError(f"{escalate_to}: the escalation bundle takes input "
                          f"{list(second.input.shape)} with {second.num_classes} classes; the "
                          f"deployed one {list(manifest.input.shape)} with "
                          f"{manifest.num_classes}")
    return second


def deployed_copy(source: Path, target: Path, *, fallback: FallbackPolicy | None,
                  reference: MonitorReference | None,
                  escalate_to: Path | None = None) -> BundleManifest:
    """Copy the verified bundle ``source`` into ``target`` with a deployment section.

    The stages are copied, the manifest gains the section (and format version 2) and is
    re-hashed; with ``fallback.action == "escalate"`` the verified bundle ``escalate_to`` is
    copied byte for byte to ``target/fallback_bundle/`` and its digest recorded, so that
    ``verify_bundle(target)`` checks every file of both. ``target`` is replaced when it is a
    bundle; any other non-empty directory is refused. Returns the written manifest.

    Example:
        >>> deployed_copy(Path("best"), Path("deploy/v1"),  # doctest: +SKIP
        ...               fallback=FallbackPolicy(below=0.6, action="abstain"),
        ...               reference=reference)
    """
    source, target = Path(source), Path(target)
    manifest = verify_bundle(source)
    if target.resolve() == source.resolve() or source.resolve() in target.resolve().parents:
        raise BundleError(f"{target}: the deployed copy cannot be written into its source")
    if target.exists() and (not target.is_dir() or (any(target.iterdir())
                                                    and not (target / MANIFEST).is_file())):
        raise BundleError(f"{target}: exists and is not a bundle; refusing to replace it")
    second = _check_escalation(manifest, fallback, escalate_to)
    spec = DeploymentSpec(fallback=fallback, reference=reference,
                          source_digest=bundle_digest(source),
                          fallback_digest=None if escalate_to is None
                          else bundle_digest(escalate_to))
    deployed = replace(manifest, deployment=spec, format_version=DEPLOYED_FORMAT_VERSION)
    deployed.check()
    staging = target.with_name(target.name + ".deploying")
    shutil.rmtree(staging, ignore_errors=True)
    write_bundle(staging, deployed, {s.file: source / s.file for s in manifest.stages})
    try:
        if escalate_to is not None and second is not None:
            for name in bundle_files(escalate_to, second):
                copied = staging / FALLBACK_BUNDLE_DIR / name
                copied.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(escalate_to) / name, copied)
        verify_bundle(staging)
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return verify_bundle(target)
