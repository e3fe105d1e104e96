"""A candidate: one point of the search space, everything needed to build its bundle."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The precisions searched by default: float, and int8 static QDQ (fused integer kernels).
PRECISIONS = ("fp32", "int8")
#: Every precision a layer group can take. ``int8``: static QDQ (activations and weights);
#: ``int8_wo``/``int4_wo``: weight-only MatMulNBits (MatMul/Linear layers only); ``fp16``: weights
#: stored in float16 and computed in float32 (a size option, never faster on CPU).
ALL_PRECISIONS = ("fp32", "int8", "int8_wo", "int4_wo", "fp16")


@dataclass(frozen=True)
class Candidate:
    """Quantization per layer group, a structured pruning ratio, and early-exit thresholds.

    ``quantization`` holds one precision of :data:`ALL_PRECISIONS` per layer group, in the
    order of the builder's groups.

    ``exit_thresholds`` is empty when early exit is off: the model is then exported as one graph,
    exactly as a user would deploy it without exits (the fp32 baseline is such a candidate).

    Example:
        >>> Candidate(quantization=("int8", "int8", "fp32"), prune_ratio=0.25).to_dict()
        {'quantization': ['int8', 'int8', 'fp32'], 'prune_ratio': 0.25, 'exit_thresholds': []}
    """

    quantization: tuple[str, ...]
    prune_ratio: float = 0.0
    exit_thresholds: tuple[float, ...] = ()

    @property
    def early_exit(self) -> bool:
        return bool(self.exit_thresholds)

    def to_dict(self) -> dict[str, Any]:
        return {"quantization": list(self.quantization), "prune_ratio": self.prune_ratio,
                "exit_thresholds": list(self.exit_thresholds)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        return cls(quantization=tuple(str(q) for q in data["quantization"]),
                   prune_ratio=float(data.get("prune_ratio", 0.0)),
                   exit_thresholds=tuple(float(t) for t in data.get("exit_thresholds", ())))

    def describe(self) -> str:
        """A short human label, e.g. ``int8/int8/fp32 prune=0.25 exit@0.90``."""
        exits = ("exit@" + ",".join(f"{t:.2f}" for t in self.exit_thresholds)
                 if self.exit_thresholds else "no-exit")
        return f"{'/'.join(self.quantization)} prune={self.prune_ratio:g} {exits}"


def stable_key(*parts: Any) -> str:
    """A short sha256 of JSON-serialisable parts, for cache directories."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]
