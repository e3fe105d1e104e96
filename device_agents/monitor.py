"""The monitor on the device: per-inference records, rolling windows, drift events.

:class:`Monitor` is given to :class:`~device_agents.cascade.CascadeRunner` (``monitor=``); the
runner calls :meth:`Monitor.bind` once with the bundle's digest and the reference from its
manifest, and :meth:`Monitor.record` after every ``predict``. Every ``window`` inferences
(consecutive, non-overlapping) the monitor summarises the window (latency p50/p95/p99, exit
rates, the confidence histogram on the reference's bins and its population stability index,
the fallback rate), raises its events, and writes both to the telemetry file. Memory is bounded
by one window of records and the last ``keep_windows`` summaries. See docs/MONITORING.md.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Sequence

import numpy as np

from device_agents.deployment_spec import (
    FALLBACK_ACTIONS,
    MonitorReference,
    confidence_histogram,
)
from device_agents.errors import MonitorError
from device_agents.monitor_records import (
    InferenceRecord,
    MonitorEvent,
    MonitorSettings,
    WindowSummary,
    population_stability_index,
)
from device_agents.telemetry import TelemetryWriter, new_header


class Monitor:
    """Watches one deployed bundle's inferences.

    ``reference``: what to compare against; ``None`` takes the manifest's
    (``deployment.reference``) when bound; without any, windows are summarised but raise no
    event. ``telemetry``: where the records go (``None``: kept in memory only).

    Example:
        >>> monitor = Monitor(settings=MonitorSettings(window=200),  # doctest: +SKIP
        ...                   telemetry=TelemetryWriter("telemetry.jsonl"))
        >>> runner = CascadeRunner.load("deploy/v1", monitor=monitor)  # doctest: +SKIP
        >>> runner.predict(raw); monitor.close()  # doctest: +SKIP
    """

    def __init__(self, *, settings: MonitorSettings = MonitorSettings(),
                 reference: MonitorReference | None = None,
                 telemetry: TelemetryWriter | None = None, keep_windows: int = 100) -> None:
        self.settings = settings
        self.reference = reference
        self.telemetry = telemetry
        self._explicit_reference = reference is not None
        self._records: deque[InferenceRecord] = deque(maxlen=settings.window)
        self.windows: deque[WindowSummary] = deque(maxlen=keep_windows)
        self.events: deque[MonitorEvent] = deque(maxlen=keep_windows * 4)
        self.event_counts: Counter[str] = Counter()
        self.fallback_counts: Counter[str] = Counter()
        self.inferences = 0
        self.num_exits = 0
        self.bundle_digest: str | None = None
        self._window_index = 0
        self._lock = threading.Lock()

    def bind(self, *, bundle_digest: str, num_exits: int,
             reference: MonitorReference | None = None, source_digest: str | None = None
             ) -> None:
        """Called by the runner once: the bundle watched, its exits and its manifest's
        reference (used unless the monitor was given one); starts the telemetry file."""
        if self.bundle_digest is not None:
            raise MonitorError("monitor: already watching a bundle (one monitor per runner)")
        if not self._explicit_reference:
            self.reference = reference
        if self.reference is not None and len(self.reference.exit_rates) != num_exits:
            raise MonitorError(f"monitor: the reference has {len(self.reference.exit_rates)} "
                               f"exit rates for a bundle of {num_exits} exits")
        self.bundle_digest, self.num_exits = bundle_digest, num_exits
        if self.telemetry is not None:
            self.telemetry.start(new_header(
                bundle_digest=bundle_digest, num_exits=num_exits, settings=self.settings,
                reference=self.reference, source_digest=source_digest,
                sample_every=self.telemetry.sample_every))

    def record(self, latency_ms: float, exit_index: int, confidence: float,
               fallback: str | None = None) -> None:
        """One inference: its latency, the exit that answered, that exit's calibrated
        confidence, and the fallback action that answered (``None``: the cascade did)."""
        if self.bundle_digest is None:
            raise MonitorError("monitor: record() before bind() (give it to a CascadeRunner)")
        with self._lock:
            item = InferenceRecord(n=self.inferences, latency_ms=latency_ms,
                                   exit_index=exit_index, confidence=confidence,
                                   fallback=fallback)
            self.inferences += 1
            if fallback is not None:
                self.fallback_counts[fallback] += 1
            self._records.append(item)
            if self.telemetry is not None:
                self.telemetry.inference(item)
            if len(self._records) == self.settings.window:
                self._close_window(partial=False)

    def close(self) -> None:
        """Summarise the last, partial window (no events on it) and close the telemetry."""
        with self._lock:
            if self._records:
                self._close_window(partial=True)
            if self.telemetry is not None:
                self.telemetry.close()

    @property
    def last_window(self) -> WindowSummary | None:
        with self._lock:
            return self.windows[-1] if self.windows else None

    def snapshot(self) -> tuple[int, WindowSummary | None, dict[str, int], dict[str, int]]:
        """Consistent totals for an exporter: inferences, the last window, fallback and
        event counts."""
        with self._lock:
            return (self.inferences, self.windows[-1] if self.windows else None,
                    dict(self.fallback_counts), dict(self.event_counts))

    def _close_window(self, *, partial: bool) -> None:
        records = list(self._records)
        self._records.clear()
        summary = summarise_window(records, window=self._window_index,
                                   num_exits=self.num_exits, reference=self.reference,
                                   epsilon=self.settings.psi_epsilon, partial=partial)
        self._window_index += 1
        self.windows.append(summary)
        if self.telemetry is not None:
            self.telemetry.window(summary)
        if partial or self.reference is None:
            return
        for event in window_events(summary, self.reference, self.settings):
            self.events.append(event)
            self.event_counts[event.kind] += 1
            if self.telemetry is not None:
                self.telemetry.event(event)


def summarise_window(records: Sequence[InferenceRecord], *, window: int, num_exits: int,
                     reference: MonitorReference | None, epsilon: float = 1e-4,
                     partial: bool = False) -> WindowSummary:
    """One window's summary (see :class:`WindowSummary`)."""
    if not records:
        raise MonitorError("monitor: a window needs at least one inference")
    latencies = np.asarray([r.latency_ms for r in records], dtype=np.float64)
    exits = np.asarray([r.exit_index for r in records], dtype=np.int64)
    confidences = np.asarray([r.confidence for r in records], dtype=np.float64)
    p50, p95, p99 = (float(v) for v in np.percentile(latencies, [50, 95, 99]))
    hist = psi = None
    if reference is not None:
        hist = confidence_histogram(confidences, reference.confidence_edges)
        psi = population_stability_index(hist, reference.confidence_hist, epsilon)
    fallbacks = Counter(r.fallback for r in records if r.fallback is not None)
    return WindowSummary(
        window=window, first=records[0].n, count=len(records), latency_p50_ms=p50,
        latency_p95_ms=p95, latency_p99_ms=p99, latency_max_ms=float(latencies.max()),
        exit_rates=tuple(float((exits == k).mean()) for k in range(num_exits)),
        confidence_mean=float(confidences.mean()), confidence_hist=hist, psi=psi,
        fallback_rate=sum(fallbacks.values()) / len(records),
        fallbacks={action: fallbacks[action] for action in FALLBACK_ACTIONS
                   if fallbacks[action]},
        partial=partial)


def window_events(summary: WindowSummary, reference: MonitorReference,
                  settings: MonitorSettings) -> list[MonitorEvent]:
    """The events a full window raises against the reference (see :class:`MonitorEvent`)."""
    events = []
    allowed = reference.latency_p95_ms * settings.latency_factor
    if reference.latency_p95_ms > 0.0 and summary.latency_p95_ms > allowed:
        events.append(MonitorEvent(kind="latency_p95", window=summary.window,
                                   observed=summary.latency_p95_ms,
                                   expected=reference.latency_p95_ms, threshold=allowed))
    for k, (observed, expected) in enumerate(zip(summary.exit_rates, reference.exit_rates,
                                                 strict=True)):
        if abs(observed - expected) > settings.exit_rate_tolerance:
            events.append(MonitorEvent(kind="exit_rate_drift", window=summary.window,
                                       observed=observed, expected=expected,
                                       threshold=settings.exit_rate_tolerance, exit_index=k))
    if summary.psi is not None and summary.psi > settings.psi_threshold:
        events.append(MonitorEvent(kind="confidence_drift", window=summary.window,
                                   observed=summary.psi, expected=0.0,
                                   threshold=settings.psi_threshold))
    return events
