"""A tiny study end to end, as a user runs it: the CLI, a real Ray agent, MLflow on sqlite.

Resuming after SIGKILL and Ctrl-C, and the MLflow server, are in test_end_to_end_resume.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.search.conftest import E2E_TRIALS as TRIALS

ROOT = Path(__file__).resolve().parents[3]
pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.e2e]


def paretoedge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def study(e2e_study):
    """The session's small study, run once through the CLI, for every assertion below."""
    return e2e_study.directory, e2e_study.stdout


def test_the_run_prints_the_feasible_front(study) -> None:
    _, stdout = study
    assert "Feasible Pareto front of e2e" in stdout
    assert "trial   0" in stdout and f"trial   {TRIALS - 1}" in stdout


def test_every_trial_was_measured_by_the_agent(study) -> None:
    from search.workspace import Workspace, load_records

    directory, _ = study
    records, attrs = load_records(Workspace(directory / "runs", "e2e"))
    assert sum(not r.reused for r in records) == TRIALS  # repeats reuse a measurement
    assert records[0].baseline and attrs["baseline_accuracy"] == records[0].metrics["accuracy"]
    for r in records:
        assert r.complete, r.fail_reason
        m = r.metrics
        assert 0 < m["latency_p50_ms"] <= m["latency_p95_ms"] <= m["latency_p99_ms"]
        assert m["latency_n"] >= 20
        # accuracy is a count over the 150-sample selection split (half of validation), one
        # sample at a time; the 200 test samples are only measured by the confirmation
        assert m["accuracy"] * 150 == pytest.approx(round(m["accuracy"] * 150))
        assert m["size_kb"] > 0 and m["peak_mem_mb"] > 0
        assert sum(m[k] for k in m if k.startswith("exit_rate_")) == pytest.approx(1.0)
        assert r.agent_id and r.agent_id.startswith("local-")
        assert r.fingerprint["onnxruntime"] and r.fingerprint["threads"] == 1


def test_mlflow_holds_the_parent_run_the_trials_and_their_tags(study) -> None:
    from mlflow.tracking import MlflowClient

    from search.tracking.mlflow_store import tracking_uri

    directory, _ = study
    client = MlflowClient(tracking_uri=tracking_uri(directory / "runs"))
    experiment = client.get_experiment_by_name("paretoedge/e2e")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("paretoedge.role") == "study"]
    children = [r for r in runs if r.data.tags.get("paretoedge.role") == "trial"]
    assert len(parents) == 1
    assert sum("reused_from" not in r.data.tags for r in children) == TRIALS
    parent_id = parents[0].info.run_id
    assert all(r.data.tags["mlflow.parentRunId"] == parent_id for r in children)
    assert all(r.data.tags["feasible"] in ("true", "false") for r in children)
    assert sum(r.data.tags["baseline"] == "true" for r in children) == 1
    pareto = {int(r.data.tags["trial_number"]) for r in children
              if r.data.tags["pareto"] == "true"}
    front = paretoedge("front", "e2e", "--workdir", str(directory / "runs"), "--format", "json",
                       cwd=directory)
    assert front.returncode == 0, front.stderr
    assert pareto == {row["trial"] for row in json.loads(front.stdout)}
    metric_names = set(children[0].data.metrics)
    assert {"accuracy", "accuracy_drop", "latency_p95_ms", "size_kb", "prune_ratio",
            "peak_mem_mb", "ece"} <= metric_names
    assert "hypervolume" in parents[0].data.metrics


def test_best_returns_a_bundle_the_runtime_loads_and_runs(study, tmp_path) -> None:
    from device_agents import CascadeRunner

    directory, _ = study
    runs = str(directory / "runs")
    done = paretoedge("best", "e2e", "--workdir", runs, "--where", "latency_p95_ms < 1000",
                      "--maximize", "accuracy", "--format", "json", "--export",
                      str(tmp_path / "deploy"), cwd=directory)
    assert done.returncode == 0, done.stderr
    chosen = json.loads(done.stdout)
    assert chosen["feasible"] and chosen["state"] == "COMPLETE"
    for path in (chosen["bundle_path"], chosen["exported_to"]):
        runner = CascadeRunner.load(path, expected_digest=chosen["bundle_digest"])
        prediction = runner.predict(np.full((1, 8, 8), 8.0, dtype=np.float32))
        assert 0 <= prediction.label < 10
    assert (Path(chosen["exported_to"]) / "README.md").is_file()
    nothing = paretoedge("best", "e2e", "--workdir", runs, "--where", "latency_p95_ms < 1e-9",
                         "--maximize", "accuracy", cwd=directory)
    assert nothing.returncode == 1
    assert nothing.stderr.strip().count("\n") == 0 and "no feasible trial" in nothing.stderr


def test_the_front_is_confirmed_on_the_test_split_in_one_process(study) -> None:
    """At the end of the run the baseline and the front were timed again interleaved by one
    agent and evaluated on the held-out test split; the confirmed figures reach MLflow."""
    from mlflow.tracking import MlflowClient

    from search.results.pareto import ParetoFront
    from search.tracking.mlflow_store import tracking_uri
    from search.workspace import Workspace, load_records

    directory, stdout = study
    records, attrs = load_records(Workspace(directory / "runs", "e2e"))
    confirmation = attrs["confirmation"]
    assert confirmation["split"] == "test" and confirmation["rounds"] == 5
    front = ParetoFront.from_records(records, attrs["max_accuracy_drop"])
    confirmed = [front.baseline, *front.members]
    for r in confirmed:
        m = r.metrics
        assert 0 <= m["test_accuracy"] <= 1
        assert m["confirmed_latency_p50_ms"] > 0 and m["confirmed_speedup_p95"] > 0
    assert front.baseline.metrics["confirmed_speedup_p95"] == 1.0
    assert front.baseline.metrics["test_accuracy_drop"] == 0.0
    assert "speed-up p95 (confirmed)" in stdout and "test acc" in stdout
    client = MlflowClient(tracking_uri=tracking_uri(directory / "runs"))
    experiment = client.get_experiment_by_name("paretoedge/e2e")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    logged = {int(r.data.tags["trial_number"]) for r in runs
              if "confirmed_speedup_p95" in r.data.metrics}
    assert logged == {r.number for r in confirmed}


def test_confirm_re_times_a_stored_study(study) -> None:
    directory, _ = study
    runs = str(directory / "runs")
    done = paretoedge("confirm", "e2e", "--workdir", runs, "--rounds", "2", "--runs", "50",
                      cwd=directory)
    assert done.returncode == 0, done.stdout + done.stderr
    # 50 runs a round would leave half of the 200 test samples untimed: raised to cover them
    assert "Confirmed front of e2e (2 interleaved rounds x 100 runs; test split)" in done.stdout
    chosen = paretoedge("best", "e2e", "--workdir", runs, "--where", "test_accuracy >= 0",
                        "--maximize", "confirmed_speedup_p95", "--format", "json", cwd=directory)
    assert chosen.returncode == 0, chosen.stderr
    assert json.loads(chosen.stdout)["metrics"]["confirmed_speedup_p95"] > 0
    missing = paretoedge("confirm", "nope", "--workdir", runs, cwd=directory)
    assert missing.returncode == 2 and "nope" in missing.stderr


def test_the_front_is_profiled_per_operator_and_the_profiles_reach_mlflow(study) -> None:
    """At the end the baseline and the front are profiled by the agent (onnxruntime's profiler
    over the test split); each profile is stored, logged on its trial's run (table and chart),
    and printed by `paretoedge profile`."""
    from mlflow.tracking import MlflowClient

    from search.results.pareto import ParetoFront
    from search.results.profile_store import stored_profiles
    from search.tracking.mlflow_store import tracking_uri
    from search.workspace import Workspace, load_records

    directory, stdout = study
    runs = directory / "runs"
    records, attrs = load_records(Workspace(runs, "e2e"))
    front = ParetoFront.from_records(records, attrs["max_accuracy_drop"])
    profiled = stored_profiles(Workspace(runs, "e2e"))
    members = {front.baseline.number, *front.numbers}
    assert set(profiled) == members, stdout
    for profile in profiled.values():
        assert profile.inferences == 1000 and profile.stage_runs[0] == 1000
        assert sum(profile.by_part().values()) == pytest.approx(profile.wall_us, rel=1e-6)
    client = MlflowClient(tracking_uri=tracking_uri(runs))
    experiment = client.get_experiment_by_name("paretoedge/e2e")
    for run in client.search_runs([experiment.experiment_id], max_results=100):
        number = run.data.tags.get("trial_number")
        if number is not None and int(number) in members:
            names = {a.path for a in client.list_artifacts(run.info.run_id, "profile")}
            assert names == {"profile/operators.csv", "profile/profile.html",
                             "profile/profile.json"}
            assert run.data.tags["profiled"].startswith(profiled[int(number)].bundle_digest[:16])
    shown = paretoedge("profile", "e2e", "--trial", str(front.baseline.number), "--workdir",
                       str(runs), cwd=directory)
    assert shown.returncode == 0, shown.stderr
    assert f"Profile of e2e trial {front.baseline.number}" in shown.stdout
    assert "between operators" in shown.stdout and "outside sessions" in shown.stdout
    again = paretoedge("profile", "e2e", "--trial", str(front.baseline.number), "--workdir",
                       str(runs), "--runs", "50", "--format", "json", cwd=directory)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["inferences"] == 50
    missing = paretoedge("profile", "e2e", "--trial", "999", "--workdir", str(runs),
                         cwd=directory)
    assert missing.returncode == 2 and "--trial 999" in missing.stderr
