"""Several drivers on one study stored in PostgreSQL (``search.storage``): a real server from
Debian's package (``tests/postgres_server.py``), two driver processes running the real study
loop, and what they must guarantee together: the budget shared, no trial lost or run twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml

from search.config import parse_config
from search.errors import ConfigError
from search.storage import StudyStorage, without_password
from search.study_lock import StudyLock
from search.workspace import Workspace, load_records
from tests.postgres_server import create_database, postgres_server, server_binaries
from tests.search.conftest import tiny_config_dict

ROOT = Path(__file__).resolve().parents[3]
DRIVER = Path(__file__).with_name("shared_study_driver.py")

needs_postgres = pytest.mark.skipif(
    server_binaries() is None and not os.environ.get("CI"),
    reason="PostgreSQL's binaries are not installed (make test installs Debian's package)")


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as server:
        yield server


def shared_config(directory: Path, url: str, study: str = "shared") -> Path:
    config = tiny_config_dict(study, search={"trials": 10, "sampler": "tpe", "seed": 0,
                                             "storage": url},
                              tracking={"mlflow": False}, confirm={"enabled": False})
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_driver(config: Path, workdir: Path, trials: int, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(DRIVER), str(config), str(workdir),
                             str(trials), str(out), "--measure-s", "0.15"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@needs_postgres
@pytest.mark.slow  # two driver processes on a real PostgreSQL server (about 10 s)
def test_two_drivers_share_the_budget_with_no_trial_lost_or_measured_twice(
        postgres, tmp_path) -> None:
    url = create_database(postgres, "two_drivers")
    config = shared_config(tmp_path, url)
    budget = 10
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    drivers = [start_driver(config, tmp_path / "runs", budget, out) for out in outs]
    for driver in drivers:
        output, _ = driver.communicate(timeout=120)
        assert driver.returncode == 0, output
    reports = [json.loads(out.read_text()) for out in outs]

    study = optuna.load_study(study_name="shared", storage=StudyStorage(
        "shared", tmp_path / "runs" / "shared", url).optuna())
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # unique, none missing
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # the budget is the study's, across both drivers (a reused measurement is not counted)
    reused = [t for t in trials if "reused_from" in t.user_attrs]
    assert len(trials) - len(reused) == budget
    # both drivers ran trials of it
    drivers_seen = {t.user_attrs["driver"]["pid"] for t in trials}
    assert len(drivers_seen) == 2
    # one baseline, measured once
    assert [t.number for t in trials if t.user_attrs.get("baseline")] == [0]
    # every measurement is of a distinct candidate; a repeated candidate reuses the twin
    measured = [m for report in reports for m in report["measured"]]
    keys = [json.dumps(m["candidate"], sort_keys=True) for m in measured]
    assert [k for k, n in Counter(keys).items() if n > 1] == []
    assert len(measured) == budget
    by_number = {t.number: t for t in trials}
    for trial in reused:
        twin = by_number[trial.user_attrs["reused_from"]]
        assert twin.user_attrs["candidate"] == trial.user_attrs["candidate"]
        assert "reused_from" not in twin.user_attrs and twin.values == trial.values
    # the workdir's commands find the study in the database
    stored = json.loads((tmp_path / "runs" / "shared" / "storage.json").read_text())
    assert stored == {"url": url}
    records, _ = load_records(Workspace(tmp_path / "runs", "shared"))
    assert len(records) == len(trials) and all(r.complete for r in records)
    assert not list((tmp_path / "runs" / "shared" / "drivers").glob("*.json"))


@needs_postgres
def test_a_dead_drivers_running_trial_is_requeued_a_living_ones_is_left_alone(
        postgres, tmp_path) -> None:
    from search.study.runner import StudyRunner

    url = create_database(postgres, "recovery")
    config = parse_config(yaml.safe_load(shared_config(tmp_path, url, "rec").read_text()),
                          "config.yaml", tmp_path)
    runner = StudyRunner(config, Workspace(tmp_path / "runs", "rec"))
    study = runner._open_study(10)
    runner._study = study
    living, dead = study.ask(), study.ask()
    living.set_user_attr("driver", runner._lock.owner())
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead.set_user_attr("driver", {**runner._lock.owner(), "pid": int(gone.stdout)})
    runner._recover_interrupted()
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert states == {0: "RUNNING", 1: "FAIL", 2: "WAITING"}
    assert study.user_attrs["interrupted_trials"] == [1]
    runner.storage.close()


def test_several_shared_drivers_each_hold_a_record_and_clean_up_after_dead_ones(
        tmp_path) -> None:
    workspace = Workspace(tmp_path, "s")
    first, second = StudyLock(workspace, shared=True), StudyLock(workspace, shared=True)
    assert first.acquire() == [] and second.acquire() == []  # the same process, twice
    assert first.running_driver() is not None
    dead = workspace.study_dir / "drivers" / "otherhost-1.json"
    record = {"driver": {"pid": 999_999_999, "started": 1}, "host": first.host,
              "processes": []}
    dead.write_text(json.dumps(record))
    StudyLock(workspace, shared=True).acquire()
    assert not dead.exists()  # a dead driver of this host: its record is removed
    first.release()
    assert not first.path.exists()
    # the journal keeps its single driver
    single = StudyLock(workspace)
    single.acquire()
    assert single.path == workspace.study_dir / "driver.json"


@pytest.mark.parametrize("value", ["mysql://u@h/db", "postgresql://u@h", "postgresql:///db",
                                   "postgresql://u@h:port/db", "sqlite:///x.db", "journa"])
def test_a_bad_storage_is_one_line_naming_search_storage(value: str, tmp_path) -> None:
    data = tiny_config_dict("s", search={"storage": value})
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "config.yaml", tmp_path)
    message = str(caught.value)
    assert message.startswith("config.yaml: search.storage: expected 'journal' or "
                              "postgresql://") and "\n" not in message


def test_the_storage_defaults_to_the_journal_and_a_password_is_never_written(tmp_path) -> None:
    assert parse_config(tiny_config_dict("s"), "c.yaml", tmp_path).search.storage == "journal"
    url = "postgresql://me:secret@db.example:5432/studies"
    config = parse_config(tiny_config_dict("s", search={"storage": url}), "c.yaml", tmp_path)
    assert config.search.storage == url
    assert without_password(url) == "postgresql://me@db.example:5432/studies"
    storage = Workspace(tmp_path, "s").storage(url)
    assert storage.shared
    storage.remember()
    assert "secret" not in (tmp_path / "s" / "storage.json").read_text()
    assert StudyStorage.stored("s", tmp_path / "s").url == without_password(url)
    assert not StudyStorage.stored("t", tmp_path / "t").shared


@pytest.mark.parametrize("storage", ["mysql://me@db/studies", "unreachable"])
def test_paretoedge_run_says_what_is_wrong_with_the_storage_in_one_line_exit_2(
        storage: str, write_config, tmp_path) -> None:
    from typer.testing import CliRunner

    from search.cli.app import app
    from tests.postgres_server import free_port

    if storage == "unreachable":  # a valid URL where no server listens
        storage = f"postgresql://me@127.0.0.1:{free_port()}/studies"
    path = write_config(search={"storage": storage}, tracking={"mlflow": False})
    result = CliRunner().invoke(app, ["run", str(path), "--workdir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "search.storage: " in errors[0], result.output
    assert not (tmp_path / "runs" / "cache").exists() or not any(
        (tmp_path / "runs" / "cache").iterdir())  # nothing was trained
