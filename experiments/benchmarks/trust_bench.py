"""Are a study's latencies what the device delivers? Re-time its baseline and front, quietly.

For a finished study this script takes the fp32 baseline and every front member and times their
bundles again, pinned to one core, in ``--alternations`` alternations of two timings made in
this one run, so that the machine's drift between processes hits both alike: the device
agent's confirmation (``LocalDeviceAgent.confirm``: a fresh measuring process, the bundles
interleaved in rotated rounds of ``--runs`` runs, what ``paretoedge confirm`` runs), then a
quiet timing in this process, interleaved the same way, cycling through the test split:

- **plain onnxruntime** for single-graph bundles: one ``InferenceSession`` on the stage file
  (one intra-op thread, the optimizers the manifest disables left disabled) fed preprocessed
  samples; cascades (bundles with exits) have no single graph, so they run through the bundle
  runtime (``CascadeRunner.run``: the same sessions plus the threshold loop), marked "runtime";
- against it: what the search reported (the agent's measurement during the study, minutes or
  hours earlier: a ratio to it carries the machine's drift), what the study's confirmation
  reported, and the agent's confirmation made here.

It prints the table (the agent's confirmation over the quiet timing for p50 and p95, both made
here; the study's figures over the quiet timing; speed-ups) and writes JSON.
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
    return {n: np.asarray(s, dtype=np.float64) / 1e6 for n, s in samples.items()}


def agent_and_quiet(bundles: dict[int, Path], chosen: list[Any], test: Any,
                    timers: dict[int, Any], args: argparse.Namespace
                    ) -> tuple[dict[int, float], dict[int, float], dict[int, np.ndarray]]:
    """Alternate the agent's confirmation (a fresh measuring process on ``--core``) with the
    quiet timing here; the agent's p50/p95 are the medians over its rounds."""
    from device_agents import (
        BundlePayload,
        BundleRef,
        ConfirmRequest,
        EvalSetPayload,
        LocalDeviceAgent,
        MeasurementProtocol,
    )

    payload = EvalSetPayload.from_eval_set(test)
    agent = LocalDeviceAgent(device_class="bench", cache_dir=args.out / "agent",
                             cores=None if args.core is None else (args.core,))
    request = ConfirmRequest(
        bundles=tuple(BundleRef(key=r.number, bundle_digest=r.bundle_digest,
                                bundle=BundlePayload.from_directory(bundles[r.number]))
                      for r in chosen),
        eval_set_digest=payload.digest, eval_set=payload,
        protocol=MeasurementProtocol(warmup_runs=100), rounds=len(chosen),
        runs_per_round=args.runs)
    p50s: dict[int, list[float]] = {r.number: [] for r in chosen}
    p95s: dict[int, list[float]] = {r.number: [] for r in chosen}
    pooled: dict[int, list[np.ndarray]] = {r.number: [] for r in chosen}
    for a in range(args.alternations):
        confirmation = agent.confirm(request)
        for number, r50, r95 in zip(confirmation.keys, confirmation.round_p50_ms,
                                    confirmation.round_p95_ms, strict=True):
            p50s[number].extend(r50)
            p95s[number].extend(r95)
        for number, samples in time_interleaved(timers, len(test), len(chosen),
                                                args.runs).items():
            pooled[number].append(samples)
        console.print(f"alternation {a + 1}/{args.alternations}")
    agent.close()
    return ({n: float(np.median(v)) for n, v in p50s.items()},
            {n: float(np.median(v)) for n, v in p95s.items()},
            {n: np.concatenate(v) for n, v in pooled.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="the study's workdir")
    parser.add_argument("--study", required=True)
    parser.add_argument("--out", type=Path, required=True, help="where the JSON goes")
    parser.add_argument("--alternations", type=int, default=3,
                        help="agent confirmation / quiet timing pairs")
    parser.add_argument("--runs", type=int, default=2000, help="timed runs per bundle turn")
    parser.add_argument("--core", type=int, default=None, help="pin this process to a core")
    parser.add_argument("--label", default="", help="a name for this run in the JSON")
    args = parser.parse_args()
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})

    from search.config import StudyConfig
    from search.objective_set import ObjectiveSet
    from search.results.pareto import ParetoFront
    from search.study.preparation import load_data
    from search.workspace import Workspace, load_records

    workspace = Workspace(args.workdir.resolve(), args.study)
    records, attrs = load_records(workspace)
    config = StudyConfig.model_validate({**attrs["config"], "base_dir": attrs["config_dir"]})
    front = ParetoFront.from_records(records, float(attrs.get("max_accuracy_drop", 0.01)),
                                     objectives=ObjectiveSet.of_study(attrs))
    chosen = [front.baseline, *(r for r in front.members if not r.baseline)]
    test = load_data(config).test_set()
    bundles = {r.number: r.bundle_path(workspace.workdir) for r in chosen}
    timers = quiet_timers(bundles, test.inputs)
    agent_p50, agent_p95, pooled = agent_and_quiet(bundles, chosen, test, timers, args)
    quiet = pooled
    rows, out = [], []
    base, quiet_base = front.baseline, quiet[front.baseline.number]
    qb95 = float(np.percentile(quiet_base, 95))
    for r in chosen:
        m, q = r.metrics, quiet[r.number]
        q50, q95 = float(np.percentile(q, 50)), float(np.percentile(q, 95))
        a50, a95 = agent_p50[r.number], agent_p95[r.number]
        row = {"trial": r.number, "baseline": r.baseline, "timer": timers[r.number][0],
               "quiet_p50_ms": q50, "quiet_p95_ms": q95,
               "agent_confirm_p50_ms": a50, "agent_confirm_p95_ms": a95,
               "reported_p50_ms": m["latency_p50_ms"], "reported_p95_ms": m["latency_p95_ms"],
               "study_confirmed_p50_ms": m.get("confirmed_latency_p50_ms"),
               "study_confirmed_p95_ms": m.get("confirmed_latency_p95_ms"),
               "quiet_speedup_p95": qb95 / q95,
               "agent_confirm_speedup_p95": agent_p95[base.number] / a95,
               "reported_speedup_p95": base.metrics["latency_p95_ms"] / m["latency_p95_ms"],
               "study_confirmed_speedup_p95": m.get("confirmed_speedup_p95"),
               "overlap_builds": m.get("overlap_builds"),
               "cpu_share": m.get("latency_cpu_share")}
        out.append(row)
        rows.append([f"{r.number}{' (fp32)' if r.baseline else ''}", row["timer"], q50, q95,
                     a50 / q50, a95 / q95, m["latency_p50_ms"] / q50, m["latency_p95_ms"] / q95,
                     row["quiet_speedup_p95"], row["agent_confirm_speedup_p95"],
                     row["reported_speedup_p95"], row["study_confirmed_speedup_p95"] or "-"])
    console.print(table(
        f"{args.study}: latency against a quiet timing of the same files ({args.alternations} "
        f"alternations of the agent's confirmation and the quiet timing, {args.runs} runs a "
        f"turn" + (f", core {args.core}" if args.core is not None else "") + ")",
        ["trial", "quiet timer", "quiet p50 ms", "quiet p95 ms", "confirm/quiet p50",
         "confirm/quiet p95", "search/quiet p50", "search/quiet p95", "quiet speed-up p95",
         "confirm speed-up p95", "search speed-up p95", "study's confirmed speed-up p95"],
        rows))
    write_json(args.out, f"trust_{args.study}{'_' + args.label if args.label else ''}",
               {"study": args.study, "alternations": args.alternations, "runs": args.runs,
                "core": args.core, "label": args.label, "rows": out})


if __name__ == "__main__":
    main()
