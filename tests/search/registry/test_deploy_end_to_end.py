"""Issue 16's done-when on a tiny study, through the CLI as a new user runs it: the study's
best bundle deployed, pulled, replayed with a monitor over the test split and over noisy
inputs (drift and events in ``paretoedge monitor``), a worse second version compared and
refused by ``--canary`` (the comparison's figures in its JSON), and the alias rolled back.
Real Ray agents, real MLflow on sqlite, real onnxruntime. The study is a copy of the
session's end-to-end study (``e2e_study``, also read by tests/search/cli/test_end_to_end.py),
so that no second one is trained and run here. The commands that start Ray agents (``run``,
``deploy --canary``, ``compare``) run as CLI processes; the others run the same CLI app in
this process (Typer's runner), which spares a Python start with torch and MLflow each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.e2e]


def paretoedge(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "search.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})
    return done


def in_process(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    """``paretoedge`` with ``args`` through the CLI app in this process, in ``cwd``, as a
    :class:`subprocess.CompletedProcess`."""
    from typer.testing import CliRunner

    from search.cli.app import app

    argv = [str(a) for a in args]
    before = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, argv, env={"COLUMNS": "200"})
    finally:
        os.chdir(before)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(argv, result.exit_code, result.stdout, stderr)


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_deploy_pull_watch_refuse_and_roll_back(tmp_path: Path, e2e_study, tiny_project) -> None:
    # the session's study "e2e" as its run left it: config.yaml, tiny_model.py, runs/
    e2e_study.copy_to(tmp_path)
    config = tmp_path / "config.yaml"
    # the worse newcomer: the same data and model, trained one epoch at a tiny learning rate;
    # a comparison with it is timed in the rounds of its study's confirm settings
    weak = tiny_project(tmp_path, "weak", "weak.yaml",
                        model={"factory": "tiny_model.py:build_model",
                               "train": {"epochs": 1, "lr": 1e-4}},
                        confirm={"rounds": 3, "runs_per_round": 100})
    ok(paretoedge("run", weak, "--trials", 1, "--no-confirm", cwd=tmp_path))

    # deploy the best bundle, with an abstaining fallback, and pull it onto "the device"
    out = ok(in_process("deploy", "e2e", "--name", "tiny", "--where", "latency_p95_ms < 1000",
                        "--maximize", "accuracy", "--fallback-below", 0.5,
                        "--fallback-action", "abstain", cwd=tmp_path))
    assert "tiny@production -> version 1" in out
    out = ok(in_process("pull", "tiny@production", "device", cwd=tmp_path))
    assert "every file's sha256 verified" in out

    # watch it: the held-out test split, then the same inputs with noise
    ok(in_process("replay", "device", "--config", config, "--telemetry", "calm.jsonl",
                  "--window", 100, cwd=tmp_path))
    ok(in_process("replay", "device", "--config", config, "--telemetry", "noisy.jsonl",
                  "--window", 100, "--shift", "noise:0.5", cwd=tmp_path))
    out = ok(in_process("monitor", "calm.jsonl", "noisy.jsonl", "--against", "tiny@production",
                        "--html", "monitor.html", cwd=tmp_path))
    assert "against: tiny@production" in out and "confidence_drift" in out
    from device_agents import read_telemetry

    noisy = read_telemetry(tmp_path / "noisy.jsonl")
    assert "confidence_drift" in {e.kind for e in noisy.events}, noisy.events
    assert noisy.header is not None and noisy.header.reference is not None
    assert (tmp_path / "monitor.html").stat().st_size > 0

    # a worse second version: compared on the device (the test split, interleaved rounds),
    # refused by --canary, the alias stays
    refused = paretoedge("deploy", "weak", "--name", "tiny", "--maximize", "accuracy",
                         "--canary", "--format", "json", cwd=tmp_path)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith(
        "error: tiny@production stays at version 1: version 2 is registered but refused: "
        "test accuracy")
    answer = json.loads(refused.stdout)
    assert answer["version"] == "2" and answer["trial"] == "0" and not answer["moved"]
    result = answer["comparison"]
    assert result["holder"]["version"] == "1" and result["newcomer"]["version"] == "2"
    assert result["newcomer"]["test_accuracy"] < result["holder"]["test_accuracy"] - 0.02
    # the 200-sample test split, in the newcomer's study's rounds (confirm.rounds: 3)
    assert result["n_test"] == 200 and result["rounds"] == 3 and not result["accuracy_ok"]
    for side in ("holder", "newcomer"):
        assert 0 < result[side]["p50_ms"] <= result[side]["p95_ms"]
        assert len(result[side]["round_p95_ms"]) == 3
    out = ok(paretoedge("compare", "tiny@production", "tiny@2", "--device", "local",
                        cwd=tmp_path))
    assert "refused: tiny@2 (version 2) against tiny@production (version 1)" in out

    # a third version takes the alias; rolling back gives it to version 1 again
    out = ok(in_process("deploy", "e2e", "--name", "tiny", "--minimize", "size_kb",
                        cwd=tmp_path))
    assert "tiny@production -> version 3 (was version 1)" in out
    out = ok(in_process("rollback", "tiny", cwd=tmp_path))
    assert "tiny@production -> version 1 (was version 3)" in out
    listed = json.loads(ok(in_process("deployments", "tiny", "--format", "json",
                                      cwd=tmp_path)))
    assert listed["aliases"] == {"production": "1"}
    assert [(v["study"], v["version"]) for v in listed["versions"]] == [
        ("e2e", "1"), ("weak", "2"), ("e2e", "3")]
