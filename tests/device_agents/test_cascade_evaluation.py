"""CascadeRunner.evaluate: the cascade's answers and every exit's own, in one pass; exits off at
threshold 1.0; the most-confident fallback; per-exit ECE in the measurement."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from device_agents import BundleError, CascadeRunner, EvalSet, read_manifest, write_bundle
from device_agents.calibration import expected_calibration_error
from device_agents.measure import measure_bundle


def _softmax_rows(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _with_fallback(directory: Path, fallback: str) -> Path:
    """A copy of a bundle whose exit policy has another fallback."""
    manifest = read_manifest(directory)
    target = directory.with_name(directory.name + "-" + fallback)
    write_bundle(target, replace(manifest, exits=replace(manifest.exits, fallback=fallback)),
                 {s.file: directory / s.file for s in manifest.stages})
    return target


def _samples(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=3.0, size=(n, 4)).astype(np.float32)
    return x, rng.integers(0, 3, n)


def test_evaluate_decides_exactly_as_predict(make_bundle, cascade):
    directory, _ = make_bundle(cascade.THREE_STAGE, thresholds=(0.9, 0.8),
                               temperatures=(1.0, 0.5, 1.0))
    runner = CascadeRunner.load(directory)
    x, y = _samples()
    evaluation = runner.evaluate(x, y)

    predictions = [runner.predict(sample) for sample in x]
    assert evaluation.labels.tolist() == [p.label for p in predictions]
    assert evaluation.exits.tolist() == [p.exit_index for p in predictions]
    np.testing.assert_allclose(evaluation.confidences,
                               [p.probabilities.max() for p in predictions], rtol=1e-6)
    assert len(set(evaluation.exits.tolist())) == 3  # every exit answers some samples
    assert evaluation.accuracy == pytest.approx(np.mean(evaluation.labels == y))
    assert evaluation.exit_rates == pytest.approx(
        tuple(np.mean(evaluation.exits == k) for k in range(3)))
    assert evaluation.ece == pytest.approx(
        expected_calibration_error(evaluation.confidences, evaluation.labels == y))


def test_every_exit_is_judged_on_every_sample(make_bundle, cascade):
    temperatures = (1.5, 0.5, 1.0)
    directory, _ = make_bundle(cascade.THREE_STAGE, thresholds=(0.9, 0.8),
                               temperatures=temperatures)
    x, y = _samples()
    evaluation = CascadeRunner.load(directory).evaluate(x, y)

    for k, weights in enumerate(cascade.THREE_STAGE):
        probabilities = _softmax_rows(x @ weights / temperatures[k])
        labels = (x @ weights).argmax(axis=1)
        assert evaluation.exit_labels[k].tolist() == labels.tolist()
        assert evaluation.exit_accuracies[k] == pytest.approx(np.mean(labels == y))
        assert evaluation.exit_eces[k] == pytest.approx(
            expected_calibration_error(probabilities.max(axis=1), labels == y), abs=1e-6)


def test_a_threshold_of_one_turns_the_exit_off(make_bundle, cascade):
    # x0 = 100: stage 0's softmax of (100, 0, 0) is exactly 1.0 in float32
    x = np.array([100.0, 0.0, 3.0, 0.0], dtype=np.float32)
    on, _ = make_bundle(cascade.TWO_STAGE, thresholds=(0.999999,))
    off, _ = make_bundle(cascade.TWO_STAGE, thresholds=(1.0,))
    assert CascadeRunner.load(on).predict(x).exit_index == 0
    assert CascadeRunner.load(off).predict(x).exit_index == 1
    three, _ = make_bundle(cascade.THREE_STAGE, thresholds=(1.0, 0.9))
    assert CascadeRunner.load(three).predict(
        np.array([100.0, 50.0, 0.0, 0.0], np.float32)).exit_index == 1


def test_the_most_confident_fallback(make_bundle, cascade):
    # no exit reaches 0.999: stage 0 says class 0 at 0.86, stage 1 class 1 at 0.71,
    # the last stage class 2 at 0.55
    x = np.array([2.5, 1.6, 0.0, 2.0], dtype=np.float32)
    last, _ = make_bundle(cascade.THREE_STAGE, thresholds=(0.999, 0.999))
    best = _with_fallback(last, "most_confident")
    assert read_manifest(best).exits.fallback == "most_confident"
    plain = CascadeRunner.load(last).predict(x)
    assert (plain.exit_index, plain.label) == (2, 2)
    chosen = CascadeRunner.load(best).predict(x)
    assert (chosen.exit_index, chosen.label) == (0, 0)
    assert chosen.probabilities.max() == pytest.approx(np.exp(2.5) / (np.exp(2.5) + 2))
    # a confident exit still answers first; a disabled exit is never the fallback
    assert CascadeRunner.load(best).predict(
        np.array([0.0, 50.0, 0.0, 0.0], np.float32)).exit_index == 1
    off, _ = make_bundle(cascade.THREE_STAGE, thresholds=(1.0, 0.999))
    assert CascadeRunner.load(_with_fallback(off, "most_confident")).predict(x).exit_index == 1
    evaluation = CascadeRunner.load(best).evaluate(x[None], np.array([0]))
    assert (evaluation.exits.tolist(), evaluation.labels.tolist()) == ([0], [0])


def test_fallback_is_optional_in_the_manifest(make_bundle, cascade):
    directory, _ = make_bundle(cascade.TWO_STAGE, thresholds=(0.9,))
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    assert data["exits"]["fallback"] == "last"
    del data["exits"]["fallback"]  # a manifest written before the field existed
    path.write_text(json.dumps(data))
    assert read_manifest(directory).exits.fallback == "last"
    data["exits"]["fallback"] = "random"
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="fallback"):
        read_manifest(directory)


def test_measurement_logs_ece_per_exit_for_cascades_only(make_bundle, cascade, fast_protocol):
    x, y = _samples(30)
    eval_set = EvalSet(inputs=x, labels=y)
    directory, _ = make_bundle(cascade.THREE_STAGE, thresholds=(0.9, 0.8))
    measured = measure_bundle(directory, eval_set, fast_protocol)
    evaluation = CascadeRunner.load(directory).evaluate(x, y)
    assert measured.exit_eces == pytest.approx(evaluation.exit_eces)
    assert measured.ece == pytest.approx(evaluation.ece)
    metrics = measured.metrics()
    assert {"ece", "ece_exit_0", "ece_exit_1", "ece_exit_2"} <= set(metrics)
    assert metrics["ece_exit_1"] == pytest.approx(evaluation.exit_eces[1])

    single, _ = make_bundle([cascade.W_LAST])
    assert measure_bundle(single, eval_set, fast_protocol).exit_eces == ()
    assert not any(k.startswith("ece_exit_") for k in
                   measure_bundle(single, eval_set, fast_protocol).metrics())
