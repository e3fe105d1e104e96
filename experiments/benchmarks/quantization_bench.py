"""Quantization benchmark: fp32, all-int8 and the best mixed configuration, per model.

For the digits model and the reference model (Fashion-MNIST), this script
1. prepares the study (the fp32 model is loaded from a cache when given),
2. runs the sensitivity analysis (per layer group, the accuracy drop on the validation split
   when only that group is int8) and takes the mixed configurations it suggests, plus int8 with
   the first and last layer left fp32,
3. builds every variant (no pruning, no exits: quantization alone),
4. measures all of them with ONE LocalDeviceAgent, in interleaved rounds (each round measures
   every variant once, in a rotated order), on the test split, and
5. prints a table (median over rounds of p50/p95; accuracy; size; speed-ups against fp32) and
   writes everything to ``<workdir>/quantization_bench.json``.

The best mixed configuration is the fastest (p50) mixed variant inside the config's accuracy
band; all-int8 and all-fp32 are not "mixed". Target: all-int8 reference model >= 2x fp32 at p50.

    PYTHONPATH=$PWD .venv/bin/python experiments/benchmarks/quantization_bench.py \
        --workdir runs/bench-quant --fashion-baseline <a workdir cache with the trained model>
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CONFIGS = {"digits": ROOT / "experiments" / "digits.yaml",
           "fashion": ROOT / "experiments" / "fashion_mnist.yaml"}


def copy_baseline(source: Path | None, cache: Path) -> None:
    """Reuse a trained fp32 model: copy ``<source>/baseline`` into this benchmark's cache."""
    if source is None or not (source / "baseline").is_dir():
        return
    target = cache / "baseline"
    target.mkdir(parents=True, exist_ok=True)
    for path in (source / "baseline").iterdir():
        if not (target / path.name).exists():
            shutil.copy2(path, target / path.name)


def variants_for(config: Any, prepared: Any, report: Any) -> dict[str, tuple[str, ...]]:
    """Name -> quantization: fp32, all-int8, the seeds, and int8 with first/last in fp32."""
    from search.study.sensitivity import seeds_for

    space = prepared.space.quantization
    groups = space.groups
    int8 = tuple("int8" if "int8" in space.choices_for(g) else "fp32" for g in groups)
    variants = {"fp32": space.baseline(), "all-int8": int8}
    mixed = list(seeds_for(config, prepared, report))
    if {"first", "last"} <= set(groups):
        mixed.append(tuple("fp32" if g in ("first", "last") else q
                           for g, q in zip(groups, int8, strict=True)))
    for quantization in mixed:
        if quantization not in variants.values():
            variants[f"mixed-{len(variants) - 1}"] = quantization
    return variants


def measure_interleaved(agent: Any, requests: dict[str, Any], rounds: int,
                        log: Any) -> dict[str, list[Any]]:
    results: dict[str, list[Any]] = {name: [] for name in requests}
    names = list(requests)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            measurement = agent.measure(requests[name])
            results[name].append(measurement)
            log(f"  round {r + 1}/{rounds} {name:<10} p50 {measurement.latency.p50_ms:.4f} ms "
                f"p95 {measurement.latency.p95_ms:.4f} ms acc {measurement.accuracy:.4f}")
    return results


def bench_model(model: str, args: argparse.Namespace, console: Any) -> dict[str, Any]:
    import torch

    from device_agents import EvalSetPayload, LocalDeviceAgent, MeasurementProtocol
    from device_agents import MeasureRequest as Request
    from device_agents.bundle import BundlePayload
    from search.config import load_config
    from search.study.preparation import prepare
    from search.study.sensitivity import compute_sensitivity
    from search.workspace import Workspace
    from spaces import Candidate

    torch.set_num_threads(1)
    config = load_config(CONFIGS[model])
    workdir = args.workdir.resolve() / model
    workspace = Workspace(workdir, config.study)
    workspace.create()
    copy_baseline(getattr(args, f"{model}_baseline"), workspace.cache)
    if model == "fashion" and not args.allow_training and \
            not any((workspace.cache / "baseline").glob("*.pt")):
        raise SystemExit(f"no trained reference model in {args.fashion_baseline}/baseline or "
                         f"{workspace.cache}/baseline (training it takes hours on 2 busy "
                         f"cores); pass --fashion-baseline DIR or --allow-training")
    started = time.perf_counter()
    prepared = prepare(config, workspace.cache)
    console.print(f"[bold]{model}[/bold]: fp32 model "
                  f"{'loaded' if prepared.trained.from_cache else 'trained'} "
                  f"({time.perf_counter() - started:.0f} s); layer groups "
                  f"{', '.join(prepared.space.quantization.groups)}")
    console.print("sensitivity (validation split, one group int8 at a time):")
    report = compute_sensitivity(config, workspace, prepared, samples=args.sensitivity_samples,
                                 console=console)
    variants = variants_for(config, prepared, report)
    built = {}
    for name, quantization in variants.items():
        built[name] = prepared.builder.build(Candidate(quantization=quantization),
                                             workspace.bundle_dir(len(built)))
    eval_payload = EvalSetPayload.from_eval_set(prepared.data.test_set())
    m = config.measurement
    protocol = MeasurementProtocol(threads=1, warmup_runs=m.warmup_runs,
                                   warmup_seconds=m.warmup_seconds, min_runs=m.min_runs,
                                   max_runs=m.max_runs, round_runs=m.round_runs,
                                   ci_rel_width=m.ci_rel_width)
    requests = {name: Request(bundle_digest=b.digest,
                              bundle=BundlePayload.from_directory(b.directory),
                              eval_set_digest=eval_payload.digest, eval_set=eval_payload,
                              protocol=protocol) for name, b in built.items()}
    agent = LocalDeviceAgent(device_class="local", cache_dir=workdir / "agent")
    console.print(f"measuring {len(requests)} variants x {args.rounds} rounds with agent "
                  f"{agent.agent_id} (cores {list(agent.cores)}):")
    results = measure_interleaved(agent, requests, args.rounds, console.print)

    rows = {}
    for name, measurements in results.items():
        accuracies = {round(x.accuracy, 6) for x in measurements}
        rows[name] = {
            "quantization": list(variants[name]),
            "accuracy": measurements[0].accuracy,
            "accuracy_identical_across_rounds": len(accuracies) == 1,
            "p50_ms": statistics.median(x.latency.p50_ms for x in measurements),
            "p95_ms": statistics.median(x.latency.p95_ms for x in measurements),
            "p50_ms_rounds": [x.latency.p50_ms for x in measurements],
            "p95_ms_rounds": [x.latency.p95_ms for x in measurements],
            "size_kb": measurements[0].size_kb,
            "fused_int_ops_ratio": built[name].info.get("fused_int_ops_ratio", 0.0),
            "integer_ops": built[name].info.get("integer_ops", 0),
            "bundle": str(built[name].directory),
        }
    base = rows["fp32"]
    for row in rows.values():
        row["speedup_p50"] = base["p50_ms"] / row["p50_ms"]
        row["speedup_p95"] = base["p95_ms"] / row["p95_ms"]
        row["accuracy_drop"] = base["accuracy"] - row["accuracy"]
    band = config.constraints.max_accuracy_drop
    mixed = [n for n in rows if n.startswith("mixed")]
    feasible = [n for n in mixed if rows[n]["accuracy_drop"] <= band + 1e-12]
    best = (min(feasible, key=lambda n: rows[n]["p50_ms"]) if feasible
            else max(mixed, key=lambda n: rows[n]["accuracy"]) if mixed else None)
    return {"model": model, "study": config.study, "groups": list(report.groups),
            "accuracy_band": band, "sensitivity": report.to_dict(), "variants": rows,
            "best_mixed": best, "best_mixed_feasible": best in feasible,
            "fingerprint": dict(results["fp32"][0].fingerprint)}


def table(results: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    out = Table(title="Quantization benchmark (one agent, interleaved rounds; median of rounds)",
                title_justify="left")
    for column in ("model", "variant", "quantization (per group)", "accuracy", "drop pp",
                   "p50 ms", "p95 ms", "size KB", "p50 x", "p95 x", "fused"):
        out.add_column(column, justify="left" if column in ("model", "variant",
                                                            "quantization (per group)")
                       else "right", no_wrap=True)
    for result in results:
        shown = ["fp32", "all-int8"] + ([result["best_mixed"]] if result["best_mixed"] else [])
        shown += [n for n in result["variants"] if n not in shown]
        for name in shown:
            row = result["variants"][name]
            label = name + (" (best mixed)" if name == result["best_mixed"] else "")
            out.add_row(result["model"], label, "/".join(row["quantization"]),
                        f"{row['accuracy']:.4f}", f"{100 * row['accuracy_drop']:+.2f}",
                        f"{row['p50_ms']:.4f}", f"{row['p95_ms']:.4f}",
                        f"{row['size_kb']:.1f}", f"{row['speedup_p50']:.2f}x",
                        f"{row['speedup_p95']:.2f}x", f"{row['fused_int_ops_ratio']:.2f}")
    return out


def main() -> int:
    from rich.console import Console

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-quant")
    parser.add_argument("--models", default="digits,fashion")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sensitivity-samples", type=int, default=None,
                        help="validation samples per sensitivity evaluation (default: all)")
    parser.add_argument("--fashion-baseline", type=Path, default=None,
                        help="a cache dir whose baseline/ holds the trained reference model")
    parser.add_argument("--digits-baseline", type=Path, default=None)
    parser.add_argument("--allow-training", action="store_true",
                        help="train the reference model when no cached one is found")
    args = parser.parse_args()
    console = Console(width=160)
    results = [bench_model(m.strip(), args, console) for m in args.models.split(",")]
    args.workdir.mkdir(parents=True, exist_ok=True)
    out = args.workdir / "quantization_bench.json"
    out.write_text(json.dumps(results, indent=2))
    console.print(table(results))
    for result in results:
        if result["model"] == "fashion":
            speedup = result["variants"]["all-int8"]["speedup_p50"]
            verdict = "met" if speedup >= 2.0 else "NOT met"
            console.print(f"target (all-int8 reference model >= 2x fp32 at p50): {verdict} "
                          f"({speedup:.2f}x)")
    console.print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
