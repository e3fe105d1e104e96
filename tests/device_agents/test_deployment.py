"""Deployed copies: the deployment section, re-hashing, the escalation bundle inside."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from device_agents import BundleError, BundleIntegrityError, BundlePayload, CascadeRunner
from device_agents.bundle import bundle_digest, read_manifest, verify_bundle
from device_agents.deployment import (
    FallbackPolicy,
    MonitorReference,
    confidence_edges,
    confidence_histogram,
    deployed_copy,
    reference_from_evaluation,
)

REFERENCE = MonitorReference(exit_rates=(0.5, 0.5), confidence_edges=(0.0, 0.6, 0.8, 1.0),
                             confidence_hist=(0.2, 0.3, 0.5), latency_p50_ms=0.1,
                             latency_p95_ms=0.2, accuracy=0.9)


def _deploy_escalating(make_bundle, cascade, tmp_path: Path) -> tuple[Path, Path, Path]:
    source, _ = make_bundle(cascade.TWO_STAGE, thresholds=(0.8,), name="source")
    second, _ = make_bundle(cascade.TWO_STAGE, name="fp32")
    target = tmp_path / "deploy" / "v1"
    deployed_copy(source, target, fallback=FallbackPolicy(below=0.6, action="escalate"),
                  reference=REFERENCE, escalate_to=second)
    return source, second, target


def test_a_deployed_copy_verifies_and_records_its_section(make_bundle, cascade, tmp_path):
    source, _ = make_bundle(cascade.TWO_STAGE, thresholds=(0.8,), name="source")
    target = tmp_path / "deploy"

    manifest = deployed_copy(source, target,
                             fallback=FallbackPolicy(below=0.6, action="default_label",
                                                     default_label=2),
                             reference=REFERENCE)

    assert verify_bundle(target) == manifest
    assert manifest.format_version == 2
    assert manifest.deployment is not None
    assert manifest.deployment.source_digest == bundle_digest(source)
    assert manifest.deployment.fallback == FallbackPolicy(0.6, "default_label", 2)
    assert manifest.deployment.reference == REFERENCE
    assert manifest.deployment.fallback_digest is None
    assert manifest.stages == read_manifest(source).stages
    assert bundle_digest(target) != bundle_digest(source)
    assert not (target / "fallback_bundle").exists()


def test_an_escalating_copy_holds_the_second_bundle_and_verifies(make_bundle, cascade, tmp_path):
    _, second, target = _deploy_escalating(make_bundle, cascade, tmp_path)

    manifest = verify_bundle(target)

    assert manifest.deployment is not None
    assert manifest.deployment.fallback_digest == bundle_digest(second)
    assert bundle_digest(target / "fallback_bundle") == bundle_digest(second)
    CascadeRunner.load(target)  # opens


@pytest.mark.parametrize("victim", ["stage0.onnx", "stage1.onnx",
                                    "fallback_bundle/manifest.json",
                                    "fallback_bundle/stage0.onnx",
                                    "fallback_bundle/stage1.onnx"])
def test_tampering_with_any_file_fails_verification(make_bundle, cascade, tmp_path, victim):
    _, _, target = _deploy_escalating(make_bundle, cascade, tmp_path)
    _tamper(target / victim)

    with pytest.raises(BundleIntegrityError):
        verify_bundle(target)


def test_tampering_with_the_manifest_fails_against_the_recorded_digest(make_bundle, cascade,
                                                                       tmp_path):
    _, _, target = _deploy_escalating(make_bundle, cascade, tmp_path)
    recorded = bundle_digest(target)  # what a registry keeps with the version
    _tamper(target / "manifest.json")

    with pytest.raises(BundleIntegrityError, match=r"manifest\.json"):
        verify_bundle(target, recorded)


def _tamper(path: Path) -> None:
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        data["provenance"] = {"tampered": True}
        path.write_text(json.dumps(data))
    else:
        path.write_bytes(path.read_bytes() + b"\0")


def test_a_missing_escalation_bundle_is_a_bundle_error(make_bundle, cascade, tmp_path):
    import shutil

    _, _, target = _deploy_escalating(make_bundle, cascade, tmp_path)
    shutil.rmtree(target / "fallback_bundle")

    with pytest.raises(BundleError, match="escalation bundle is missing"):
        verify_bundle(target)


def test_a_manifest_without_deployment_still_loads(make_bundle, cascade):
    directory, digest = make_bundle(cascade.TWO_STAGE)
    data = json.loads((directory / "manifest.json").read_text())

    assert "deployment" not in data and data["format_version"] == 1
    manifest = verify_bundle(directory, digest)
    assert manifest.deployment is None
    CascadeRunner.load(directory)


def test_format_version_2_without_deployment_reads_and_3_is_refused(make_bundle, cascade):
    directory, _ = make_bundle(cascade.TWO_STAGE)
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "format_version": 2}))
    assert read_manifest(directory).deployment is None
    path.write_text(json.dumps({**data, "format_version": 3}))
    with pytest.raises(BundleError, match="format_version 3"):
        read_manifest(directory)


def test_a_version_1_manifest_with_a_deployment_section_is_refused(make_bundle, cascade,
                                                                  tmp_path):
    source, _ = make_bundle(cascade.TWO_STAGE, name="source")
    target = tmp_path / "deploy"
    deployed_copy(source, target, fallback=FallbackPolicy(0.5, "abstain"), reference=None)
    data = json.loads((target / "manifest.json").read_text())
    (target / "manifest.json").write_text(json.dumps({**data, "format_version": 1}))

    with pytest.raises(BundleError, match="needs format_version 2"):
        read_manifest(target)


@pytest.mark.parametrize(("policy", "escalate", "message"), [
    (FallbackPolicy(0.6, "escalate"), False, "needs the bundle to escalate to"),
    (FallbackPolicy(0.6, "abstain"), True, "only used by fallback action escalate"),
    (FallbackPolicy(0.6, "default_label"), False, "default_label must be a class"),
    (FallbackPolicy(0.6, "default_label", 3), False, "default_label must be a class"),
    (FallbackPolicy(0.0, "abstain"), False, "below 0.0 must lie in"),
    (FallbackPolicy(0.6, "guess"), False, "action 'guess' is not one of"),  # type: ignore[arg-type]
])
def test_bad_deploy_options_are_one_line_bundle_errors(make_bundle, cascade, tmp_path, policy,
                                                       escalate, message):
    source, _ = make_bundle(cascade.TWO_STAGE, name="source")
    second, _ = make_bundle(cascade.TWO_STAGE, name="second")

    with pytest.raises(BundleError, match=message):
        deployed_copy(source, tmp_path / "deploy", fallback=policy, reference=None,
                      escalate_to=second if escalate else None)
    assert not (tmp_path / "deploy").exists()


def test_an_escalation_bundle_of_another_input_is_refused(make_bundle, cascade, tmp_path):
    source, _ = make_bundle(cascade.TWO_STAGE, name="source")
    other, _ = make_bundle([None], input_shape=(1, 3), name="other")

    with pytest.raises(BundleError, match="takes input"):
        deployed_copy(source, tmp_path / "deploy", fallback=FallbackPolicy(0.6, "escalate"),
                      reference=None, escalate_to=other)


def test_a_directory_that_is_not_a_bundle_is_not_replaced(make_bundle, cascade, tmp_path):
    source, _ = make_bundle(cascade.TWO_STAGE, name="source")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")

    with pytest.raises(BundleError, match="not a bundle"):
        deployed_copy(source, precious, fallback=None, reference=None)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_a_reference_that_contradicts_the_stages_is_refused(make_bundle, cascade, tmp_path):
    source, _ = make_bundle(cascade.TWO_STAGE, name="source")
    three_exits = MonitorReference((0.2, 0.3, 0.5), (0.0, 1.0), (1.0,), 0.1, 0.2)

    with pytest.raises(BundleError, match="exit_rates has 3 values for 2 stages"):
        deployed_copy(source, tmp_path / "deploy", fallback=None, reference=three_exits)


def test_the_payload_of_an_escalating_bundle_carries_both_and_materializes(
        make_bundle, cascade, tmp_path):
    _, _, target = _deploy_escalating(make_bundle, cascade, tmp_path)

    payload = BundlePayload.from_directory(target)
    assert "fallback_bundle/stage0.onnx" in payload.files
    directory = payload.materialize(tmp_path / "agent_cache")

    assert verify_bundle(directory).deployment is not None


def test_the_reference_is_the_cascades_decisions_on_the_labelled_set(make_bundle, cascade):
    directory, _ = make_bundle(cascade.TWO_STAGE, thresholds=(0.8,))
    runner = CascadeRunner.load(directory)
    rng = np.random.default_rng(0)
    inputs = rng.uniform(-3.0, 3.0, size=(200, 4)).astype(np.float32)
    targets = rng.integers(0, 3, size=200)
    evaluation = runner.evaluate(inputs, targets)

    reference = reference_from_evaluation(evaluation, 0.1, 0.3, bins=5)

    assert reference.exit_rates == evaluation.exit_rates
    assert reference.accuracy == evaluation.accuracy
    assert (reference.latency_p50_ms, reference.latency_p95_ms) == (0.1, 0.3)
    assert reference.confidence_edges[0] == 0.0 and reference.confidence_edges[-1] == 1.0
    assert len(reference.confidence_hist) == len(reference.confidence_edges) - 1 == 5
    assert sum(reference.confidence_hist) == pytest.approx(1.0)
    # equal-mass bins: each about a fifth of the samples
    assert max(reference.confidence_hist) - min(reference.confidence_hist) < 0.05


def test_tied_confidences_merge_bins_and_the_histogram_is_closed_at_one():
    edges = confidence_edges([1.0] * 8 + [0.5, 0.7], bins=10)

    assert edges[0] == 0.0 and edges[-1] == 1.0
    assert list(edges) == sorted(set(edges))
    hist = confidence_histogram([1.0, 1.0, 0.0], edges)
    assert hist[-1] == pytest.approx(2 / 3) and hist[0] == pytest.approx(1 / 3)
