"""``front`` and ``best`` rank a stored study under the objectives stored with it (user attr
``objectives``), and a study stored before that attr under the defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna

from search.objective_set import OBJECTIVES_ATTR
from search.workspace import Workspace, open_storage

ROOT = Path(__file__).resolve().parents[3]
#: trial: (accuracy, p95, mean, size); trial 2 is the cascade: the lowest mean, the highest p95
TRIALS = {0: (0.95, 1.0, 0.9, 100.0), 1: (0.95, 0.8, 0.7, 60.0), 2: (0.95, 1.1, 0.4, 70.0)}


def paretoedge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def store_study(workdir: Path, name: str, objectives: dict[str, str] | None) -> None:
    study = optuna.create_study(study_name=name, directions=["maximize", "minimize"],
                                storage=open_storage(Workspace(workdir, name).journal))
    if objectives is not None:
        study.set_user_attr(OBJECTIVES_ATTR, objectives)
    study.set_user_attr("max_accuracy_drop", 0.01)
    for number, (accuracy, p95, mean, size) in TRIALS.items():
        metrics = {"accuracy": accuracy, "latency_p95_ms": p95, "latency_mean_ms": mean,
                   "size_kb": size, "accuracy_drop": 0.95 - accuracy}
        study.add_trial(optuna.trial.create_trial(
            values=[accuracy, mean], constraints={"accuracy_band": -0.01},
            user_attrs={"metrics": metrics, "baseline": number == 0,
                        "candidate": {"quantization": ["fp32"], "prune_ratio": 0.0,
                                      "exit_thresholds": [0.9] if number == 2 else []},
                        "bundle": f"{name}/bundles/trial_{number:04d}"}))


def front_numbers(workdir: Path, name: str) -> list[int]:
    done = paretoedge("front", name, "--workdir", str(workdir), "--format", "json",
                      cwd=workdir)
    assert done.returncode == 0, done.stderr
    return [row["trial"] for row in json.loads(done.stdout)]


def test_front_and_best_read_the_objectives_stored_with_the_study(tmp_path: Path) -> None:
    store_study(tmp_path, "mean", {"accuracy": "max", "latency_mean_ms": "min"})
    store_study(tmp_path, "old", None)  # from before the attr: the default objectives
    assert front_numbers(tmp_path, "mean") == [2]
    assert front_numbers(tmp_path, "old") == [1]
    # every trial is as accurate: the tie goes along the study's objectives (accuracy last)
    for name, chosen in (("mean", 2), ("old", 1)):
        done = paretoedge("best", name, "--workdir", str(tmp_path), "--maximize", "accuracy",
                          "--format", "json", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["trial"] == chosen
    table = paretoedge("front", "mean", "--workdir", str(tmp_path), cwd=tmp_path)
    assert table.returncode == 0 and "Feasible Pareto front of mean" in table.stdout
