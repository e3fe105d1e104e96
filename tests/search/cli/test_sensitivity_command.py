"""``paretoedge sensitivity`` end to end, bad precisions in a config, and study seeding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from device_agents import FakeAgent, LatencyStats, Measurement, MeasureRequest
from search.config import load_config
from search.fleet.dispatch import InlineDispatcher
from search.study.runner import RunOptions, StudyRunner
from search.study.sensitivity import SEED_ATTR
from search.tracking.tracker import NullTracker
from search.workspace import Workspace, open_storage

ROOT = Path(__file__).resolve().parents[3]
AUTO = {"calibration_samples": 32, "groups": "auto"}


def paretoedge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.slow
def test_sensitivity_command(write_config, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    path = write_config(quantization=AUTO)
    done = paretoedge("sensitivity", str(path), "--workdir", str(tmp_path / "runs"),
                      "--samples", "60", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for group in ("first", "stage1", "last"):
        assert group in done.stdout
    assert "mixed configurations it suggests" in done.stdout

    saved = json.loads((tmp_path / "runs" / "tiny" / "sensitivity.json").read_text())
    assert saved["groups"] == ["first", "stage1", "last"]
    assert saved["split"] == "selection" and saved["samples"] == 60
    assert [(e["group"], e["precision"]) for e in saved["entries"]] == [
        ("first", "int8"), ("stage1", "int8"), ("last", "int8")]
    for entry in saved["entries"]:
        assert entry["drop"] == pytest.approx(saved["baseline_accuracy"] - entry["accuracy"])

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("paretoedge/tiny")
    runs = client.search_runs([experiment.experiment_id],
                              filter_string="tags.`paretoedge.role` = 'sensitivity'")
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    assert metrics["baseline_accuracy"] == pytest.approx(saved["baseline_accuracy"])
    assert metrics["drop.first.int8"] == pytest.approx(saved["entries"][0]["drop"])
    assert json.loads(runs[0].data.params["groups"]) == saved["groups"]


def test_a_precision_a_group_cannot_run_is_a_config_error(write_config, tmp_path: Path) -> None:
    path = write_config(quantization={**AUTO, "group_precisions": {"first": ["fp32", "int4_wo"]}})
    done = paretoedge("run", str(path), "--workdir", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "quantization.group_precisions.first" in lines[0]
    assert "layer group 'first' (operators: Conv x1, Gemm x1) cannot run int4_wo" in lines[0]
    assert not (tmp_path / "runs" / "cache" / "baseline").exists()  # failed before training


def test_an_unknown_module_in_a_group_is_a_config_error(write_config, tmp_path: Path) -> None:
    path = write_config(quantization={**AUTO, "groups": {"a": ["stages", "heads.9"]}})
    done = paretoedge("sensitivity", str(path), "--workdir", str(tmp_path / "runs"),
                      cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "quantization.groups.a: the model has no module 'heads.9'" in done.stderr


def fake_device() -> FakeAgent:
    def handler(request: MeasureRequest) -> Measurement:
        candidate = json.loads(request.bundle.files["manifest.json"])["provenance"]["candidate"]
        p95 = 1.0 - 0.1 * sum(q == "int8" for q in candidate["quantization"])
        latency = LatencyStats(mean_ms=p95, std_ms=0.01, p50_ms=p95, p90_ms=p95, p95_ms=p95,
                               p99_ms=p95, n=100, median_ci_low_ms=p95, median_ci_high_ms=p95,
                               converged=True)
        return Measurement(bundle_digest=request.bundle_digest, accuracy=0.95, n_eval=200,
                           ece=0.02, exit_rates=(1.0,), latency=latency, size_kb=10.0,
                           peak_mem_mb=10.0, agent_id="fake-0")

    return FakeAgent(handler)


@pytest.mark.slow
def test_the_study_is_seeded_from_the_sensitivity(write_config, tmp_path: Path) -> None:
    path = write_config(quantization={**AUTO, "seed_from_sensitivity": True, "seed_trials": 2})
    config = load_config(path)
    workspace = Workspace(tmp_path / "runs", config.study)

    def runner() -> StudyRunner:
        return StudyRunner(config, workspace, tracker=NullTracker(),
                           dispatcher_factory=lambda c, w: InlineDispatcher(fake_device()))

    summary = runner().run(RunOptions(trials=4))
    report = json.loads((workspace.study_dir / "sensitivity.json").read_text())
    assert report["samples"] == 150  # the whole selection split (half of validation)
    study = optuna.load_study(study_name="tiny", storage=open_storage(workspace.journal))
    seeds = study.user_attrs[SEED_ATTR]
    assert len(seeds) == 2
    assert summary.records[0].baseline
    # the two trials after the baseline are the seeds, other knobs at their baseline values
    assert [r.candidate for r in summary.records[1:3]] == [
        {"quantization": seed, "prune_ratio": 0.0, "exit_thresholds": []} for seed in seeds]
    assert all(r.complete for r in summary.records)

    # resuming neither recomputes nor seeds again
    (workspace.study_dir / "sensitivity.json").unlink()
    again = runner().run(RunOptions(trials=5))
    # a repeated candidate reuses its measurement and does not count against the budget
    assert sum(r.reused_from is None for r in again.records) == 5
    assert not (workspace.study_dir / "sensitivity.json").exists()
