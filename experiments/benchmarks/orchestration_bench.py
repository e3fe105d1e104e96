"""Benchmark 3 (issue 8): orchestration cost per trial, and throughput as agents are added.

A real study (``paretoedge run``'s loop: Optuna, the builder, Ray agents on a local cluster,
MLflow on sqlite) runs ``--trials`` trials of ``--config`` once per entry of ``--agents``, each
in a fresh workdir (only the trained fp32 model is shared, so every run builds alike). The
driver's phase clock (``search.study.phase_clock``) splits its wall time, from the agents being
ready to the end, into building, waiting for agents, and orchestration (asking and telling Optuna,
submitting to Ray, MLflow and the display); the agents report their whole time per request
(``agent_s``) beside the timed measurement itself (``measure_s``).

Overhead share = orchestration time / wall time (the driver), and (agent_s - measure_s) /
agent_s (the agent: unpacking the request, starting the measuring process). The default config
is the digits study, whose trials are the shortest, so the share is the largest there.

    PYTHONPATH=$PWD .venv/bin/python experiments/benchmarks/orchestration_bench.py \\
        [--config experiments/digits.yaml] [--trials 30] [--agents 1 2] \\
        [--baseline-cache runs/cache] [--workdir runs/orchestration_bench]

Writes ``<workdir>/orchestration_bench.json``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path
from typing import Any

from bench_common import ROOT, console, copy_baseline, table, write_json

from search.config import load_config
from search.study.phase_clock import OVERHEAD_PHASES
from search.study.runner import RunOptions, StudyRunner
from search.workspace import Workspace


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "digits.yaml")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "orchestration_bench")
    parser.add_argument("--baseline-cache", type=Path, default=None,
                        help="a workdir cache holding the trained fp32 model (baseline/)")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 2])
    return parser.parse_args()


def run(config: Any, workdir: Path, trials: int) -> dict[str, Any]:
    summary = StudyRunner(config, Workspace(workdir, config.study), live=False).run(
        RunOptions(trials=trials))
    timing = summary.timing
    assert timing is not None
    measured = [r for r in summary.records if r.complete and r.reused_from is None]
    agent_s = [r.metrics.get("agent_s", 0.0) for r in measured]
    measure_s = [r.metrics["measure_s"] for r in measured]
    n = max(len(measured), 1)
    return {
        "agents": config.device.agents, "trials": len(summary.records), "measured": len(measured),
        "reused": sum(r.reused_from is not None for r in summary.records),
        "failed": summary.failed, "timing": timing.to_dict(),
        "trials_per_min": 60 * len(measured) / timing.wall_s,
        "per_trial": {"wall_s": timing.wall_s / n, "build_s": timing.seconds["build"] / n,
                      "wait_s": timing.seconds["wait"] / n,
                      "driver_overhead_s": timing.overhead_s / n,
                      **{f"{p}_s": timing.seconds[p] / n for p in OVERHEAD_PHASES},
                      "other_s": timing.other_s / n,
                      "measure_s": statistics.mean(measure_s),
                      "agent_s": statistics.mean(agent_s),
                      "agent_overhead_s": statistics.mean(a - m for a, m in
                                                          zip(agent_s, measure_s, strict=True))},
        "driver_overhead_share": timing.overhead_s / timing.wall_s,
        "agent_overhead_share": (sum(agent_s) - sum(measure_s)) / max(sum(agent_s), 1e-9),
    }


def main() -> None:
    args = parse_args()
    base = load_config(args.config)
    shared = args.workdir / "cache"  # the trained fp32 model, shared by the runs
    copy_baseline(args.baseline_cache, shared)
    results = []
    for agents in args.agents:
        config = base.model_copy(update={"device": base.device.model_copy(
            update={"agents": agents})})
        workdir = args.workdir / f"agents{agents}"
        if workdir.exists():
            shutil.rmtree(workdir)  # a fresh study: every run builds and measures alike
        copy_baseline(shared, workdir / "cache")
        console.print(f"[bold]{config.study}: {args.trials} trials with {agents} agent(s)")
        results.append(run(config, workdir, args.trials))
        copy_baseline(workdir / "cache", shared)  # trained by the first run, if it had to
    console.print(table(
        f"Orchestration of a {args.trials}-trial {base.study} study: seconds per measured "
        f"trial (driver wall time from the agents being ready)",
        ["agents", "measured", "trials/min", "wall", "build", "wait", "ask", "submit", "tell",
         "track", "other", "driver overhead", "share", "agent: measure", "agent: extra",
         "agent share"],
        [[r["agents"], r["measured"], r["trials_per_min"], r["per_trial"]["wall_s"],
          r["per_trial"]["build_s"], r["per_trial"]["wait_s"], r["per_trial"]["ask_s"],
          r["per_trial"]["submit_s"], r["per_trial"]["tell_s"], r["per_trial"]["track_s"],
          r["per_trial"]["other_s"], r["per_trial"]["driver_overhead_s"],
          f"{100 * r['driver_overhead_share']:.1f} %", r["per_trial"]["measure_s"],
          r["per_trial"]["agent_overhead_s"], f"{100 * r['agent_overhead_share']:.1f} %"]
         for r in results]))
    worst = max(r["driver_overhead_share"] for r in results)
    console.print(f"driver orchestration overhead: at most {100 * worst:.1f} % of the trial time "
                  f"(target < 5 %): " + ("[green]met" if worst < 0.05 else "[red]not met"))
    write_json(args.workdir, "orchestration_bench", {
        "config": str(args.config), "trials": args.trials, "runs": results})


if __name__ == "__main__":
    main()
