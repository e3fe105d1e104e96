"""The reference benchmark: Fashion-MNIST and a ResNet-style CNN with two early exits.

Data: Debian's ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``),
read from ``/usr/share/datasets/fashion-mnist`` or ``$PARETOEDGE_FASHION_MNIST``. The 60,000
training images are split 55,000 / 5,000 (train / validation) by a seed; the 10,000 test images
are the eval set the agents measure on (1 pp = 100 images).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from device_agents import Preprocessing
from spaces import DataSplits, StagedModel

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train_x": "train-images-idx3-ubyte.gz", "train_y": "train-labels-idx1-ubyte.gz",
         "test_x": "t10k-images-idx3-ubyte.gz", "test_y": "t10k-labels-idx1-ubyte.gz"}


def data_dir() -> Path:
    return Path(os.environ.get("PARETOEDGE_FASHION_MNIST", DEFAULT_DIR))


def read_idx(path: Path) -> np.ndarray:
    """Read an (optionally gzipped) IDX file of unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_data(seed: int = 0) -> DataSplits:
    directory = data_dir()
    missing = [name for name in FILES.values() if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {directory} (missing {', '.join(missing)}): install "
            f"Debian's package with 'apt-get install dataset-fashion-mnist' (or 'make "
            f"fashion-mnist'), or set PARETOEDGE_FASHION_MNIST to a folder with the IDX files")
    arrays = {key: read_idx(directory / name) for key, name in FILES.items()}
    x = arrays["train_x"][:, None, :, :]
    y = arrays["train_y"].astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    train, val = order[:55_000], order[55_000:]
    return DataSplits(train_x=x[train], train_y=y[train], val_x=x[val], val_y=y[val],
                      test_x=arrays["test_x"][:, None, :, :],
                      test_y=arrays["test_y"].astype(np.int64), num_classes=10,
                      preprocessing=Preprocessing(scale=1 / 255, mean=(0.2860,), std=(0.3530,)),
                      name="fashion-mnist")


class BasicBlock(nn.Module):
    """The ResNet basic block: two 3x3 convs and a shortcut (1x1 conv when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _head(channels: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))


def build_model(width: int = 32) -> StagedModel:
    """Stem + 3 basic blocks (28x28, 14x14, 7x7), an exit head after each block."""
    w = width
    stages = [
        nn.Sequential(nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                      BasicBlock(w, w)),
        BasicBlock(w, 2 * w, stride=2),
        BasicBlock(2 * w, 4 * w, stride=2),
    ]
    return StagedModel(stages=stages, heads=[_head(w), _head(2 * w), _head(4 * w)])
