"""The embedded default: scikit-learn's 8x8 digits and a small CNN with two early exits.

Referenced by ``digits.yaml`` as ``digits_model.py:build_model`` and ``digits_model.py:load_data``.
Needs no download: ``load_digits`` ships inside scikit-learn. Torch is imported by the model
functions only, so that ``load_data`` serves an ONNX-only study too (``digits_onnx.yaml``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from device_agents import Preprocessing
from spaces import DataSplits

if TYPE_CHECKING:
    from torch import nn

    from spaces import StagedModel


def _block(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    from torch import nn

    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU()]


def _head(channels: int, classes: int) -> nn.Module:
    from torch import nn

    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


def build_model(width: int = 64, classes: int = 10) -> StagedModel:
    """Three stages (8x8 -> 8x8 -> 4x4 -> 2x2), an exit head after each."""
    from torch import nn

    from spaces import StagedModel

    w = width
    stages = [
        nn.Sequential(*_block(1, w), *_block(w, w)),
        nn.Sequential(*_block(w, 2 * w, stride=2), *_block(2 * w, 2 * w)),
        nn.Sequential(*_block(2 * w, 4 * w, stride=2), *_block(4 * w, 4 * w)),
    ]
    heads = [_head(w, classes), _head(2 * w, classes), _head(4 * w, classes)]
    return StagedModel(stages=stages, heads=heads)


def load_data(seed: int = 0) -> DataSplits:
    """1,797 digits split 50/30/20 (train/val/test) by a fixed seed; raw pixels are 0..16.

    The validation split is halved by paretoedge (exit temperatures / the selection split the
    search decides on), so it is the larger one here; the test split stays held out."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_train, n_val = int(0.5 * len(x)), int(0.3 * len(x))
    train, val, test = np.split(order, [n_train, n_train + n_val])
    mean = float((x[train] / 16.0).mean())
    std = float((x[train] / 16.0).std())
    return DataSplits(train_x=x[train], train_y=y[train], val_x=x[val], val_y=y[val],
                      test_x=x[test], test_y=y[test], num_classes=10,
                      preprocessing=Preprocessing(scale=1 / 16, mean=(mean,), std=(std,)),
                      name="sklearn-digits")
