"""Bundles whose manifest names ``runtime.engine: openvino``: OpenVINO's own runtime runs the same
ONNX stages, behind the same runner, with the same answers and exits as onnxruntime."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from device_agents import BundleError, CascadeRunner, RuntimeOptions, verify_bundle
from device_agents.runtime_options import available_engines

pytest.importorskip("openvino")


def _openvino(directory) -> CascadeRunner:
    manifest = verify_bundle(directory)
    manifest = dataclasses.replace(
        manifest, runtime_options=dataclasses.replace(manifest.runtime_options,
                                                      engine="openvino"))
    return CascadeRunner(directory, manifest)


def _samples(n: int = 60) -> np.ndarray:
    return np.random.default_rng(2).uniform(-3.0, 3.0, size=(n, 4)).astype(np.float32)


def test_openvino_is_an_engine_here() -> None:
    assert available_engines() == ("onnxruntime", "openvino")


def test_a_cascade_on_openvino_answers_and_exits_as_on_onnxruntime(make_bundle, cascade) -> None:
    directory, _ = make_bundle(cascade.THREE_STAGE, thresholds=(0.9, 0.8))
    ort_runner, ov_runner = CascadeRunner.load(directory), _openvino(directory)
    samples = _samples()

    assert ov_runner.engine == "openvino" and ov_runner.num_stages == 3
    for x in samples:
        (a, exit_a), (b, exit_b) = ort_runner.run(x), ov_runner.run(x)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
        assert exit_a == exit_b
    ours = ov_runner.evaluate(samples, np.zeros(len(samples), dtype=np.int64))
    theirs = ort_runner.evaluate(samples, np.zeros(len(samples), dtype=np.int64))
    np.testing.assert_array_equal(ours.exits, theirs.exits)
    assert set(ours.exits.tolist()) == {0, 1, 2}


def test_the_logits_run_returns_survive_the_next_run(make_bundle, cascade) -> None:
    directory, _ = make_bundle(cascade.TWO_STAGE)
    runner = _openvino(directory)
    first, _ = runner.run(np.array([0.0, 1.0, 2.0, 3.0], np.float32))
    runner.run(np.array([0.0, 7.0, 7.0, 7.0], np.float32))

    np.testing.assert_allclose(first, [1.0, 2.0, 3.0])


def test_the_engine_is_written_into_the_manifest_only_when_not_the_default() -> None:
    assert RuntimeOptions().to_dict() == {}
    assert RuntimeOptions(engine="openvino").to_dict() == {"engine": "openvino"}
    assert RuntimeOptions.from_dict({"engine": "openvino"}).engine == "openvino"
    with pytest.raises(BundleError, match=r"runtime\.engine 'tvm'"):
        RuntimeOptions(engine="tvm")


def test_an_openvino_bundle_cannot_be_profiled(make_bundle, cascade) -> None:
    directory, _ = make_bundle(cascade.TWO_STAGE)
    manifest = dataclasses.replace(verify_bundle(directory),
                                   runtime_options=RuntimeOptions(engine="openvino"))
    with pytest.raises(BundleError, match="profiles are onnxruntime's"):
        CascadeRunner(directory, manifest, profile_prefix="x")
