"""A smoke run of experiments/benchmarks/scale_bench.py at tiny sizes: a real multi-node Ray
cluster, agents as actors, builds as tasks, the real sampler; the JSON it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from search.study.samplers import TPE_TRIALS_MAX
from spaces import load_reference

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "experiments" / "benchmarks"


def test_the_sampler_cost_part_reports_every_sampler_and_size(tmp_path) -> None:
    main = load_reference("scale_bench.py:main", BENCHMARKS)
    assert main(["--workdir", str(tmp_path), "--no-fleet", "--cost-sizes", "12,20",
                 "--cost-asks", "3"]) == 0
    result = json.loads((tmp_path / "scale_bench.json").read_text())
    rows = {(r["sampler"], r["trials"]) for r in result["sampler_cost"]}
    assert rows == {(s, n) for s in ("tpe", "tpe-only", "nsga2") for n in (12, 20)}
    assert all(r["median_ms"] > 0 and r["asks"] == 3 for r in result["sampler_cost"])
    assert result["tpe_trials_max"] == TPE_TRIALS_MAX and result["fleet"] == []


@pytest.mark.slow
@pytest.mark.ray
def test_a_tiny_fleet_run_keeps_its_agents_busy_and_tells_every_trial(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "scale_bench.py"), "--workdir", str(tmp_path),
         "--agents", "3", "--builders", "2", "--measure-s", "0.3", "--build-s", "0.05",
         "--trials", "12", "--samplers", "nsga2", "--agent-nodes", "2", "--builder-nodes", "1",
         "--cost-sizes", ""], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "busy share" in run.stdout
    (fleet,) = json.loads((tmp_path / "scale_bench.json").read_text())["fleet"]
    assert fleet["trials"] == 12 and fleet["measured"] + fleet["reused"] == 12
    assert fleet["agent_nodes"] == 2  # the agents were spread over both agent nodes
    assert 0.3 < fleet["busy_share"] <= 1.0 and fleet["trials_per_min"] > 0
    assert fleet["driver_cpu_ms_per_trial"] > 0 and fleet["ask_tell_ms_per_trial"] > 0
