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
here, as the median and the range over the alternations of the ratio within each alternation:
this host's absolute figures move by tens of percent within a minute, so only timings seconds
apart are compared; the study's figures over the quiet timing; speed-ups) and writes JSON.
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
    """Each bundle's samples (ms) over ``rounds`` rounds in rotated order, ``runs`` runs a
    turn, each bundle cycling through all ``n_inputs`` samples across its turns (as the
    agent's confirmation does: a cascade's cost depends on which samples exit)."""
    numbers = list(timers)
    for number in numbers:  # warm-up
        for i in range(200):
            timers[number][1](i % n_inputs)
    samples: dict[int, list[int]] = {n: [] for n in numbers}
    position = dict.fromkeys(numbers, 0)
    clock = time.perf_counter_ns
    for r in range(rounds):
        shift = r % len(numbers)
        for number in numbers[shift:] + numbers[:shift]:
            run, start = timers[number][1], position[number]
            for k in range(start, start + runs):
                t0 = clock()
                run(k % n_inputs)
                samples[number].append(clock() - t0)
            position[number] = start + runs
    return {n: np.asarray(s, dtype=np.float64) / 1e6 for n, s in samples.items()}


#: Per bundle, per alternation: (p50 ms, p95 ms).
Figures = dict[int, list[tuple[float, float]]]


def agent_and_quiet(bundles: dict[int, Path], chosen: list[Any], test: Any,
                    timers: dict[int, Any], args: argparse.Namespace) -> tuple[Figures, Figures]:
    """Alternate the agent's confirmation (a fresh measuring process on ``--core``) with the
    quiet timing here, ``--alternations`` times; each alternation gives both timers' p50 and
    p95 of every bundle (the agent's as its confirmation reports them: over its rounds'
    samples pooled), so that the ratio of the two is taken between timings a few seconds
    apart."""
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
    agent_figures: Figures = {r.number: [] for r in chosen}
    quiet_figures: Figures = {r.number: [] for r in chosen}
    for a in range(args.alternations):
        confirmation = agent.confirm(request)
        for number, m in confirmation.by_key().items():
            agent_figures[number].append((m.latency.p50_ms, m.latency.p95_ms))
        for number, samples in time_interleaved(timers, len(test), len(chosen),
                                                args.runs).items():
            p50, p95 = np.percentile(samples, [50, 95])
            quiet_figures[number].append((float(p50), float(p95)))
        console.print(f"alternation {a + 1}/{args.alternations}")
    agent.close()
    return agent_figures, quiet_figures


def ratio_summary(agent: list[tuple[float, float]], quiet: list[tuple[float, float]],
                  which: int, keep: list[bool] | None = None) -> tuple[float, float, float]:
    """The median, lowest and highest over the alternations (those ``keep`` marks, when
    given) of agent / quiet for p50 (``which`` 0) or p95 (1); NaNs when none is kept."""
    ratios = [a[which] / q[which] for k, (a, q) in enumerate(zip(agent, quiet, strict=True))
              if keep is None or keep[k]]
    if not ratios:
        return float("nan"), float("nan"), float("nan")
    return float(np.median(ratios)), min(ratios), max(ratios)


#: Two timings of one alternation saw the host in the same state when their fp32 baselines'
#: p50 agree within this (the host flips between states tens of percent apart).
SAME_STATE = 0.10


def same_state(agent: Figures, quiet: Figures, baseline: int) -> list[bool]:
    """Per alternation: whether the agent's and the quiet timing's baseline p50 agree within
    :data:`SAME_STATE` (the rule is fixed before the comparison, on the baseline only)."""
    return [abs(a[0] / q[0] - 1) <= SAME_STATE
            for a, q in zip(agent[baseline], quiet[baseline], strict=True)]


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
    parser.add_argument("--eval-samples", type=int, default=None,
                        help="time on the first N test samples (both timers; default: all)")
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
    if args.eval_samples is not None:
        from device_agents import EvalSet

        test = EvalSet(test.inputs[:args.eval_samples], test.labels[:args.eval_samples])
    bundles = {r.number: r.bundle_path(workspace.workdir) for r in chosen}
    timers = quiet_timers(bundles, test.inputs)
    agent, quiet = agent_and_quiet(bundles, chosen, test, timers, args)
    base = front.baseline.number

    def median(figures: Figures, number: int, which: int) -> float:
        return float(np.median([f[which] for f in figures[number]]))

    def speedup(figures: Figures, number: int) -> float:  # p95, per alternation, then median
        return float(np.median([b[1] / f[1] for b, f in
                                zip(figures[base], figures[number], strict=True)]))

    def spread(summary: tuple[float, float, float]) -> str:
        mid, low, high = summary
        return f"{mid:.3f} ({low:.2f}-{high:.2f})"

    keep = same_state(agent, quiet, base)
    rows, out = [], []
    for r in chosen:
        m, n = r.metrics, r.number
        q50, q95 = median(quiet, n, 0), median(quiet, n, 1)
        r50, r95 = ratio_summary(agent[n], quiet[n], 0), ratio_summary(agent[n], quiet[n], 1)
        s50 = ratio_summary(agent[n], quiet[n], 0, keep)
        s95 = ratio_summary(agent[n], quiet[n], 1, keep)
        row = {"trial": n, "baseline": r.baseline, "timer": timers[n][0],
               "quiet_p50_ms": q50, "quiet_p95_ms": q95,
               "agent_confirm_p50_ms": median(agent, n, 0),
               "agent_confirm_p95_ms": median(agent, n, 1),
               "confirm_over_quiet_p50": r50, "confirm_over_quiet_p95": r95,
               "same_state_confirm_over_quiet_p50": s50,
               "same_state_confirm_over_quiet_p95": s95,
               "per_alternation": {"agent": agent[n], "quiet": quiet[n]},
               "reported_p50_ms": m["latency_p50_ms"], "reported_p95_ms": m["latency_p95_ms"],
               "study_confirmed_p50_ms": m.get("confirmed_latency_p50_ms"),
               "study_confirmed_p95_ms": m.get("confirmed_latency_p95_ms"),
               "quiet_speedup_p95": speedup(quiet, n),
               "agent_confirm_speedup_p95": speedup(agent, n),
               "reported_speedup_p95": front.baseline.metrics["latency_p95_ms"]
               / m["latency_p95_ms"],
               "study_confirmed_speedup_p95": m.get("confirmed_speedup_p95"),
               "overlap_builds": m.get("overlap_builds"),
               "cpu_share": m.get("latency_cpu_share")}
        out.append(row)
        rows.append([f"{n}{' (fp32)' if r.baseline else ''}", row["timer"], q50, q95,
                     spread(r50), spread(r95), spread(s50), spread(s95),
                     m["latency_p50_ms"] / q50,
                     m["latency_p95_ms"] / q95, row["quiet_speedup_p95"],
                     row["agent_confirm_speedup_p95"], row["reported_speedup_p95"],
                     row["study_confirmed_speedup_p95"] or "-"])
    console.print(table(
        f"{args.study}: latency against a quiet timing of the same files ({args.alternations} "
        f"alternations of the agent's confirmation and the quiet timing, {args.runs} runs a "
        f"turn, {len(test)} test samples" +
        (f", core {args.core}" if args.core is not None else "") + "; confirm/quiet: median "
        "and lowest-highest over the alternations)",
        ["trial", "quiet timer", "quiet p50 ms", "quiet p95 ms", "confirm/quiet p50",
         "confirm/quiet p95", f"same state ({sum(keep)}) p50", "same state p95",
         "search/quiet p50", "search/quiet p95", "quiet speed-up p95",
         "confirm speed-up p95", "search speed-up p95", "study's confirmed speed-up p95"],
        rows))
    write_json(args.out, f"trust_{args.study}{'_' + args.label if args.label else ''}",
               {"study": args.study, "alternations": args.alternations, "runs": args.runs,
                "core": args.core, "label": args.label, "eval_samples": len(test),
                "same_state": keep, "same_state_tolerance": SAME_STATE,
                "rows": out})


if __name__ == "__main__":
    main()
