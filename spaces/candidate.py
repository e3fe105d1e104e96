"""A candidate: one point of the search space, everything needed to build its bundle."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from device_agents.runtime_options import DEFAULT_GRAPH_OPTIMIZATION

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
    ``exit_confidence`` is the confidence measure when it is searched (``""``: the builder's).
    ``stage_prune_ratios`` is empty for one pruning ratio everywhere; with per-stage pruning it
    holds one ratio per stage and ``prune_ratio`` is their mean. The tuple is left out of
    ``to_dict`` when empty, so older candidate dicts read and write the same.

    Example:
        >>> Candidate(quantization=("int8", "int8", "fp32"), prune_ratio=0.25).to_dict()
        {'quantization': ['int8', 'int8', 'fp32'], 'prune_ratio': 0.25, 'exit_thresholds': []}
    """

    quantization: tuple[str, ...]
    prune_ratio: float = 0.0
    exit_thresholds: tuple[float, ...] = ()
    exit_confidence: str = ""
    stage_prune_ratios: tuple[float, ...] = ()
    #: ``""``: built with the study's finetune (screening); ``"full"``: promoted to the long
    #: finetune (``pruning.finetune_full``). Left out of ``to_dict`` when empty.
    fidelity: str = ""
    #: quantization-aware finetuning: the finetune fake-quantizes the int8 groups and their
    #: export takes the learned ranges (docs/QUANTIZATION.md); only with an int8 group. Left
    #: out of ``to_dict`` when False, so older candidate dicts and keys are unchanged.
    qat: bool = False
    #: runtime knobs (``spaces/runtime_space.py``, docs/RUNTIME.md), each left out of
    #: ``to_dict`` at its default (today's behaviour) so older candidate dicts read and write
    #: the same: onnxruntime's graph optimization level, intra-op threads (0: the agent's),
    #: the execution provider as ``NAME[:key=value;...]`` (``""``: the agent's), and whether
    #: the graph's batch axis is fixed to 1 (True), kept dynamic (False) or left as the
    #: builder makes it (None), and the runtime that runs the bundle (``""``: onnxruntime;
    #: ``"openvino"``: OpenVINO's own)
    graph_optimization: str = DEFAULT_GRAPH_OPTIMIZATION
    intra_op_threads: int = 0
    provider: str = ""
    static_shape: bool | None = None
    engine: str = ""

    @property
    def int8_groups(self) -> tuple[int, ...]:
        """The indices of the layer groups at int8 (static QDQ)."""
        return tuple(k for k, p in enumerate(self.quantization) if p == "int8")

    @property
    def early_exit(self) -> bool:
        return bool(self.exit_thresholds)

    def stage_ratios(self, num_stages: int) -> tuple[float, ...]:
        """The pruning ratio of every stage."""
        return self.stage_prune_ratios or (self.prune_ratio,) * num_stages

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"quantization": list(self.quantization),
                                "prune_ratio": self.prune_ratio,
                                "exit_thresholds": list(self.exit_thresholds)}
        if self.exit_confidence:
            data["exit_confidence"] = self.exit_confidence
        if self.stage_prune_ratios:
            data["stage_prune_ratios"] = list(self.stage_prune_ratios)
        if self.fidelity:
            data["fidelity"] = self.fidelity
        if self.qat:
            data["qat"] = True
        data.update(self.runtime_dict())
        return data

    @property
    def configuration(self) -> dict[str, Any]:
        """What the candidate is, whatever its fidelity: trials of one configuration at
        several fidelities share it."""
        data = self.to_dict()
        data.pop("fidelity", None)
        return data

    def runtime_dict(self) -> dict[str, Any]:
        """The runtime knobs that differ from their defaults."""
        data: dict[str, Any] = {}
        if self.graph_optimization != DEFAULT_GRAPH_OPTIMIZATION:
            data["graph_optimization"] = self.graph_optimization
        if self.intra_op_threads:
            data["intra_op_threads"] = self.intra_op_threads
        if self.provider:
            data["provider"] = self.provider
        if self.static_shape is not None:
            data["static_shape"] = self.static_shape
        if self.engine and self.engine != "onnxruntime":
            data["engine"] = self.engine
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        return cls(quantization=tuple(str(q) for q in data["quantization"]),
                   prune_ratio=float(data.get("prune_ratio", 0.0)),
                   exit_thresholds=tuple(float(t) for t in data.get("exit_thresholds", ())),
                   exit_confidence=str(data.get("exit_confidence", "")),
                   stage_prune_ratios=tuple(float(r)
                                            for r in data.get("stage_prune_ratios", ())),
                   fidelity=str(data.get("fidelity", "")),
                   qat=bool(data.get("qat", False)),
                   graph_optimization=str(data.get("graph_optimization",
                                                   DEFAULT_GRAPH_OPTIMIZATION)),
                   intra_op_threads=int(data.get("intra_op_threads", 0)),
                   provider=str(data.get("provider", "")),
                   static_shape=(None if data.get("static_shape") is None
                                 else bool(data["static_shape"])),
                   engine=str(data.get("engine", "")))

    def describe(self) -> str:
        """A short human label, e.g. ``int8/int8/fp32 prune=0.25 exit@0.90``."""
        exits = ("exit@" + ",".join(_threshold_label(t) for t in self.exit_thresholds)
                 if self.exit_thresholds else "no-exit")
        if self.exit_confidence:
            exits += f"({self.exit_confidence})"
        prune = ("/".join(f"{r:g}" for r in self.stage_prune_ratios) if self.stage_prune_ratios
                 else f"{self.prune_ratio:g}")
        fidelity = f" [{self.fidelity}-ft]" if self.fidelity else ""
        qat = " qat" if self.qat else ""
        runtime = "".join(f" {_RUNTIME_LABELS[key]}={value}"
                          for key, value in self.runtime_dict().items())
        return (f"{'/'.join(self.quantization)}{qat} prune={prune}{fidelity} {exits}"
                f"{runtime}")


_RUNTIME_LABELS = {"graph_optimization": "opt", "intra_op_threads": "threads",
                   "provider": "ep", "static_shape": "static", "engine": "engine"}


def _threshold_label(threshold: float) -> str:
    """At least two decimals, more when needed: 0.90, 0.95, 0.9995."""
    text = f"{threshold:.6f}".rstrip("0")
    return text + "0" * max(0, 2 - len(text.partition(".")[2]))


def stable_key(*parts: Any) -> str:
    """A short sha256 of JSON-serialisable parts, for cache directories."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def candidate_label(data: Mapping[str, Any]) -> str:
    """:meth:`Candidate.describe` of a stored candidate dict (``-`` for a trial without one)."""
    return Candidate.from_dict(data).describe() if data else "-"
