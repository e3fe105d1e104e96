"""Bad input: one line naming the file or field, exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def paretoedge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def assert_one_line_error(done: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert done.returncode == code, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0]


def test_missing_config(tmp_path: Path) -> None:
    assert_one_line_error(paretoedge("run", "nope.yaml", cwd=tmp_path), 2, "nope.yaml",
                          "not found")


def test_unknown_key_and_wrong_type(write_config, tmp_path: Path) -> None:
    path = write_config(spce={"x": 1})
    assert_one_line_error(paretoedge("run", str(path), cwd=tmp_path), 2, "spce", "unknown key")
    path = write_config(name="typed.yaml", measurement={"min_runs": "lots"})
    assert_one_line_error(paretoedge("run", str(path), cwd=tmp_path), 2, "measurement.min_runs")


def test_a_bad_qat_value_is_exit_2(write_config, tmp_path: Path) -> None:
    path = write_config(quantization={"qat": ["maybe"]})
    assert_one_line_error(paretoedge("run", str(path), cwd=tmp_path), 2, "quantization.qat")
    done = paretoedge("validate", str(path), cwd=tmp_path)
    assert done.returncode == 2 and "quantization.qat" in done.stderr


def test_validate_lists_every_problem(write_config, tmp_path: Path) -> None:
    path = write_config(spce=1, pruning={"ratio_max": 2.0})
    done = paretoedge("validate", str(path), cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2
    assert any("spce" in line for line in lines)
    assert any("pruning.ratio_max" in line for line in lines)
    ok = paretoedge("validate", str(write_config(name="good.yaml")), cwd=tmp_path)
    assert ok.returncode == 0 and "ok" in ok.stdout


@pytest.mark.parametrize(("reference", "words"), [
    ("missing.py:build_model", ["missing.py", "does not exist"]),
    ("tiny_model.py:no_such_function", ["no_such_function"]),
    ("no.such.module:f", ["no.such.module", "does not import"]),
])
def test_a_model_reference_that_does_not_import(write_config, tmp_path: Path, reference: str,
                                                words: list[str]) -> None:
    path = write_config(model={"factory": reference})
    assert_one_line_error(paretoedge("run", str(path), "--workdir", str(tmp_path / "runs"),
                                     cwd=tmp_path), 2, *words)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    done = paretoedge("--debug", "run", "nope.yaml", cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" in done.stderr


def test_queries_on_a_missing_study_and_a_bad_metric(tmp_path: Path) -> None:
    assert_one_line_error(paretoedge("front", "ghost", "--workdir", str(tmp_path), cwd=tmp_path),
                          2, "ghost")
    assert_one_line_error(paretoedge("best", "ghost", "--workdir", str(tmp_path), "--where",
                                     "latncy < 2", "--maximize", "accuracy", cwd=tmp_path),
                          2, "latncy")
    assert_one_line_error(paretoedge("run", "x.yaml", "--timeout", "soon", cwd=tmp_path), 2,
                          "x.yaml")


def test_bad_timeout_is_named(write_config, tmp_path: Path) -> None:
    path = write_config()
    assert_one_line_error(paretoedge("run", str(path), "--timeout", "soon", cwd=tmp_path), 2,
                          "--timeout")
