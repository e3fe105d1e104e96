"""Pruning benchmark (issue 4): MACs, latency and accuracy of structured pruning, with a plain
finetune and with distillation from the unpruned model at the same budget.

For the reference model (experiments/fashion_mnist.yaml) at ratios 0, 0.25, 0.5 and 0.75, each
pruned model is finetuned several times with the same budget (``--train-subset`` samples,
``--epochs`` or ``--steps``, the same schedule, subset and seed): with cross-entropy only
(plain), and with cross-entropy mixed with KL to the unpruned model's softened logits
(distillation; one variant per ``--temperature``), and with that plus feature distillation
(each pruned stage's output also learns the teacher's output at the channels it kept; one variant
per ``--features`` weight, at the first temperature). Every variant is built into a bundle
by ``TorchBuilder`` (fp32, one graph) and measured by one
``LocalDeviceAgent`` in one run: the variants are interleaved, ``--rounds`` rounds in a rotating
order, each round a full measurement (accuracy over the eval set, one sample at a time, then a
fixed number of timed runs); p50/p95 are the median over the rounds.

    PYTHONPATH=$PWD .venv/bin/python experiments/benchmarks/pruning_bench.py \\
        [--baseline-cache <a workdir cache>] [--workdir runs/pruning_bench] \\
        [--train-subset 20000] [--epochs 3] [--temperature 1 4] [--features 1] [--rounds 3]

The fp32 model is not trained here: its cache (``<baseline-cache>/baseline``) is copied into the
workdir's cache. Pruned and finetuned models are cached in the workdir (a rerun measures only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
console = Console(width=210)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "fashion_mnist.yaml")
    parser.add_argument("--baseline-cache", type=Path, default=None,
                        help="a workdir cache holding the trained fp32 model (baseline/)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "pruning_bench")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    parser.add_argument("--train-subset", type=int, default=20000,
                        help="training samples of the finetune (0: the whole train split)")
    parser.add_argument("--epochs", type=int, default=3,
                        help="finetune epochs (the config's pruning.finetune.epochs: 2)")
    parser.add_argument("--steps", type=int, default=0, help="finetune steps (overrides epochs)")
    parser.add_argument("--schedule", choices=("onecycle", "cosine"), default=None)
    parser.add_argument("--alpha", type=float, default=None,
                        help="distillation weight of the distilled variant (default: config)")
    parser.add_argument("--temperature", type=float, nargs="+", default=None,
                        help="distillation temperature(s): one distilled variant each "
                             "(default: the config's)")
    parser.add_argument("--features", type=float, nargs="*", default=[],
                        help="feature-distillation weight(s): one more variant each, logit KD "
                             "at the first temperature plus each stage's kept channels")
    parser.add_argument("--distill-target", choices=("final", "exit"), default=None)
    parser.add_argument("--importance", choices=("l1", "l2", "taylor"), default=None)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    parser.add_argument("--runs", type=int, default=500, help="timed runs per round")
    parser.add_argument("--eval-samples", type=int, default=0,
                        help="test samples for accuracy (0: the whole test split)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while finetuning")
    parser.add_argument("--core", type=int, default=None, help="pin the agent to this core")
    parser.add_argument("--report", type=Path, default=None,
                        help="only print the table of a saved pruning_bench.json")
    parser.add_argument("--allow-train", action="store_true",
                        help="train the fp32 model when no cached one is found")
    return parser.parse_args(argv)


def machine() -> dict[str, Any]:
    import onnxruntime
    import torch

    cpu = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": os.getloadavg()}


def copy_baseline(source: Path, cache: Path, allow_train: bool) -> None:
    """Reuse the trained fp32 model: copy ``<source>/baseline`` into the workdir's cache."""
    found = sorted((source / "baseline").glob("*.pt"))
    if not found and allow_train:
        return
    if not found:
        sys.exit(f"error: no trained fp32 model in {source / 'baseline'} (train it with "
                 f"'paretoedge run {source}' first, or pass --baseline-cache)")
    target = cache / "baseline"
    target.mkdir(parents=True, exist_ok=True)
    for path in (source / "baseline").iterdir():
        if path.suffix in (".pt", ".json") and not (target / path.name).exists():
            shutil.copyfile(path, target / path.name)


def build_variants(args: argparse.Namespace) -> tuple[Any, list[dict[str, Any]]]:
    """Prune, finetune (plain and distilled) and build every variant; cached in the workdir."""
    import torch

    from search.config import load_config
    from search.study.preparation import prepare
    from spaces import Candidate, TorchBuilder

    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    cache = args.workdir / "cache"
    copy_baseline(args.baseline_cache, cache, args.allow_train)
    prepared = prepare(config, cache)
    if not prepared.trained.from_cache:
        console.print("[yellow]the fp32 model was trained here (no cached one matched)")
    base = prepared.builder.settings
    finetune = replace(base.finetune, train_subset=args.train_subset, steps=args.steps,
                       epochs=args.epochs,
                       schedule=args.schedule or base.finetune.schedule,
                       distill_target=args.distill_target or base.finetune.distill_target)
    alpha = base.finetune.distill_alpha if args.alpha is None else args.alpha
    pruning = replace(base.pruning, importance=args.importance or base.pruning.importance)
    settings = {"plain": replace(base, finetune=replace(finetune, distill_alpha=0.0,
                                                        distill_features=0.0),
                                 pruning=pruning)}
    for tau in args.temperature or [base.finetune.distill_temperature]:
        settings[f"KD T={tau:g}"] = replace(base, pruning=pruning, finetune=replace(
            finetune, distill_alpha=alpha, distill_temperature=tau, distill_features=0.0))
    first_tau = (args.temperature or [base.finetune.distill_temperature])[0]
    for weight in args.features:
        settings[f"KD T={first_tau:g} +feat {weight:g}"] = replace(
            base, pruning=pruning, finetune=replace(
                finetune, distill_alpha=alpha, distill_temperature=first_tau,
                distill_features=weight))
    builders = {name: TorchBuilder(trained=prepared.trained, data=prepared.data,
                                       cache_dir=cache, settings=s,
                                       groups=prepared.builder.layer_groups)
                for name, s in settings.items()}
    groups = len(prepared.builder.groups)
    variants = []
    for ratio in args.ratios:
        for name, builder in builders.items():
            if ratio == 0 and name != "plain":
                continue  # nothing to finetune: one unpruned variant
            candidate = Candidate(quantization=("fp32",) * groups, prune_ratio=ratio)
            started = time.perf_counter()
            pruned = builder.pruned(ratio)
            seconds = time.perf_counter() - started
            meta = json.loads((cache / "pruned" / pruned.key / "meta.json").read_text())
            label = "fp32" if ratio == 0 else name
            directory = args.workdir / "bundles" / f"{label.replace(' ', '_')}_{ratio:g}"
            built = builder.build(candidate, directory)
            console.print(f"built {label:>15} ratio {ratio:<5g} MACs {pruned.macs / 1e6:6.2f} M, "
                          f"val acc {pruned.val_exit_accuracies[-1]:.4f}, finetune "
                          f"{meta.get('seconds', 0):.0f} s"
                          + (" (cached)" if seconds < 0.5 * meta.get("seconds", 0) else ""))
            variants.append({"ratio": ratio, "finetune": label, "bundle": built.directory,
                             "digest": built.digest, "macs_m": pruned.macs / 1e6,
                             "params_k": pruned.params / 1e3,
                             "val_accuracy": pruned.val_exit_accuracies[-1],
                             "finetune_s": meta.get("seconds", 0.0),
                             "finetune_samples": meta.get("finetune_samples", 0)})
    info = {"finetune": {name: s.finetune.to_dict() for name, s in settings.items()},
            "pruning": pruning.to_dict(), "baseline_key": prepared.trained.key}
    return (prepared, info), variants


def measure_interleaved(prepared: Any, variants: list[dict[str, Any]],
                        args: argparse.Namespace) -> None:
    """One agent, every variant once per round, in a rotating order."""
    from device_agents import (
        BundlePayload,
        EvalSet,
        EvalSetPayload,
        LocalDeviceAgent,
        MeasurementProtocol,
        MeasureRequest,
    )

    test = prepared.data.test_set()
    if args.eval_samples:
        test = EvalSet(inputs=test.inputs[: args.eval_samples],
                       labels=test.labels[: args.eval_samples])
    payload = EvalSetPayload.from_eval_set(test)
    agent = LocalDeviceAgent(device_class="local", threads=1, cache_dir=args.workdir / "agent",
                             cores=None if args.core is None else (args.core,))
    protocol = MeasurementProtocol(threads=1, warmup_runs=100, warmup_seconds=0.2,
                                   min_runs=args.runs, max_runs=args.runs, round_runs=100)
    for variant in variants:
        variant["rounds"] = []
    for r in range(args.rounds):
        shift = r % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            m = agent.measure(MeasureRequest(
                bundle_digest=variant["digest"],
                bundle=BundlePayload.from_directory(variant["bundle"]),
                eval_set_digest=payload.digest, eval_set=payload, protocol=protocol))
            variant["rounds"].append({"accuracy": m.accuracy, "p50_ms": m.latency.p50_ms,
                                      "p95_ms": m.latency.p95_ms, "size_kb": m.size_kb,
                                      "n": m.latency.n})
            variant["fingerprint"] = dict(m.fingerprint)
        console.print(f"round {r + 1}/{args.rounds} measured")
    for variant in variants:
        summarize(variant)
        variant["n_eval"] = len(test)


def summarize(variant: dict[str, Any]) -> None:
    """Accuracy (the same every round), and p50/p95 as the median and the best of the rounds
    (on a shared machine the best round is the one least disturbed by other processes)."""
    rounds = variant["rounds"]
    variant["accuracy"] = rounds[0]["accuracy"]
    variant["accuracy_same_every_round"] = all(x["accuracy"] == rounds[0]["accuracy"]
                                               for x in rounds)
    for q in ("p50", "p95"):
        variant[f"{q}_ms"] = statistics.median(x[f"{q}_ms"] for x in rounds)
        variant[f"{q}_best_ms"] = min(x[f"{q}_ms"] for x in rounds)
    variant["size_kb"] = rounds[0]["size_kb"]


def report(variants: list[dict[str, Any]], info: dict[str, Any], steps: int, rounds: int
           ) -> dict[str, Any]:
    fp32 = next(v for v in variants if v["ratio"] == 0)
    title = (f"Structured pruning of the reference model: plain finetune vs distillation at the "
             f"same budget ({variants[-1]['finetune_samples']} samples, "
             f"{info['finetune']['plain']['epochs']} epochs"
             + (f", {steps} steps" if steps else "")
             + f", {info['finetune']['plain']['schedule']}; distillation alpha "
             f"{next(f['distill_alpha'] for n, f in info['finetune'].items() if n != 'plain')}"
             f", target "
             f"{info['finetune']['plain'].get('distill_target', 'final')}); latency: median "
             f"and best of {rounds} interleaved rounds")
    result = Table(title=title, title_justify="left")
    for i, column in enumerate(["ratio", "finetune", "MACs (M)", "params (k)", "size (KB)",
                                "p50 ms", "p95 ms", "p50 best", "p95 best", "p50 speed-up",
                                "p95 speed-up (best)", "accuracy", "vs fp32 (pp)",
                                "prune+finetune s"]):
        result.add_column(column, justify="left" if i < 2 else "right")
    for v in variants:
        result.add_row(f"{v['ratio']:g}", v["finetune"].replace("distilled", "KD"),
                       f"{v['macs_m']:.2f}",
                       f"{v['params_k']:.1f}", f"{v['size_kb']:.0f}", f"{v['p50_ms']:.4f}",
                       f"{v['p95_ms']:.4f}", f"{v['p50_best_ms']:.4f}",
                       f"{v['p95_best_ms']:.4f}", f"{fp32['p50_ms'] / v['p50_ms']:.2f}x",
                       f"{fp32['p95_best_ms'] / v['p95_best_ms']:.2f}x",
                       f"{v['accuracy']:.4f}",
                       f"{100 * (v['accuracy'] - fp32['accuracy']):+.2f}",
                       f"{v['finetune_s']:.0f}")
    console.print(result)
    verdict = {}
    for ratio in sorted({v["ratio"] for v in variants if v["ratio"] > 0}):
        plain = next(v for v in variants if v["ratio"] == ratio and v["finetune"] == "plain")
        for kd in (v for v in variants if v["ratio"] == ratio and v["finetune"] != "plain"):
            gain = 100 * (kd["accuracy"] - plain["accuracy"])
            verdict[f"{ratio:g} {kd['finetune']}"] = {
                "plain": plain["accuracy"], "distilled": kd["accuracy"],
                "distilled_minus_plain_pp": gain, "met": kd["accuracy"] >= plain["accuracy"]}
            console.print(f"ratio {ratio:g}: {kd['finetune']} {kd['accuracy']:.4f} vs plain "
                          f"{plain['accuracy']:.4f} ({gain:+.2f} pp) "
                          + ("[green]distillation >= plain" if gain >= 0
                             else "[red]distillation < plain"))
    return verdict


def report_saved(path: Path) -> int:
    """Print the table of a saved run again (``--report runs/pruning_bench/pruning_bench.json``)."""
    saved = json.loads(path.read_text())
    for variant in saved["variants"]:
        summarize(variant)
    args = saved["args"]
    report(saved["variants"], saved["settings"], int(args.get("steps", 0)),
           int(args.get("rounds", 0)))
    console.print(f"measured {saved['machine']['date']} on {saved['machine']['cpu']} "
                  f"(load average {saved['machine']['loadavg_start']} -> "
                  f"{saved['machine'].get('loadavg_end')})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        return report_saved(args.report)
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    env = machine()
    (prepared, info), variants = build_variants(args)
    measure_interleaved(prepared, variants, args)
    verdict = report(variants, info, args.steps, args.rounds)
    env["loadavg_end"] = os.getloadavg()
    path = args.workdir / "pruning_bench.json"
    path.write_text(json.dumps({
        "machine": env, "args": {k: str(v) for k, v in vars(args).items()}, "settings": info,
        "variants": [{k: (str(v) if isinstance(v, Path) else v) for k, v in variant.items()}
                     for variant in variants],
        "distillation_vs_plain": verdict, "seconds": time.perf_counter() - started},
        indent=2, default=str))
    console.print(f"results written to {path} (load average {env['loadavg_start']} -> "
                  f"{env['loadavg_end']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
