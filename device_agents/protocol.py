"""What is asked of an agent and what it answers: the measurement contract."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from device_agents.bundle import BundlePayload
from device_agents.eval_set import EvalSetPayload

if TYPE_CHECKING:
    from ray import ObjectRef


#: The latency percentiles a measurement reports (``latency_p<q>_ms``), the only ones that can
#: be ranked (objectives or constraints) and so given a stopping rule.
REPORTED_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0)


def percentile_label(percentile: float) -> str:
    """``p95`` for 95.0: the percentile as it appears in metric names."""
    return f"p{percentile:g}"


@dataclass(frozen=True)
class MeasurementProtocol:
    """How a bundle is timed. Every agent of a study follows the same protocol.

    Timing runs, after warm-up, in rounds of ``round_runs`` until, for every percentile of
    ``ranked_percentiles`` (those the study ranks: objectives and constraints), the
    distribution-free 95 % confidence interval is at most ``ci_rel_width`` times that
    percentile, at least ``min_runs`` runs were made and at least ``min_seconds`` were spent
    timing; it stops unconverged at ``max_runs`` runs or after ``max_seconds`` (0: no limit).
    Before timing, where an energy counter exists, the idle power is measured over
    ``idle_seconds`` of sleep (0: not measured) and subtracted from the energy.

    Example:
        >>> MeasurementProtocol(ranked_percentiles=(50.0, 95.0), max_seconds=30.0).min_runs
        300
    """

    threads: int = 1
    warmup_runs: int = 50
    warmup_seconds: float = 0.2
    min_runs: int = 300
    max_runs: int = 3000
    round_runs: int = 100
    ci_rel_width: float = 0.02
    ranked_percentiles: tuple[float, ...] = (50.0,)
    min_seconds: float = 0.0
    max_seconds: float = 0.0
    idle_seconds: float = 0.5

    def __post_init__(self) -> None:
        ranked = tuple(float(p) for p in self.ranked_percentiles)
        object.__setattr__(self, "ranked_percentiles", ranked)
        unknown = [p for p in ranked if p not in REPORTED_PERCENTILES]
        if unknown or not ranked:
            raise ValueError(f"ranked_percentiles must be some of "
                             f"{', '.join(f'{p:g}' for p in REPORTED_PERCENTILES)}, "
                             f"not {', '.join(f'{p:g}' for p in ranked) or 'none'}")
        for name in ("min_seconds", "max_seconds", "idle_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ranked_percentiles"] = list(self.ranked_percentiles)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MeasurementProtocol:
        """The protocol of :meth:`to_dict` (a dict written before a field existed gets the
        field's default)."""
        fields = dict(data)
        if "ranked_percentiles" in fields:
            fields["ranked_percentiles"] = tuple(fields["ranked_percentiles"])
        return cls(**fields)


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
class ProfileRequest:
    """One bundle to profile with onnxruntime's profiler (``operator_profile.py``): ``runs``
    inferences after ``warmup_runs``, cycling through the eval set's inputs."""

    bundle_digest: str
    bundle: BundlePayload | ObjectRef[BundlePayload]
    eval_set_digest: str
    eval_set: EvalSetPayload | ObjectRef[EvalSetPayload]
    threads: int = 1
    runs: int = 1000
    warmup_runs: int = 50
    trial_number: int | None = None


@dataclass(frozen=True)
class AgentActivity:
    """What an agent is measuring now, as it says itself: the bundle, the trial, and for how
    long (its own clock: no skew between machines). A job's timeout counts from here, not
    from its submission (it may wait behind another study's measurement, or for its payload).
    """

    bundle_digest: str
    trial_number: int | None
    seconds: float

    def is_measuring(self, request: MeasureRequest) -> bool:
        return (self.bundle_digest == request.bundle_digest
                and self.trial_number == request.trial_number)


@dataclass(frozen=True)
class PercentileCI:
    """The distribution-free 95 % confidence interval of one latency percentile, ms.

    Example:
        >>> PercentileCI(95.0, 1.25, 1.4).label
        'p95'
    """

    percentile: float
    low_ms: float
    high_ms: float

    @property
    def label(self) -> str:
        """``p95``: as in the metric names ``latency_p95_ci_low_ms`` / ``..._high_ms``."""
        return percentile_label(self.percentile)


@dataclass(frozen=True)
class LatencyStats:
    """Per-sample end-to-end latency, milliseconds.

    ``converged``: timing stopped because every ranked percentile's interval (``ranked_cis``)
    was tight enough, not at ``max_runs`` / ``max_seconds``.
    """

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
    #: The 95 % interval of each ranked percentile (the protocol's ``ranked_percentiles``).
    ranked_cis: tuple[PercentileCI, ...] = ()

    @property
    def ci_rel_width(self) -> float:
        if self.p50_ms == 0:
            return 0.0 if self.median_ci_high_ms == self.median_ci_low_ms else math.inf
        return (self.median_ci_high_ms - self.median_ci_low_ms) / self.p50_ms

    def percentile_ms(self, percentile: float) -> float:
        """One of the reported percentiles (50, 90, 95, 99)."""
        values = {50.0: self.p50_ms, 90.0: self.p90_ms, 95.0: self.p95_ms, 99.0: self.p99_ms}
        if percentile not in values:
            raise KeyError(f"percentile {percentile:g} is not reported")
        return values[percentile]

    def ci(self, percentile: float) -> PercentileCI | None:
        """The interval of a ranked percentile, ``None`` when it was not ranked."""
        return next((c for c in self.ranked_cis if c.percentile == percentile), None)


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
    #: Energy per inference above the idle power (where a counter exists), mJ.
    energy_mj: float | None = None
    duration_s: float = 0.0
    exit_eces: tuple[float, ...] = ()
    #: The agent's whole time for the request (``duration_s`` plus unpacking the bundle and
    #: eval set and starting the measuring process); 0 where not recorded.
    agent_s: float = 0.0
    #: The idle power subtracted from ``energy_mj`` (mW); None where not measured.
    energy_idle_mw: float | None = None
    #: The package's whole energy per inference, idle power included (mJ).
    energy_package_mj: float | None = None

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
            "latency_converged": 1.0 if self.latency.converged else 0.0,
            "size_kb": self.size_kb,
            "peak_mem_mb": self.peak_mem_mb,
            "ece": self.ece,
        }
        if self.latency.cpu_share is not None:
            out["latency_cpu_share"] = self.latency.cpu_share
        for ci in self.latency.ranked_cis:
            out[f"latency_{ci.label}_ci_low_ms"] = ci.low_ms
            out[f"latency_{ci.label}_ci_high_ms"] = ci.high_ms
        for k, rate in enumerate(self.exit_rates):
            out[f"exit_rate_{k}"] = rate
        for k, ece in enumerate(self.exit_eces):
            out[f"ece_exit_{k}"] = ece
        if self.energy_mj is not None:
            out["energy_mj"] = self.energy_mj
            if self.energy_package_mj is not None:
                out["energy_package_mj"] = self.energy_package_mj
            if self.energy_idle_mw is not None:
                out["energy_idle_mw"] = self.energy_idle_mw
        return out


@dataclass(frozen=True)
class BundleRef:
    """One bundle of a :class:`ConfirmRequest`: ``key`` names it (the trial number).

    Example:
        >>> BundleRef(key=12, bundle_digest=digest, bundle=payload)  # doctest: +SKIP
    """

    key: int
    bundle_digest: str
    bundle: BundlePayload | ObjectRef[BundlePayload]


@dataclass(frozen=True)
class ConfirmRequest:
    """Several bundles timed by one agent in one process, interleaved in ``rounds`` rounds
    whose order is rotated each round (round ``r`` starts with bundle ``r mod len``); each
    bundle's turn in a round is ``runs_per_round`` timed runs. Accuracy is measured once per
    bundle over the eval set (the held-out test split). ``protocol`` gives the threads and the
    warm-up (and the ranked percentiles whose intervals are reported); its stopping rule is
    not used.

    Example:
        >>> ConfirmRequest(bundles=(BundleRef(key=0, bundle_digest=d0, bundle=p0),
        ...                         BundleRef(key=7, bundle_digest=d7, bundle=p7)),
        ...                eval_set_digest=e, eval_set=payload)  # doctest: +SKIP
    """

    bundles: tuple[BundleRef, ...]
    eval_set_digest: str
    eval_set: EvalSetPayload | ObjectRef[EvalSetPayload]
    protocol: MeasurementProtocol = MeasurementProtocol()
    rounds: int = 5
    runs_per_round: int = 1000

    def __post_init__(self) -> None:
        if not self.bundles:
            raise ValueError("a confirmation needs at least one bundle")
        keys = [b.key for b in self.bundles]
        if len(set(keys)) != len(keys):
            raise ValueError(f"bundle keys must be distinct, not {keys}")
        if self.rounds < 1 or self.runs_per_round < 1:
            raise ValueError(f"rounds and runs_per_round must be >= 1, not {self.rounds} and "
                             f"{self.runs_per_round}")


@dataclass(frozen=True)
class Confirmation:
    """What a confirmation measured: one :class:`Measurement` per bundle in the request's
    order (accuracy, ECE and exit rates from one pass over the eval set; latency over the
    samples of every round pooled; energy where a counter exists), and each round's p50 and
    p95 per bundle (``round_p50_ms[i][r]``: bundle ``i`` in round ``r``), to show how much a
    figure moved between rounds.

    Example:
        >>> confirmation = agent.confirm(request)  # doctest: +SKIP
        >>> base, best = confirmation.measurements[:2]  # doctest: +SKIP
        >>> base.latency.p95_ms / best.latency.p95_ms  # the speed-up, timed side by side
        2.1
    """

    measurements: tuple[Measurement, ...]
    round_p50_ms: tuple[tuple[float, ...], ...]
    round_p95_ms: tuple[tuple[float, ...], ...]
    rounds: int
    fingerprint: Mapping[str, Any] = field(default_factory=dict)
    agent_id: str = ""
    duration_s: float = 0.0
    #: the request's keys, in its order
    keys: tuple[int, ...] = ()
    #: the agent's whole time for the request; 0 where not recorded
    agent_s: float = 0.0

    def by_key(self) -> dict[int, Measurement]:
        """The measurements by their bundle's key."""
        return dict(zip(self.keys, self.measurements, strict=True))
