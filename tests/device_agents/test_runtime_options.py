"""The manifest's runtime options (graph optimization level, intra-op threads, providers):
written only when set, read back, and applied by CascadeRunner and the agent's measurement,
so that a bundle runs as it was measured (docs/RUNTIME.md)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnxruntime as ort
import pytest

from device_agents import (
    BundleError,
    CascadeRunner,
    EvalSet,
    RuntimeOptions,
    read_manifest,
    verify_bundle,
    write_bundle,
)
from device_agents.measure import load_and_evaluate
from device_agents.profiles import CPU_PROVIDER, Provider

BASIC = RuntimeOptions(graph_optimization="basic", intra_op_threads=2,
                       providers=(Provider(CPU_PROVIDER, {"arena_extend_strategy":
                                                          "kSameAsRequested"}),))


def _with_runtime(tmp_path, cascade, options: RuntimeOptions, name: str = "knobs"):
    source = tmp_path / "source"
    cascade.write_cascade(source, list(cascade.TWO_STAGE))
    manifest = dataclasses.replace(read_manifest(source), runtime_options=options)
    target = tmp_path / name
    digest = write_bundle(target, manifest, {s.file: source / s.file for s in manifest.stages})
    return target, digest


def _options(runner: CascadeRunner) -> ort.SessionOptions:
    return runner._sessions[0].get_session_options()


def test_the_section_holds_only_what_differs_and_round_trips(tmp_path, cascade) -> None:
    directory, _ = _with_runtime(tmp_path, cascade, BASIC)
    data = json.loads((directory / "manifest.json").read_text())
    assert data["runtime"] == {
        "graph_optimization": "basic", "intra_op_threads": 2,
        "providers": [{"name": CPU_PROVIDER,
                       "options": {"arena_extend_strategy": "kSameAsRequested"}}]}
    manifest = verify_bundle(directory)
    assert manifest.runtime_options == BASIC
    plain, _ = _with_runtime(tmp_path, cascade, RuntimeOptions(), name="plain")
    assert "runtime" not in json.loads((plain / "manifest.json").read_text())
    assert read_manifest(plain).runtime_options.is_default


def test_the_runner_applies_the_manifest_and_an_explicit_argument_wins(tmp_path,
                                                                      cascade) -> None:
    directory, _ = _with_runtime(tmp_path, cascade, BASIC)
    runner = CascadeRunner.load(directory)
    options = _options(runner)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.intra_op_num_threads == 2 and runner.threads == 2
    assert runner.providers == BASIC.providers
    assert runner._sessions[0].get_providers() == [CPU_PROVIDER]
    logits, _ = runner.run(np.array([[0.0, 1.0, 2.0, 3.0]], dtype=np.float32))
    np.testing.assert_allclose(logits, [1.0, 2.0, 3.0])
    explicit = CascadeRunner.load(directory, threads=1, providers=[CPU_PROVIDER])
    assert _options(explicit).intra_op_num_threads == 1
    assert explicit.providers == (Provider(CPU_PROVIDER),)
    # the level is the bundle's: not an override
    assert _options(explicit).graph_optimization_level == \
        ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    plain, _ = _with_runtime(tmp_path, cascade, RuntimeOptions(), name="plain")
    default = CascadeRunner.load(plain)
    assert _options(default).graph_optimization_level == \
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert default.threads == 1 and default.providers == (Provider(CPU_PROVIDER),)


def test_a_provider_this_onnxruntime_lacks_is_refused_unless_overridden(tmp_path,
                                                                        cascade) -> None:
    missing = "NoSuchExecutionProvider"
    directory, _ = _with_runtime(tmp_path, cascade, RuntimeOptions(
        providers=(Provider(missing), Provider(CPU_PROVIDER))))
    with pytest.raises(BundleError, match=f"runtime.providers names {missing}.*providers="):
        CascadeRunner.load(directory)
    assert CascadeRunner.load(directory, providers=[CPU_PROVIDER]).num_stages == 2


def test_a_malformed_section_is_one_bundle_error(tmp_path, cascade) -> None:
    directory, _ = _with_runtime(tmp_path, cascade, RuntimeOptions())
    data = json.loads((directory / "manifest.json").read_text())
    for runtime, field in (({"graph_optimization": "fastest"}, "graph_optimization"),
                           ({"intra_op_threads": -1}, "intra_op_threads"),
                           ({"providers": ["CPU"]}, "providers")):
        (directory / "manifest.json").write_text(json.dumps({**data, "runtime": runtime}))
        with pytest.raises(BundleError, match=f"runtime.{field}"):
            read_manifest(directory)


def test_the_agent_measures_with_the_bundles_threads_not_the_protocols(tmp_path, cascade,
                                                                       fast_protocol) -> None:
    directory, digest = _with_runtime(tmp_path, cascade, RuntimeOptions(intra_op_threads=2))
    eval_set = EvalSet(np.zeros((4, 1, 4), dtype=np.float32), np.zeros(4, dtype=np.int64))
    assert fast_protocol.threads == 1
    loaded = load_and_evaluate(directory, eval_set, fast_protocol, expected_digest=digest,
                               providers=(Provider(CPU_PROVIDER),))
    assert loaded.runner.threads == 2 and _options(loaded.runner).intra_op_num_threads == 2
    plain, plain_digest = _with_runtime(tmp_path, cascade, RuntimeOptions(), name="plain")
    loaded = load_and_evaluate(plain, eval_set, fast_protocol, expected_digest=plain_digest,
                               providers=(Provider(CPU_PROVIDER),))
    assert loaded.runner.threads == 1


def test_the_measurements_fingerprint_says_what_the_bundle_ran_with(tmp_path, cascade,
                                                                    fast_protocol) -> None:
    from device_agents.measure import measure_bundle

    directory, digest = _with_runtime(tmp_path, cascade, RuntimeOptions(intra_op_threads=2))
    eval_set = EvalSet(np.zeros((4, 1, 4), dtype=np.float32), np.zeros(4, dtype=np.int64))
    measurement = measure_bundle(directory, eval_set, fast_protocol, expected_digest=digest,
                                 energy_counters=[])
    assert measurement.fingerprint["threads"] == 2
    assert measurement.fingerprint["providers"] == [CPU_PROVIDER]


def test_an_agent_refuses_to_measure_on_a_provider_it_lacks(tmp_path, cascade,
                                                            fast_protocol) -> None:
    directory, digest = _with_runtime(tmp_path, cascade, RuntimeOptions(
        providers=(Provider("NoSuchExecutionProvider"), Provider(CPU_PROVIDER))))
    eval_set = EvalSet(np.zeros((4, 1, 4), dtype=np.float32), np.zeros(4, dtype=np.int64))
    with pytest.raises(BundleError, match="NoSuchExecutionProvider"):
        load_and_evaluate(directory, eval_set, fast_protocol, expected_digest=digest,
                          providers=(Provider(CPU_PROVIDER),))
