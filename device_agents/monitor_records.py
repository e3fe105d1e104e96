"""What the device's monitor records and raises, as frozen dataclasses with their JSON forms.

One :class:`InferenceRecord` per inference, one :class:`WindowSummary` per window of
``MonitorSettings.window`` inferences, a :class:`MonitorEvent` when a window crosses a
threshold. The telemetry file holds them as JSON lines (``type``: ``inference``, ``window``,
``event``), after a header line; see docs/MONITORING.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from device_agents.errors import MonitorError

EventKind = Literal["latency_p95", "exit_rate_drift", "confidence_drift"]
EVENT_KINDS: tuple[EventKind, ...] = ("latency_p95", "exit_rate_drift", "confidence_drift")


@dataclass(frozen=True)
class MonitorSettings:
    """The monitor's windows and thresholds.

    ``window``: inferences per window (count-based, consecutive, non-overlapping);
    ``latency_factor``: a ``latency_p95`` event when the window's p95 exceeds the reference p95
    times this; ``exit_rate_tolerance``: an ``exit_rate_drift`` event when an exit's share of
    the window differs from the reference's by more than this (absolute); ``psi_threshold``: a
    ``confidence_drift`` event when the population stability index of the window's confidence
    histogram against the reference's exceeds this (0.1: a moderate shift, 0.25: a significant
    one); ``psi_epsilon`` replaces empty bins' shares in the index.

    Example:
        >>> MonitorSettings(window=100).psi_threshold
        0.25
    """

    window: int = 200
    latency_factor: float = 1.5
    exit_rate_tolerance: float = 0.1
    psi_threshold: float = 0.25
    psi_epsilon: float = 1e-4

    def __post_init__(self) -> None:
        if self.window < 2:
            raise MonitorError(f"monitor: window must be >= 2 inferences, got {self.window}")
        if not self.latency_factor > 0.0:
            raise MonitorError(f"monitor: latency_factor must be positive, got "
                               f"{self.latency_factor}")
        if not 0.0 < self.exit_rate_tolerance <= 1.0:
            raise MonitorError(f"monitor: exit_rate_tolerance must lie in (0, 1], got "
                               f"{self.exit_rate_tolerance}")
        if not self.psi_threshold > 0.0:
            raise MonitorError(f"monitor: psi_threshold must be positive, got "
                               f"{self.psi_threshold}")
        if not 0.0 < self.psi_epsilon < 0.1:
            raise MonitorError(f"monitor: psi_epsilon must lie in (0, 0.1), got "
                               f"{self.psi_epsilon}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MonitorSettings:
        defaults = cls()
        return cls(window=int(data.get("window", defaults.window)),
                   latency_factor=float(data.get("latency_factor", defaults.latency_factor)),
                   exit_rate_tolerance=float(data.get("exit_rate_tolerance",
                                                      defaults.exit_rate_tolerance)),
                   psi_threshold=float(data.get("psi_threshold", defaults.psi_threshold)),
                   psi_epsilon=float(data.get("psi_epsilon", defaults.psi_epsilon)))


@dataclass(frozen=True)
class InferenceRecord:
    """One inference: its number (from 0), latency, exit taken, the answering exit's
    calibrated confidence, and the fallback action that answered (``None``: the cascade)."""

    n: int
    latency_ms: float
    exit_index: int
    confidence: float
    fallback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": "inference", "n": self.n, "latency_ms": round(self.latency_ms, 6),
                "exit": self.exit_index, "confidence": round(self.confidence, 6),
                "fallback": self.fallback}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InferenceRecord:
        fallback = data.get("fallback")
        return cls(n=int(data["n"]), latency_ms=float(data["latency_ms"]),
                   exit_index=int(data["exit"]), confidence=float(data["confidence"]),
                   fallback=None if fallback is None else str(fallback))


@dataclass(frozen=True)
class WindowSummary:
    """One window of inferences.

    ``first``: the number of its first inference; ``partial``: the window closed before it
    was full (when the monitor was closed), so no event was raised on it. ``psi`` and the
    histogram are ``None`` without a reference (its bins are the reference's).
    """

    window: int
    first: int
    count: int
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    exit_rates: tuple[float, ...]
    confidence_mean: float
    confidence_hist: tuple[float, ...] | None
    psi: float | None
    fallback_rate: float
    fallbacks: Mapping[str, int]
    partial: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["exit_rates"] = list(self.exit_rates)
        data["confidence_hist"] = (None if self.confidence_hist is None
                                   else list(self.confidence_hist))
        data["fallbacks"] = dict(self.fallbacks)
        return {"type": "window", **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowSummary:
        hist, psi = data.get("confidence_hist"), data.get("psi")
        return cls(window=int(data["window"]), first=int(data["first"]),
                   count=int(data["count"]), latency_p50_ms=float(data["latency_p50_ms"]),
                   latency_p95_ms=float(data["latency_p95_ms"]),
                   latency_p99_ms=float(data["latency_p99_ms"]),
                   latency_max_ms=float(data["latency_max_ms"]),
                   exit_rates=tuple(float(v) for v in data["exit_rates"]),
                   confidence_mean=float(data["confidence_mean"]),
                   confidence_hist=None if hist is None else tuple(float(v) for v in hist),
                   psi=None if psi is None else float(psi),
                   fallback_rate=float(data["fallback_rate"]),
                   fallbacks={str(k): int(v) for k, v in dict(data["fallbacks"]).items()},
                   partial=bool(data.get("partial", False)))


@dataclass(frozen=True)
class MonitorEvent:
    """A window crossed a threshold.

    ``kind``: ``latency_p95`` (``observed`` the window's p95, ``expected`` the reference's,
    ``threshold`` their allowed value: expected times the factor), ``exit_rate_drift``
    (``exit_index``'s share, the reference's, the tolerance on their difference) or
    ``confidence_drift`` (the PSI, 0, the PSI threshold).
    """

    kind: EventKind
    window: int
    observed: float
    expected: float
    threshold: float
    exit_index: int | None = None

    def describe(self) -> str:
        if self.kind == "latency_p95":
            return (f"window {self.window}: latency p95 {self.observed:.3f} ms > "
                    f"{self.threshold:.3f} ms (measured p95 {self.expected:.3f} ms)")
        if self.kind == "exit_rate_drift":
            return (f"window {self.window}: exit {self.exit_index} rate {self.observed:.3f}, "
                    f"expected {self.expected:.3f} (tolerance {self.threshold:.3f})")
        return (f"window {self.window}: confidence PSI {self.observed:.3f} > "
                f"{self.threshold:.3f}")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "event", "kind": self.kind, "window": self.window,
                "observed": self.observed, "expected": self.expected,
                "threshold": self.threshold, "exit": self.exit_index}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MonitorEvent:
        kind = str(data["kind"])
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        exit_index = data.get("exit")
        return cls(kind=kind, window=int(data["window"]),
                   observed=float(data["observed"]), expected=float(data["expected"]),
                   threshold=float(data["threshold"]),
                   exit_index=None if exit_index is None else int(exit_index))


def population_stability_index(observed: tuple[float, ...] | list[float],
                               expected: tuple[float, ...] | list[float],
                               epsilon: float = 1e-4) -> float:
    """``sum_i (o_i - e_i) * ln(o_i / e_i)`` over the bins' shares, each share at least
    ``epsilon`` (an empty bin would make the index infinite).

    Example:
        >>> population_stability_index([0.5, 0.5], [0.5, 0.5])
        0.0
    """
    if len(observed) != len(expected):
        raise MonitorError(f"PSI: {len(observed)} observed bins for {len(expected)} expected")
    total = 0.0
    for o, e in zip(observed, expected, strict=True):
        o, e = max(o, epsilon), max(e, epsilon)
        total += (o - e) * math.log(o / e)
    return total
