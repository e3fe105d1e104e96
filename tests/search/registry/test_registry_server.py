"""The registry on a running ``mlflow server`` (a real one, on a free loopback port): deploy,
list, pull and roll back through its tracking URI; the bundle travels through the server's
artifact proxy into its ``--artifacts-destination``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from search.cli.app import app

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path, store_copy):
    from search.cli.ui_command import start_ui

    store = store_copy(tmp_path / "server")
    running = start_ui(store, port=0)
    yield running, store
    running.stop()


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_deploy_list_pull_and_rollback_through_a_server(server, lin_study: Path,
                                                        tmp_path: Path) -> None:
    from search.registry import resolve_version

    running, store = server
    uri = ("--tracking-uri", running.url, "--workdir", lin_study)
    for goal in (("--maximize", "accuracy"), ("--minimize", "latency_p95_ms")):
        code, stdout, stderr = run("deploy", "lin", "--name", "lin", *goal, *uri)
        assert code == 0, stdout + stderr
    from search.registry.model_registry import ModelRegistry

    local = ModelRegistry.open(workdir=lin_study).client
    assert local.search_registered_models() == []  # nothing went to the workdir's store
    # the artifacts went through the server's proxy into its --artifacts-destination
    assert len(list((store / "mlartifacts").rglob("manifest.json"))) == 2
    code, stdout, _ = run("deployments", "lin", "--format", "json", *uri)
    listed = json.loads(stdout)
    assert listed["aliases"] == {"production": "2"}
    assert [v["trial"] for v in listed["versions"]] == ["1", "2"]
    code, stdout, stderr = run("pull", "lin@production", tmp_path / "device", *uri)
    assert code == 0, stdout + stderr
    pulled = json.loads((tmp_path / "device" / "manifest.json").read_text())
    assert pulled["deployment"]["reference"]["exit_rates"] == [1.0]
    code, stdout, _ = run("rollback", "lin", *uri)
    assert code == 0 and "lin@production -> version 1 (was version 2)" in stdout
    version, directory = resolve_version(running.url, "lin@production",
                                         cache=tmp_path / "cache")
    assert version == "1" and directory == tmp_path / "cache" / "lin" / "1"
    assert (directory / "manifest.json").is_file()
    code, _, stderr = run("pull", "lin@staging", tmp_path / "x", *uri)
    assert code == 2 and stderr.strip().splitlines() == [
        "error: lin@staging: model 'lin' has no alias 'staging' (aliases: production)"]
