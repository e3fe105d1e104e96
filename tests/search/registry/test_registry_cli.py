"""The registry's commands on bad input: one line naming what is wrong, exit code 2 (run in
process with typer's runner: the real app, its error handling, real MLflow on sqlite)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from typer.testing import CliRunner

from search.cli.app import app


def run(*args: object) -> tuple[int, str, list[str]]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr.strip().splitlines()


def assert_error(args: tuple[object, ...], code: int, *words: str) -> None:
    exit_code, stdout, lines = run(*args)
    assert exit_code == code, (stdout, lines)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def deployed(lin_study: Path) -> Path:
    """Versions 1 (trial 1) and 2 (trial 2) of ``lin``; production at 2, after 1."""
    for goal in (("--maximize", "accuracy"), ("--minimize", "latency_p95_ms")):
        code, stdout, lines = run("deploy", "lin", "--name", "lin", *goal, "--workdir",
                                  lin_study)
        assert code == 0, (stdout, lines)
    return lin_study


def test_deployments_pull_and_rollback(deployed: Path, tmp_path: Path) -> None:
    code, stdout, _ = run("deployments", "lin", "--workdir", deployed)
    assert code == 0 and "Versions of lin" in stdout and "production" in stdout
    code, stdout, _ = run("pull", "lin@production", tmp_path / "device", "--workdir", deployed)
    assert code == 0 and "version 2 in" in stdout and (tmp_path / "device" / "manifest.json"
                                                        ).is_file()
    code, stdout, _ = run("rollback", "lin", "--workdir", deployed)
    assert code == 0 and "lin@production -> version 1 (was version 2)" in stdout
    code, stdout, _ = run("deployments", "lin", "--workdir", deployed, "--format", "json")
    assert json.loads(stdout)["aliases"] == {"production": "1"}
    code, stdout, _ = run("rollback", "lin", "--to", "2", "--workdir", deployed)
    assert code == 0 and "lin@production -> version 2 (was version 1)" in stdout


def test_unknown_names_aliases_and_versions(deployed: Path, tmp_path: Path) -> None:
    runs = ("--workdir", deployed)
    assert_error(("deployments", "ghost", *runs), 2, "no registered model 'ghost'")
    assert_error(("pull", "ghost@production", tmp_path / "a", *runs), 2, "'ghost'")
    assert_error(("pull", "lin@staging", tmp_path / "a", *runs), 2, "no alias 'staging'")
    assert_error(("pull", "lin@7", tmp_path / "a", *runs), 2, "no version 7")
    assert_error(("pull", "lin", tmp_path / "a", *runs), 2, "NAME@ALIAS")
    assert_error(("rollback", "lin", "--to", "7", *runs), 2, "no version 7")
    assert_error(("rollback", "lin", "--alias", "staging", *runs), 2, "no alias 'staging'")
    assert_error(("rollback", "ghost", *runs), 2, "'ghost'")
    assert_error(("compare", "lin@production", "lin@9", "--device", "local", *runs), 2,
                 "no version 9")
    assert not (tmp_path / "a").exists()
    assert run("rollback", "lin", *runs)[0] == 0  # to version 1, the first holder
    assert_error(("rollback", "lin", *runs), 2, "lin@production", "no previous holder",
                 "--to VERSION")


def test_a_tampered_bundle_is_refused_on_pull(deployed: Path, tmp_path: Path) -> None:
    from search.registry.model_ref import ModelRef
    from search.registry.model_registry import ModelRegistry

    version = ModelRegistry.open(workdir=deployed).resolve(ModelRef.parse("lin@production"))
    stored = Path(unquote(urlparse(version.source).path)) / "model.onnx"
    stored.write_bytes(stored.read_bytes()[:-8])
    assert_error(("pull", "lin@production", tmp_path / "device", "--workdir", deployed), 2,
                 "model.onnx", "sha256 does not match")
    assert not (tmp_path / "device").exists()


def test_deploy_bad_input(lin_study: Path) -> None:
    runs = ("--workdir", lin_study)
    assert_error(("deploy", "ghost", "--name", "x", "--maximize", "accuracy", *runs), 2,
                 "no study 'ghost'")
    assert_error(("deploy", "lin", "--name", "x", "--maximize", "acuracy", *runs), 2,
                 "acuracy")
    assert_error(("deploy", "lin", "--name", "x", *runs), 2, "--maximize")
    assert_error(("deploy", "lin", "--name", "x", "--maximize", "accuracy",
                  "--fallback-action", "abstain", *runs), 2, "--fallback-below")
    assert_error(("deploy", "lin", "--name", "x", "--maximize", "accuracy",
                  "--fallback-below", "0.5", "--fallback-action", "default_label", *runs), 2,
                 "default_label")
    assert_error(("deploy", "lin", "--name", "x", "--maximize", "accuracy",
                  "--fallback-below", "1.5", "--fallback-action", "abstain", *runs), 2,
                 "below")
