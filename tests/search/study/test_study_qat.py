"""Quantization-aware finetuning inside a study: the param ``qat`` only on int8 trials, their
bundles finetuned with fake quantization (cache entries of their own), the metric and the
manifest saying so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from device_agents import FakeAgent, LatencyStats, Measurement, MeasureRequest
from search.config import load_config
from search.fleet.dispatch import InlineDispatcher
from search.study.runner import RunOptions, StudyRunner
from search.tracking.tracker import NullTracker
from search.workspace import Workspace


def _device() -> FakeAgent:
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


@pytest.mark.slow
def test_a_study_searches_qat_on_int8_trials(write_config, tmp_path: Path) -> None:
    path = write_config(search={"trials": 10, "sampler": "random", "seed": 1},
                        early_exit={"enabled": False},
                        pruning={"ratio_max": 0.5, "ratio_step": 0.5,
                                 "finetune": {"steps": 6, "train_subset": 128}},
                        quantization={"qat": [False, True]})
    config = load_config(path)
    workdir = tmp_path / "runs"
    runner = StudyRunner(config, Workspace(workdir, config.study),
                         dispatcher_factory=lambda c, w: InlineDispatcher(_device()),
                         tracker=NullTracker())
    records = runner.run(RunOptions(trials=10)).records
    assert all(r.complete for r in records)
    for r in records:
        int8 = "int8" in r.candidate["quantization"]
        assert ("qat" in r.params) == int8
        assert r.candidate.get("qat", False) == r.params.get("qat", False)
        assert ("qat" in r.metrics) == bool(r.candidate.get("qat"))
        provenance = json.loads((workdir / r.bundle / "manifest.json").read_text())[
            "provenance"]
        assert ("qat" in provenance) == bool(r.candidate.get("qat"))
    qat = [r for r in records if r.candidate.get("qat")]
    assert qat and any("int8" in r.candidate["quantization"] and not r.candidate.get("qat")
                       for r in records)
    metas = [json.loads(p.read_text()) for p in (workdir / "cache" / "pruned").glob("*/meta.json")]
    assert any("qat" in m for m in metas)
