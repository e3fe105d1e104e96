"""The commands for overnight studies, on bad input: one line, the right exit code."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow  # each command starts a Python process with the stack


def paretoedge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def one_line_error(done: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert done.returncode == code, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_sync_of_a_missing_study(tmp_path: Path) -> None:
    one_line_error(paretoedge("sync", "ghost", "--workdir", str(tmp_path), cwd=tmp_path), 2,
                   "ghost")


def test_ui_without_a_store_and_on_a_taken_port(tmp_path: Path) -> None:
    one_line_error(paretoedge("ui", "--workdir", str(tmp_path), cwd=tmp_path), 2, "--workdir",
                   "mlflow.db")
    (tmp_path / "mlflow.db").touch()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        one_line_error(paretoedge("ui", "--workdir", str(tmp_path), "--port", port,
                                  cwd=tmp_path), 2, "--port", port, "in use")


def test_bad_budgets_in_the_config_are_named(write_config, tmp_path: Path) -> None:
    path = write_config(search={"patience": 0, "timeout": "tonight"})
    done = paretoedge("validate", str(path), cwd=tmp_path)
    assert done.returncode == 2
    problems = done.stderr.strip().splitlines()
    assert any("search.patience" in p for p in problems)
    assert any("search.timeout" in p and "tonight" in p for p in problems)


def test_sync_refuses_while_the_studys_driver_runs(tmp_path: Path) -> None:
    import optuna

    from search.study_lock import ProcessId
    from search.workspace import open_storage

    optuna.create_study(study_name="busy", storage=open_storage(tmp_path / "busy" /
                                                                 "journal.log"))
    me = ProcessId.of(os.getpid())
    (tmp_path / "busy" / "driver.json").write_text(json.dumps({
        "driver": {"pid": me.pid, "started": me.started}, "host": socket.gethostname(),
        "processes": []}))
    one_line_error(paretoedge("sync", "busy", "--workdir", str(tmp_path), cwd=tmp_path), 1,
                   "is running", str(os.getpid()))
