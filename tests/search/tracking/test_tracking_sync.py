"""MLflow mirrors the study: live (also through a locked store), and replayed by ``sync``;
``best`` gives the same answer from MLflow and from the Optuna journal."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest
from rich.console import Console

import search
from device_agents import FakeAgent, LatencyStats, Measurement, MeasureRequest
from search.config import load_config
from search.errors import NothingFoundError
from search.fleet.dispatch import InlineDispatcher
from search.results.pareto import HypervolumeHistory
from search.study.runner import RunOptions, StudyRunner
from search.tracking.mlflow_store import MlflowStore
from search.tracking.mlflow_sync import LiveTracking, MlflowMirror, sync_study
from search.workspace import Workspace, load_records

pytestmark = pytest.mark.slow
TRIALS = 7


def fake_device(on_measure=None) -> FakeAgent:
    def handler(request: MeasureRequest) -> Measurement:
        if on_measure is not None:
            on_measure(request)
        candidate = json.loads(request.bundle.files["manifest.json"])["provenance"]["candidate"]
        ratio = candidate["prune_ratio"]
        int8 = sum(q == "int8" for q in candidate["quantization"])
        p95 = round((1 - ratio) * (1 - 0.2 * int8), 6)  # equal candidates tie exactly
        latency = LatencyStats(mean_ms=p95, std_ms=0.01, p50_ms=p95, p90_ms=p95, p95_ms=p95,
                               p99_ms=p95, n=100, median_ci_low_ms=p95, median_ci_high_ms=p95,
                               converged=True)
        return Measurement(bundle_digest=request.bundle_digest, accuracy=0.95 - 0.04 * ratio,
                           n_eval=200, ece=0.02, exit_rates=(1.0,), latency=latency,
                           size_kb=100.0 * (1 - ratio) * (1 - 0.3 * int8), peak_mem_mb=10.0,
                           agent_id="fake-0", fingerprint={"cpu": "fake", "threads": 1})

    return FakeAgent(handler)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_project):
    """Two studies in one workdir: ``live`` logged as it ran, with the store locked for a while;
    ``offline`` run with tracking off (MLflow knows nothing of it)."""
    root = tmp_path_factory.mktemp("tracking")
    runs = root / "runs"
    warnings: list[str] = []
    held: list[sqlite3.Connection] = []
    seen: set[int] = set()

    def lock_the_store(request: MeasureRequest) -> None:
        if request.trial_number in seen:  # the confirmation measures front members again
            return
        seen.add(request.trial_number)
        if request.trial_number == 2:  # another process takes the write lock...
            connection = sqlite3.connect(runs / "mlflow.db", isolation_level=None)
            connection.execute("BEGIN EXCLUSIVE")
            held.append(connection)
        if request.trial_number == 5:  # ...and lets it go three trials later
            held.pop().execute("ROLLBACK")

    live = load_config(tiny_project(root, "live", "live.yaml",
                                    tracking={"retry_after_s": 0.001}))
    tracking = LiveTracking(MlflowMirror(runs, "live"), retry_after_s=0.001, warn=warnings.append)
    quiet = Console(file=io.StringIO())
    StudyRunner(live, Workspace(runs, "live"), tracker=tracking, console=quiet,
                dispatcher_factory=lambda c, w: InlineDispatcher(fake_device(lock_the_store))
                ).run(RunOptions(trials=TRIALS))
    offline = load_config(tiny_project(root, "offline", "offline.yaml",
                                       tracking={"mlflow": False}))
    StudyRunner(offline, Workspace(runs, "offline"), console=quiet,
                dispatcher_factory=lambda c, w: InlineDispatcher(fake_device())
                ).run(RunOptions(trials=TRIALS))
    return runs, warnings


def assert_mlflow_mirrors_the_journal(runs: Path, study: str) -> None:
    records, attrs = load_records(Workspace(runs, study))
    history = HypervolumeHistory.replay(records, attrs["max_accuracy_drop"])
    store = MlflowStore.open(runs, study, create=False)
    parent = store.parent()
    assert parent.info.status == "FINISHED"
    assert set(store.children) == {r.number for r in records}
    assert {n for n, c in store.children.items() if c.pareto} == history.front.numbers
    logged = {n for n, c in store.children.items() if c.bundle_logged}
    # front members' bundles (a trial that left the front keeps its bundle)
    assert history.front.numbers <= logged <= {r.number for r in records if r.feasible}
    for number in history.front.numbers:
        files = store.client.list_artifacts(store.children[number].run_id, "bundle")
        assert {Path(f.path).name for f in files} >= {"manifest.json"}
    steps = store.client.get_metric_history(parent.info.run_id, "hypervolume")
    assert sorted(m.step for m in steps) == [p.step for p in history.points]
    assert [m.value for m in sorted(steps, key=lambda m: m.step)] == \
        [p.hypervolume for p in history.points]
    artifacts = {f.path for f in store.client.list_artifacts(parent.info.run_id)}
    assert {"pareto.csv", "pareto.html", "pareto.png", "hypervolume_history.csv",
            "device_fingerprint.json"} <= artifacts
    assert parent.data.tags["baseline_trial"] == "0" and parent.data.tags["device.cpu"] == "fake"
    assert parent.data.metrics["baseline_accuracy"] == records[0].metrics["accuracy"]
    assert parent.data.params["constraints.max_accuracy_drop"] == "0.05"
    confirmed = {r.number for r in records if "confirmed_speedup_p95" in r.metrics}
    assert confirmed and {n for n, c in store.children.items() if c.confirmed} == confirmed
    for number in confirmed:  # the end-of-run confirmation reached the trial's run
        run = store.client.get_run(store.children[number].run_id)
        assert {"test_accuracy", "confirmed_speedup_p95"} <= set(run.data.metrics)


def test_a_locked_store_does_not_stop_the_study_and_mlflow_catches_up(workdir) -> None:
    runs, warnings = workdir
    assert any("locked" in w for w in warnings), warnings
    assert any("reachable again" in w for w in warnings), warnings
    assert_mlflow_mirrors_the_journal(runs, "live")


def test_sync_replays_a_study_mlflow_never_saw_and_is_idempotent(workdir) -> None:
    runs, _ = workdir
    assert MlflowStore.open(runs, "offline").parent_id is None
    report = sync_study(runs, "offline")
    records, _ = load_records(Workspace(runs, "offline"))
    assert report.parent_created and report.trials_logged == len(records)
    measured = sum(not r.reused for r in records)
    assert measured == TRIALS  # a repeated candidate reuses a measurement and adds a trial
    assert report.hypervolume_steps == measured and report.bundles_logged >= 1
    assert "pareto.html" in report.artifacts
    assert_mlflow_mirrors_the_journal(runs, "offline")
    again = sync_study(runs, "offline")
    assert (again.parent_created, again.trials_logged, again.pareto_tags,
            again.hypervolume_steps, again.bundles_logged, again.artifacts) == \
        (False, 0, 0, 0, 0, [])


QUERIES = [
    {"maximize": "accuracy"},
    {"minimize": "latency_p95_ms"},
    {"minimize": "size_kb", "where": "accuracy >= 0.94"},
    {"maximize": "accuracy", "where": "latency_p95_ms < 0.9 and size_kb <= 90"},
    {"minimize": "latency_p95_ms", "where": "accuracy == 0.95"},  # ties: broken the same way
    {"maximize": "accuracy", "device_class": "local"},
]


@pytest.mark.parametrize("study", ["live", "offline"])
def test_best_gives_the_same_answer_from_mlflow_and_from_optuna(workdir, study) -> None:
    runs, _ = workdir
    if study == "offline":
        sync_study(runs, study)
    for query in QUERIES:
        from_optuna = search.best(study, workdir=runs, source="optuna", **query)
        from_mlflow = search.best(study, workdir=runs, source="mlflow", **query)
        assert from_mlflow.record.to_dict() == from_optuna.record.to_dict(), query
        assert from_mlflow.bundle_path == from_optuna.bundle_path
    for source in ("optuna", "mlflow"):
        with pytest.raises(NothingFoundError):
            search.best(study, workdir=runs, source=source, where="size_kb < 0.001",
                        maximize="accuracy")


def test_search_best_returns_the_bundle_and_exports_it(workdir, tmp_path) -> None:
    from device_agents import verify_bundle

    runs, _ = workdir
    chosen = search.best("live", workdir=runs, where="latency_p95_ms < 1", maximize="accuracy")
    assert chosen.record.feasible and chosen.bundle_path is not None
    assert chosen.baseline is not None and chosen.baseline.number == 0
    target = chosen.export(tmp_path / "deploy")
    verify_bundle(target, chosen.record.bundle_digest)
    assert (target / "README.md").is_file()


def test_live_pictures_are_redrawn_at_most_every_interval_and_always_at_the_end(
        workdir, tmp_path) -> None:
    from search.tracking.mlflow_sync import StudySnapshot

    runs, _ = workdir
    records, attrs = load_records(Workspace(runs, "live"))
    now = [0.0]
    mirror = MlflowMirror(tmp_path, "live", bundles="none", plots=False, redraw_every_s=60.0,
                          clock=lambda: now[0])

    def snapshot(upto: int, running: bool = True) -> StudySnapshot:
        part = records[:upto]
        history = HypervolumeHistory.replay(part, attrs["max_accuracy_drop"])
        return StudySnapshot.of("live", part, history, {"device": {"class": "local"}}, runs,
                                running=running)

    first, second = snapshot(2), snapshot(len(records))
    assert first.front.numbers != second.front.numbers
    assert "pareto.csv" in mirror.sync(first).artifacts
    now[0] = 10.0
    assert mirror.sync(second).artifacts == []  # the front changed, but 10 s ago it was drawn
    now[0] = 20.0
    assert "pareto.csv" in mirror.sync(snapshot(len(records), running=False)).artifacts
