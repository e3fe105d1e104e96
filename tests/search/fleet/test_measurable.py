"""An objective or limit the study's agents cannot measure is refused before the study starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.config import parse_config
from search.errors import ConfigError
from search.fleet.measurable import check_measurable, unmeasurable_problem


def config(**changes):
    data = {"study": "s", "model": {"factory": "m.py:f"}, "data": {"loader": "m.py:d"},
            **changes}
    return parse_config(data, "test.yaml", base_dir=Path("."))


def no_counter(providers):
    return []


def test_energy_on_local_agents_needs_a_counter_on_this_machine() -> None:
    energy = config(objectives={"accuracy": "max", "energy_mj": "min"})
    with pytest.raises(ConfigError, match=r"^objectives: energy_mj needs an energy counter"):
        check_measurable(energy, host_counters=no_counter)
    assert unmeasurable_problem(energy, host_counters=lambda providers: ["rapl"]) is None
    limit = config(constraints={"energy_mj": 5})
    assert unmeasurable_problem(limit, host_counters=no_counter).startswith(
        "constraints.energy_mj: energy_mj needs an energy counter")


def test_metrics_without_a_counter_and_remote_classes_pass() -> None:
    def probed(providers):
        raise AssertionError("no counter is needed")

    assert unmeasurable_problem(config(constraints={"peak_mem_mb": 64}),
                                host_counters=probed) is None
    # agents of a running cluster: the class's profile knows its counters (RAPL on a CPU)
    remote = config(objectives={"accuracy": "max", "energy_mj": "min"},
                    device={"class": "rpi4", "address": "head:6379"})
    assert unmeasurable_problem(remote, host_counters=probed) is None
