"""Budgets and Ctrl-C in the study loop, against a fake device (real builds, fake timings)."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

import pytest
from rich.console import Console

from device_agents import FakeAgent, LatencyStats, Measurement, MeasureRequest
from search.config import load_config
from search.fleet.dispatch import InlineDispatcher
from search.records import INTERRUPTED
from search.study.budget import INTERRUPTED_BY_USER
from search.study.runner import RunOptions, StudyRunner
from search.tracking.tracker import NullTracker
from search.workspace import Workspace

from .test_study import measured

pytestmark = pytest.mark.slow


def fake_device(on_measure=None, flat: bool = False) -> FakeAgent:
    """Latency falls with pruning and int8 (or stays flat: nothing beats the baseline)."""

    def handler(request: MeasureRequest) -> Measurement:
        if on_measure is not None:
            on_measure(request)
        manifest = json.loads(request.bundle.files["manifest.json"])
        candidate = manifest["provenance"]["candidate"]
        ratio = candidate["prune_ratio"]
        int8 = sum(q == "int8" for q in candidate["quantization"])
        p95 = 1.0 if flat else (1 - ratio) * (1 - 0.2 * int8) + 0.01 * request.trial_number
        latency = LatencyStats(mean_ms=p95, std_ms=0.01, p50_ms=p95, p90_ms=p95, p95_ms=p95,
                               p99_ms=p95, n=100, median_ci_low_ms=p95, median_ci_high_ms=p95,
                               converged=True)
        return Measurement(bundle_digest=request.bundle_digest, accuracy=0.95 - 0.04 * ratio,
                           n_eval=200, ece=0.02, exit_rates=(1.0,), latency=latency,
                           size_kb=100.0 if flat else 100.0 * (1 - ratio), peak_mem_mb=10.0,
                           agent_id="fake-0")

    return FakeAgent(handler)


def runner(config_path: Path, workdir: Path, agent: FakeAgent) -> StudyRunner:
    config = load_config(config_path)
    return StudyRunner(config, Workspace(workdir, config.study),
                       dispatcher_factory=lambda c, w: InlineDispatcher(agent),
                       tracker=NullTracker(), console=Console(file=io.StringIO()))


def test_patience_stops_a_study_whose_front_does_not_improve(write_config, tmp_path) -> None:
    summary = runner(write_config(), tmp_path, fake_device(flat=True)).run(
        RunOptions(trials=20, patience=3))
    assert summary.stop_reason == "hypervolume did not improve for 3 trials"
    assert summary.hypervolume == 0.0
    # the baseline and three trials without improvement (nothing is built while a local agent
    # measures, so no fourth trial was built beside the third)
    assert sum(not r.reused for r in summary.records) == 4
    assert all(r.complete for r in summary.records)


def test_a_timeout_stops_asking_for_trials(write_config, tmp_path) -> None:
    summary = runner(write_config(), tmp_path, fake_device()).run(
        RunOptions(trials=20, timeout_s=1e-6))
    assert summary.stop_reason == "timeout reached"
    assert [r.baseline for r in summary.records] == [True]  # the baseline is always measured


def test_ctrl_c_lets_the_trial_in_flight_finish_and_stops(write_config, tmp_path) -> None:
    def press_ctrl_c(request: MeasureRequest) -> None:
        if request.trial_number == 2:
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    summary = runner(write_config(), tmp_path, fake_device(press_ctrl_c)).run(
        RunOptions(trials=10))
    assert signal.getsignal(signal.SIGINT) is before
    assert summary.stop_reason == INTERRUPTED_BY_USER and summary.interrupted
    assert [r.state for r in summary.records] == ["COMPLETE"] * 3  # trial 2 finished
    assert summary.front.members


def test_a_second_ctrl_c_aborts_and_the_aborted_trial_runs_again(write_config,
                                                                   tmp_path) -> None:
    def press_twice(request: MeasureRequest) -> None:
        if request.trial_number == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    path = write_config()
    first = runner(path, tmp_path, fake_device(press_twice)).run(RunOptions(trials=5))
    assert first.interrupted
    aborted = first.records[2]
    assert aborted.state == "FAIL" and aborted.fail_reason == INTERRUPTED and aborted.interrupted
    assert first.failed == 0  # an interrupted trial is not a failure of its candidate

    second = runner(path, tmp_path, fake_device()).run(RunOptions(trials=5))
    assert second.stop_reason == "trial budget reached"
    done = [r for r in second.records if r.complete and not r.reused]
    assert len(done) == 5
    assert [measured(r) for r in second.records[:2]] == [measured(r) for r in first.records[:2]]
    rerun = second.records[3]  # the aborted candidate comes first on resume
    assert rerun.complete and rerun.candidate == aborted.candidate
