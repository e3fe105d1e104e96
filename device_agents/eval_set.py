"""The evaluation set an agent measures accuracy on: raw inputs (before preprocessing) + labels."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device_agents.bundle import sha256_bytes
from device_agents.errors import EvalSetError


@dataclass(frozen=True, eq=False)
class EvalSet:
    """Raw samples, one per row of ``inputs`` (shape ``(N, *sample_shape)``), and int labels."""

    inputs: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.inputs.ndim < 2 or self.inputs.shape[0] == 0:
            raise EvalSetError(f"eval set: inputs must be (N, ...) with N > 0, got shape "
                               f"{self.inputs.shape}")
        if self.labels.shape != (self.inputs.shape[0],):
            raise EvalSetError(f"eval set: {self.inputs.shape[0]} inputs but labels of shape "
                               f"{self.labels.shape}")

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, inputs=self.inputs, labels=self.labels)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> EvalSet:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                return cls(inputs=archive["inputs"], labels=archive["labels"].astype(np.int64))
        except (OSError, KeyError, ValueError) as exc:
            raise EvalSetError(f"eval set: cannot read archive ({exc})") from exc

    def save(self, path: Path) -> str:
        data = self.to_bytes()
        Path(path).write_bytes(data)
        return sha256_bytes(data)


@dataclass(frozen=True)
class EvalSetPayload:
    """An eval set as shipped to agents: its bytes and their sha256 (the cache key)."""

    digest: str
    data: bytes

    @classmethod
    def from_eval_set(cls, eval_set: EvalSet) -> EvalSetPayload:
        data = eval_set.to_bytes()
        return cls(digest=sha256_bytes(data), data=data)

    def load(self) -> EvalSet:
        if sha256_bytes(self.data) != self.digest:
            raise EvalSetError("eval set: payload does not match its sha256")
        return EvalSet.from_bytes(self.data)
