"""Contended measurements (something else ran on the agent's core) are repeated, and the ones
that stay contended are kept and logged but never ranked."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from device_agents import FakeAgent, LatencyStats, Measurement, MeasureRequest
from search.config import load_config
from search.fleet.dispatch import InlineDispatcher
from search.results.pareto import ParetoFront
from search.results.query import best
from search.study.runner import RunOptions, StudyRunner
from search.tracking.tracker import NullTracker
from search.workspace import Workspace

MEASUREMENT = {"warmup_runs": 5, "warmup_seconds": 0.0, "min_runs": 20, "max_runs": 60,
               "round_runs": 20, "timeout_s": 120, "contention_pause_s": 0.0}


def device(cpu_share) -> FakeAgent:
    """A fake board whose CPU share for a bundle is ``cpu_share(candidate, attempt)``; pruned
    candidates are the fastest, so they would make the front."""
    attempts: Counter[str] = Counter()

    def handler(request: MeasureRequest) -> Measurement:
        candidate = json.loads(request.bundle.files["manifest.json"])["provenance"]["candidate"]
        attempts[request.bundle_digest] += 1
        p95 = 1.0 - candidate["prune_ratio"]
        latency = LatencyStats(mean_ms=p95, std_ms=0.01, p50_ms=p95, p90_ms=p95, p95_ms=p95,
                               p99_ms=p95, n=100, median_ci_low_ms=p95, median_ci_high_ms=p95,
                               converged=True,
                               cpu_share=cpu_share(candidate, attempts[request.bundle_digest]))
        return Measurement(bundle_digest=request.bundle_digest, accuracy=0.95, n_eval=200,
                           ece=0.02, exit_rates=(1.0,), latency=latency, size_kb=10.0,
                           peak_mem_mb=10.0, agent_id="fake-0")

    return FakeAgent(handler)


def run(write_config, tmp_path, agent: FakeAgent, trials: int = 5):
    config = load_config(write_config(measurement=MEASUREMENT))
    runner = StudyRunner(config, Workspace(tmp_path / "runs", config.study),
                         dispatcher_factory=lambda c, w: InlineDispatcher(agent),
                         tracker=NullTracker())
    return runner.run(RunOptions(trials=trials))


@pytest.mark.slow
def test_a_contended_measurement_is_repeated_and_the_clean_one_kept(write_config,
                                                                    tmp_path) -> None:
    agent = device(lambda candidate, attempt: 0.5 if attempt == 1 else 0.99)
    summary = run(write_config, tmp_path, agent)
    measured = [r for r in summary.records if r.complete and not r.reused]
    assert measured
    for r in measured:
        assert r.metrics["contention_retries"] == 1.0
        assert r.metrics["contended"] == 0.0 and not r.contended
        assert r.metrics["latency_cpu_share"] == pytest.approx(0.99)
    assert len(agent.requests) == 2 * len(measured)  # each measured twice


@pytest.mark.slow
def test_a_trial_that_stays_contended_is_kept_but_never_ranked(write_config, tmp_path) -> None:
    agent = device(lambda candidate, attempt: 0.5 if candidate["prune_ratio"] > 0 else 0.99)
    summary = run(write_config, tmp_path, agent, trials=6)
    contended = [r for r in summary.records if r.complete and r.contended]
    assert contended, "the sampler tried no pruned candidate"
    for r in contended:
        assert r.feasible  # within the band: only its measurement is in doubt
        assert r.metrics["contention_retries"] == 2.0  # the default retries, then kept
    assert not {r.number for r in contended} & summary.front.numbers
    assert all(not r.contended for r in summary.front.members)
    ranked = best(summary.records, minimize="latency_p95_ms")
    assert not ranked.contended
    asked = best(summary.records, minimize="latency_p95_ms", include_contended=True)
    assert asked.contended  # the fastest, when asked for
    with_them = ParetoFront.from_records(summary.records, 0.05, include_contended=True)
    assert {r.number for r in contended} & with_them.numbers
