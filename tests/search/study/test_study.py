"""The study loop against a fake device: real builds, deterministic measurements."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from device_agents import FakeAgent, LatencyStats, Measurement, MeasureRequest
from search.config import load_config
from search.errors import SearchError
from search.fleet.dispatch import InlineDispatcher
from search.metrics import CONFIRMATION_METRICS
from search.study.runner import INTERRUPTED, RunOptions, StudyRunner
from search.tracking.tracker import NullTracker
from search.workspace import Workspace, open_storage


def fake_device(fail_when=None):
    """A device whose latency falls with pruning, int8 and exits, and accuracy with pruning."""

    def handler(request: MeasureRequest) -> Measurement:
        manifest = json.loads(request.bundle.files["manifest.json"])
        candidate = manifest["provenance"]["candidate"]
        if fail_when and fail_when(candidate):
            raise RuntimeError("the board rebooted")
        ratio = candidate["prune_ratio"]
        int8 = sum(q == "int8" for q in candidate["quantization"])
        p95 = 1.0 * (1 - ratio) * (1 - 0.2 * int8) * (0.8 if candidate["exit_thresholds"] else 1)
        size = sum(len(data) for name, data in request.bundle.files.items()
                   if name.endswith(".onnx")) / 1024
        latency = LatencyStats(mean_ms=p95 * 0.8, std_ms=0.01, p50_ms=p95 * 0.7,
                               p90_ms=p95 * 0.9, p95_ms=p95, p99_ms=p95 * 1.1, n=100,
                               median_ci_low_ms=p95 * 0.69, median_ci_high_ms=p95 * 0.71,
                               converged=True)
        return Measurement(bundle_digest=request.bundle_digest, accuracy=0.95 - 0.04 * ratio,
                           n_eval=200, ece=0.02, exit_rates=(1.0,), latency=latency,
                           size_kb=size, peak_mem_mb=10.0, agent_id="fake-0")

    return FakeAgent(handler)


def measured(record) -> dict[str, float]:
    """A trial's metrics without what the end-of-run confirmation adds."""
    return {k: v for k, v in record.metrics.items() if k not in CONFIRMATION_METRICS}


def runner_for(config_path: Path, workdir: Path, agent: FakeAgent) -> StudyRunner:
    config = load_config(config_path)
    return StudyRunner(config, Workspace(workdir, config.study),
                       dispatcher_factory=lambda c, w: InlineDispatcher(agent),
                       tracker=NullTracker())


@pytest.mark.slow
def test_study_runs_the_baseline_first_and_respects_the_budget(write_config, tmp_path) -> None:
    agent = fake_device()
    summary = runner_for(write_config(), tmp_path / "runs", agent).run(RunOptions(trials=5))
    assert sum(not r.reused for r in summary.records) == 5 == len(agent.requests)
    baseline = summary.records[0]
    assert baseline.baseline and baseline.number == 0 and baseline.complete
    assert baseline.candidate == {"quantization": ["fp32", "fp32"], "prune_ratio": 0.0,
                                  "exit_thresholds": []}
    assert baseline.metrics["accuracy_drop"] == 0.0
    for r in summary.records:
        assert r.complete
        # the band is 5 pp below the baseline's 0.95 (fake accuracy 0.95 - 0.04 * ratio)
        assert r.feasible == (r.metrics["accuracy"] >= 0.95 - 0.05 - 1e-12)
        assert r.metrics["accuracy_drop"] == pytest.approx(0.95 - r.metrics["accuracy"])
        assert (tmp_path / "runs" / r.bundle / "manifest.json").is_file()
        assert {"prune_ratio", "int8_groups", "macs_m", "params_k", "build_s"} <= set(r.metrics)
    assert summary.front.members and summary.front.baseline is baseline
    # where the driver's time went: phases that add up to its wall time, kept in the study
    timing = summary.timing
    assert timing is not None and timing.seconds["build"] > 0 and timing.seconds["tell"] > 0
    assert sum(timing.seconds.values()) + timing.other_s == pytest.approx(timing.wall_s)
    study = optuna.load_study(study_name="tiny", storage=open_storage(
        Workspace(tmp_path / "runs", "tiny").journal))
    assert study.user_attrs["timing"]["overhead_s"] == pytest.approx(timing.overhead_s)


@pytest.mark.slow
def test_a_failed_measurement_is_a_failed_trial_and_the_study_goes_on(write_config,
                                                                     tmp_path) -> None:
    agent = fake_device(fail_when=lambda c: c["prune_ratio"] > 0)
    path = write_config(pruning={"ratio_max": 0.5, "ratio_step": 0.25})
    summary = runner_for(path, tmp_path / "runs", agent).run(RunOptions(trials=6))
    assert sum(not r.reused for r in summary.records) == 6
    failed = [r for r in summary.records if r.state == "FAIL"]
    assert all("the board rebooted" in (r.fail_reason or "") for r in failed)
    assert all(r.candidate["prune_ratio"] > 0 for r in failed)
    assert summary.failed == len(failed)
    assert all(r.complete for r in summary.records if r.candidate["prune_ratio"] == 0)


@pytest.mark.slow
def test_a_failed_build_is_a_failed_trial(write_config, tmp_path, monkeypatch) -> None:
    from spaces import BuildError, TorchBuilder

    real = TorchBuilder.graphs

    def graphs(self, pruned, quantization, cascade, **options):
        if cascade:
            raise BuildError("exporter exploded")
        return real(self, pruned, quantization, cascade)

    monkeypatch.setattr(TorchBuilder, "graphs", graphs)
    summary = runner_for(write_config(), tmp_path / "runs", fake_device()).run(
        RunOptions(trials=8))
    failed = [r for r in summary.records if r.state == "FAIL"]
    assert failed, "the sampler should have tried early exits in 8 trials"
    assert all(r.candidate["exit_thresholds"] for r in failed)
    assert all(r.fail_reason == "build failed: exporter exploded" for r in failed)
    assert sum(not r.reused for r in summary.records) == 8


def test_a_baseline_that_cannot_be_measured_stops_the_study(write_config, tmp_path) -> None:
    agent = fake_device(fail_when=lambda c: True)
    with pytest.raises(SearchError, match="baseline could not be measured"):
        runner_for(write_config(), tmp_path / "runs", agent).run(RunOptions(trials=3))


@pytest.mark.slow
def test_resume_reruns_trials_left_running_and_completes_the_budget(write_config,
                                                                   tmp_path) -> None:
    import optuna

    path = write_config()
    workdir = tmp_path / "runs"
    first = runner_for(path, workdir, fake_device()).run(RunOptions(trials=3))
    assert sum(not r.reused for r in first.records) == 3
    # A driver killed mid-trial leaves a RUNNING trial behind.
    study = optuna.load_study(study_name="tiny",
                              storage=open_storage(Workspace(workdir, "tiny").journal))
    orphan = study.ask({"quant_stage0": optuna.distributions.CategoricalDistribution(
        ["fp32", "int8"])})
    params = dict(orphan.params)
    second = runner_for(path, workdir, fake_device()).run(RunOptions(trials=5))
    by_number = {r.number: r for r in second.records}
    assert by_number[orphan.number].state == "FAIL"
    assert by_number[orphan.number].fail_reason == INTERRUPTED
    # the first three trials are intact, and five trials completed in all
    assert [measured(by_number[n]) for n in range(3)] == [measured(r) for r in first.records]
    assert sum(r.complete and not r.reused for r in second.records) == 5
    assert sum(r.baseline for r in second.records) == 1
    rerun = [r for r in second.records if r.number > orphan.number]
    assert any(r.candidate["quantization"][0] == params["quant_stage0"] for r in rerun)


def test_a_repeated_candidate_reuses_its_measurement_and_an_exhausted_space_stops(
        write_config, tmp_path) -> None:
    from search.study.budget import SPACE_EXHAUSTED
    from search.study.runner import EXHAUSTED_AFTER_REPEATS

    # One point: fp32 everywhere, no pruning, no exits. Every trial after the baseline repeats it.
    path = write_config(quantization={"precisions": ["fp32"]}, pruning={"ratio_max": 0.0},
                        early_exit={"enabled": False})
    agent = fake_device()
    summary = runner_for(path, tmp_path / "runs", agent).run(RunOptions(trials=5))
    assert len(agent.requests) == 1  # measured once
    assert summary.stop_reason == SPACE_EXHAUSTED
    repeats = [r for r in summary.records if r.reused]
    assert len(repeats) == EXHAUSTED_AFTER_REPEATS
    baseline = summary.records[0]
    for r in repeats:
        assert r.reused_from == baseline.number and r.complete and not r.finished
        assert dict(r.metrics) == measured(baseline)
        assert r.bundle == baseline.bundle and r.feasible
    assert summary.front.numbers == {baseline.number}  # repeats stay off the front


@pytest.mark.slow
def test_repeats_do_not_count_against_the_budget(write_config, tmp_path) -> None:
    path = write_config(quantization={"precisions": ["fp32", "int8"]},
                        pruning={"ratio_max": 0.0}, early_exit={"enabled": False})
    agent = fake_device()  # 2 groups x 2 precisions = 4 distinct candidates
    summary = runner_for(path, tmp_path / "runs", agent).run(RunOptions(trials=4))
    measured = [r for r in summary.records if not r.reused]
    assert len(measured) == len(agent.requests) == 4
    assert len({json.dumps(dict(r.candidate), sort_keys=True) for r in measured}) == 4
