"""Benchmark 2 (issue 8): how few trials the search needs, on a space small enough to enumerate.

1. Every configuration of a reduced space (precision per stage x a few pruning ratios x
   early exit off/on at one threshold) is built and measured for real, by one agent, in one run.
   Its feasible Pareto front is the limit a search can reach.
2. The samplers (the default multivariate TPE, random, NSGA-II) then search that space, replaying
   the measured values, 5 seeds each, exactly as ``paretoedge run`` asks and tells Optuna (the
   fp32 baseline enqueued as trial 0, the accuracy band as a constraint, a repeated candidate
   reusing its measurement). The table gives the median hypervolume after N measurements and
   the measurements needed to reach 95 % of the exhaustive hypervolume.

    python experiments/benchmarks/search_efficiency_bench.py [--config experiments/digits.yaml]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path
from typing import Any

from bench_common import ROOT, console, table, write_json

from device_agents import BundlePayload, EvalSetPayload, LocalDeviceAgent, MeasureRequest
from device_agents.protocol import MeasurementProtocol
from search.config import load_config
from search.objective_set import ObjectiveSet
from search.records import TrialRecord
from search.results.pareto import ParetoFront
from search.study.objectives import constraint_values, objective_values
from search.study.preparation import prepare
from search.study.samplers import make_sampler
from spaces import Candidate


def reduced_config(path: Path, prune_max: float, prune_step: float, threshold: float) -> Any:
    config = load_config(path)
    return config.model_copy(update={
        "quantization": config.quantization.model_copy(update={"groups": "stages"}),
        "pruning": config.pruning.model_copy(update={"ratio_max": prune_max,
                                                     "ratio_step": prune_step}),
        "early_exit": config.early_exit.model_copy(update={
            "threshold": (threshold, threshold), "thresholds": "shared", "scale": "linear"}),
    })


def enumerate_params(space: Any) -> list[dict[str, Any]]:
    """Every combination of the reduced space's Optuna params."""
    axes: list[list[tuple[str, Any]]] = []
    for group in space.quantization.groups:
        axes.append([(f"quant_{group}", p) for p in space.quantization.precisions])
    if space.pruning.enabled:
        steps = round(space.pruning.ratio_max / space.pruning.ratio_step)
        axes.append([("prune_ratio", round(i * space.pruning.ratio_step, 6))
                     for i in range(steps + 1)])
    if space.exits.possible:
        axes.append([("early_exit", False), ("early_exit", True)])
    combos = []
    for choice in itertools.product(*axes):
        params = dict(choice)
        if params.get("early_exit"):
            params["exit_threshold"] = space.exits.threshold_low
        combos.append(params)
    return combos


def candidate_key(candidate: Candidate) -> str:
    return json.dumps(candidate.to_dict(), sort_keys=True)


def measure_everything(config: Any, workdir: Path) -> tuple[dict[str, dict], Candidate]:
    """Build and measure every configuration once; cached in the workdir as JSON."""
    import optuna

    prepared = prepare(config, workdir / "cache")
    space = prepared.space
    table_path = workdir / f"exhaustive-{config.study}.json"
    combos = enumerate_params(space)
    candidates = [space.suggest(optuna.trial.FixedTrial(p)) for p in combos]
    measured: dict[str, dict] = {}
    if table_path.is_file():
        measured = json.loads(table_path.read_text())
    todo = [c for c in candidates if candidate_key(c) not in measured]
    console.print(f"{len(candidates)} configurations; {len(todo)} to build and measure")
    agent = LocalDeviceAgent(device_class="bench", cache_dir=workdir / "agent")
    payload = EvalSetPayload.from_eval_set(prepared.data.test_set())
    m = config.measurement
    protocol = MeasurementProtocol(threads=config.device.threads, warmup_runs=m.warmup_runs,
                                   warmup_seconds=m.warmup_seconds, min_runs=m.min_runs,
                                   max_runs=m.max_runs, round_runs=m.round_runs,
                                   ci_rel_width=m.ci_rel_width)
    for i, candidate in enumerate(todo):
        built = prepared.builder.build(candidate, workdir / "bundles" / f"c{i:03d}")
        measurement = agent.measure(MeasureRequest(
            bundle_digest=built.digest, bundle=BundlePayload.from_directory(built.directory),
            eval_set_digest=payload.digest, eval_set=payload, protocol=protocol))
        measured[candidate_key(candidate)] = {"measurement": measurement.metrics(),
                                              "build_info": dict(built.info),
                                              "accuracy": measurement.accuracy}
        console.print(f"[{i + 1}/{len(todo)}] {candidate.describe():<40} acc "
                      f"{measurement.accuracy:.4f} p95 {measurement.latency.p95_ms:.4f} ms")
        table_path.write_text(json.dumps(measured, indent=1))
    return {candidate_key(c): measured[candidate_key(c)] for c in candidates}, space.baseline()


def records_for(measured: dict[str, dict], baseline: Candidate,
                max_drop: float) -> dict[str, TrialRecord]:
    base_acc = measured[candidate_key(baseline)]["accuracy"]
    out = {}
    for number, (key, row) in enumerate(measured.items()):
        metrics = dict(row["measurement"])
        metrics["accuracy_drop"] = base_acc - metrics["accuracy"]
        feasible = metrics["accuracy"] >= base_acc - max_drop
        out[key] = TrialRecord(number=number, state="COMPLETE", candidate=json.loads(key),
                               metrics=metrics, feasible=feasible,
                               baseline=json.loads(key) == baseline.to_dict(), bundle=None,
                               bundle_digest=None)
    return out


def replay(sampler: str, seed: int, budget: int, space: Any, records: dict[str, TrialRecord],
           base_acc: float, max_drop: float, objectives: ObjectiveSet) -> list[float]:
    """Hypervolume after each measurement of one search that replays the measured values.

    As in ``paretoedge run``, a candidate that repeats a measured one reuses its values: it is
    told to Optuna but costs no measurement, so the curve is indexed by measurements.
    """
    import optuna

    from search.study.runner import EXHAUSTED_AFTER_REPEATS

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(directions=list(objectives.directions),
                                sampler=make_sampler(sampler, seed, budget))
    study.enqueue_trial(space.baseline_params())
    seen: dict[str, TrialRecord] = {}
    curve: list[float] = []
    repeats = 0
    while len(curve) < budget and repeats < EXHAUSTED_AFTER_REPEATS:
        trial = study.ask()
        key = candidate_key(space.suggest(trial))
        record = records[key]
        for name, value in constraint_values(record.metrics, baseline_accuracy=base_acc,
                                             max_accuracy_drop=max_drop).items():
            trial.set_constraint(name, value)
        study.tell(trial, objective_values(record.metrics, objectives))
        if key in seen:
            repeats += 1
            continue
        repeats = 0
        seen[key] = TrialRecord(number=len(seen), state="COMPLETE", candidate=record.candidate,
                                metrics=record.metrics, feasible=record.feasible,
                                baseline=not seen, bundle=None, bundle_digest=None)
        curve.append(ParetoFront.from_records(list(seen.values()), max_drop,
                                              objectives=objectives).hypervolume())
    return curve + [curve[-1]] * (budget - len(curve))  # an exhausted space stays where it is


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "digits.yaml")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--prune-max", type=float, default=0.5)
    parser.add_argument("--prune-step", type=float, default=0.25)
    parser.add_argument("--threshold", type=float, default=0.99)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    config = reduced_config(args.config, args.prune_max, args.prune_step, args.threshold)
    measured, baseline = measure_everything(config, args.workdir)
    max_drop = config.constraints.max_accuracy_drop
    records = records_for(measured, baseline, max_drop)
    base_acc = measured[candidate_key(baseline)]["accuracy"]
    objectives = ObjectiveSet.of(config.objectives)  # the config's (default: the defaults)
    exhaustive = ParetoFront.from_records(list(records.values()), max_drop,
                                          objectives=objectives)
    limit = exhaustive.hypervolume()
    size = len(records)
    prepared_space = prepare(config, args.workdir / "cache").space
    checkpoints = sorted({max(2, size // 8), max(2, size // 4), max(2, size // 2), size})
    rows, results = [], {}
    for sampler in ("tpe", "random", "nsga2"):
        curves = [replay(sampler, seed, size, prepared_space, records, base_acc, max_drop,
                         objectives)
                  for seed in range(args.seeds)]
        needed = [next((i + 1 for i, hv in enumerate(c) if hv >= 0.95 * limit), None)
                  for c in curves]
        reached = [n for n in needed if n is not None]
        median_needed = statistics.median(reached) if len(reached) * 2 > len(needed) else None
        at = {n: statistics.median(c[n - 1] for c in curves) / limit for n in checkpoints}
        results[sampler] = {"curves": curves, "trials_to_95pct": needed,
                            "median_trials_to_95pct": median_needed,
                            "median_hv_fraction_at": at}
        rows.append([sampler + (" (default)" if sampler == "tpe" else ""),
                     *(f"{100 * at[n]:.1f} %" for n in checkpoints),
                     "-" if median_needed is None else
                     f"{median_needed:g} ({100 * median_needed / size:.0f} %)"])
    console.print(table(
        f"Search efficiency on {config.study}: {size} configurations, exhaustive front "
        f"{len(exhaustive.members)} trials, hypervolume {limit:.4f} (median of {args.seeds} "
        f"seeds; % of the exhaustive hypervolume)",
        ["sampler", *(f"after {n}" for n in checkpoints), "measurements to 95 %"], rows))
    quarter = max(2, size // 4)
    tpe_needed = results["tpe"]["median_trials_to_95pct"]
    within = tpe_needed is not None and tpe_needed <= quarter
    tpe_curves, random_curves = results["tpe"]["curves"], results["random"]["curves"]
    beats = {n: statistics.median(c[n - 1] for c in tpe_curves)
             >= statistics.median(c[n - 1] for c in random_curves) for n in checkpoints}
    console.print(
        f"default sampler: 95 % of the exhaustive hypervolume after "
        f"{'-' if tpe_needed is None else f'{tpe_needed:g}'} measurements (target: within "
        f"{quarter}, 25 % of {size}): " + ("[green]met[/green]" if within else "[red]not met[/red]")
        + "; median hypervolume >= random's at "
        + ", ".join(f"{n}: {'yes' if ok else 'no'}" for n, ok in beats.items()))
    write_json(args.workdir, f"search_efficiency-{config.study}", {
        "target_95pct_within_quarter": within, "tpe_at_least_random_at": beats,
        "configurations": size, "exhaustive_hypervolume": limit,
        "exhaustive_front": [r.candidate for r in exhaustive.members],
        "checkpoints": checkpoints, "results": results})


if __name__ == "__main__":
    main()
