"""``paretoedge monitor``'s summaries: weights, percentiles, PSI, recomputation by window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device_agents import Monitor, MonitorSettings, TelemetryWriter, read_telemetry
from device_agents.deployment import MonitorReference
from device_agents.monitor_records import InferenceRecord, population_stability_index
from device_agents.telemetry import TelemetryFile, TelemetryHeader
from search.cli.telemetry_summary import summarise_telemetry

REFERENCE = MonitorReference(exit_rates=(0.5, 0.5), confidence_edges=(0.0, 0.5, 1.0),
                             confidence_hist=(0.5, 0.5), latency_p50_ms=1.0, latency_p95_ms=100.0)
SHIFTED = MonitorReference(exit_rates=(0.9, 0.1), confidence_edges=(0.0, 0.5, 1.0),
                           confidence_hist=(0.1, 0.9), latency_p50_ms=1.0, latency_p95_ms=100.0)


def _file(tmp_path: Path, n: int = 250, window: int = 100) -> Path:
    path = tmp_path / "t.jsonl"
    monitor = Monitor(settings=MonitorSettings(window=window), reference=REFERENCE,
                      telemetry=TelemetryWriter(path))
    monitor.bind(bundle_digest="d" * 64, num_exits=2)
    for i in range(n):
        monitor.record(float(i % 10), i % 2, 0.25 if i % 2 else 0.75,
                       "abstain" if i % 5 == 0 else None)
    monitor.close()
    return path


def test_a_file_is_summarised_against_its_header(tmp_path):
    summary = summarise_telemetry(read_telemetry(_file(tmp_path)))

    assert summary.reference == REFERENCE and not summary.recomputed
    assert summary.inferences == 250 and len(summary.windows) == 3
    assert summary.exit_rates == pytest.approx((0.5, 0.5))
    assert summary.fallbacks == {"abstain": 50} and summary.fallback_rate == pytest.approx(0.2)
    latencies = np.array([float(i % 10) for i in range(250)])
    assert (summary.latency_p50_ms, summary.latency_p95_ms, summary.latency_p99_ms) == \
        pytest.approx(tuple(np.percentile(latencies, [50, 95, 99])))
    assert summary.psi == pytest.approx(0.0, abs=1e-9) and not summary.events


def test_against_another_reference_the_windows_and_events_are_recomputed(tmp_path):
    summary = summarise_telemetry(read_telemetry(_file(tmp_path)), SHIFTED)

    assert summary.recomputed and summary.reference == SHIFTED
    assert [(w.window, w.partial) for w in summary.windows] == [(0, False), (1, False),
                                                                (2, True)]
    kinds = sorted({e.kind for e in summary.events})
    assert kinds == ["confidence_drift", "exit_rate_drift"]
    assert {e.window for e in summary.events} == {0, 1}  # none on the partial window
    assert summary.psi == pytest.approx(population_stability_index((0.5, 0.5), (0.1, 0.9)))


def test_recomputed_windows_follow_the_devices_numbering(tmp_path):
    """A rotated file starts mid-window: its records still fall in the device's windows."""
    header = TelemetryHeader(bundle_digest="d" * 64, num_exits=2,
                             settings=MonitorSettings(window=100))
    records = tuple(InferenceRecord(n=n, latency_ms=1.0, exit_index=n % 2, confidence=0.75)
                    for n in range(150, 350))
    telemetry = TelemetryFile(path=tmp_path / "t.jsonl.1", header=header, inferences=records)

    summary = summarise_telemetry(telemetry, REFERENCE)

    assert [(w.window, w.first, w.count, w.partial) for w in summary.windows] == [
        (1, 150, 50, True), (2, 200, 100, False), (3, 300, 50, True)]


def test_sampled_files_are_not_recomputed(tmp_path):
    path = tmp_path / "t.jsonl"
    monitor = Monitor(settings=MonitorSettings(window=10), reference=REFERENCE,
                      telemetry=TelemetryWriter(path, sample_every=3))
    monitor.bind(bundle_digest="d" * 64, num_exits=2)
    for i in range(30):
        monitor.record(1.0, i % 2, 0.75 if i % 2 else 0.25)
    monitor.close()

    summary = summarise_telemetry(read_telemetry(path), SHIFTED)
    assert not summary.recomputed and summary.inferences == 30  # every inference, in windows
    assert len(read_telemetry(path).inferences) == 10
