"""The stopping rule: timing goes on until every ranked percentile is known well enough.

The timing here is scripted (no bundle runs, a fake clock advanced by each scripted sample), so
every stop is decided by the samples alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator

import numpy as np
import pytest

from device_agents import LatencyStats, Measurement, MeasurementProtocol, PercentileCI
from device_agents.energy import EnergyMeter
from device_agents.measure import (
    BundleTiming,
    latency_stats,
    median_ci,
    quantile_ci,
    quantile_ci_ranks,
    ranked_converged,
    time_until_converged,
)
from device_agents.metric_names import is_measured

MS = 1_000_000  # ns


class ScriptedTiming(BundleTiming):
    """Runs nothing: each run "takes" the next scripted sample (ns), by which the clock moves."""

    def __init__(self, samples_ns: Iterable[int]) -> None:
        self.now = 0
        self.script: Iterator[int] = iter(samples_ns)
        super().__init__(bundle=None, meter=EnergyMeter([]), clock=lambda: self.now)

    def run(self, runs: int, *, deadline_ns: int | None = None) -> list[int]:
        out = []
        for _ in range(runs):
            sample = next(self.script)
            self.now += sample
            out.append(sample)
            if deadline_ns is not None and self.now >= deadline_ns:
                break
        self.samples_ns.extend(out)
        return out


def constant(ms: float = 1.0) -> Iterator[int]:
    while True:
        yield int(ms * MS)


def tight_median_wide_tail(seed: int = 0) -> Iterator[int]:
    """85 % of the runs at 1 ms (+-0.1 %), 15 % spread over 1-20 ms: the median is known at
    once, the p95 (in the tail) not within 3000 runs."""
    rng = np.random.default_rng(seed)
    while True:
        if rng.random() < 0.85:
            yield int(MS * rng.uniform(0.999, 1.001))
        else:
            yield int(MS * rng.uniform(1.0, 20.0))


def protocol(**fields) -> MeasurementProtocol:
    base = {"warmup_runs": 0, "warmup_seconds": 0.0, "min_runs": 300, "max_runs": 3000,
            "round_runs": 100, "ci_rel_width": 0.02}
    return MeasurementProtocol(**{**base, **fields})


# --- the confidence interval of a quantile ---------------------------------------------------


def test_the_median_interval_is_the_one_measured_before():
    def old_median_ci(sorted_ms):  # the formula the median's CI always had
        n = len(sorted_ms)
        half = 1.959963984540054 * math.sqrt(n) / 2.0
        lo = max(math.floor(n / 2.0 - half), 0)
        hi = min(math.ceil(n / 2.0 + half), n - 1)
        return float(sorted_ms[lo]), float(sorted_ms[hi])

    for n in range(1, 2001):
        samples = np.arange(float(n))
        assert quantile_ci(samples, 0.5) == median_ci(samples) == old_median_ci(samples), n


def test_quantile_interval_ranks_follow_the_binomial():
    # 1000 samples, q = 0.95: 950 +- 1.96 * sqrt(1000 * 0.95 * 0.05) = 950 +- 13.5
    assert quantile_ci_ranks(1000, 0.95) == (936, 964)
    assert quantile_ci(np.arange(1000.0), 0.95) == (936.0, 964.0)
    # too few samples above p99 for an interval: the upper rank falls past the last sample
    assert quantile_ci_ranks(100, 0.99)[1] > 99
    assert quantile_ci(np.arange(100.0), 0.99)[1] == 99.0  # clipped to the largest sample


@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("n", [50, 400, 3000])
def test_quantile_interval_contains_the_sample_quantile(q, n):
    samples = np.sort(np.random.default_rng(n).lognormal(size=n))
    lo, hi = quantile_ci(samples, q)
    assert lo <= float(np.percentile(samples, q * 100)) <= hi


def test_the_p95_interval_covers_the_true_p95_about_95_percent_of_the_time():
    rng = np.random.default_rng(42)
    true_p95 = math.exp(1.6448536269514722)  # the standard lognormal's 95th percentile
    samples = np.sort(rng.lognormal(size=(4000, 500)), axis=1)
    lo, hi = quantile_ci_ranks(500, 0.95)
    covered = (samples[:, lo] <= true_p95) & (true_p95 <= samples[:, hi])
    assert 0.93 <= covered.mean() <= 0.975


def test_ranked_converged_needs_every_percentile_tight_and_unclipped():
    tail = np.sort(np.concatenate([np.full(850, 1.0), np.linspace(1.0, 20.0, 150)]))
    assert ranked_converged(tail, (50.0,), 0.02)
    assert not ranked_converged(tail, (95.0,), 0.02)
    assert not ranked_converged(tail, (50.0, 95.0), 0.02)
    assert ranked_converged(tail, (50.0, 95.0), 10.0)
    # a constant latency is known exactly, but p95 has no 95 % interval from 100 samples
    assert ranked_converged(np.ones(100), (50.0,), 0.0)
    assert not ranked_converged(np.ones(100), (95.0,), 1.0)
    assert ranked_converged(np.ones(200), (50.0, 95.0), 0.0)


# --- when timing stops -----------------------------------------------------------------------


def test_a_tight_median_stops_at_min_runs_when_the_median_is_ranked():
    timing = ScriptedTiming(tight_median_wide_tail())
    assert time_until_converged(timing, protocol(ranked_percentiles=(50.0,))) is True
    assert len(timing.samples_ns) == 300


@pytest.mark.parametrize("ranked", [(95.0,), (50.0, 95.0)])
def test_a_wide_tail_keeps_timing_to_max_runs_when_the_p95_is_ranked(ranked):
    timing = ScriptedTiming(tight_median_wide_tail())
    p = protocol(ranked_percentiles=ranked)
    assert time_until_converged(timing, p) is False
    assert len(timing.samples_ns) == 3000
    stats = latency_stats(timing.sorted_ms(), converged=False, ranked_percentiles=ranked)
    p95 = stats.ci(95.0)
    assert p95 is not None and p95.low_ms <= stats.p95_ms <= p95.high_ms
    assert (p95.high_ms - p95.low_ms) > p.ci_rel_width * stats.p95_ms
    assert [c.label for c in stats.ranked_cis] == [f"p{q:g}" for q in ranked]


def test_a_high_percentile_waits_for_enough_samples_above_it():
    # Constant latency: the median converges at min_runs; p99's interval exists only once its
    # upper rank n·0.99 + 1.96·√(n·0.99·0.01) is at most n - 1 (first at n = 570 in rounds of 10).
    p50 = ScriptedTiming(constant())
    assert time_until_converged(p50, protocol(min_runs=20, round_runs=10)) is True
    assert len(p50.samples_ns) == 20
    p99 = ScriptedTiming(constant())
    assert time_until_converged(
        p99, protocol(min_runs=20, round_runs=10, ranked_percentiles=(99.0,))) is True
    n = len(p99.samples_ns)
    assert quantile_ci_ranks(n, 0.99)[1] <= n - 1
    assert quantile_ci_ranks(n - 10, 0.99)[1] > n - 11  # the round before: no interval yet
    assert n == 570


def test_min_seconds_keeps_timing_until_that_much_time_was_timed():
    timing = ScriptedTiming(constant(1.0))
    # converged after 20 runs (20 ms), but 0.1 s of timing is asked for: 10 rounds of 10 runs
    assert time_until_converged(timing, protocol(min_runs=20, round_runs=10,
                                                 min_seconds=0.1)) is True
    assert len(timing.samples_ns) == 100


def test_max_seconds_stops_timing_unconverged_even_within_a_round():
    timing = ScriptedTiming(constant(1.0))
    assert time_until_converged(timing, protocol(min_runs=1000, round_runs=100,
                                                 max_seconds=0.035)) is False
    assert len(timing.samples_ns) == 35  # the run that passed 35 ms was the last
    assert timing.wall_s == pytest.approx(0.035)


def test_max_runs_stops_timing_unconverged():
    timing = ScriptedTiming(constant(1.0))
    assert time_until_converged(timing, protocol(min_runs=50, max_runs=45,
                                                 round_runs=10)) is False
    assert len(timing.samples_ns) == 45


# --- the protocol and the metrics ------------------------------------------------------------


def test_the_protocols_earlier_defaults_are_unchanged():
    p = MeasurementProtocol()
    assert (p.threads, p.warmup_runs, p.warmup_seconds, p.min_runs, p.max_runs, p.round_runs,
            p.ci_rel_width) == (1, 50, 0.2, 300, 3000, 100, 0.02)
    assert (p.ranked_percentiles, p.min_seconds, p.max_seconds, p.idle_seconds) == (
        (50.0,), 0.0, 0.0, 0.5)


def test_the_protocol_round_trips_through_json_and_reads_old_dicts():
    p = MeasurementProtocol(threads=2, min_runs=30, ranked_percentiles=(50, 95),
                            min_seconds=1.5, max_seconds=60.0, idle_seconds=0.0)
    assert p.ranked_percentiles == (50.0, 95.0)
    assert MeasurementProtocol.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    old = {"threads": 1, "warmup_runs": 5, "warmup_seconds": 0.0, "min_runs": 20,
           "max_runs": 200, "round_runs": 10, "ci_rel_width": 0.02}
    assert MeasurementProtocol.from_dict(old) == MeasurementProtocol(
        warmup_runs=5, warmup_seconds=0.0, min_runs=20, max_runs=200, round_runs=10)


@pytest.mark.parametrize("fields", [{"ranked_percentiles": (42.0,)},
                                    {"ranked_percentiles": ()},
                                    {"max_seconds": -1.0}, {"idle_seconds": -0.1}])
def test_the_protocol_refuses_what_it_cannot_do(fields):
    with pytest.raises(ValueError):
        MeasurementProtocol(**fields)


def test_metrics_report_convergence_and_each_ranked_interval():
    latency = LatencyStats(mean_ms=1.0, std_ms=0.1, p50_ms=1.0, p90_ms=1.2, p95_ms=1.3,
                           p99_ms=1.5, n=300, median_ci_low_ms=0.99, median_ci_high_ms=1.01,
                           converged=False,
                           ranked_cis=(PercentileCI(50.0, 0.99, 1.01),
                                       PercentileCI(95.0, 1.25, 1.4)))
    m = Measurement(bundle_digest="d", accuracy=0.9, n_eval=10, ece=0.0, exit_rates=(1.0,),
                    latency=latency, size_kb=1.0, peak_mem_mb=1.0, energy_mj=2.0,
                    energy_package_mj=3.0, energy_idle_mw=500.0)
    metrics = m.metrics()
    assert metrics["latency_converged"] == 0.0
    assert (metrics["latency_p95_ci_low_ms"], metrics["latency_p95_ci_high_ms"]) == (1.25, 1.4)
    assert (metrics["latency_p50_ci_low_ms"], metrics["latency_p50_ci_high_ms"]) == (0.99, 1.01)
    assert "latency_p99_ci_low_ms" not in metrics
    assert (metrics["energy_mj"], metrics["energy_package_mj"], metrics["energy_idle_mw"]) == (
        2.0, 3.0, 500.0)
    assert [name for name in metrics if not is_measured(name)] == []
    for q in (50, 90, 95, 99):
        assert is_measured(f"latency_p{q}_ci_low_ms") and is_measured(f"latency_p{q}_ci_high_ms")
    assert latency.ci(95.0) == PercentileCI(95.0, 1.25, 1.4) and latency.ci(99.0) is None


def test_a_real_measurement_stops_on_the_ranked_percentiles(make_bundle, cascade):
    from device_agents import EvalSet
    from device_agents.measure import measure_bundle

    directory, digest = make_bundle(cascade.TWO_STAGE, thresholds=(0.9,))
    eval_set = EvalSet(inputs=np.eye(4, dtype=np.float32), labels=np.arange(4) % 3)
    p = MeasurementProtocol(warmup_runs=5, warmup_seconds=0.0, min_runs=100, max_runs=400,
                            round_runs=50, ci_rel_width=0.05, ranked_percentiles=(50.0, 95.0))
    m = measure_bundle(directory, eval_set, p, expected_digest=digest)
    stats = m.latency
    assert [c.label for c in stats.ranked_cis] == ["p50", "p95"]
    assert stats.ci(50.0) == PercentileCI(50.0, stats.median_ci_low_ms, stats.median_ci_high_ms)
    for ci in stats.ranked_cis:
        value = stats.percentile_ms(ci.percentile)
        assert ci.low_ms <= value <= ci.high_ms
        if stats.converged:
            assert ci.high_ms - ci.low_ms <= p.ci_rel_width * value + 1e-12
    if not stats.converged:
        assert stats.n == p.max_runs
    assert m.metrics()["latency_converged"] == float(stats.converged)
    assert {"latency_p50_ci_low_ms", "latency_p95_ci_high_ms"} <= set(m.metrics())
