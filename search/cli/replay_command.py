"""``paretoedge replay BUNDLE_DIR --config CONFIG``: a split through a bundle with a monitor.

Every sample of the config's test (or selection) split goes through
:class:`~device_agents.CascadeRunner.predict`, one at a time, with a
:class:`~device_agents.Monitor` writing telemetry, optionally after an input shift applied to
the raw samples (before the bundle's preprocessing): ``noise:SIGMA`` adds gaussian noise of
standard deviation ``SIGMA`` times the split's raw range (max - min), ``brightness:DELTA`` adds
``DELTA`` times that range; both are clipped to the range. See docs/MONITORING.md.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from rich.table import Table

from search.errors import OptionError

if TYPE_CHECKING:
    from device_agents import MonitorEvent, MonitorReference, WindowSummary

ShiftKind = Literal["none", "noise", "brightness"]
SPLITS = ("test", "selection")


@dataclass(frozen=True)
class InputShift:
    """A change of the raw input distribution, relative to the split's raw range.

    Example:
        >>> parse_shift("noise:0.2")
        InputShift(kind='noise', amount=0.2)
    """

    kind: ShiftKind = "none"
    amount: float = 0.0

    def apply(self, inputs: np.ndarray, seed: int = 0) -> np.ndarray:
        """The shifted raw samples, as float32, clipped to ``inputs``' range."""
        if self.kind == "none":
            return inputs
        low, high = float(inputs.min()), float(inputs.max())
        span = (high - low) or 1.0
        raw = inputs.astype(np.float32)
        if self.kind == "noise":
            rng = np.random.default_rng(seed)
            raw = raw + rng.normal(0.0, self.amount * span, size=raw.shape).astype(np.float32)
        else:
            raw = raw + np.float32(self.amount * span)
        return np.clip(raw, low, high).astype(np.float32)

    def describe(self) -> str:
        return "none" if self.kind == "none" else f"{self.kind}:{self.amount:g}"


def parse_shift(text: str | None) -> InputShift:
    """``noise:SIGMA`` (SIGMA > 0) or ``brightness:DELTA`` (DELTA != 0), both fractions of
    the raw range; ``None`` is no shift. A malformed value is an :class:`OptionError`."""
    if text is None:
        return InputShift()
    kind, _, value = text.partition(":")
    try:
        amount = float(value)
    except ValueError:
        amount = math.nan
    if kind == "noise" and amount > 0 and math.isfinite(amount):
        return InputShift("noise", amount)
    if kind == "brightness" and amount != 0 and math.isfinite(amount):
        return InputShift("brightness", amount)
    raise OptionError(f"--shift {text!r}: expected noise:SIGMA (SIGMA > 0) or "
                      f"brightness:DELTA (DELTA != 0), fractions of the raw input range")


@dataclass(frozen=True)
class ReplayReport:
    """What one replay saw: answers, fallbacks, exits, the monitor's windows and events."""

    bundle: Path
    telemetry: Path
    split: str
    shift: InputShift
    samples: int
    correct: int
    abstained: int
    fallbacks: dict[str, int]
    exit_counts: tuple[int, ...]
    windows: tuple[WindowSummary, ...]
    events: tuple[MonitorEvent, ...]
    reference: MonitorReference | None
    event_counts: dict[str, int] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """Correct answers over every sample (an abstention is not correct)."""
        return self.correct / self.samples

    @property
    def answered_accuracy(self) -> float | None:
        answered = self.samples - self.abstained
        return self.correct / answered if answered else None


def replay_bundle(bundle: Path, inputs: np.ndarray, labels: np.ndarray, *, telemetry: Path,
                  window: int, split: str = "test", shift: InputShift = InputShift(),
                  max_bytes: int = 10_000_000, sample_every: int = 1, seed: int = 0,
                  threads: int = 1) -> ReplayReport:
    """Run every sample through the bundle with a monitor writing ``telemetry``."""
    from device_agents import (
        BundleError,
        CascadeRunner,
        Monitor,
        MonitorSettings,
        TelemetryWriter,
        read_manifest,
    )

    manifest = read_manifest(bundle)
    wanted, given = math.prod(manifest.input.shape), math.prod(inputs.shape[1:])
    if wanted != given:
        raise BundleError(f"{bundle}: takes inputs of shape {list(manifest.input.shape)}; the "
                          f"{split} split's samples have shape {list(inputs.shape[1:])}")
    monitor = Monitor(settings=MonitorSettings(window=window),
                      telemetry=TelemetryWriter(telemetry, max_bytes=max_bytes,
                                                sample_every=sample_every))
    runner = CascadeRunner.load(bundle, threads=threads, monitor=monitor)
    shifted = shift.apply(inputs, seed)
    correct = abstained = 0
    exits: Counter[int] = Counter()
    try:
        for x, y in zip(shifted, labels, strict=True):
            prediction = runner.predict(x)
            correct += int(not prediction.abstained and prediction.label == int(y))
            abstained += int(prediction.abstained)
            exits[prediction.exit_index] += 1
    finally:
        monitor.close()
    return ReplayReport(
        bundle=bundle, telemetry=telemetry, split=split, shift=shift, samples=len(labels),
        correct=correct, abstained=abstained, fallbacks=dict(monitor.fallback_counts),
        exit_counts=tuple(exits[k] for k in range(runner.num_stages)),
        windows=tuple(monitor.windows), events=tuple(monitor.events),
        reference=monitor.reference, event_counts=dict(monitor.event_counts))


def replay_split(bundle: Path, config: Path, *, split: str, shift: InputShift,
                 telemetry: Path, window: int, max_bytes: int, sample_every: int,
                 seed: int) -> ReplayReport:
    """Load the config's data, take the split, and replay it (see :func:`replay_bundle`)."""
    from search.config import load_config
    from search.study.preparation import load_data

    if split not in SPLITS:
        raise OptionError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
    data = load_data(load_config(config))
    chosen = data.test_set() if split == "test" else data.selection_set()
    return replay_bundle(bundle, chosen.inputs, chosen.labels, telemetry=telemetry,
                         window=window, split=split, shift=shift, max_bytes=max_bytes,
                         sample_every=sample_every, seed=seed)


def replay_table(report: ReplayReport) -> Table:
    """The replay's summary: answers, fallbacks, exits against the reference, the windows."""
    table = Table(title=f"Replay of {report.bundle} on the {report.split} split "
                        f"(shift: {report.shift.describe()})", title_justify="left",
                  show_header=True)
    table.add_column("what", no_wrap=True)
    table.add_column("observed", justify="right")
    table.add_column("expected", justify="right")
    ref = report.reference
    table.add_row("samples", str(report.samples), "")
    table.add_row("accuracy (abstentions count as wrong)", f"{report.accuracy:.4f}",
                  "" if ref is None or ref.accuracy is None else f"{ref.accuracy:.4f}")
    answered = report.answered_accuracy
    table.add_row("accuracy of the answered", "-" if answered is None else f"{answered:.4f}", "")
    table.add_row("abstentions", str(report.abstained), "")
    for action, count in sorted(report.fallbacks.items()):
        table.add_row(f"fallback {action}", f"{count} ({count / report.samples:.1%})", "")
    for k, count in enumerate(report.exit_counts):
        expected = "" if ref is None else f"{ref.exit_rates[k]:.3f}"
        table.add_row(f"exit {k} rate", f"{count / report.samples:.3f}", expected)
    full = [w for w in report.windows if not w.partial]
    if full:
        table.add_row("window p95 latency, max (ms)",
                      f"{max(w.latency_p95_ms for w in full):.3f}",
                      "" if ref is None else f"{ref.latency_p95_ms:.3f}")
        psis = [w.psi for w in full if w.psi is not None]
        if psis:
            table.add_row("confidence PSI, max over windows", f"{max(psis):.3f}", "0")
    table.add_row("windows", f"{len(full)} full"
                  + (f" + {len(report.windows) - len(full)} partial"
                     if len(report.windows) > len(full) else ""), "")
    events = ", ".join(f"{kind} {count}" for kind, count in sorted(report.event_counts.items()))
    table.add_row("events", events or "none", "")
    table.caption = (f"telemetry: {report.telemetry}"
                     + ("" if ref is not None else
                        "; the bundle has no deployment reference, so no event was raised "
                        "(deploy it with paretoedge deploy)"))
    table.caption_justify = "left"
    return table
