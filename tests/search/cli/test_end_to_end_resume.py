"""An overnight study that goes wrong, end to end: the real CLI, Ray agents, MLflow on sqlite.

One study of the tiny model is driven through three runs of ``paretoedge run``:
1. the driver is killed with SIGKILL once three trials are complete;
2. the re-run resumes it, and gets a Ctrl-C (SIGINT to its process group, as a terminal sends
   it) once one more trial is complete: it stops gracefully and prints the front;
3. the last re-run completes the budget.
Then the real MLflow server (``paretoedge ui``) serves the study over HTTP, and ``best``
answers the same from MLflow and from the Optuna journal.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.e2e]
BUDGET = 8  # leaves trials for the Ctrl-C of the second run however far the first got
STUDY = "overnight"


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "search.cli", *args]


def start(directory: Path, *args: str, log: str) -> subprocess.Popen:
    """A CLI process in a session of its own (so SIGINT can go to its whole group)."""
    return subprocess.Popen(command(*args), cwd=directory, start_new_session=True, text=True,
                            stdout=(directory / log).open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def records(runs: Path) -> list:
    from search.workspace import Workspace, load_records

    try:
        return load_records(Workspace(runs, STUDY))[0]
    except Exception:  # the journal does not exist yet
        return []


def wait_for_complete(process: subprocess.Popen, runs: Path, count: int,
                      timeout_s: float = 420) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(r.complete for r in records(runs)) < count:
        assert process.poll() is None, f"the driver exited early ({process.returncode})"
        assert time.monotonic() < deadline, f"fewer than {count} complete trials in time"
        time.sleep(0.5)


def build_cache(runs: Path) -> dict[str, int]:
    """Finished cache entries (baseline model, pruned+finetuned weights, exported graphs)."""
    cache = runs / "cache"
    entries = list(cache.glob("baseline/*.pt"))
    entries += [p for d in cache.glob("pruned/*") if (d / "meta.json").is_file()
                for p in d.iterdir()]
    entries += [p for d in cache.glob("graphs/*") if not d.name.endswith(".tmp")
                for p in d.iterdir()]
    return {str(p.relative_to(cache)): p.stat().st_mtime_ns for p in entries}


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def overnight(tmp_path_factory, tiny_project):
    from search.study_lock import ProcessId

    directory = tmp_path_factory.mktemp("overnight")
    config = tiny_project(directory, STUDY)
    runs = directory / "runs"
    # --no-confirm: no run here confirms or profiles the front at its end (the e2e study of
    # test_end_to_end.py does); what is asserted below is the trials, the caches and MLflow
    run_args = ("run", str(config), "--trials", str(BUDGET), "--workdir", str(runs),
                "--no-confirm")
    facts: dict = {"directory": directory, "runs": runs}

    first = start(directory, *run_args, log="first.log")
    wait_for_complete(first, runs, 3)
    first.kill()  # SIGKILL: no handler runs, nothing is cleaned up
    first.wait()
    facts["killed"] = records(runs)
    facts["cache"] = build_cache(runs)
    driver = json.loads((runs / STUDY / "driver.json").read_text())
    facts["leftovers"] = [p for p in (ProcessId(**p) for p in driver["processes"]) if p.alive()]

    second = start(directory, *run_args, log="second.log")
    wait_for_complete(second, runs, sum(r.complete for r in facts["killed"]) + 1)
    facts["leftovers_after"] = [p for p in facts["leftovers"] if p.alive()]
    os.killpg(second.pid, signal.SIGINT)  # Ctrl-C in a terminal
    facts["second_code"] = second.wait(timeout=300)
    facts["second_out"] = (directory / "second.log").read_text()
    deadline = time.monotonic() + 60
    while group_alive(second.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    facts["second_group_alive"] = group_alive(second.pid)
    facts["stopped"] = records(runs)

    third = subprocess.run(command(*run_args), cwd=directory, capture_output=True, text=True,
                           timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert third.returncode == 0, third.stdout + third.stderr
    facts["third_out"] = third.stdout
    facts["final"] = records(runs)
    return facts


def test_sigkill_loses_no_completed_trial_and_reruns_the_ones_in_flight(overnight) -> None:
    final = {r.number: r for r in overnight["final"]}
    for before in overnight["killed"]:
        after = final[before.number]
        if before.complete:
            # the measurement is unchanged
            assert after.complete and {k: after.metrics[k] for k in before.metrics} == \
                dict(before.metrics)
            assert after.candidate == before.candidate and after.bundle == before.bundle
        if before.state == "RUNNING":  # in flight at the kill: failed as interrupted, re-run
            assert after.state == "FAIL" and after.fail_reason == "interrupted"
            if after.candidate:
                assert any(r.complete and r.candidate == after.candidate
                           and r.number > after.number for r in final.values())


def test_the_killed_drivers_leftover_processes_are_ended(overnight) -> None:
    assert overnight["leftovers_after"] == []
    if overnight["leftovers"]:
        assert "left by the killed driver" in overnight["second_out"]


def test_ctrl_c_stops_gracefully_and_prints_the_front(overnight) -> None:
    out = overnight["second_out"]
    assert overnight["second_code"] == 130, out
    assert "Feasible Pareto front of overnight" in out and "stopped: interrupted" in out
    assert "Traceback" not in out
    # trials in flight finished or were recorded as interrupted: nothing else failed
    assert all(r.state == "COMPLETE" or r.fail_reason == "interrupted"
               for r in overnight["stopped"] if r.state == "FAIL")
    assert not any(r.state == "RUNNING" for r in overnight["stopped"])
    assert not overnight["second_group_alive"], "the local Ray cluster outlived the driver"


def test_the_study_completes_its_budget_and_reuses_the_build_caches(overnight) -> None:
    final = overnight["final"]
    assert sum(r.complete and not r.reused for r in final) == BUDGET
    assert sum(r.baseline for r in final) == 1 and final[0].baseline
    assert all(r.complete or r.fail_reason == "interrupted" for r in final)
    assert "stopped: trial budget reached" in overnight["third_out"]
    cache_now = build_cache(overnight["runs"])
    assert overnight["cache"], "the first run built nothing?"
    for entry, mtime in overnight["cache"].items():
        assert cache_now.get(entry) == mtime, f"{entry} was rebuilt"


def test_mlflow_has_every_trial_and_the_current_front(overnight) -> None:
    from search.results.pareto import HypervolumeHistory
    from search.tracking.mlflow_store import MlflowStore

    final = overnight["final"]
    store = MlflowStore.open(overnight["runs"], STUDY, create=False)
    assert set(store.children) == {r.number for r in final}
    history = HypervolumeHistory.replay(final, 0.05)
    assert {n for n, c in store.children.items() if c.pareto} == history.front.numbers
    steps = store.client.get_metric_history(store.parent_id, "hypervolume")
    assert sorted(m.step for m in steps) == [p.step for p in history.points]


def test_the_mlflow_server_serves_the_study_over_http(overnight) -> None:
    from search.results.pareto import ParetoFront
    from search.study_lock import descendants

    runs = overnight["runs"]
    ui = start(overnight["directory"], "ui", "--workdir", str(runs), "--port", "0", log="ui.log")
    try:
        deadline = time.monotonic() + 180
        url = None
        while url is None:
            assert ui.poll() is None, (overnight["directory"] / "ui.log").read_text()
            assert time.monotonic() < deadline, "paretoedge ui printed no URL"
            found = re.search(r"MLflow UI: (http://127\.0\.0\.1:\d+)",
                              (overnight["directory"] / "ui.log").read_text())
            url = found.group(1) if found else None
            time.sleep(0.5)

        def api(path: str, body: dict | None = None) -> dict:
            request = urllib.request.Request(
                url + path, data=json.dumps(body).encode() if body is not None else None,
                headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as answer:
                return json.loads(answer.read())

        experiment = api(f"/api/2.0/mlflow/experiments/get-by-name?experiment_name="
                         f"paretoedge/{STUDY}")["experiment"]
        found_runs = api("/api/2.0/mlflow/runs/search", {
            "experiment_ids": [experiment["experiment_id"]], "max_results": 1000})["runs"]
        tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in found_runs]
        trials = {int(t["trial_number"]): t for t in tags if t.get("paretoedge.role") == "trial"}
        final = overnight["final"]
        assert set(trials) == {r.number for r in final}
        front = ParetoFront.from_records(final, 0.05)
        assert {n for n, t in trials.items() if t["pareto"] == "true"} == front.numbers
        assert {n for n, t in trials.items() if t["baseline"] == "true"} == {0}
        pareto = api("/api/2.0/mlflow/runs/search", {
            "experiment_ids": [experiment["experiment_id"]],
            "filter": "tags.pareto = 'true' and metrics.accuracy > 0"})["runs"]
        assert len(pareto) == len(front.members)
        parent = next(r for r, t in zip(found_runs, tags, strict=True)
                      if t.get("paretoedge.role") == "study")
        with urllib.request.urlopen(f"{url}/get-artifact?path=pareto.html&run_uuid="
                                    f"{parent['info']['run_id']}", timeout=60) as answer:
            assert b"plotly" in answer.read(200_000).lower()
    finally:
        server = descendants(ui.pid)  # mlflow server and its uvicorn worker
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=60)
    assert server, "paretoedge ui started no server process"
    deadline = time.monotonic() + 30
    while any(p.alive() for p in server) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(p.alive() for p in server), "the MLflow server outlived paretoedge ui"


def test_best_answers_the_same_from_mlflow_and_from_optuna(overnight) -> None:
    answers = []
    for source in ("optuna", "mlflow"):
        done = subprocess.run(command("best", STUDY, "--workdir", str(overnight["runs"]),
                                      "--where", "size_kb < 1000", "--minimize",
                                      "latency_p95_ms", "--format", "json", "--source", source),
                              cwd=overnight["directory"], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr
        answers.append(json.loads(done.stdout))
    assert answers[0] == answers[1]
    assert answers[0]["feasible"] and Path(answers[0]["bundle_path"]).is_dir()
