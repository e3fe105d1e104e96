"""Where a bundle's time goes: onnxruntime's profiler over a cascade, per operator type and stage.

Each stage's session runs with onnxruntime's profiling on while the bundle answers samples
end to end (:meth:`CascadeRunner.run`, exits included); the profile keeps, per inference
(averaged over every inference, so the figures add up to the mean latency):

- the kernel time of each operator type in each stage, split by part of the graph: the
  ``backbone``, the ``exit head`` of a stage that can exit, the ``classifier`` of the last
  stage, the ``(de)quantize`` nodes onnxruntime left between integer and float operators, and
  the ``layout`` conversions it inserted (transposes, NCHWc reorders; node names come from the
  exporter's scopes: ``/head/`` is a head);
- each stage's session time (onnxruntime's ``model_run``) and its ``gap``: the session time not
  spent in any kernel (the executor's dispatch between operators);
- the preprocessing (timed apart, the same samples; capped at the wall time outside the
  sessions, which holds it), and what is ``outside`` every session: the Python calls into
  onnxruntime and the exit decisions.

The profiler itself costs time per operator, so the profiled figures are above the bundle's
latency; the profile also times the same inferences without the profiler (``plain_wall_us``,
the same process, right after) so that a reader sees how far. Warm-up runs are left out by time
(onnxruntime's profiling clock is the epoch clock).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device_agents.errors import MeasurementError
from device_agents.profiles import CPU_PROVIDER, ProviderLike

#: The parts of a stage graph an operator can belong to.
PARTS = ("backbone", "exit head", "classifier", "(de)quantize", "layout")
_CONVERSIONS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
_LAYOUT = frozenset({"ReorderInput", "ReorderOutput"})  # NCHWc conversions


def operator_part(node_name: str, op_type: str, *, last_stage: bool) -> str:
    """The part of the graph a node belongs to, from its name and operator type."""
    if "/head/" in node_name or node_name.startswith("head/"):
        return "classifier" if last_stage else "exit head"
    if op_type in _CONVERSIONS:
        return "(de)quantize"
    if op_type in _LAYOUT or (op_type == "Transpose" and "/" not in node_name):
        return "layout"  # inserted by onnxruntime's layout transformers
    return "backbone"


@dataclass(frozen=True)
class OperatorTime:
    """Kernel time of one operator type in one part of one stage, per inference."""

    stage: int
    part: str
    op_type: str
    nodes: int
    us: float


@dataclass(frozen=True)
class OperatorProfile:
    """A bundle's time per inference, by operator type, stage and part (all in microseconds,
    averaged over ``inferences``)."""

    bundle_digest: str
    inferences: int
    wall_us: float
    plain_wall_us: float
    preprocessing_us: float
    stage_session_us: tuple[float, ...]
    stage_runs: tuple[int, ...]
    operators: tuple[OperatorTime, ...]
    exit_rates: tuple[float, ...]
    agent_id: str = ""
    fingerprint: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kernel_us(self) -> float:
        return float(sum(op.us for op in self.operators))

    @property
    def stage_gap_us(self) -> tuple[float, ...]:
        """Per stage, the session time spent in no kernel."""
        return tuple(max(session - sum(op.us for op in self.operators if op.stage == k), 0.0)
                     for k, session in enumerate(self.stage_session_us))

    @property
    def preprocessing_in_wall_us(self) -> float:
        """The preprocessing's share of the wall time: timed apart (another loop over the same
        samples), so capped at the wall time outside the sessions, which holds it; on a busy
        machine the separate timing can come out above it."""
        return min(self.preprocessing_us, max(self.wall_us - sum(self.stage_session_us), 0.0))

    @property
    def outside_us(self) -> float:
        """Wall time in no session and not preprocessing: calls into onnxruntime, exit tests."""
        return max(self.wall_us - self.preprocessing_in_wall_us - sum(self.stage_session_us),
                   0.0)

    @property
    def nodes_per_inference(self) -> float:
        """Nodes run per inference: each stage's nodes times the share of inferences that ran
        it."""
        if not self.inferences:
            return 0.0
        return float(sum(op.nodes * self.stage_runs[op.stage] for op in self.operators)
                     / self.inferences)

    @property
    def profiler_us_per_node(self) -> float | None:
        """What the profiler cost per node run: the profiled wall time less the plain one,
        over the nodes run (None without a plain timing). On small graphs it is of the order
        of the kernels themselves, and the gaps and the time outside carry most of it."""
        nodes = self.nodes_per_inference
        if not self.plain_wall_us or not nodes:
            return None
        return max(self.wall_us - self.plain_wall_us, 0.0) / nodes

    def by_op_type(self) -> list[tuple[str, float]]:
        """Kernel time per operator type over every stage and part, largest first."""
        totals: dict[str, float] = defaultdict(float)
        for op in self.operators:
            totals[op.op_type] += op.us
        return sorted(totals.items(), key=lambda item: -item[1])

    def by_part(self) -> dict[str, float]:
        """Kernel time per part of the graph, plus the gaps, preprocessing and outside."""
        totals = dict.fromkeys(PARTS, 0.0)
        for op in self.operators:
            totals[op.part] += op.us
        totals["gaps"] = float(sum(self.stage_gap_us))
        totals["preprocessing"] = self.preprocessing_in_wall_us
        totals["outside sessions"] = self.outside_us
        return totals

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fingerprint"] = dict(self.fingerprint)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OperatorProfile:
        return cls(bundle_digest=str(data["bundle_digest"]), inferences=int(data["inferences"]),
                   wall_us=float(data["wall_us"]),
                   plain_wall_us=float(data.get("plain_wall_us", 0.0)),
                   preprocessing_us=float(data["preprocessing_us"]),
                   stage_session_us=tuple(float(v) for v in data["stage_session_us"]),
                   stage_runs=tuple(int(v) for v in data["stage_runs"]),
                   operators=tuple(OperatorTime(**op) for op in data["operators"]),
                   exit_rates=tuple(float(v) for v in data["exit_rates"]),
                   agent_id=str(data.get("agent_id", "")),
                   fingerprint=dict(data.get("fingerprint", {})))


def _events_after(path: str, start_ns: int, cutoff_ns: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = json.loads(Path(path).read_text())
    return [e for e in events if start_ns + int(e.get("ts", 0)) * 1000 >= cutoff_ns]


def profile_bundle(directory: Path, inputs: Sequence[np.ndarray] | np.ndarray, *,
                   runs: int = 1000, warmup_runs: int = 50, threads: int = 1,
                   providers: Sequence[ProviderLike] = (CPU_PROVIDER,),
                   expected_digest: str | None = None, agent_id: str = "",
                   fingerprint: Mapping[str, Any] | None = None) -> OperatorProfile:
    """Profile ``runs`` inferences of the bundle at ``directory``, cycling through ``inputs``
    (raw samples, as the bundle's preprocessing expects them)."""
    from device_agents.bundle import bundle_digest, verify_bundle
    from device_agents.measure import agent_runner

    if runs < 1 or len(inputs) == 0:
        raise MeasurementError("a profile needs at least one run and one input")
    manifest = verify_bundle(Path(directory), expected_digest)
    n = len(inputs)
    with tempfile.TemporaryDirectory(prefix="paretoedge-profile-") as tmp:
        # as measured: the same runtime as the agent's measurement
        runner = agent_runner(directory, manifest, threads, providers,
                              profile_prefix=str(Path(tmp) / "profile"))
        starts = runner.profiling_start_ns()
        for i in range(warmup_runs):
            runner.run(inputs[i % n])
        cutoff = time.time_ns()
        exits = np.empty(runs, dtype=np.int64)
        began = time.perf_counter_ns()
        for i in range(runs):
            exits[i] = runner.run(inputs[i % n])[1]
        wall_us = (time.perf_counter_ns() - began) / 1e3 / runs
        files = runner.end_profiling()
        plain = agent_runner(directory, manifest, threads, providers)
        for i in range(warmup_runs):
            plain.run(inputs[i % n])
        began = time.perf_counter_ns()
        for i in range(runs):
            plain.run(inputs[i % n])
        plain_wall_us = (time.perf_counter_ns() - began) / 1e3 / runs
        began = time.perf_counter_ns()
        for i in range(runs):
            runner.preprocess(inputs[i % n])
        preprocessing_us = (time.perf_counter_ns() - began) / 1e3 / runs
        last = len(files) - 1
        grouped: dict[tuple[int, str, str], list[float]] = defaultdict(list)
        names: dict[tuple[int, str, str], set[str]] = defaultdict(set)
        session_us, stage_runs = [], []
        for k, (path, start) in enumerate(zip(files, starts, strict=True)):
            events = _events_after(path, start, cutoff)
            model_runs = [e for e in events if e.get("name") == "model_run"]
            stage_runs.append(len(model_runs))
            session_us.append(sum(float(e["dur"]) for e in model_runs) / runs)
            for event in events:
                if event.get("cat") != "Node":
                    continue
                op_type = str(event.get("args", {}).get("op_name", "?"))
                node = str(event["name"]).removesuffix("_kernel_time")
                key = (k, operator_part(node, op_type, last_stage=k == last), op_type)
                grouped[key].append(float(event["dur"]))
                names[key].add(node)
    operators = tuple(OperatorTime(stage=k, part=part, op_type=op, nodes=len(names[key]),
                                   us=sum(durations) / runs)
                      for key, durations in sorted(grouped.items())
                      for k, part, op in [key])
    counts = np.bincount(exits, minlength=len(files))
    return OperatorProfile(bundle_digest=expected_digest or bundle_digest(Path(directory)),
                           inferences=runs, wall_us=wall_us, plain_wall_us=plain_wall_us,
                           preprocessing_us=preprocessing_us,
                           stage_session_us=tuple(session_us), stage_runs=tuple(stage_runs),
                           operators=operators,
                           exit_rates=tuple(float(c) / runs for c in counts),
                           agent_id=agent_id, fingerprint=dict(fingerprint or {}))
