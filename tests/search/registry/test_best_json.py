"""``best --format json`` names the bundle by its absolute path, whatever the workdir was
given as, so that a script running elsewhere can open it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from typer.testing import CliRunner

from search.cli.app import app


def test_best_json_gives_the_bundle_as_an_absolute_path(lin_study: Path) -> None:
    before = Path.cwd()
    os.chdir(lin_study.parent)
    try:
        result = CliRunner().invoke(app, ["best", "lin", "--workdir", lin_study.name,
                                          "--maximize", "accuracy", "--format", "json"])
    finally:
        os.chdir(before)
    assert result.exit_code == 0, result.stderr
    answer = json.loads(result.stdout)
    expected = str((lin_study / "lin" / "bundles" / "trial_0001").resolve())
    assert answer["bundle"] == answer["bundle_path"] == expected
    assert Path(answer["bundle"]).is_absolute() and Path(answer["bundle"]).is_dir()
