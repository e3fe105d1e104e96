"""The bundle runtime: preprocessing, early exits, temperatures and confidence measures."""

from __future__ import annotations

import re

import numpy as np
import pytest

from device_agents import BundleError, BundleIntegrityError, CascadeRunner, Preprocessing
from device_agents.cascade import confidence


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


# --- preprocessing ---------------------------------------------------------------------------


def test_preprocessing_is_applied_per_channel(make_bundle, cascade):
    directory, _ = make_bundle(
        [None], input_shape=(1, 3), num_classes=3,
        preprocessing=Preprocessing(scale=0.5, mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0)))
    runner = CascadeRunner.load(directory)

    logits, exit_index = runner.run(np.array([10.0, 20.0, 30.0], dtype=np.float32))

    np.testing.assert_allclose(logits, [2.0, 2.0, 1.5], rtol=1e-6)
    assert exit_index == 0


def test_scalar_preprocessing_broadcasts_over_channels(make_bundle):
    directory, _ = make_bundle([None], input_shape=(1, 4),
                               preprocessing=Preprocessing(scale=2.0, mean=(1.0,), std=(4.0,)))
    runner = CascadeRunner.load(directory)
    raw = np.array([0.0, 1.0, 2.0, -3.0], dtype=np.float32)

    np.testing.assert_allclose(runner.run(raw)[0], (raw * 2.0 - 1.0) / 4.0, rtol=1e-6)


def test_preprocessing_of_image_inputs_uses_axis_1_as_channels(make_bundle):
    directory, _ = make_bundle(
        [None], input_shape=(1, 2, 2, 3),
        preprocessing=Preprocessing(scale=1 / 255, mean=(0.5, 0.25), std=(0.5, 0.25)))
    runner = CascadeRunner.load(directory)
    raw = np.arange(12, dtype=np.uint8).reshape(2, 2, 3) * 20  # sample shape, no batch axis

    expected = (raw.astype(np.float32) / 255 - np.array([0.5, 0.25]).reshape(2, 1, 1)) / (
        np.array([0.5, 0.25]).reshape(2, 1, 1))
    np.testing.assert_allclose(runner.run(raw)[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runner.preprocess(raw)[0], expected, rtol=1e-5, atol=1e-6)


def test_preprocessing_with_wrong_channel_count_is_a_bundle_error(make_bundle):
    directory, _ = make_bundle([None], input_shape=(1, 4),
                               preprocessing=Preprocessing(mean=(0.0, 0.0), std=(1.0, 1.0)))
    with pytest.raises(BundleError, match="mean/std"):
        CascadeRunner.load(directory)


# --- exits -----------------------------------------------------------------------------------


def _inputs(n: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, 4)).astype(np.float32)


def test_unreachable_threshold_runs_every_sample_to_the_last_stage(make_bundle, cascade):
    # |x0| <= 1, so stage 0's max softmax is at most e / (e + 2) < 1.0 (and 0.9).
    no_exits, _ = make_bundle(cascade.TWO_STAGE)
    unreachable, _ = make_bundle(cascade.TWO_STAGE, thresholds=(1.0,))
    high, _ = make_bundle(cascade.TWO_STAGE, thresholds=(0.9,))
    runners = [CascadeRunner.load(d) for d in (no_exits, unreachable, high)]

    for x in _inputs():
        predictions = [r.predict(x) for r in runners]
        expected = int(np.argmax(x[1:]))  # the last stage's logits are (x1, x2, x3)
        assert [p.exit_index for p in predictions] == [1, 1, 1]
        assert [p.label for p in predictions] == [expected] * 3
        for p in predictions:
            np.testing.assert_allclose(p.probabilities, _softmax(x[1:]), rtol=1e-5)


def test_three_stage_cascade_without_thresholds_runs_all_stages(make_bundle, cascade):
    directory, _ = make_bundle(cascade.THREE_STAGE)
    runner = CascadeRunner.load(directory)
    assert runner.num_stages == 3
    # Stage 0 says 0 and stage 1 says 1, both confidently; the last stage says 2.
    x = np.array([100.0, 100.0, 0.0, 200.0], dtype=np.float32)
    prediction = runner.predict(x)
    assert (prediction.label, prediction.exit_index) == (2, 2)


def test_confident_first_exit_stops_at_stage_0(make_bundle, cascade):
    directory, _ = make_bundle(cascade.TWO_STAGE, thresholds=(0.9,))
    runner = CascadeRunner.load(directory)

    confident = runner.predict(np.array([50.0, 0.0, 1.0, 0.0], dtype=np.float32))
    unsure = runner.predict(np.array([0.0, 0.0, 1.0, 0.0], dtype=np.float32))

    assert (confident.label, confident.exit_index) == (0, 0)  # the last stage would say 1
    assert confident.probabilities.max() > 0.99
    assert (unsure.label, unsure.exit_index) == (1, 1)


def test_middle_exit_of_three_stages(make_bundle, cascade):
    directory, _ = make_bundle(cascade.THREE_STAGE, thresholds=(0.9, 0.9))
    runner = CascadeRunner.load(directory)

    cases = {(50.0, 0.0, 0.0, 1.0): (0, 0), (0.0, 50.0, 0.0, 1.0): (1, 1),
             (0.0, 0.0, 0.0, 1.0): (2, 2), (0.0, 0.0, 1.0, 0.0): (1, 2)}
    for x, (label, exit_index) in cases.items():
        prediction = runner.predict(np.array(x, dtype=np.float32))
        assert (prediction.label, prediction.exit_index) == (label, exit_index), x


def test_temperature_decides_whether_a_sample_exits(make_bundle, cascade):
    # Stage 0's logits for x0 = 3 are (3, 0, 0): max softmax 0.909 at T=1, 0.403 at T=10.
    x = np.array([3.0, 0.0, 0.0, 1.0], dtype=np.float32)
    sharp, _ = make_bundle(cascade.TWO_STAGE, thresholds=(0.8,), temperatures=(1.0, 1.0))
    soft, _ = make_bundle(cascade.TWO_STAGE, thresholds=(0.8,), temperatures=(10.0, 1.0))
    assert CascadeRunner.load(sharp).predict(x).exit_index == 0
    assert CascadeRunner.load(soft).predict(x).exit_index == 1

    # And the other way: x0 = 1 gives 0.576 at T=1, 0.965 at T=0.25.
    x = np.array([1.0, 0.0, 0.0, 1.0], dtype=np.float32)
    plain, _ = make_bundle(cascade.TWO_STAGE, thresholds=(0.8,), temperatures=(1.0, 1.0))
    sharpened, _ = make_bundle(cascade.TWO_STAGE, thresholds=(0.8,), temperatures=(0.25, 1.0))
    assert CascadeRunner.load(plain).predict(x).exit_index == 1
    exited = CascadeRunner.load(sharpened).predict(x)
    assert (exited.label, exited.exit_index) == (0, 0)
    np.testing.assert_allclose(exited.probabilities, _softmax(np.array([4.0, 0.0, 0.0])),
                               rtol=1e-5)


def test_last_stage_temperature_scales_probabilities_not_labels(make_bundle, cascade):
    x = np.array([0.0, 0.5, 2.0, -1.0], dtype=np.float32)
    directory, _ = make_bundle(cascade.TWO_STAGE, temperatures=(1.0, 2.0))
    prediction = CascadeRunner.load(directory).predict(x)
    assert (prediction.label, prediction.exit_index) == (1, 1)
    np.testing.assert_allclose(prediction.probabilities, _softmax(x[1:] / 2.0), rtol=1e-5)
    assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("measure", ["max_softmax", "margin", "entropy"])
def test_each_confidence_measure_drives_exits(make_bundle, cascade, measure):
    directory, _ = make_bundle(cascade.TWO_STAGE, thresholds=(0.9,), confidence=measure)
    runner = CascadeRunner.load(directory)
    assert runner.predict(np.array([50.0, 0.0, 1.0, 0.0], np.float32)).exit_index == 0
    assert runner.predict(np.array([0.5, 0.0, 1.0, 0.0], np.float32)).exit_index == 1


# --- confidence measures ---------------------------------------------------------------------


@pytest.mark.parametrize("measure", ["max_softmax", "margin", "entropy"])
def test_confidence_lies_in_unit_interval_and_orders_by_peakedness(measure):
    rng = np.random.default_rng(1)
    for _ in range(50):
        p = _softmax(rng.normal(scale=3.0, size=5))
        assert 0.0 <= confidence(p, measure) <= 1.0 + 1e-9

    uniform = np.full(4, 0.25)
    flat = np.array([0.4, 0.3, 0.2, 0.1])
    peaked = np.array([0.85, 0.05, 0.05, 0.05])
    one_hot = np.array([1.0, 0.0, 0.0, 0.0])
    values = [confidence(p, measure) for p in (uniform, flat, peaked, one_hot)]
    assert values == sorted(values)
    assert len(set(values)) == 4
    assert values[-1] == pytest.approx(1.0, abs=1e-6)


def test_confidence_values_of_known_vectors():
    uniform = np.full(4, 0.25)
    assert confidence(uniform, "max_softmax") == pytest.approx(0.25)
    assert confidence(uniform, "margin") == pytest.approx(0.0)
    assert confidence(uniform, "entropy") == pytest.approx(0.0, abs=1e-9)
    p = np.array([0.1, 0.6, 0.3])
    assert confidence(p, "max_softmax") == pytest.approx(0.6)
    assert confidence(p, "margin") == pytest.approx(0.3)
    entropy = -(p * np.log(p)).sum()
    assert confidence(p, "entropy") == pytest.approx(1.0 - entropy / np.log(3))


def test_unknown_confidence_measure_raises():
    with pytest.raises(BundleError, match="top5"):
        confidence(np.array([0.5, 0.5]), "top5")


# --- malformed stages ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "position"),
    [
        (["logits"], 0),                  # an exit stage must also return features
        (["logits", "features"], 0),      # in that order
        (["feats", "logits"], 0),
        (["features", "logits"], 1),      # the last stage returns logits only
        (["scores"], 1),
    ],
)
def test_stage_with_wrong_output_names_is_a_bundle_error(make_bundle, cascade, names,
                                                         position):
    blobs = [cascade.stage_onnx(cascade.W_EXIT0, last=False),
             cascade.stage_onnx(cascade.W_LAST, last=True)]
    blobs[position] = cascade.stage_onnx(cascade.TWO_STAGE[position], last=position == 1,
                                         output_names=names)
    directory, _ = make_bundle(cascade.TWO_STAGE, stage_bytes=blobs)
    with pytest.raises(BundleError, match=re.escape(f"stage{position}.onnx")):
        CascadeRunner.load(directory)


def test_load_verifies_the_bundle(make_bundle, cascade):
    directory, digest = make_bundle(cascade.TWO_STAGE)
    with pytest.raises(BundleIntegrityError):
        CascadeRunner.load(directory, expected_digest="0" * 64)
    (directory / "stage1.onnx").write_bytes(
        cascade.stage_onnx(cascade.W_EXIT0, last=True))
    with pytest.raises(BundleIntegrityError):
        CascadeRunner.load(directory, expected_digest=digest)
