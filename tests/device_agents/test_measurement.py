"""The measurement protocol: statistics, calibration, and a whole measurement of a tiny bundle."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from device_agents import (
    BundleIntegrityError,
    EvalSet,
    EvalSetError,
    EvalSetPayload,
    LatencyStats,
    Measurement,
    MeasurementProtocol,
)
from device_agents.measure import (
    expected_calibration_error,
    latency_stats,
    measure_bundle,
    median_ci,
)

# --- statistics ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 20, 101, 1000])
def test_median_ci_contains_the_median(n):
    samples = np.sort(np.random.default_rng(n).lognormal(size=n))
    lo, hi = median_ci(samples)
    assert lo <= float(np.median(samples)) <= hi
    assert lo in samples
    assert hi in samples


def test_median_ci_narrows_with_more_samples():
    widths = []
    for n in (20, 100, 1000, 10000):
        lo, hi = median_ci(np.linspace(0.0, 1.0, n))
        widths.append(hi - lo)
    assert widths == sorted(widths, reverse=True)
    assert len(set(widths)) == len(widths)
    # About 2 * 1.96 / (2 sqrt(n)) of the range for a uniform sample.
    assert widths[-1] == pytest.approx(1.96 / math.sqrt(10000), rel=0.1)


def test_latency_stats_of_a_known_sample():
    values = np.random.default_rng(0).permutation(np.arange(1.0, 101.0))
    stats = latency_stats(values, converged=True)
    assert stats.n == 100
    assert stats.converged is True
    assert stats.mean_ms == pytest.approx(50.5)
    assert stats.std_ms == pytest.approx(np.std(np.arange(1.0, 101.0), ddof=1))
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p95_ms == pytest.approx(95.05)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.median_ci_low_ms <= stats.p50_ms <= stats.median_ci_high_ms
    assert stats.ci_rel_width == pytest.approx(
        (stats.median_ci_high_ms - stats.median_ci_low_ms) / 50.5)
    assert latency_stats(values, converged=False).converged is False


def test_latency_stats_of_a_constant_sample():
    stats = latency_stats(np.full(30, 2.5), converged=True)
    assert (stats.mean_ms, stats.p50_ms, stats.p99_ms, stats.std_ms) == (2.5, 2.5, 2.5, 0.0)
    assert stats.ci_rel_width == 0.0


def test_ece_is_zero_for_perfectly_calibrated_bins():
    confidences = np.array([0.8] * 10 + [0.3] * 10)
    correct = np.array([True] * 8 + [False] * 2 + [True] * 3 + [False] * 7)
    assert expected_calibration_error(confidences, correct) == pytest.approx(0.0, abs=1e-12)


def test_ece_is_positive_for_miscalibrated_bins():
    overconfident = expected_calibration_error(np.full(10, 0.9),
                                               np.array([True] * 5 + [False] * 5))
    assert overconfident == pytest.approx(0.4)
    underconfident = expected_calibration_error(np.full(4, 0.5), np.ones(4, dtype=bool))
    assert underconfident == pytest.approx(0.5)
    # Bins are weighted by their share of the samples: half the samples off by 0.1.
    mixed = expected_calibration_error(np.array([0.95] * 10 + [0.2] * 10),
                                       np.array([True] * 10 + [True] * 2 + [False] * 8))
    assert mixed == pytest.approx(0.5 * 0.05)


# --- eval sets -------------------------------------------------------------------------------


def test_eval_set_payload_round_trip():
    eval_set = EvalSet(inputs=np.arange(12, dtype=np.float32).reshape(3, 4),
                       labels=np.array([0, 2, 1]))
    payload = EvalSetPayload.from_eval_set(eval_set)
    loaded = payload.load()
    np.testing.assert_array_equal(loaded.inputs, eval_set.inputs)
    np.testing.assert_array_equal(loaded.labels, eval_set.labels)
    assert loaded.labels.dtype == np.int64
    assert len(loaded) == 3
    assert EvalSetPayload.from_eval_set(eval_set).digest == payload.digest
    with pytest.raises(EvalSetError, match="sha256"):
        dataclasses.replace(payload, data=payload.data + b"x").load()
    with pytest.raises(EvalSetError):
        EvalSet.from_bytes(b"not an archive")


def test_eval_set_rejects_mismatched_labels():
    with pytest.raises(EvalSetError, match="labels"):
        EvalSet(inputs=np.zeros((3, 4), np.float32), labels=np.zeros(2, np.int64))
    with pytest.raises(EvalSetError, match="inputs"):
        EvalSet(inputs=np.zeros(3, np.float32), labels=np.zeros(3, np.int64))


# --- a whole measurement ---------------------------------------------------------------------


def labelled_eval_set() -> tuple[EvalSet, float, tuple[float, float]]:
    """10 samples for the standard two-stage cascade with threshold 0.9: 7 correct, 4 exit early.

    Returns the eval set, its expected accuracy and its expected exit rates.
    """
    rows = [
        # Confident at stage 0 (x0 = 50): predicted 0.
        ([50, 0, 0, 1], 0), ([50, 1, 0, 0], 0), ([50, 0, 1, 0], 0),
        ([50, 0, 0, 1], 2),                                   # wrong
        # Unsure at stage 0 (x0 = 0): predicted argmax(x1, x2, x3) at the last stage.
        ([0, 1, 0, 0], 0), ([0, 0, 1, 0], 1), ([0, 0, 0, 1], 2), ([0, 0.5, 2, -1], 1),
        ([0, 3, 0, 0], 1), ([0, 0, 0, 3], 0),                 # wrong, wrong
    ]
    inputs = np.array([r[0] for r in rows], dtype=np.float32)
    labels = np.array([r[1] for r in rows], dtype=np.int64)
    return EvalSet(inputs=inputs, labels=labels), 0.7, (0.4, 0.6)


def test_measure_bundle_on_a_tiny_bundle(make_bundle, cascade, fast_protocol):
    directory, digest = make_bundle(cascade.TWO_STAGE, thresholds=(0.9,))
    eval_set, accuracy, exit_rates = labelled_eval_set()

    m = measure_bundle(directory, eval_set, fast_protocol, expected_digest=digest,
                       agent_id="agent-7")

    assert isinstance(m, Measurement)
    assert m.bundle_digest == digest
    assert m.agent_id == "agent-7"
    assert m.accuracy == pytest.approx(accuracy)
    assert m.n_eval == len(eval_set) == 10
    assert m.exit_rates == pytest.approx(exit_rates)
    assert sum(m.exit_rates) == pytest.approx(1.0)
    assert 0.0 <= m.ece <= 1.0
    stats: LatencyStats = m.latency
    assert fast_protocol.min_runs <= stats.n <= fast_protocol.max_runs
    assert stats.n % fast_protocol.round_runs == 0
    assert 0.0 < stats.p50_ms <= stats.p90_ms <= stats.p95_ms <= stats.p99_ms
    assert stats.mean_ms > 0.0
    assert stats.median_ci_low_ms <= stats.p50_ms <= stats.median_ci_high_ms
    if stats.converged:
        assert stats.ci_rel_width <= fast_protocol.ci_rel_width + 1e-9
    else:
        assert stats.n == fast_protocol.max_runs
    stage_bytes = sum((directory / f"stage{k}.onnx").stat().st_size for k in range(2))
    assert m.size_kb == pytest.approx(stage_bytes / 1024.0)
    assert m.duration_s > 0.0
    assert m.energy_mj is None or m.energy_mj >= 0.0
    assert m.fingerprint["threads"] == fast_protocol.threads
    assert m.fingerprint["providers"] == ["CPUExecutionProvider"]
    assert "onnxruntime" in m.fingerprint

    metrics = m.metrics()
    for name in ("accuracy", "latency_mean_ms", "latency_p50_ms", "latency_p90_ms",
                 "latency_p95_ms", "latency_p99_ms", "size_kb", "peak_mem_mb", "ece",
                 "exit_rate_0", "exit_rate_1"):
        assert name in metrics
    assert metrics["exit_rate_0"] == pytest.approx(0.4)
    assert ("energy_mj" in metrics) == (m.energy_mj is not None)
    # the share of the timing the measuring process really ran (contention shows as < 1)
    assert 0.0 < stats.cpu_share <= 1.0 and metrics["latency_cpu_share"] == stats.cpu_share


def test_measure_bundle_ece_matches_the_predictions(make_bundle, cascade, fast_protocol):
    # Without exits every sample is decided by the last stage, whose softmax we can compute.
    directory, _ = make_bundle(cascade.TWO_STAGE)
    eval_set, _, _ = labelled_eval_set()
    m = measure_bundle(directory, eval_set, fast_protocol)

    logits = eval_set.inputs[:, 1:].astype(np.float64)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    correct = probabilities.argmax(axis=1) == eval_set.labels
    assert m.exit_rates == (0.0, 1.0)
    assert m.accuracy == pytest.approx(correct.mean())
    assert m.ece == pytest.approx(
        expected_calibration_error(probabilities.max(axis=1), correct), abs=1e-6)
    assert m.bundle_digest == ""


def test_measure_bundle_never_exceeds_max_runs(make_bundle, cascade):
    # max_runs is not a multiple of round_runs, and the CI can never be tight enough.
    protocol = MeasurementProtocol(warmup_runs=0, warmup_seconds=0.0, min_runs=25, max_runs=25,
                                   round_runs=10, ci_rel_width=0.0)
    directory, _ = make_bundle(cascade.TWO_STAGE)
    eval_set, _, _ = labelled_eval_set()
    assert measure_bundle(directory, eval_set, protocol).latency.n == 25


def test_measure_bundle_checks_the_digest(make_bundle, cascade, fast_protocol):
    directory, _ = make_bundle(cascade.TWO_STAGE)
    eval_set, _, _ = labelled_eval_set()
    with pytest.raises(BundleIntegrityError):
        measure_bundle(directory, eval_set, fast_protocol, expected_digest="f" * 64)


def test_protocol_round_trips_through_a_dict():
    protocol = MeasurementProtocol(threads=2, warmup_runs=1, warmup_seconds=0.5, min_runs=30,
                                   max_runs=90, round_runs=15, ci_rel_width=0.05)
    assert MeasurementProtocol.from_dict(protocol.to_dict()) == protocol
