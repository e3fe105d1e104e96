"""``paretoedge run`` refuses an energy objective the agents cannot measure: one line, exit 2,
before anything is trained."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from search.cli.app import app


@pytest.mark.parametrize("command", ["run"])
def test_energy_without_a_counter_is_one_line_and_exit_2(command, write_config, tmp_path,
                                                         monkeypatch) -> None:
    monkeypatch.setattr("device_agents.energy.open_counters", lambda providers: [])
    path = write_config(objectives={"accuracy": "max", "energy_mj": "min"})
    args = [command, str(path)] + (["--workdir", str(tmp_path / "runs")]
                                   if command == "run" else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "objectives: energy_mj needs an energy counter" in errors[0]
    assert not (tmp_path / "runs" / "cache").exists() or not any(
        (tmp_path / "runs" / "cache").iterdir())  # nothing was trained
