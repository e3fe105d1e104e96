"""The device monitor: windows, percentiles, exit rates, PSI, events, bounds, Prometheus."""

from __future__ import annotations

import math
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from device_agents import (
    CascadeRunner,
    Monitor,
    MonitorError,
    MonitorSettings,
    PrometheusExporter,
    TelemetryWriter,
    read_telemetry,
)
from device_agents.deployment import (
    FallbackPolicy,
    MonitorReference,
    deployed_copy,
    reference_from_evaluation,
)
from device_agents.monitor_records import population_stability_index

REFERENCE = MonitorReference(exit_rates=(0.5, 0.5), confidence_edges=(0.0, 0.5, 0.8, 1.0),
                             confidence_hist=(0.2, 0.3, 0.5), latency_p50_ms=1.0,
                             latency_p95_ms=2.0, accuracy=0.9)


def _bound(window: int = 10, reference: MonitorReference | None = REFERENCE,
           telemetry: TelemetryWriter | None = None, **settings: float) -> Monitor:
    monitor = Monitor(settings=MonitorSettings(window=window, **settings),  # type: ignore[arg-type]
                      reference=reference, telemetry=telemetry)
    monitor.bind(bundle_digest="d" * 64, num_exits=2)
    return monitor


def _feed_like_the_reference(monitor: Monitor, windows: int = 1, latency: float = 1.0) -> None:
    """Inferences whose exit rates and confidence histogram are exactly the reference's."""
    confidences = [0.3] * 2 + [0.6] * 3 + [0.9] * 5
    for _ in range(windows):
        for i, c in enumerate(confidences):
            monitor.record(latency, i % 2, c)


def test_psi_is_the_documented_formula():
    observed, expected = [0.1, 0.4, 0.5], [0.3, 0.3, 0.4]
    by_hand = sum((o - e) * math.log(o / e) for o, e in zip(observed, expected, strict=True))

    assert population_stability_index(observed, expected) == pytest.approx(by_hand)
    assert population_stability_index(expected, expected) == 0.0
    # an empty bin counts as epsilon, not as an infinite index
    assert population_stability_index([0.0, 1.0], [0.5, 0.5], 1e-4) == pytest.approx(
        (1e-4 - 0.5) * math.log(1e-4 / 0.5) + 0.5 * math.log(2))


def test_a_window_like_the_reference_raises_nothing():
    monitor = _bound()
    _feed_like_the_reference(monitor, windows=3)

    assert len(monitor.windows) == 3 and not monitor.events
    window = monitor.windows[0]
    assert window.count == 10 and window.exit_rates == (0.5, 0.5)
    assert window.confidence_hist == pytest.approx((0.2, 0.3, 0.5))
    assert window.psi == pytest.approx(0.0, abs=1e-12)
    assert (window.first, monitor.windows[2].first) == (0, 20)


def test_latency_p95_past_the_factor_raises_an_event():
    monitor = _bound(latency_factor=1.5)
    _feed_like_the_reference(monitor, latency=2.9)  # below 3.0 = 2.0 * 1.5: nothing
    _feed_like_the_reference(monitor, latency=3.5)

    assert [(e.kind, e.window) for e in monitor.events] == [("latency_p95", 1)]
    event = monitor.events[0]
    assert (event.observed, event.expected, event.threshold) == pytest.approx((3.5, 2.0, 3.0))
    assert monitor.windows[1].latency_p95_ms == pytest.approx(3.5)


def test_percentiles_are_those_of_the_window():
    monitor = _bound(window=100, reference=None)
    for i in range(100):
        monitor.record(float(i), 0, 0.9)

    window = monitor.windows[0]
    latencies = np.arange(100.0)
    assert (window.latency_p50_ms, window.latency_p95_ms, window.latency_p99_ms) == \
        pytest.approx(tuple(np.percentile(latencies, [50, 95, 99])))
    assert window.latency_max_ms == 99.0 and window.psi is None and not monitor.events


def test_an_exit_rate_past_the_tolerance_raises_an_event_per_exit():
    monitor = _bound(exit_rate_tolerance=0.1)
    for i, c in enumerate([0.3] * 2 + [0.6] * 3 + [0.9] * 5):
        monitor.record(1.0, 0 if i < 7 else 1, c)  # exit 0 answers 0.7, not 0.5

    kinds = [(e.kind, e.exit_index) for e in monitor.events]
    assert kinds == [("exit_rate_drift", 0), ("exit_rate_drift", 1)]
    assert monitor.events[0].observed == pytest.approx(0.7)
    assert monitor.events[0].expected == 0.5 and monitor.events[0].threshold == 0.1


def test_a_confidence_shift_raises_confidence_drift():
    monitor = _bound(psi_threshold=0.25)
    for i in range(10):
        monitor.record(1.0, i % 2, 0.3 if i < 8 else 0.9)  # mostly unsure now

    assert [e.kind for e in monitor.events] == ["confidence_drift"]
    expected = population_stability_index([0.8, 0.0, 0.2], [0.2, 0.3, 0.5])
    assert monitor.events[0].observed == pytest.approx(expected)
    assert monitor.windows[0].psi == pytest.approx(expected)


def test_the_last_partial_window_is_summarised_without_events(tmp_path: Path):
    monitor = _bound(telemetry=TelemetryWriter(tmp_path / "t.jsonl"))
    for _ in range(4):
        monitor.record(50.0, 0, 0.1)  # far off the reference in every respect
    monitor.close()

    assert len(monitor.windows) == 1 and monitor.windows[0].partial
    assert monitor.windows[0].count == 4 and not monitor.events
    assert read_telemetry(tmp_path / "t.jsonl").windows[0].partial


def test_memory_is_bounded_by_a_window_and_the_kept_summaries():
    monitor = Monitor(settings=MonitorSettings(window=10), reference=REFERENCE, keep_windows=5)
    monitor.bind(bundle_digest="d" * 64, num_exits=2)
    for i in range(1000):
        monitor.record(5.0, 0, 0.1 + (i % 9) / 10)

    assert monitor.inferences == 1000
    assert len(monitor.windows) == 5 and monitor.windows[-1].window == 99
    assert len(monitor._records) == 0  # the bound itself is the point
    assert len(monitor.events) <= 20 and monitor.event_counts["latency_p95"] == 100


def test_fallbacks_are_counted_per_window_and_in_total():
    monitor = _bound()
    for i in range(10):
        monitor.record(1.0, i % 2, 0.9, "abstain" if i < 3 else None)

    assert monitor.windows[0].fallback_rate == pytest.approx(0.3)
    assert dict(monitor.windows[0].fallbacks) == {"abstain": 3}
    assert monitor.fallback_counts["abstain"] == 3


def test_misuse_is_a_monitor_error():
    with pytest.raises(MonitorError, match="before bind"):
        Monitor().record(1.0, 0, 0.5)
    monitor = _bound()
    with pytest.raises(MonitorError, match="already watching"):
        monitor.bind(bundle_digest="e" * 64, num_exits=2)
    with pytest.raises(MonitorError, match="2 exit rates for a bundle of 3 exits"):
        Monitor(reference=REFERENCE).bind(bundle_digest="d" * 64, num_exits=3)
    with pytest.raises(MonitorError, match="window must be >= 2"):
        MonitorSettings(window=1)


def test_the_runner_reports_every_prediction_with_the_manifest_reference(make_bundle, cascade,
                                                                         tmp_path):
    source, _ = make_bundle(cascade.TWO_STAGE, thresholds=(0.8,), name="source")
    rng = np.random.default_rng(0)
    selection = rng.uniform(-3, 3, size=(400, 4)).astype(np.float32)
    evaluation = CascadeRunner.load(source).evaluate(selection, np.zeros(400, dtype=np.int64))
    reference = reference_from_evaluation(evaluation, 0.05, 100.0)  # no latency events
    target = tmp_path / "deployed"
    deployed_copy(source, target, fallback=FallbackPolicy(0.5, "abstain"), reference=reference)
    telemetry = TelemetryWriter(tmp_path / "t.jsonl")
    monitor = Monitor(settings=MonitorSettings(window=200), telemetry=telemetry)
    runner = CascadeRunner.load(target, monitor=monitor)

    same = rng.uniform(-3, 3, size=(400, 4)).astype(np.float32)
    shifted = same.copy()
    shifted[:, 0] += 4.0  # exit 0 now answers nearly everything, very confidently
    predictions = [runner.predict(x) for x in np.concatenate([same, shifted])]
    monitor.close()

    assert monitor.reference == reference  # taken from the manifest
    assert monitor.inferences == 800 and len(monitor.windows) == 4
    kinds = {(e.window, e.kind) for e in monitor.events}
    assert not {k for w, k in kinds if w < 2}, "the unshifted windows raised events"
    assert {(2, "exit_rate_drift"), (2, "confidence_drift"), (3, "confidence_drift")} <= kinds
    read = read_telemetry(tmp_path / "t.jsonl")
    assert read.header is not None and read.header.reference == reference
    assert read.header.bundle_digest != read.header.source_digest
    assert [r.exit_index for r in read.inferences] == [p.exit_index for p in predictions]
    assert sum(r.fallback == "abstain" for r in read.inferences) == sum(
        p.abstained for p in predictions) > 0
    assert all(r.latency_ms > 0 for r in read.inferences)


def test_prometheus_text_is_served_on_loopback_and_stops(tmp_path):
    monitor = _bound()
    _feed_like_the_reference(monitor)
    monitor.record(1.0, 0, 0.2, "escalate")

    with PrometheusExporter(monitor, port=0) as exporter:
        assert exporter.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(exporter.url, timeout=10) as response:
            body = response.read().decode()
            content_type = response.headers["Content-Type"]
        port = exporter.port

    assert content_type.startswith("text/plain; version=0.0.4")
    assert "paretoedge_inferences_total 11\n" in body
    assert 'paretoedge_fallbacks_total{action="escalate"} 1\n' in body
    assert 'paretoedge_window_latency_ms{quantile="0.95"} 1\n' in body
    assert 'paretoedge_window_exit_rate{exit="1"} 0.5\n' in body
    assert "paretoedge_window_confidence_psi" in body
    assert 'paretoedge_events_total{kind="confidence_drift"} 0\n' in body
    with pytest.raises(OSError):  # stopped: nothing listens any more
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
