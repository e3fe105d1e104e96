"""Are a study's latencies what the device delivers? Re-time its baseline and front, quietly.

For a finished study this script takes the fp32 baseline and every front member and times their
bundles again in this one process, pinned to one core, interleaved in ``--rounds`` rounds (the
order rotated each round) of ``--runs`` runs each, cycling through the test split:

- **plain onnxruntime** for single-graph bundles: one ``InferenceSession`` on the stage file
  (one intra-op thread, the optimizers the manifest disables left disabled) fed preprocessed
  samples; cascades (bundles with exits) have no single graph, so they run through the bundle
  runtime (``CascadeRunner.run``: the same sessions plus the threshold loop), marked "runtime";
- against it: what the search reported (the agent's measurement during the study) and what the
  confirmation reported (``paretoedge confirm``: one agent, interleaved, one process).

It prints the table (ratios reported/quiet and confirmed/quiet for p50 and p95) and writes JSON.
Run it with nothing else running on the machine:

    .venv/bin/python experiments/benchmarks/trust_bench.py --workdir runs --study digits \\
        --core 1 --out runs/trust_bench
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, console, table, write_json

sys.path.insert(0, str(ROOT))


def quiet_timers(bundles: dict[int, Path], inputs: np.ndarray) -> dict[int, Any]:
    """One callable per bundle that runs one sample (by index) end to end."""
    import onnxruntime as ort

    from device_agents import CascadeRunner, read_manifest

    timers: dict[int, Any] = {}
    for number, directory in bundles.items():
        manifest = read_manifest(directory)
        runner = CascadeRunner.load(directory)
        if len(manifest.stages) == 1:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(
                str(directory / manifest.stages[0].file), options,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=list(manifest.disabled_optimizers))
            name = session.get_inputs()[0].name
            pre = runner.preprocess
            timers[number] = ("plain", lambda i, s=session, n=name, p=pre: s.run(
                None, {n: p(inputs[i])}))
        else:
            timers[number] = ("runtime", lambda i, r=runner: r.run(inputs[i]))
    return timers


def time_interleaved(timers: dict[int, Any], n_inputs: int, rounds: int,
                     runs: int) -> dict[int, np.ndarray]:
    numbers = list(timers)
    for number in numbers:  # warm-up
        for i in range(200):
            timers[number][1](i % n_inputs)
    samples: dict[int, list[int]] = {n: [] for n in numbers}
    clock = time.perf_counter_ns
    for r in range(rounds):
        shift = r % len(numbers)
        for number in numbers[shift:] + numbers[:shift]:
            run = timers[number][1]
            for k in range(runs):
                t0 = clock()
                run(k % n_inputs)
                samples[number].append(clock() - t0)
        console.print(f"round {r + 1}/{rounds}")
    return {n: np.asarray(s, dtype=np.float64) / 1e6 for n, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="the study's workdir")
    parser.add_argument("--study", required=True)
    parser.add_argument("--out", type=Path, required=True, help="where the JSON goes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--core", type=int, default=None, help="pin this process to a core")
    parser.add_argument("--label", default="", help="a name for this run in the JSON")
    args = parser.parse_args()
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})

    from search.config import StudyConfig
    from search.results.pareto import ParetoFront
    from search.study.preparation import load_data
    from search.workspace import Workspace, load_records

    workspace = Workspace(args.workdir.resolve(), args.study)
    records, attrs = load_records(workspace)
    config = StudyConfig.model_validate({**attrs["config"], "base_dir": attrs["config_dir"]})
    front = ParetoFront.from_records(records, float(attrs.get("max_accuracy_drop", 0.01)))
    chosen = [front.baseline, *front.members]
    test = load_data(config).test_set()
    bundles = {r.number: r.bundle_path(workspace.workdir) for r in chosen}
    timers = quiet_timers(bundles, test.inputs)
    quiet = time_interleaved(timers, len(test), args.rounds, args.runs)
    rows, out = [], []
    for r in chosen:
        m, q = r.metrics, quiet[r.number]
        q50, q95 = float(np.percentile(q, 50)), float(np.percentile(q, 95))
        row = {"trial": r.number, "baseline": r.baseline, "timer": timers[r.number][0],
               "quiet_p50_ms": q50, "quiet_p95_ms": q95,
               "reported_p50_ms": m["latency_p50_ms"], "reported_p95_ms": m["latency_p95_ms"],
               "confirmed_p50_ms": m.get("confirmed_latency_p50_ms"),
               "confirmed_p95_ms": m.get("confirmed_latency_p95_ms"),
               "overlap_builds": m.get("overlap_builds"),
               "cpu_share": m.get("latency_cpu_share")}
        out.append(row)
        conf50, conf95 = row["confirmed_p50_ms"], row["confirmed_p95_ms"]
        rows.append([f"{r.number}{' (fp32)' if r.baseline else ''}", row["timer"], q50, q95,
                     m["latency_p50_ms"] / q50, m["latency_p95_ms"] / q95,
                     conf50 / q50 if conf50 else "-", conf95 / q95 if conf95 else "-"])
    console.print(table(
        f"{args.study}: search-reported and confirmed latency over a quiet interleaved timing "
        f"({args.rounds} rounds x {args.runs} runs, one process"
        + (f", core {args.core}" if args.core is not None else "") + ")",
        ["trial", "quiet timer", "quiet p50 ms", "quiet p95 ms", "reported/quiet p50",
         "reported/quiet p95", "confirmed/quiet p50", "confirmed/quiet p95"], rows))
    write_json(args.out, f"trust_{args.study}{'_' + args.label if args.label else ''}",
               {"study": args.study, "rounds": args.rounds, "runs": args.runs,
                "core": args.core, "label": args.label, "rows": out})


if __name__ == "__main__":
    main()
