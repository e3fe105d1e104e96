"""``deploy`` on a stored study (real MLflow on sqlite): the chosen bundle becomes a version
with its tags, a deployed copy with the fallback and the monitor's reference, and the alias
points at it."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_agents import read_manifest, verify_bundle
from device_agents.deployment import FallbackPolicy
from search.registry.deploy import DeployRequest, deploy
from search.registry.model_ref import ModelRef
from search.registry.model_registry import ModelRegistry
from search.registry.study_source import StudyQuery


def test_deploy_registers_the_chosen_bundle_with_its_reference(lin_study: Path,
                                                               tmp_path: Path) -> None:
    query = StudyQuery(where="latency_p95_ms < 0.1", maximize="accuracy")
    done = deploy(DeployRequest(study="lin", workdir=lin_study, name="lin", query=query))
    # trials 0 and 1 are as accurate: the tie goes to the lower p95 (as for `best`)
    assert done.record.number == 1 and done.moved and done.previous is None
    tags = done.version.tags
    assert tags["study"] == "lin" and tags["trial"] == "1" and tags["device_class"] == "local"
    assert tags["query"] == "where latency_p95_ms < 0.1; maximize accuracy"
    assert tags["query.maximize"] == "accuracy" and '"onnxruntime": "test"' in tags["fingerprint"]
    assert done.version.metrics()["latency_p95_ms"] == 0.025
    assert {"accuracy", "size_kb", "latency_p50_ms", "exit_rate_0"} <= set(done.version.metrics())
    registry = ModelRegistry.open(workdir=lin_study)
    assert registry.aliases("lin") == {"production": "1"}
    pulled = tmp_path / "pulled"
    registry.pull(ModelRef.parse("lin@production"), pulled)
    manifest = verify_bundle(pulled, tags["bundle_sha256"])
    spec = manifest.deployment
    assert spec is not None and spec.fallback is None
    assert spec.source_digest == done.record.bundle_digest
    reference = spec.reference
    assert reference is not None
    # measured on the 40-sample selection split, which the seed-0 bundle labels right
    assert reference.accuracy == 1.0 and reference.exit_rates == (1.0,)
    assert sum(reference.confidence_hist) == pytest.approx(1.0)
    assert (reference.latency_p50_ms, reference.latency_p95_ms) == (0.015, 0.025)


def test_an_escalating_deployment_carries_the_fp32_bundle(lin_study: Path,
                                                          tmp_path: Path) -> None:
    fallback = FallbackPolicy(below=0.9, action="escalate")
    first = deploy(DeployRequest(study="lin", workdir=lin_study, name="lin",
                                 query=StudyQuery(maximize="accuracy")))
    second = deploy(DeployRequest(study="lin", workdir=lin_study, name="lin",
                                  query=StudyQuery(minimize="latency_p95_ms"),
                                  fallback=fallback, alias="production"))
    assert (first.version.version, second.version.version) == ("1", "2")
    assert second.record.number == 2 and second.previous == "1"
    assert second.version.tags["fallback"] == '{"action": "escalate", "below": 0.9, ' \
                                              '"default_label": null}'
    pulled = tmp_path / "pulled"
    ModelRegistry.open(workdir=lin_study).pull(ModelRef.parse("lin@production"), pulled)
    manifest = verify_bundle(pulled)
    assert manifest.deployment is not None and manifest.deployment.fallback == fallback
    baseline = lin_study / "lin" / "bundles" / "trial_0000"
    assert read_manifest(pulled / "fallback_bundle") == read_manifest(baseline)
    assert (pulled / "fallback_bundle" / "model.onnx").read_bytes() == \
        (baseline / "model.onnx").read_bytes()
