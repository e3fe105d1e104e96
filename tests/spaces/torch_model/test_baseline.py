"""The fp32 baseline: checked, trained once, cached, deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from spaces import (
    DataSplits,
    ModelError,
    StagedModel,
    TrainSettings,
    build_untrained,
    train_or_load_baseline,
)

SETTINGS = TrainSettings(epochs=1, seed=3)


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_build_untrained_accepts_the_tiny_model(tiny_factory, small_digits: DataSplits) -> None:
    model = build_untrained(tiny_factory, small_digits)
    assert isinstance(model, StagedModel) and model.num_stages == 3


def test_build_untrained_wraps_a_plain_classifier(small_digits: DataSplits) -> None:
    model = build_untrained(lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), small_digits)
    assert model.num_stages == 1


def test_build_untrained_rejects_wrong_number_of_classes(small_digits: DataSplits) -> None:
    with pytest.raises(ModelError, match=r"exit 0 returns shape \(2, 7\).*\(batch, 10\)"):
        build_untrained(lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 7)), small_digits)


def test_build_untrained_rejects_a_wrong_exit(small_digits: DataSplits) -> None:
    def factory() -> StagedModel:
        return StagedModel(stages=[nn.Flatten(), nn.Identity()],
                           heads=[nn.Linear(64, 10), nn.Linear(64, 3)])

    with pytest.raises(ModelError, match="exit 1"):
        build_untrained(factory, small_digits)


def test_build_untrained_rejects_wrong_input_shape(small_digits: DataSplits) -> None:
    with pytest.raises(ModelError, match=r"does not accept inputs of shape \(2, 1, 8, 8\)"):
        build_untrained(lambda: nn.Linear(10, 10), small_digits)


def test_build_untrained_reports_factory_failures(small_digits: DataSplits) -> None:
    def failing() -> nn.Module:
        raise ValueError("no weights")

    with pytest.raises(ModelError, match="model factory failed: ValueError: no weights"):
        build_untrained(failing, small_digits)
    with pytest.raises(ModelError, match=r"not a torch\.nn\.Module"):
        build_untrained(lambda: "a string", small_digits)


def test_trains_once_then_loads_from_cache(tiny_factory, small_digits: DataSplits,
                                           tmp_path: Path) -> None:
    first = train_or_load_baseline(tiny_factory, small_digits, SETTINGS, tmp_path, "tiny")
    assert not first.from_cache
    assert len(first.exit_accuracies) == 3
    assert all(0.0 <= a <= 1.0 for a in first.exit_accuracies)
    assert list((tmp_path / "baseline").glob("*.pt"))

    second = train_or_load_baseline(tiny_factory, small_digits, SETTINGS, tmp_path, "tiny")
    assert second.from_cache
    assert second.key == first.key
    assert second.exit_accuracies == pytest.approx(first.exit_accuracies)
    _assert_same_state(second.state, first.state)

    fresh = second.fresh()
    assert not fresh.training
    _assert_same_state(fresh.state_dict(), first.state)


def test_same_seed_gives_identical_weights(tiny_factory, small_digits: DataSplits,
                                           tmp_path: Path) -> None:
    a = train_or_load_baseline(tiny_factory, small_digits, SETTINGS, tmp_path / "a", "tiny")
    b = train_or_load_baseline(tiny_factory, small_digits, SETTINGS, tmp_path / "b", "tiny")
    assert not a.from_cache and not b.from_cache
    assert a.key == b.key
    _assert_same_state(a.state, b.state)


def test_key_depends_on_seed_model_and_data(tiny_factory, small_digits: DataSplits,
                                            digits: DataSplits, tmp_path: Path) -> None:
    base = train_or_load_baseline(tiny_factory, small_digits, SETTINGS, tmp_path, "tiny")
    other_seed = train_or_load_baseline(tiny_factory, small_digits,
                                        TrainSettings(epochs=1, seed=4), tmp_path, "tiny")
    assert other_seed.key != base.key and not other_seed.from_cache
    differs = [not torch.equal(base.state[k], other_seed.state[k]) for k in base.state
               if base.state[k].is_floating_point()]
    assert any(differs)
    other_model = train_or_load_baseline(tiny_factory, small_digits, SETTINGS, tmp_path, "v2")
    assert other_model.key != base.key and not other_model.from_cache


def test_trained_model_beats_chance(trained) -> None:
    # 3 epochs on digits: far above 10 % at the last exit (a loose check that training trains)
    assert trained.exit_accuracies[-1] > 0.5
    assert np.isfinite(trained.exit_accuracies).all()
