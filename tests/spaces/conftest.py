"""Shared fixtures of the ``spaces`` tests: a tiny 3-stage CNN on sklearn's 8x8 digits.

Everything is small enough that the folder runs in well under a minute on 2 CPU cores: the
model has 16 channels per stage and trains for a couple of epochs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from spaces import (
    BuildSettings,
    DataSplits,
    FinetuneSettings,
    QuantSettings,
    StagedModel,
    TorchBuilder,
    TrainedModel,
    TrainSettings,
    load_reference,
    train_or_load_baseline,
)

torch.set_num_threads(1)

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
WIDTH = 16
NUM_CLASSES = 10


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


def _head(channels: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, NUM_CLASSES))


def tiny_model() -> StagedModel:
    """Three stages (8x8 -> 8x8 -> 4x4 -> 2x2) of one conv each, an exit head after each."""
    return StagedModel(stages=[_block(1, WIDTH), _block(WIDTH, WIDTH, 2), _block(WIDTH, WIDTH, 2)],
                       heads=[_head(WIDTH), _head(WIDTH), _head(WIDTH)])


def subset(data: DataSplits, n: int) -> DataSplits:
    """The first ``n`` samples of every split (same preprocessing)."""
    return DataSplits(train_x=data.train_x[:n], train_y=data.train_y[:n], val_x=data.val_x[:n],
                      val_y=data.val_y[:n], test_x=data.test_x[:n], test_y=data.test_y[:n],
                      num_classes=data.num_classes, preprocessing=data.preprocessing,
                      name=f"{data.name}[:{n}]")


@pytest.fixture(scope="session")
def digits() -> DataSplits:
    """sklearn digits through the example module, the way a config references it."""
    load_data = load_reference("digits_model.py:load_data", EXPERIMENTS)
    return load_data()


@pytest.fixture(scope="session")
def small_digits(digits: DataSplits) -> DataSplits:
    """200 samples per split, for tests that train several times."""
    return subset(digits, 200)


@pytest.fixture(scope="session")
def example(digits: DataSplits) -> torch.Tensor:
    """One preprocessed sample, the example input of pruning and export."""
    return torch.from_numpy(digits.preprocess(digits.train_x[:1]))


@pytest.fixture(scope="session")
def trained(digits: DataSplits, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """The tiny model trained for 3 epochs (a few seconds)."""
    cache = tmp_path_factory.mktemp("baseline-cache")
    return train_or_load_baseline(tiny_model, digits, TrainSettings(epochs=3, seed=0), cache,
                                  model_digest="tests-tiny-model-v1")


BUILD_SETTINGS = BuildSettings(finetune=FinetuneSettings(epochs=1, distill_alpha=0.5),
                               quant=QuantSettings(calibration_samples=32))


@pytest.fixture(scope="session")
def build_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("build-cache")


@pytest.fixture(scope="session")
def builder(trained: TrainedModel, digits: DataSplits, build_cache: Path) -> TorchBuilder:
    """One builder shared by the builder tests (its in-memory and on-disk caches included)."""
    return TorchBuilder(trained=trained, data=digits, cache_dir=build_cache,
                            settings=BUILD_SETTINGS)


@pytest.fixture(scope="session")
def tiny_factory():
    """The factory of the tiny model (what a config's ``model:`` reference returns)."""
    return tiny_model


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
