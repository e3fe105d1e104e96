"""Pruning inside a study: per-stage ratios, MACs and parameters on every trial, one finetune
per configuration across resumes, and bad pruning input as one line with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import spaces.torch_model.builder as builder_module
from device_agents import FakeAgent, LatencyStats, Measurement, MeasureRequest
from search.config import load_config
from search.fleet.dispatch import InlineDispatcher
from search.study.preparation import build_settings
from search.study.runner import RunOptions, StudyRunner
from search.tracking.tracker import NullTracker
from search.workspace import Workspace

ROOT = Path(__file__).resolve().parents[3]


def _device() -> FakeAgent:
    """Latency proportional to the graph bytes; accuracy fixed (this test is about builds)."""

    def handler(request: MeasureRequest) -> Measurement:
        size = sum(len(d) for n, d in request.bundle.files.items() if n.endswith(".onnx"))
        ms = size / 1e5
        latency = LatencyStats(mean_ms=ms, std_ms=0.0, p50_ms=ms, p90_ms=ms, p95_ms=ms,
                               p99_ms=ms, n=10, median_ci_low_ms=ms, median_ci_high_ms=ms,
                               converged=True)
        return Measurement(bundle_digest=request.bundle_digest, accuracy=0.9, n_eval=10,
                           ece=0.0, exit_rates=(1.0,), latency=latency, size_kb=size / 1024,
                           peak_mem_mb=1.0, agent_id="fake")

    return FakeAgent(handler)


def _run(path: Path, workdir: Path, trials: int):
    config = load_config(path)
    runner = StudyRunner(config, Workspace(workdir, config.study),
                         dispatcher_factory=lambda c, w: InlineDispatcher(_device()),
                         tracker=NullTracker())
    return runner.run(RunOptions(trials=trials))


PER_STAGE = {"ratio_max": 0.5, "ratio_step": 0.25, "per_stage": True, "importance": "taylor",
             "taylor_batches": 2, "round_to": 4,
             "finetune": {"steps": 8, "train_subset": 256, "schedule": "cosine"}}


@pytest.mark.slow
def test_per_stage_study_logs_macs_and_finetunes_each_configuration_once(
        write_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finetuned = []
    real = builder_module.train_model

    def counting(model, *args, **kwargs):
        finetuned.append(tuple(m.out_channels for m in model.modules()
                               if type(m).__name__ == "Conv2d"))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(builder_module, "train_model", counting)
    path = write_config(pruning=PER_STAGE, search={"trials": 8, "sampler": "random", "seed": 3},
                        early_exit={"enabled": False}, quantization={"precisions": ["fp32"]})
    workdir = tmp_path / "runs"
    first = _run(path, workdir, 6)
    second = _run(path, workdir, 12)  # a resume: the same study, six more trials

    records = second.records
    assert all(r.complete for r in records)
    # a repeated configuration reuses its measurement: measured trials are distinct candidates,
    # at most the budget (fewer when the sampler ran out of new ones: "search space exhausted")
    measured = [r for r in records if not r.reused]
    assert len(measured) <= 12
    assert len({json.dumps(dict(r.candidate), sort_keys=True) for r in measured}) == len(measured)
    assert len(measured) == 12 or second.stop_reason.startswith("search space exhausted")
    baseline = records[0]
    assert baseline.baseline and baseline.candidate["prune_ratio"] == 0.0
    assert "stage_prune_ratios" not in baseline.candidate
    for r in records:  # macs_m and params_k for every trial, pruned ones smaller
        assert r.metrics["macs_m"] > 0 and r.metrics["params_k"] > 0
        ratios = r.candidate.get("stage_prune_ratios") or [r.candidate["prune_ratio"]] * 2
        if any(ratios):
            assert r.metrics["macs_m"] < baseline.metrics["macs_m"]
            assert r.metrics["params_k"] < baseline.metrics["params_k"]
        else:
            assert r.metrics["macs_m"] == baseline.metrics["macs_m"]
        if "stage_prune_ratios" in r.candidate:
            assert [r.metrics["prune_ratio_stage0"], r.metrics["prune_ratio_stage1"]] == ratios
            assert len(set(ratios)) == 2
        manifest = json.loads((workdir / r.bundle / "manifest.json").read_text())
        assert manifest["provenance"]["pruning"]["stage_ratios"] == ratios
    assert any("stage_prune_ratios" in r.candidate for r in records)

    configurations = {tuple(r.candidate.get("stage_prune_ratios")
                            or [r.candidate["prune_ratio"]] * 2) for r in records}
    pruned_configurations = [c for c in configurations if any(c)]
    # every pruned configuration was finetuned exactly once over both runs (the second run
    # read the first run's cache from disk), and the trials repeated some configurations
    assert len(finetuned) == len(pruned_configurations)
    assert len(set(finetuned)) == len(finetuned)
    assert len(records) - 1 > len(pruned_configurations)
    assert sum(not r.reused for r in first.records) <= 6


def _paretoedge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _one_line(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for word in words:
        assert word in lines[0]


@pytest.mark.slow
def test_an_unknown_layer_name_is_one_line_exit_2(write_config, tmp_path: Path) -> None:
    path = write_config(pruning={"ignored_layers": ["stages.0.0", "stages.4.conv"]})
    _one_line(_paretoedge("run", str(path), "--workdir", str(tmp_path / "runs"), cwd=tmp_path),
              "pruning.ignored_layers", "'stages.4.conv'")


@pytest.mark.parametrize(("pruning", "field"), [
    ({"ratio_max": 0.96}, "pruning.ratio_max"),
    ({"ratio_max": -0.5}, "pruning.ratio_max"),
    ({"importance": "random"}, "pruning.importance"),
    ({"round_to_by_device": {"local": 0}}, "pruning.round_to_by_device.local"),
    ({"finetune": {"schedule": "linear"}}, "pruning.finetune.schedule"),
    ({"finetune": {"steps": 0}}, "pruning.finetune.steps"),
])
def test_bad_pruning_fields_are_one_line_exit_2(write_config, tmp_path: Path, pruning: dict,
                                                field: str) -> None:
    path = write_config(pruning=pruning)
    _one_line(_paretoedge("validate", str(path), cwd=tmp_path), field)


def test_round_to_comes_from_the_device_class(write_config) -> None:
    by_device = {"round_to_by_device": {"rpi4": 4, "jetson": 16}}
    assert build_settings(load_config(write_config(pruning=by_device))).pruning.round_to == 8
    rpi = load_config(write_config(name="rpi.yaml", pruning=by_device, device={"class": "rpi4"}))
    assert build_settings(rpi).pruning.round_to == 4
    pinned = load_config(write_config(name="pinned.yaml", device={"class": "rpi4"},
                                      pruning={**by_device, "round_to": 2}))
    assert build_settings(pinned).pruning.round_to == 2


def test_finetune_defaults_come_from_the_model_training(write_config) -> None:
    config = load_config(write_config(model={"factory": "tiny_model.py:build_model",
                                             "train": {"epochs": 3, "batch_size": 32,
                                                       "seed": 7}},
                                      pruning={"finetune": {"epochs": 2}}))
    finetune = build_settings(config).finetune
    assert (finetune.batch_size, finetune.seed, finetune.epochs) == (32, 7, 2)
    assert (finetune.steps, finetune.train_subset, finetune.schedule) == (0, 0, "onecycle")
    assert finetune.distill_target == "final"
    tuned = load_config(write_config(name="tuned.yaml", pruning={"finetune": {
        "steps": 50, "train_subset": 300, "schedule": "cosine", "distill_target": "exit",
        "batch_size": 16, "seed": 2}}))
    finetune = build_settings(tuned).finetune
    assert (finetune.steps, finetune.train_subset, finetune.schedule, finetune.distill_target,
            finetune.batch_size, finetune.seed) == (50, 300, "cosine", "exit", 16, 2)
