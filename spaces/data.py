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
    that latency is measured end to end. Who uses which split:

    - train: trains the fp32 model, finetunes pruned candidates, calibrates int8 quantization;
    - calibration (the validation split's even-numbered samples, or all of it when the loader
      gives a selection split): fits the exit temperatures;
    - selection (``select_x``/``select_y`` when given, else the validation split's odd-numbered
      samples): what agents measure accuracy on during the search, so it decides feasibility,
      the front, thresholds and ``best``;
    - test: held out from every decision; measured only when the study is confirmed
      (``test_accuracy``).

    Example:
        >>> import numpy as np
        >>> x, y = np.zeros((10, 4), np.float32), np.arange(10) % 2
        >>> splits = DataSplits(x, y, x, y, x, y, num_classes=2)
        >>> len(splits.calibration_y), len(splits.selection_set())
        (5, 5)
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
    select_x: np.ndarray | None = None
    select_y: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (self.select_x is None) != (self.select_y is None):
            raise ModelError("data: give both select_x and select_y, or neither")
        splits = ("train", "val", "test") + (("select",) if self.select_x is not None else ())
        for split in splits:
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
                raise ModelError(f"data: split {split!r} has inputs {x.shape} and labels "
                                 f"{y.shape}; expected (N, ...) and (N,) with N > 0")
        if self.select_x is None and len(self.val_x) < 2:
            raise ModelError("data: the validation split needs at least 2 samples (half "
                             "calibrates exit temperatures, half selects candidates)")

    @property
    def calibration_x(self) -> np.ndarray:
        """Raw samples that fit the exit temperatures (never the selection or test split)."""
        return self.val_x if self.select_x is not None else self.val_x[0::2]

    @property
    def calibration_y(self) -> np.ndarray:
        return self.val_y if self.select_y is not None else self.val_y[0::2]

    def selection_set(self) -> EvalSet:
        """What the search measures accuracy on (and so decides with)."""
        if self.select_x is not None and self.select_y is not None:
            return EvalSet(inputs=self.select_x, labels=self.select_y.astype(np.int64))
        return EvalSet(inputs=self.val_x[1::2], labels=self.val_y[1::2].astype(np.int64))

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
        """The held-out split: measured only to confirm, never to decide."""
        return EvalSet(inputs=self.test_x, labels=self.test_y.astype(np.int64))

    def digest(self) -> str:
        h = hashlib.sha256(b"splits: train, calibration, selection, test")
        extra = (self.select_x, self.select_y) if self.select_x is not None else ()
        for array in (self.train_x, self.train_y, self.val_x, self.val_y, self.test_x,
                      self.test_y, *extra):
            h.update(str(array.shape).encode() + str(array.dtype).encode())
            h.update(np.ascontiguousarray(array).tobytes())
        h.update(repr(self.preprocessing.to_dict()).encode())
        return h.hexdigest()
