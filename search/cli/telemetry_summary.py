"""``paretoedge monitor TELEMETRY...``: what devices' telemetry files say, against the reference.

Each file is summarised alone (:func:`summarise_telemetry`): latency percentiles of its
inference lines against the measured ones, exit rates against the expected, the confidence
drift (the PSI of the whole file's and of each window's confidence histogram), fallbacks and
events. The reference is the file's header's, or the one given with ``--against`` (a bundle's
deployment section), in which case the windows and events are computed again from the
inference lines when the file has every one. See docs/MONITORING.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.table import Table

if TYPE_CHECKING:
    from device_agents import (
        InferenceRecord,
        MonitorEvent,
        MonitorReference,
        TelemetryFile,
        WindowSummary,
    )


@dataclass(frozen=True)
class TelemetrySummary:
    """One telemetry file, summarised.

    ``latency_*`` are percentiles over the file's inference lines (``None`` without any);
    ``exit_rates`` and ``fallbacks`` weigh every window by its count; ``psi`` is the index of
    the whole file's confidence histogram against the reference's; ``recomputed``: the windows
    and events were computed again against ``--against``'s reference.
    """

    path: Path
    bundle_digest: str | None
    reference: MonitorReference | None
    inferences: int
    windows: tuple[WindowSummary, ...]
    events: tuple[MonitorEvent, ...]
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    exit_rates: tuple[float, ...]
    fallbacks: dict[str, int]
    psi: float | None
    recomputed: bool = False

    @property
    def fallback_rate(self) -> float:
        return sum(self.fallbacks.values()) / self.inferences if self.inferences else 0.0

    @property
    def max_window_psi(self) -> float | None:
        psis = [w.psi for w in self.windows if w.psi is not None and not w.partial]
        return max(psis) if psis else None


def _recomputed(telemetry: TelemetryFile, reference: MonitorReference
                ) -> tuple[tuple[WindowSummary, ...], tuple[MonitorEvent, ...]] | None:
    """Windows and events against ``reference`` from the inference lines, when the file has
    every one (not sampled) and says how many exits the bundle has."""
    from device_agents.monitor import summarise_window, window_events

    header = telemetry.header
    if header is None or header.sample_every != 1 or not telemetry.inferences:
        return None
    if len(reference.exit_rates) != header.num_exits:
        return None
    size = header.settings.window
    groups: dict[int, list[InferenceRecord]] = {}
    for record in telemetry.inferences:  # the device's window k holds n in [k*size, (k+1)*size)
        groups.setdefault(record.n // size, []).append(record)
    windows, events = [], []
    for index, chunk in sorted(groups.items()):
        summary = summarise_window(chunk, window=index, num_exits=header.num_exits,
                                   reference=reference, epsilon=header.settings.psi_epsilon,
                                   partial=len(chunk) < size)
        windows.append(summary)
        if not summary.partial:
            events += window_events(summary, reference, header.settings)
    return tuple(windows), tuple(events)


def summarise_telemetry(telemetry: TelemetryFile,
                        against: MonitorReference | None = None) -> TelemetrySummary:
    """Summarise one file, against its header's reference or ``against``."""
    from device_agents.deployment import confidence_histogram
    from device_agents.monitor_records import population_stability_index

    header = telemetry.header
    reference = against if against is not None else (header.reference if header else None)
    windows, events = telemetry.windows, telemetry.events
    recomputed = None if against is None else _recomputed(telemetry, against)
    if recomputed is not None:
        windows, events = recomputed
    counted = sum(w.count for w in windows)
    inferences = counted or len(telemetry.inferences)
    latencies = np.asarray([r.latency_ms for r in telemetry.inferences], dtype=np.float64)
    p50 = p95 = p99 = None
    if latencies.size:
        p50, p95, p99 = (float(v) for v in np.percentile(latencies, [50, 95, 99]))
    num_exits = (header.num_exits if header else
                 max((len(w.exit_rates) for w in windows), default=0))
    exit_rates: tuple[float, ...] = ()
    if counted:
        exit_rates = tuple(sum(w.exit_rates[k] * w.count for w in windows) / counted
                           for k in range(num_exits))
    elif telemetry.inferences:
        exits = np.asarray([r.exit_index for r in telemetry.inferences])
        exit_rates = tuple(float((exits == k).mean()) for k in range(num_exits))
    fallbacks: Counter[str] = Counter()
    for w in windows:
        fallbacks.update(w.fallbacks)
    psi = None
    if reference is not None:
        if telemetry.inferences:
            hist = confidence_histogram([r.confidence for r in telemetry.inferences],
                                        reference.confidence_edges)
            psi = population_stability_index(hist, reference.confidence_hist,
                                             header.settings.psi_epsilon if header else 1e-4)
        elif counted and all(w.confidence_hist is not None for w in windows):
            bins = len(reference.confidence_hist)
            if all(len(w.confidence_hist or ()) == bins for w in windows):
                hist = tuple(sum((w.confidence_hist or ())[b] * w.count for w in windows)
                             / counted for b in range(bins))
                psi = population_stability_index(hist, reference.confidence_hist)
    return TelemetrySummary(
        path=telemetry.path, bundle_digest=header.bundle_digest if header else None,
        reference=reference, inferences=inferences, windows=tuple(windows),
        events=tuple(events), latency_p50_ms=p50, latency_p95_ms=p95, latency_p99_ms=p99,
        exit_rates=exit_rates, fallbacks=dict(fallbacks), psi=psi,
        recomputed=recomputed is not None)


def _vs(observed: float | None, expected: float | None, digits: int = 3) -> str:
    if observed is None:
        return "-"
    text = f"{observed:.{digits}f}"
    return text if expected is None else f"{text} ({expected:.{digits}f})"


def summary_table(summaries: Sequence[TelemetrySummary]) -> Table:
    """One column per telemetry file, one row per figure; in parentheses what the study
    measured or expected (the reference)."""
    table = Table(title="Telemetry against the reference", title_justify="left",
                  caption="in parentheses: what the study measured or expected; PSI 0.1: a "
                          "moderate drift, 0.25: a significant one", caption_justify="left")
    table.add_column("", no_wrap=True)
    for s in summaries:
        table.add_column(str(s.path), justify="right", overflow="fold")
    refs = [s.reference for s in summaries]
    exits = max((len(s.exit_rates) for s in summaries), default=0)

    def row(label: str, cells: Sequence[str]) -> None:
        table.add_row(label, *cells)

    row("bundle", [(s.bundle_digest or "-")[:12] for s in summaries])
    row("inferences", [str(s.inferences) for s in summaries])
    row("windows", [f"{sum(not w.partial for w in s.windows)} full"
                    + (" (recomputed)" if s.recomputed else "") for s in summaries])
    row("latency p50 ms", [_vs(s.latency_p50_ms, r.latency_p50_ms if r else None)
                           for s, r in zip(summaries, refs, strict=True)])
    row("latency p95 ms", [_vs(s.latency_p95_ms, r.latency_p95_ms if r else None)
                           for s, r in zip(summaries, refs, strict=True)])
    row("latency p99 ms", [_vs(s.latency_p99_ms, None) for s in summaries])
    for k in range(exits):
        row(f"exit {k} rate", [
            _vs(s.exit_rates[k] if k < len(s.exit_rates) else None,
                r.exit_rates[k] if r is not None and k < len(r.exit_rates) else None)
            for s, r in zip(summaries, refs, strict=True)])
    row("confidence PSI", ["-" if s.psi is None else f"{s.psi:.3f}" for s in summaries])
    row("confidence PSI, max window", ["-" if s.max_window_psi is None
                                       else f"{s.max_window_psi:.3f}" for s in summaries])
    row("fallbacks", [(f"{s.fallback_rate:.1%} " + ", ".join(
        f"{a} {n}" for a, n in sorted(s.fallbacks.items()))).strip() for s in summaries])
    row("events", [", ".join(f"{k} {n}" for k, n in sorted(Counter(
        e.kind for e in s.events).items())) or "none" for s in summaries])
    return table


def events_table(summaries: Sequence[TelemetrySummary], limit: int = 30) -> Table | None:
    """The events, file by file, at most ``limit`` rows; ``None`` when there is none."""
    rows = [(s.path, e) for s in summaries for e in s.events]
    if not rows:
        return None
    table = Table(title=f"Events ({len(rows)}"
                        + (f", the first {limit} shown)" if len(rows) > limit else ")"),
                  title_justify="left")
    table.add_column("telemetry", no_wrap=True)
    table.add_column("window", justify="right")
    table.add_column("kind", no_wrap=True)
    table.add_column("what")
    for path, event in rows[:limit]:
        table.add_row(str(path), str(event.window), event.kind, event.describe())
    return table
