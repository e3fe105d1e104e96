"""What is asked of an agent and what it answers: the measurement contract."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from device_agents.bundle import BundlePayload
from device_agents.eval_set import EvalSetPayload

if TYPE_CHECKING:
    from ray import ObjectRef


@dataclass(frozen=True)
class MeasurementProtocol:
    """How a bundle is timed. Every agent of a study follows the same protocol.

    Timing runs, after warm-up, in rounds of ``round_runs`` until the 95 % confidence interval
    of the median is narrower than ``ci_rel_width`` times the median (and at least ``min_runs``
    were made), or ``max_runs`` is reached.
    """

    threads: int = 1
    warmup_runs: int = 50
    warmup_seconds: float = 0.2
    min_runs: int = 300
    max_runs: int = 3000
    round_runs: int = 100
    ci_rel_width: float = 0.02

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MeasurementProtocol:
        return cls(**dict(data))


@dataclass(frozen=True)
class MeasureRequest:
    """One bundle to measure on one eval set, under one protocol.

    ``bundle`` and ``eval_set`` are payloads, or Ray object references to payloads: an agent
    resolves a reference only when its cache lacks the digest, so each eval set crosses the
    network once per agent.
    """

    bundle_digest: str
    bundle: BundlePayload | ObjectRef[BundlePayload]
    eval_set_digest: str
    eval_set: EvalSetPayload | ObjectRef[EvalSetPayload]
    protocol: MeasurementProtocol = MeasurementProtocol()
    trial_number: int | None = None


@dataclass(frozen=True)
class LatencyStats:
    """Per-sample end-to-end latency, milliseconds."""

    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    n: int
    median_ci_low_ms: float
    median_ci_high_ms: float
    converged: bool
    #: CPU time of the measuring process over wall time x threads during timing: below about
    #: 0.95 something else ran on its cores (a loaded machine, a shared core) and the numbers
    #: describe that contention. None where not measured.
    cpu_share: float | None = None

    @property
    def ci_rel_width(self) -> float:
        return (self.median_ci_high_ms - self.median_ci_low_ms) / self.p50_ms


@dataclass(frozen=True)
class Measurement:
    """What an agent measured for one bundle.

    ``ece`` is the cascade's (each sample scored by the exit that answered it);
    ``exit_eces[k]`` is exit ``k``'s own on every sample (cascades only).
    """

    bundle_digest: str
    accuracy: float
    n_eval: int
    ece: float
    exit_rates: tuple[float, ...]
    latency: LatencyStats
    size_kb: float
    peak_mem_mb: float
    fingerprint: Mapping[str, Any] = field(default_factory=dict)
    agent_id: str = ""
    energy_mj: float | None = None
    duration_s: float = 0.0
    exit_eces: tuple[float, ...] = ()
    #: The agent's whole time for the request (``duration_s`` plus unpacking the bundle and
    #: eval set and starting the measuring process); 0 where not recorded.
    agent_s: float = 0.0

    def metrics(self) -> dict[str, float]:
        """The measurement as docs/ARCHITECTURE.md metric names (only the ones that were
        measured)."""
        out = {
            "accuracy": self.accuracy,
            "latency_mean_ms": self.latency.mean_ms,
            "latency_p50_ms": self.latency.p50_ms,
            "latency_p90_ms": self.latency.p90_ms,
            "latency_p95_ms": self.latency.p95_ms,
            "latency_p99_ms": self.latency.p99_ms,
            "latency_std_ms": self.latency.std_ms,
            "latency_n": float(self.latency.n),
            "latency_ci_rel_width": self.latency.ci_rel_width,
            "size_kb": self.size_kb,
            "peak_mem_mb": self.peak_mem_mb,
            "ece": self.ece,
        }
        if self.latency.cpu_share is not None:
            out["latency_cpu_share"] = self.latency.cpu_share
        for k, rate in enumerate(self.exit_rates):
            out[f"exit_rate_{k}"] = rate
        for k, ece in enumerate(self.exit_eces):
            out[f"ece_exit_{k}"] = ece
        if self.energy_mj is not None:
            out["energy_mj"] = self.energy_mj
        return out
