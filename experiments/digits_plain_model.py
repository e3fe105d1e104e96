"""A plain digits CNN (an ordinary ``nn.Module``, no declared exits) and how to write its trained
checkpoint: the model of ``digits_checkpoint.yaml``.

Referenced as ``digits_plain_model.py:build_model``; the data is ``digits_model.py:load_data``.
Write the checkpoint the config loads (a few seconds, no download)::

    python experiments/digits_plain_model.py experiments/digits_plain.pt

It is ``torch.save(model.state_dict(), PATH)``, as any training script would write it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spaces import DataSplits, load_reference

HERE = Path(__file__).resolve().parent


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


class DigitsCNN(nn.Module):
    """Three blocks (8x8 -> 8x8 -> 4x4 -> 2x2) and a classifier; ``early_exit.after: [block1,
    block2]`` retrofits exits after the first two."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.block1 = _block(1, width)
        self.block2 = _block(width, 2 * width, stride=2)
        self.block3 = _block(2 * width, 4 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def build_model() -> DigitsCNN:
    return DigitsCNN()


def load_data(seed: int = 0) -> DataSplits:
    """The digits splits of ``digits_model.py``."""
    loader = load_reference("digits_model.py:load_data", HERE)
    return loader(seed)  # type: ignore[no-any-return]


def train(data: DataSplits, *, epochs: int = 8, seed: int = 0) -> DigitsCNN:
    """An ordinary training loop (Adam, batches of 64, BatchNorm in train mode)."""
    torch.manual_seed(seed)
    model = build_model()
    x = torch.from_numpy(data.preprocess(data.train_x))
    y = torch.from_numpy(np.asarray(data.train_y, dtype=np.int64))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(x), generator=generator).split(64):
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def write_checkpoint(path: Path, *, epochs: int = 8, seed: int = 0) -> DigitsCNN:
    """Train on the digits example's data and ``torch.save`` the state_dict to ``path``."""
    model = train(load_data(0), epochs=epochs, seed=seed)
    torch.save(model.state_dict(), path)
    return model


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "digits_plain.pt"
    write_checkpoint(target)
    print(f"wrote {target}")
