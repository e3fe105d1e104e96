"""DataSplits: shape checks, the preprocessing the device repeats, and the data digest."""

from __future__ import annotations

import numpy as np
import pytest

from device_agents.bundle import Preprocessing
from spaces import DataSplits, ModelError


def _splits(**overrides) -> DataSplits:
    rng = np.random.default_rng(0)
    fields = {
        "train_x": rng.random((6, 1, 4, 4), dtype=np.float32), "train_y": np.arange(6) % 3,
        "val_x": rng.random((4, 1, 4, 4), dtype=np.float32), "val_y": np.arange(4) % 3,
        "test_x": rng.random((5, 1, 4, 4), dtype=np.float32), "test_y": np.arange(5) % 3,
        "num_classes": 3,
    }
    fields.update(overrides)
    return DataSplits(**fields)


def test_valid_splits() -> None:
    data = _splits()
    assert data.sample_shape == (1, 4, 4)


@pytest.mark.parametrize("overrides", [
    {"train_y": np.zeros(5, dtype=np.int64)},                 # fewer labels than inputs
    {"val_x": np.zeros((3, 1, 4, 4), dtype=np.float32)},      # fewer inputs than labels
    {"test_y": np.zeros((5, 1), dtype=np.int64)},             # labels not 1-D
    {"train_x": np.zeros(6, dtype=np.float32)},               # inputs without a sample axis
    {"val_x": np.zeros((0, 1, 4, 4), dtype=np.float32),
     "val_y": np.zeros(0, dtype=np.int64)},                   # empty split
])
def test_rejects_mismatched_shapes(overrides: dict) -> None:
    with pytest.raises(ModelError, match="data: split"):
        _splits(**overrides)


def test_preprocess_is_affine_per_channel() -> None:
    raw = np.arange(2 * 3 * 2 * 2, dtype=np.float64).reshape(2, 3, 2, 2)
    pre = Preprocessing(scale=0.5, mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0))
    data = _splits(train_x=np.zeros((2, 3, 2, 2)), train_y=np.zeros(2, dtype=np.int64),
                   preprocessing=pre)
    out = data.preprocess(raw)
    assert out.dtype == np.float32 and out.shape == raw.shape
    for c in range(3):
        expected = (raw[:, c] * 0.5 - pre.mean[c]) / pre.std[c]
        np.testing.assert_allclose(out[:, c], expected, rtol=1e-6)


def test_preprocess_single_value_on_flat_features() -> None:
    raw = np.array([[0.0, 16.0, 8.0], [4.0, 2.0, 1.0]], dtype=np.float32)
    data = _splits(preprocessing=Preprocessing(scale=1 / 16, mean=(0.25,), std=(0.5,)))
    np.testing.assert_allclose(data.preprocess(raw), (raw / 16 - 0.25) / 0.5, rtol=1e-6)


def test_default_preprocessing_is_identity() -> None:
    data = _splits()
    np.testing.assert_array_equal(data.preprocess(data.train_x), data.train_x)


def test_test_set_holds_the_test_split() -> None:
    data = _splits()
    eval_set = data.test_set()
    np.testing.assert_array_equal(eval_set.inputs, data.test_x)
    np.testing.assert_array_equal(eval_set.labels, data.test_y)
    assert eval_set.labels.dtype == np.int64


def test_digest_is_stable_and_sees_every_change() -> None:
    data = _splits()
    assert data.digest() == _splits().digest()
    changed_label = data.train_y.copy()
    changed_label[0] = 2
    assert _splits(train_y=changed_label).digest() != data.digest()
    assert _splits(preprocessing=Preprocessing(scale=2.0)).digest() != data.digest()


def test_example_digits_module(digits: DataSplits) -> None:
    assert digits.num_classes == 10
    assert digits.sample_shape == (1, 8, 8)
    assert len(digits.train_x) + len(digits.val_x) + len(digits.test_x) == 1797
    x = digits.preprocess(digits.train_x)
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1.0) < 1e-3


def _halved(**extra) -> DataSplits:
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.arange(20) % 3
    return DataSplits(train_x=x, train_y=y, val_x=x[:10] + 100, val_y=y[:10], test_x=x[10:],
                      test_y=y[10:], num_classes=3, **extra)


def test_calibration_and_selection_are_disjoint_halves_of_validation() -> None:
    data = _halved()
    calibration = {tuple(r) for r in data.calibration_x}
    selection = {tuple(r) for r in data.selection_set().inputs}
    assert len(calibration) == len(selection) == 5
    assert not calibration & selection
    assert calibration | selection == {tuple(r) for r in data.val_x}
    assert not selection & {tuple(r) for r in data.test_x}  # the test split stays held out


def test_a_selection_split_from_the_loader_leaves_validation_to_calibration() -> None:
    select_x = np.full((4, 2), 7.0, np.float32)
    data = _halved(select_x=select_x, select_y=np.array([0, 1, 2, 0]))
    assert np.array_equal(data.selection_set().inputs, select_x)
    assert np.array_equal(data.calibration_x, data.val_x)
    assert data.digest() != _halved().digest()
    with pytest.raises(ModelError, match="select_x and select_y"):
        _halved(select_x=select_x)
