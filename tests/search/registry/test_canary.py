"""The canary comparison's verdict under the band and at p95. ``deploy --canary`` and
``compare`` measuring two versions on a real local agent (Ray), interleaved in one run, are
in test_deploy_end_to_end.py (on a trained study: the refusal, its JSON, the alias kept)."""

from __future__ import annotations

import pytest

from search.registry.canary import Comparison, VersionFigures


def figures(version: str, accuracy: float, rounds: tuple[float, ...]) -> VersionFigures:
    return VersionFigures(ref=f"lin@{version}", version=version, test_accuracy=accuracy,
                          p50_ms=0.01, p95_ms=max(rounds), mean_ms=0.01, energy_mj=None,
                          round_p95_ms=rounds)


def comparison(holder: VersionFigures, newcomer: VersionFigures) -> Comparison:
    return Comparison(holder=holder, newcomer=newcomer, band=0.02, p95_tolerance=0.05, rounds=3,
                      runs_per_round=100, n_test=80, agent_id="a", device_class="local")


def test_the_verdict_is_the_band_and_the_median_round_ratio_at_p95() -> None:
    holder = figures("1", 0.95, (1.0, 1.0, 1.0))
    inside = comparison(holder, figures("2", 0.93, (1.0, 1.04, 3.0)))  # one slow round
    assert inside.p95_ratio == pytest.approx(1.04)
    assert inside.accepted and inside.reasons() == []
    assert inside.verdict().startswith("accepted: lin@2 (version 2) against lin@1")
    worse = comparison(holder, figures("2", 0.92, (1.2, 1.3, 0.9)))
    assert not worse.accuracy_ok and not worse.latency_ok and not worse.accepted
    assert worse.reasons() == [
        "test accuracy 0.9200 is below the holder's 0.9500 minus the band 0.02",
        "p95 latency 1.20x the holder's (more than 1.05x: slower)"]
    assert worse.to_dict()["accepted"] is False
