"""Early exit on the reference model: a threshold sweep and a threshold search, fp32 and int8.

Everything is measured in one run by one LocalDeviceAgent (each bundle in a fresh process pinned
to one core, onnxruntime with one thread, the whole 10,000-image test set one sample at a time):

1. the model without exits (one graph), fp32 and int8 (U8S8 per-channel, every stage);
2. cascades with one shared threshold over a range, each precision: mean and p95 latency,
   accuracy, ECE (cascade and per exit) and exit rates;
3. a search (Optuna TPE, a threshold per exit on the log scale, as ``paretoedge run`` samples
   them; objectives accuracy and mean latency) per precision, and whether it finds a cascade
   whose mean latency is at least 1.5x below the same model without exits, within the accuracy
   band (fp32 baseline accuracy - ``constraints.max_accuracy_drop``).

Bundles are measured one after another, so a machine whose load drifts between measurements
skews the ratios. As a cross-check that drift cannot skew, the cost of each exit path (a cascade
whose samples all leave at exit k) and of the graph without exits is timed interleaved, in
rounds, in this process (pinned to the agent's core), and each cascade's mean latency is
estimated as sum_k exit_rate_k * median(path k): the "est." columns.

Usage (the fp32 model is loaded from the reference cache, never retrained here):

    PYTHONPATH=$PWD .venv/bin/python experiments/benchmarks/early_exit_bench.py \\
        --baseline-cache <a workdir cache with the trained model> --workdir runs/early_exit_bench

Prints rich tables and writes ``<workdir>/early_exit_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

SPEED_UP_TARGET = 1.5
SWEEP = (0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0)


@dataclass
class Row:
    """One measured bundle."""

    kind: str  # "no-exit", "sweep" or "search"
    precision: str
    thresholds: tuple[float, ...]
    metrics: dict[str, float]
    trial: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "precision": self.precision,
                "thresholds": list(self.thresholds), "trial": self.trial, **self.metrics}


class Bench:
    """Builds candidates and measures them on one local agent, one request after another."""

    def __init__(self, args: argparse.Namespace, console: Console) -> None:
        import torch

        from device_agents import EvalSet, EvalSetPayload, LocalDeviceAgent, MeasurementProtocol
        from search.config import load_config
        from search.study.preparation import prepare

        torch.set_num_threads(1)
        self.console = console
        self.config = load_config(args.config)
        self.workdir = Path(args.workdir).resolve()
        cache = self.workdir / "cache"
        if args.baseline_cache:  # reuse the reference fp32 model: copy its baseline entry
            source = Path(args.baseline_cache) / "baseline"
            if not source.is_dir():
                raise SystemExit(f"{source}: no trained baseline there")
            shutil.copytree(source, cache / "baseline", dirs_exist_ok=True)
        started = time.perf_counter()
        self.prepared = prepare(self.config, cache)
        how = "loaded from cache" if self.prepared.trained.from_cache else "TRAINED"
        console.print(f"fp32 model {how} ({time.perf_counter() - started:.1f} s); "
                      f"validation accuracy per exit "
                      f"{[round(a, 4) for a in self.prepared.trained.exit_accuracies]}")
        data = self.prepared.data
        n = args.eval_samples or len(data.test_x)
        self.eval_payload = EvalSetPayload.from_eval_set(
            EvalSet(inputs=data.test_x[:n], labels=data.test_y[:n].astype("int64")))
        m = self.config.measurement
        self.protocol = MeasurementProtocol(threads=1, warmup_runs=m.warmup_runs,
                                            warmup_seconds=m.warmup_seconds,
                                            min_runs=m.min_runs, max_runs=m.max_runs,
                                            round_runs=m.round_runs, ci_rel_width=m.ci_rel_width)
        self.bundles = self.workdir / "bundles"
        self.groups = len(self.prepared.builder.groups)
        self._agent_cores = (max(os.sched_getaffinity(0)),)
        self.agent: Any = None
        self._make_agent = lambda: LocalDeviceAgent(device_class="local", threads=1,
                                                    cores=self._agent_cores,
                                                    cache_dir=self.workdir / "agent")
        self.measured = 0

    def build(self, precision: str, thresholds: tuple[float, ...], name: str) -> Any:
        from spaces import Candidate

        candidate = Candidate(quantization=(precision,) * self.groups,
                              exit_thresholds=thresholds)
        return self.prepared.builder.build(candidate, self.bundles / name)

    def measure(self, built: Any) -> dict[str, float]:
        from device_agents import BundlePayload, MeasureRequest

        if self.agent is None:  # after the first builds: the agent pins this process to a core
            self.agent = self._make_agent()
        request = MeasureRequest(bundle_digest=built.digest,
                                 bundle=BundlePayload.from_directory(built.directory),
                                 eval_set_digest=self.eval_payload.digest,
                                 eval_set=self.eval_payload, protocol=self.protocol)
        measurement = self.agent.measure(request)
        self.measured += 1
        metrics = measurement.metrics()
        metrics["fused_int_ops_ratio"] = built.info.get("fused_int_ops_ratio", 0.0)
        return metrics


def calibration(bench: Bench) -> list[dict[str, float]]:
    """ECE and NLL of every exit on the test split, with T = 1 and with the fitted temperature."""
    import numpy as np
    import torch

    from device_agents.calibration import expected_calibration_error
    from spaces.torch_model.training import exit_logits

    data = bench.prepared.data
    n = len(bench.eval_payload.load())
    temperatures = bench.prepared.builder.pruned(0.0).temperatures
    logits = exit_logits(bench.prepared.builder.trained.fresh(), data.preprocess(data.test_x[:n]))
    labels = torch.from_numpy(data.test_y[:n].astype(np.int64))
    out = []
    for k, (z, t) in enumerate(zip(logits, temperatures, strict=True)):
        row = {"exit": k, "temperature": t, "accuracy": float((z.argmax(1) == data.test_y[:n])
                                                               .mean())}
        for name, scale in (("raw", 1.0), ("calibrated", t)):
            scaled = torch.from_numpy(z) / scale
            p = torch.softmax(scaled, 1).numpy()
            row[f"ece_{name}"] = expected_calibration_error(p.max(1), p.argmax(1) == labels.numpy())
            row[f"nll_{name}"] = float(torch.nn.functional.cross_entropy(scaled, labels))
        out.append(row)
    return out


def path_costs(bench: Bench, precisions: tuple[str, ...], rounds: int = 8,
               runs: int = 150) -> dict[str, dict[str, float]]:
    """Median ms of every exit path and of the no-exit graph, timed interleaved in rounds."""
    import numpy as np

    from device_agents import CascadeRunner

    exits = bench.groups - 1
    paths: dict[tuple[str, str], tuple[float, ...]] = {}
    for precision in precisions:
        paths[(precision, "no-exit")] = ()
        for k in range(bench.groups):  # exit k only: earlier exits off (1.0), exit k always
            paths[(precision, f"exit{k}")] = tuple(1e-6 if j == k else 1.0 for j in range(exits))
    runners = {key: CascadeRunner.load(bench.build(key[0], t, f"{key[0]}-path-{key[1]}")
                                       .directory) for key, t in paths.items()}
    inputs = bench.eval_payload.load().inputs
    for runner in runners.values():
        for i in range(100):
            runner.run(inputs[i])
    samples: dict[tuple[str, str], list[int]] = {key: [] for key in runners}
    keys = list(runners)
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            runner, out = runners[key], samples[key]
            for i in range(runs):
                t0 = time.perf_counter_ns()
                runner.run(inputs[(r * runs + i) % len(inputs)])
                out.append(time.perf_counter_ns() - t0)
    costs: dict[str, dict[str, float]] = {p: {} for p in precisions}
    for (precision, name), values in samples.items():
        costs[precision][name] = float(np.median(values)) / 1e6
    return costs


def estimate(row_metrics: dict[str, float], costs: dict[str, float]) -> float:
    """Mean latency from the exit rates and the interleaved path costs (no exits: the graph)."""
    rates = sorted(k for k in row_metrics if k.startswith("exit_rate_"))
    if len(rates) <= 1:
        return costs["no-exit"]
    return sum(row_metrics[k] * costs[f"exit{k.removeprefix('exit_rate_')}"] for k in rates)


def sweep(bench: Bench, precisions: tuple[str, ...], thresholds: tuple[float, ...]) -> list[Row]:
    rows = []
    for precision in precisions:
        built = bench.build(precision, (), f"{precision}-no-exit")
        rows.append(Row("no-exit", precision, (), bench.measure(built)))
        bench.console.print(f"  {precision} no exit: {_brief(rows[-1].metrics)}")
        for t in thresholds:
            built = bench.build(precision, (t,) * (bench.groups - 1), f"{precision}-exit-{t:g}")
            rows.append(Row("sweep", precision, (t,) * (bench.groups - 1), bench.measure(built)))
            bench.console.print(f"  {precision} exit@{t:g}: {_brief(rows[-1].metrics)}")
    return rows


def search(bench: Bench, precision: str, trials: int, band: float, seed: int) -> list[Row]:
    """Optuna over the exit space alone (per-exit thresholds, log scale, exits on)."""
    import optuna

    from spaces import ExitSpace

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    e = bench.config.early_exit
    space = ExitSpace(num_exits=bench.groups - 1, threshold_low=e.threshold[0],
                      threshold_high=e.threshold[1], per_exit=e.thresholds == "per_exit",
                      scale=e.scale)
    sampler = optuna.samplers.PartialFixedSampler(
        {"early_exit": True}, optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=min(6, max(2, trials // 3))))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    rows = []
    for number in range(trials):
        trial = study.ask()
        thresholds, _ = space.suggest(trial)
        built = bench.build(precision, thresholds, f"{precision}-search-{number:02d}")
        metrics = bench.measure(built)
        trial.set_constraint("accuracy_band", band - metrics["accuracy"])
        study.tell(trial, [metrics["accuracy"], metrics["latency_mean_ms"]])
        rows.append(Row("search", precision, thresholds, metrics, trial=number))
        bench.console.print(f"  {precision} trial {number:2d} exit@"
                            f"{','.join(f'{t:.5g}' for t in thresholds)}: {_brief(metrics)}")
    return rows


def _brief(m: dict[str, float]) -> str:
    rates = "/".join(f"{m[k]:.2f}" for k in sorted(m) if k.startswith("exit_rate_"))
    return (f"acc {m['accuracy']:.4f} mean {m['latency_mean_ms']:.3f} ms p95 "
            f"{m['latency_p95_ms']:.3f} ms ECE {m['ece']:.4f} exits {rates}")


def _table(title: str, rows: list[Row], reference: dict[str, dict[str, float]],
           baseline_accuracy: float, costs: dict[str, dict[str, float]]) -> Table:
    table = Table(title=title)
    for name in ("precision", "thresholds", "accuracy", "Δacc pp", "mean ms", "p95 ms",
                 "mean speed-up", "est. mean ms", "est. speed-up", "ECE", "ECE per exit",
                 "exit rates"):
        table.add_column(name, justify="left" if name in ("precision", "thresholds") else
                         "right")
    for row in rows:
        m = row.metrics
        exits = sorted(k for k in m if k.startswith("exit_rate_"))
        eces = sorted(k for k in m if k.startswith("ece_exit_"))
        table.add_row(
            row.precision,
            ",".join(f"{t:.5g}" for t in row.thresholds) or "no exit",
            f"{m['accuracy']:.4f}", f"{100 * (m['accuracy'] - baseline_accuracy):+.2f}",
            f"{m['latency_mean_ms']:.3f}", f"{m['latency_p95_ms']:.3f}",
            f"{reference[row.precision]['latency_mean_ms'] / m['latency_mean_ms']:.2f}x",
            f"{estimate(m, costs[row.precision]):.3f}",
            f"{costs[row.precision]['no-exit'] / estimate(m, costs[row.precision]):.2f}x",
            f"{m['ece']:.4f}", " ".join(f"{m[k]:.3f}" for k in eces) or "-",
            " ".join(f"{m[k]:.2f}" for k in exits))
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "experiments" / "fashion_mnist.yaml"))
    parser.add_argument("--baseline-cache", default="",
                        help="a workdir cache holding the trained fp32 model ('' to train)")
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "early_exit_bench"))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--thresholds", nargs="+", type=float, default=list(SWEEP))
    parser.add_argument("--search-trials", type=int, default=12)
    parser.add_argument("--eval-samples", type=int, default=0, help="0: the whole test set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    console = Console(width=200)
    started = time.perf_counter()
    bench = Bench(args, console)
    band_drop = bench.config.constraints.max_accuracy_drop

    calibrated = calibration(bench)
    table = Table(title="Temperature scaling per exit (fitted on validation), judged on the test "
                        "split (torch, fp32)")
    for name in ("exit", "T", "accuracy", "ECE T=1", "ECE fitted T", "NLL T=1", "NLL fitted T"):
        table.add_column(name, justify="right")
    for row in calibrated:
        table.add_row(str(row["exit"]), f"{row['temperature']:.3f}", f"{row['accuracy']:.4f}",
                      f"{row['ece_raw']:.4f}", f"{row['ece_calibrated']:.4f}",
                      f"{row['nll_raw']:.4f}", f"{row['nll_calibrated']:.4f}")
    console.print(table)

    console.print("[bold]threshold sweep[/bold]")
    rows = sweep(bench, tuple(args.precisions), tuple(args.thresholds))
    costs = path_costs(bench, tuple(args.precisions))
    console.print("interleaved medians, ms: " + "; ".join(
        f"{p}: " + ", ".join(f"{k} {v:.3f}" for k, v in c.items()) for p, c in costs.items()))
    reference = {r.precision: r.metrics for r in rows if r.kind == "no-exit"}
    baseline_accuracy = reference["fp32"]["accuracy"] if "fp32" in reference else \
        next(iter(reference.values()))["accuracy"]
    band = baseline_accuracy - band_drop
    console.print(_table(f"Early-exit sweep, one shared threshold (accuracy band >= {band:.4f})",
                         rows, reference, baseline_accuracy, costs))

    outcome = {}
    search_rows: list[Row] = []
    for precision in args.precisions:
        if args.search_trials <= 0:
            break
        console.print(f"[bold]search, {precision}[/bold]: {args.search_trials} trials")
        again = bench.measure(bench.build(precision, (), f"{precision}-no-exit"))
        console.print(f"  {precision} no exit, measured again: {_brief(again)}")
        if again["latency_mean_ms"] < reference[precision]["latency_mean_ms"]:
            reference[precision] = again  # the faster no-exit run: a conservative speed-up
        found = search(bench, precision, args.search_trials, band, args.seed)
        search_rows.extend(found)
        feasible = [r for r in found if r.metrics["accuracy"] >= band]
        best = min(feasible, key=lambda r: r.metrics["latency_mean_ms"], default=None)
        speed_up = (reference[precision]["latency_mean_ms"] / best.metrics["latency_mean_ms"]
                    if best else 0.0)
        c = costs[precision]
        best_est = min(feasible, key=lambda r: estimate(r.metrics, c), default=None)
        est_speed_up = c["no-exit"] / estimate(best_est.metrics, c) if best_est else 0.0
        outcome[precision] = {"best": best.to_dict() if best else None, "speed_up": speed_up,
                              "feasible_trials": len(feasible),
                              "met": speed_up >= SPEED_UP_TARGET,
                              "best_by_estimate": best_est.to_dict() if best_est else None,
                              "estimated_speed_up": est_speed_up,
                              "met_by_estimate": est_speed_up >= SPEED_UP_TARGET}
    if search_rows:
        console.print(_table("Search trials (per-exit thresholds, log scale)", search_rows,
                             reference, baseline_accuracy, costs))
        summary = Table(title=f"Search: the fastest cascade within the band vs the same model "
                              f"without exits (target {SPEED_UP_TARGET}x mean latency)")
        for name in ("precision", "by", "best thresholds", "accuracy", "mean ms",
                     "no-exit mean ms", "speed-up", "p95 ms", "feasible trials", "target"):
            summary.add_column(name)
        for precision, o in outcome.items():
            c = costs[precision]
            for by, best, no_exit, speed_up, met in (
                    ("agent", o["best"], reference[precision]["latency_mean_ms"],
                     o["speed_up"], o["met"]),
                    ("est.", o["best_by_estimate"], c["no-exit"], o["estimated_speed_up"],
                     o["met_by_estimate"])):
                mean = (best["latency_mean_ms"] if by == "agent" else
                        estimate(best, c)) if best else 0.0
                summary.add_row(precision, by,
                                ",".join(f"{t:.5g}" for t in best["thresholds"]) if best
                                else "-", f"{best['accuracy']:.4f}" if best else "-",
                                f"{mean:.3f}", f"{no_exit:.3f}", f"{speed_up:.2f}x",
                                f"{best['latency_p95_ms']:.3f}" if best else "-",
                                str(o["feasible_trials"]),
                                "[green]met[/green]" if met else "[red]not met[/red]")
        console.print(summary)

    fingerprint = {}
    if bench.agent is not None:
        fingerprint = bench.agent.info()
    result = {"config": str(args.config), "baseline_accuracy": baseline_accuracy,
              "accuracy_band": band, "eval_samples": len(bench.eval_payload.load()),
              "protocol": bench.protocol.to_dict(), "agent": fingerprint,
              "temperatures": list(bench.prepared.builder.pruned(0.0).temperatures),
              "rows": [r.to_dict() for r in rows + search_rows], "search": outcome,
              "interleaved_path_medians_ms": costs, "calibration": calibrated,
              "measurements": bench.measured, "seconds": time.perf_counter() - started}
    out = bench.workdir / "early_exit_bench.json"
    out.write_text(json.dumps(result, indent=2))
    console.print(f"{bench.measured} bundles measured by one agent in "
                  f"{result['seconds'] / 60:.1f} min; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
