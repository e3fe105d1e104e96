"""The canary comparison: its verdict under the band and at p95, and ``deploy --canary`` /
``compare`` measuring two versions on a real local agent (Ray), interleaved in one run."""

from __future__ import annotations

import json
from pathlib import Path

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


@pytest.mark.slow
@pytest.mark.ray
def test_deploy_canary_measures_both_and_refuses_a_worse_newcomer(
        lin_study: Path, cli) -> None:
    runs = str(lin_study)
    first = cli("deploy", "lin", "--name", "lin", "--maximize", "accuracy", "--workdir", runs,
                cwd=lin_study)
    assert first.returncode == 0, first.stderr
    assert "lin@production -> version 1" in first.stdout
    # the fastest trial is a wrong model: registered, compared on the test split, refused
    second = cli("deploy", "lin", "--name", "lin", "--minimize", "latency_p95_ms", "--canary",
                 "--workdir", runs, "--format", "json", cwd=lin_study)
    assert second.returncode == 1, second.stdout + second.stderr
    refusal = second.stderr.strip().splitlines()[-1]  # after Ray's own warnings, if any
    assert refusal.startswith("error: lin@production stays at version 1: version 2 is "
                              "registered but refused: test accuracy")
    answer = json.loads(second.stdout)
    assert answer["version"] == "2" and answer["trial"] == "2" and not answer["moved"]
    result = answer["comparison"]
    assert result["holder"]["version"] == "1" and result["newcomer"]["version"] == "2"
    assert result["holder"]["test_accuracy"] == 1.0 and result["newcomer"]["test_accuracy"] < 0.5
    assert result["n_test"] == 80 and result["rounds"] == 3 and not result["accuracy_ok"]
    for side in ("holder", "newcomer"):
        assert 0 < result[side]["p50_ms"] <= result[side]["p95_ms"]
        assert len(result[side]["round_p95_ms"]) == 3
    listed = cli("deployments", "lin", "--workdir", runs, "--format", "json", cwd=lin_study)
    assert listed.returncode == 0, listed.stderr
    answer = json.loads(listed.stdout)
    assert answer["aliases"] == {"production": "1"}  # the alias stayed
    assert [v["trial"] for v in answer["versions"]] == ["1", "2"]
