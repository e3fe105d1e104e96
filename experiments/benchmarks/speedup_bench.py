"""Benchmark 1 (issue 8): the best feasible configuration of a fixed-budget search against fp32.

1. A real study of ``--config`` (default: the reference model, experiments/fashion_mnist.yaml)
   runs ``--trials`` trials as ``paretoedge run`` does: Optuna's default sampler, the config's
   Ray agents, MLflow tracking in the workdir. A finished study is reused (a rerun only
   measures); an unfinished one is resumed to the budget.
2. The best feasible trial is the one with the lowest ``--pick`` latency (p95 by default) within
   the accuracy band.
3. Its bundle and the fp32 baseline's are measured again by one agent in one run, ``--rounds``
   interleaved rounds of ``--runs`` timed runs each (accuracy over the whole test split every
   round); latencies are the median over the rounds, and the speed-ups their ratios.

    PYTHONPATH=$PWD .venv/bin/python experiments/benchmarks/speedup_bench.py \\
        [--workdir runs/reference] [--baseline-cache <a workdir cache>] [--trials 40]

Prints the study's front and the speed-up table; writes ``<workdir>/speedup_bench.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from bench_common import ROOT, console, copy_baseline, measure_interleaved, table, write_json

from search.config import load_config
from search.study.preparation import prepare
from search.study.runner import RunOptions, StudyRunner
from search.workspace import Workspace
from spaces.candidate import candidate_label


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "fashion_mnist.yaml")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "reference")
    parser.add_argument("--baseline-cache", type=Path, default=None,
                        help="a workdir cache holding the trained fp32 model (baseline/)")
    parser.add_argument("--trials", type=int, default=None, help="default: the config's")
    parser.add_argument("--pick", choices=("p95", "p50", "mean"), default="p95",
                        help="the latency the best feasible trial is chosen by")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds")
    parser.add_argument("--runs", type=int, default=2000, help="timed runs per round")
    parser.add_argument("--core", type=int, default=None, help="pin the agent to this core")
    return parser.parse_args()


def run_study(config: Any, workdir: Path, trials: int) -> Any:
    started = time.perf_counter()
    summary = StudyRunner(config, Workspace(workdir, config.study), live=False).run(
        RunOptions(trials=trials))
    console.print(f"study: {summary.completed} completed, {summary.failed} failed, stopped: "
                  f"{summary.stop_reason} ({time.perf_counter() - started:.0f} s)")
    return summary


def summarize(measurements: list[Any]) -> dict[str, Any]:
    p50 = [m.latency.p50_ms for m in measurements]
    return {"accuracy": measurements[0].accuracy,
            "accuracy_same_every_round": len({m.accuracy for m in measurements}) == 1,
            "mean_ms": statistics.median(m.latency.mean_ms for m in measurements),
            "p50_ms": statistics.median(p50),
            "p95_ms": statistics.median(m.latency.p95_ms for m in measurements),
            "p50_cv": statistics.pstdev(p50) / statistics.mean(p50),
            "size_kb": measurements[0].size_kb, "rounds": [m.metrics() for m in measurements]}


def main() -> None:
    args = parse_args()
    config = load_config(args.config)
    trials = args.trials or config.search.trials
    workspace = Workspace(args.workdir, config.study)
    copy_baseline(args.baseline_cache, workspace.cache)
    summary = run_study(config, args.workdir, trials)
    metric = {"p95": "latency_p95_ms", "p50": "latency_p50_ms", "mean": "latency_mean_ms"}
    key = metric[args.pick]
    baseline = next(r for r in summary.records if r.baseline and r.complete)
    feasible = sorted((r for r in summary.records if r.complete and r.feasible
                       and not r.baseline and r.reused_from is None),
                      key=lambda r: r.metrics[key])
    if not feasible:
        raise SystemExit("no feasible trial besides the baseline: nothing to compare")
    best = feasible[0]
    console.print(table(
        f"{config.study}: the fastest feasible trials by {key} (as the study measured them)",
        ["trial", "candidate", "accuracy", "drop pp", "p50 ms", "p95 ms", "size KB"],
        [[r.number, candidate_label(dict(r.candidate)), r.metrics["accuracy"],
          f"{100 * r.metrics['accuracy_drop']:+.2f}", r.metrics["latency_p50_ms"],
          r.metrics[key] if key == "latency_p95_ms" else r.metrics["latency_p95_ms"],
          r.metrics["size_kb"]] for r in [baseline, *feasible[:5]]]))
    prepared = prepare(config, workspace.cache)
    bundles = {"fp32 baseline": args.workdir / str(baseline.bundle),
               f"best feasible (trial {best.number})": args.workdir / str(best.bundle)}
    measured = measure_interleaved(bundles, prepared.data.test_set(), args.workdir,
                                   rounds=args.rounds, runs=args.runs, core=args.core)
    rows = {name: summarize(ms) for name, ms in measured.items()}
    fp32 = rows["fp32 baseline"]
    chosen = rows[f"best feasible (trial {best.number})"]
    speedups = {q: fp32[f"{q}_ms"] / chosen[f"{q}_ms"] for q in ("mean", "p50", "p95")}
    drop_pp = 100 * (fp32["accuracy"] - chosen["accuracy"])
    console.print(table(
        f"Speed-up of the best feasible configuration ({trials}-trial search) over fp32: one "
        f"agent, {args.rounds} interleaved rounds x {args.runs} runs, median of rounds",
        ["bundle", "candidate", "accuracy", "drop pp", "mean ms", "p50 ms", "p95 ms",
         "p50 CV", "size KB"],
        [[name, candidate_label(dict(r.candidate)), row["accuracy"],
          f"{100 * (fp32['accuracy'] - row['accuracy']):+.2f}", row["mean_ms"], row["p50_ms"],
          row["p95_ms"], f"{100 * row['p50_cv']:.1f} %", row["size_kb"]]
         for (name, row), r in zip(rows.items(), (baseline, best), strict=True)]))
    band = 100 * config.constraints.max_accuracy_drop
    met = speedups["p95"] >= 4.0 and drop_pp <= band
    console.print(f"speed-up: mean {speedups['mean']:.2f}x, p50 {speedups['p50']:.2f}x, p95 "
                  f"{speedups['p95']:.2f}x at {drop_pp:+.2f} pp below fp32 (band {band:g} pp); "
                  f"target >= 4x at p95 within the band: "
                  + ("[green]met" if met else "[red]not met"))
    write_json(args.workdir, "speedup_bench", {
        "config": str(args.config), "trials": trials, "pick": key,
        "study": {"completed": summary.completed, "failed": summary.failed,
                  "stop_reason": summary.stop_reason,
                  "timing": summary.timing.to_dict() if summary.timing else None},
        "baseline_trial": baseline.number, "best_trial": best.number,
        "best_candidate": dict(best.candidate), "study_metrics": dict(best.metrics),
        "remeasured": rows, "speedups": speedups, "accuracy_drop_pp": drop_pp,
        "target_met": met})


if __name__ == "__main__":
    main()
