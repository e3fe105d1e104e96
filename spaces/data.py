"""The user's data, as paretoedge needs it: raw splits plus the preprocessing to apply."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from device_agents.bundle import Preprocessing
from device_agents.eval_set import EvalSet
from spaces.errors import ModelError


@dataclass(frozen=True, eq=False)
class DataSplits:
    """Train / validation / test splits of raw samples (``(N, C, H, W)`` or ``(N, F)``).

    ``preprocessing`` turns a raw sample into the model's input and runs on the device too, so
    that latency is measured end to end. The test split is what agents measure accuracy on; the
    validation split calibrates exit temperatures; the train split finetunes and calibrates
    quantization.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    preprocessing: Preprocessing = Preprocessing()
    name: str = "data"

    def __post_init__(self) -> None:
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
                raise ModelError(f"data: split {split!r} has inputs {x.shape} and labels "
                                 f"{y.shape}; expected (N, ...) and (N,) with N > 0")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.train_x.shape[1:])

    def preprocess(self, raw: np.ndarray) -> np.ndarray:
        """Apply the preprocessing to a batch of raw samples (float32)."""
        pre = self.preprocessing
        shape = (1, -1) + (1,) * max(raw.ndim - 2, 0)
        mean = np.asarray(pre.mean, dtype=np.float32).reshape(shape)
        std = np.asarray(pre.std, dtype=np.float32).reshape(shape)
        return (raw.astype(np.float32) * np.float32(pre.scale) - mean) / std

    def test_set(self) -> EvalSet:
        return EvalSet(inputs=self.test_x, labels=self.test_y.astype(np.int64))

    def digest(self) -> str:
        h = hashlib.sha256()
        for array in (self.train_x, self.train_y, self.val_x, self.val_y, self.test_x,
                      self.test_y):
            h.update(str(array.shape).encode() + str(array.dtype).encode())
            h.update(np.ascontiguousarray(array).tobytes())
        h.update(repr(self.preprocessing.to_dict()).encode())
        return h.hexdigest()
