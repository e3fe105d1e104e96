"""Can early exits pay on this model at all? The cost of each exit path against the single graph.

For one candidate of a study's model (its quantization and pruning), this script builds the
bundle without exits (one graph) and the bundle with exits (a cascade: one onnxruntime session
per stage), plus, as a probe of what the runtime could do, the same cascade fused into ONE graph
whose exits are ONNX ``If`` nodes (the confidence test in the graph, thresholds and inverse
temperatures fed as inputs: one ``session.run`` per sample however many stages run). It then
times, interleaved in rounds in this one process (pinned to ``--core``, one intra-op thread),
cycling through the test split:

- the single graph (plain onnxruntime, what the bundle without exits runs);
- each exit path: every sample forced to leave at exit ``k`` (sessions and fused), the cheapest
  a cascade can be when ``k`` answers; when even exit 0's path costs as much as the single
  graph, no threshold can make the cascade's mean latency lower;
- the cascade at each ``--thresholds`` value (one shared threshold for every exit), sessions and
  fused, with the exit rates it gives.

Each figure is the mean latency per sample in a round (``--runs`` samples); ratios to the single
graph are the median over ``--rounds`` of the ratio within each round (this host's absolute
figures drift by tens of percent between runs; rounds seconds apart see the same state).

Usage (a study config; the trained model or the checkpoint comes from the config, cached under
``--workdir``):

    PYTHONPATH=$PWD .venv/bin/python experiments/benchmarks/exit_overhead_bench.py \\
        --config experiments/digits_checkpoint.yaml --workdir runs/exit_overhead \\
        --quantization fp32 --prune 0 --core 1

Prints a rich table and writes ``<workdir>/exit_overhead_bench.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, console, table, write_json

sys.path.insert(0, str(ROOT))

NEVER = 2.0  # a fused graph's threshold no confidence reaches: go on
ALWAYS = 0.0  # one every confidence reaches: leave here


def fuse_cascade(stage_files: list[Path], target: Path, num_classes: int) -> None:
    """Compose a cascade's stage graphs into one graph: stage ``k``, then ``If(confidence <
    threshold)`` runs the rest of the cascade in its then-branch, returns exit ``k``'s logits in
    its else-branch. Inputs ``input``, ``exit_scales`` (1/T per exit), ``exit_thresholds``;
    outputs ``logits`` and ``exit_index``. Max-softmax confidence only (the probe's measure)."""
    import onnx
    from onnx import TensorProto, compose, helper

    models = [compose.add_prefix(onnx.load(str(p)), f"s{k}/") for k, p in enumerate(stage_files)]
    last = len(models) - 1
    initializers: list[Any] = []

    def outputs(logits: str, exit_name: str) -> list[Any]:
        return [helper.make_tensor_value_info(logits, TensorProto.FLOAT, [1, num_classes]),
                helper.make_tensor_value_info(exit_name, TensorProto.INT64, [1])]

    def constant(name: str, values: list[int], dims: list[int]) -> Any:
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(
            name + "_value", TensorProto.INT64, dims, values))

    def stage(k: int, source: str) -> list[Any]:
        graph = models[k].graph
        own_input = graph.input[0].name
        nodes = []
        for node in graph.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            for i, name in enumerate(copy.input):
                if name == own_input:
                    copy.input[i] = source
            nodes.append(copy)
        initializers.extend(graph.initializer)
        logits = f"s{k}/logits"
        if k == last:
            return [*nodes, helper.make_node("Identity", [logits], [f"L{k}"]),
                    constant(f"E{k}", [k], [1])]
        nodes += [
            constant(f"k{k}", [k], []),
            helper.make_node("Gather", ["exit_scales", f"k{k}"], [f"scale{k}"]),
            helper.make_node("Gather", ["exit_thresholds", f"k{k}"], [f"threshold{k}"]),
            helper.make_node("Mul", [logits, f"scale{k}"], [f"z{k}"]),
            helper.make_node("Softmax", [f"z{k}"], [f"p{k}"], axis=-1),
            helper.make_node("ReduceMax", [f"p{k}"], [f"c{k}"], keepdims=0),
            helper.make_node("Less", [f"c{k}", f"threshold{k}"], [f"on{k}"]),
            helper.make_node("Squeeze", [f"on{k}"], [f"go{k}"]),
        ]
        go_on = helper.make_graph(stage(k + 1, f"s{k}/features"), f"after_exit{k}", [],
                                  outputs(f"L{k + 1}", f"E{k + 1}"))
        leave = helper.make_graph([helper.make_node("Identity", [logits], [f"X{k}"]),
                                   constant(f"XE{k}", [k], [1])], f"exit{k}", [],
                                  outputs(f"X{k}", f"XE{k}"))
        return [*nodes, helper.make_node("If", [f"go{k}"], [f"L{k}", f"E{k}"],
                                         then_branch=go_on, else_branch=leave)]

    nodes = stage(0, "input")
    nodes += [helper.make_node("Identity", ["L0"], ["logits"]),
              helper.make_node("Identity", ["E0"], ["exit_index"])]
    source_input = onnx.ValueInfoProto()
    source_input.CopyFrom(models[0].graph.input[0])
    source_input.name = "input"
    exits = len(models)
    graph = helper.make_graph(
        nodes, "fused_cascade",
        [source_input, helper.make_tensor_value_info("exit_scales", TensorProto.FLOAT, [exits]),
         helper.make_tensor_value_info("exit_thresholds", TensorProto.FLOAT, [exits])],
        outputs("logits", "exit_index"), initializer=initializers)
    model = helper.make_model(graph, opset_imports=models[0].opset_import)
    model.ir_version = models[0].ir_version
    onnx.checker.check_model(model)
    onnx.save(model, str(target))


def build_pair(config_path: Path, workdir: Path, quantization: list[str], prune: float
               ) -> tuple[Path, Path, Any]:
    """The candidate's bundle without exits and with them (thresholds are only manifest)."""
    from search.config import load_config
    from search.study.preparation import prepare
    from spaces.candidate import Candidate

    config = load_config(config_path)
    prepared = prepare(config, workdir / "cache")
    groups = prepared.builder.groups
    precisions = tuple(quantization * len(groups) if len(quantization) == 1 else quantization)
    exits = getattr(prepared.builder, "num_stages", 1) - 1
    if exits < 1:
        raise SystemExit(f"{config_path}: the model has no exits (early_exit)")
    single = prepared.builder.build(Candidate(quantization=precisions, prune_ratio=prune),
                                    workdir / "single")
    cascade = prepared.builder.build(Candidate(quantization=precisions, prune_ratio=prune,
                                               exit_thresholds=(0.9,) * exits),
                                     workdir / "cascade")
    return single.directory, cascade.directory, prepared.data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--quantization", default="fp32",
                        help="one precision for every group, or one per group: int8/fp32/...")
    parser.add_argument("--prune", type=float, default=0.0)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.9, 0.99])
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--core", type=int, default=None)
    args = parser.parse_args()
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})

    import onnxruntime as ort

    from device_agents import CascadeRunner

    single_dir, cascade_dir, data = build_pair(args.config, args.workdir,
                                               args.quantization.split("/"), args.prune)
    cascade = CascadeRunner.load(cascade_dir)
    manifest = cascade.manifest
    exits = len(manifest.stages)
    fused_path = args.workdir / "fused_cascade.onnx"
    fuse_cascade([cascade_dir / s.file for s in manifest.stages], fused_path,
                 manifest.num_classes)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    fused = ort.InferenceSession(str(fused_path), options, providers=["CPUExecutionProvider"])
    single = CascadeRunner.load(single_dir)
    single_session = single._sessions[0]
    single_input = single._input_names[0]
    scales = np.asarray([1.0 / t for t in manifest.exits.temperatures], dtype=np.float32)
    samples = np.asarray(data.test_x)

    def sessions_at(thresholds: tuple[float, ...]) -> Callable[[np.ndarray], Any]:
        exits_policy = dataclasses.replace(manifest.exits, thresholds=thresholds)
        runner = CascadeRunner(cascade_dir, dataclasses.replace(manifest, exits=exits_policy))
        return runner.run

    def fused_at(thresholds: tuple[float, ...]) -> Callable[[np.ndarray], Any]:
        feed = np.asarray([*thresholds, NEVER], dtype=np.float32)

        def run(raw: np.ndarray) -> Any:
            return fused.run(None, {"input": cascade.preprocess(raw), "exit_scales": scales,
                                    "exit_thresholds": feed})
        return run

    def plain(raw: np.ndarray) -> Any:
        return single_session.run(None, {single_input: single.preprocess(raw)})

    variants: dict[str, Callable[[np.ndarray], Any]] = {"single graph": plain}
    rates: dict[str, list[float]] = {}
    for k in range(exits - 1):  # exit k answers every sample: 1.0 turns a runner's exit off
        forced = tuple([1.0] * k + [ALWAYS] + [1.0] * (exits - 2 - k))
        fused_forced = tuple([NEVER] * k + [ALWAYS] + [NEVER] * (exits - 2 - k))
        variants[f"path exit {k} (sessions)"] = sessions_at(forced)
        variants[f"path exit {k} (fused)"] = fused_at(fused_forced)
    variants["path last (sessions)"] = sessions_at((1.0,) * (exits - 1))
    variants["path last (fused)"] = fused_at((NEVER,) * (exits - 1))
    for value in args.thresholds:
        shared = (value,) * (exits - 1)
        variants[f"cascade {value} (sessions)"] = sessions_at(shared)
        variants[f"cascade {value} (fused)"] = fused_at(shared)
        taken = np.bincount([int(fused_at(shared)(x)[1][0]) for x in samples[:2000]],
                            minlength=exits)
        rates[f"cascade {value} (sessions)"] = rates[f"cascade {value} (fused)"] = list(
            taken / taken.sum())
    for fn in variants.values():  # warm-up
        for x in samples[:50]:
            fn(x)
    means: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(args.rounds):
        for name, fn in variants.items():
            start = round_index * args.runs
            durations = np.empty(args.runs)
            for i in range(args.runs):
                x = samples[(start + i) % len(samples)]
                began = time.perf_counter()
                fn(x)
                durations[i] = time.perf_counter() - began
            means[name].append(float(durations.mean() * 1e6))
    base = np.asarray(means["single graph"])
    rows, results = [], []
    for name, values in means.items():
        ratios = np.asarray(values) / base
        exit_rates = rates.get(name)
        row = {"variant": name, "mean_us": float(np.median(values)),
               "ratio_to_single": float(np.median(ratios)),
               "ratio_range": [float(ratios.min()), float(ratios.max())],
               "exit_rates": exit_rates}
        results.append(row)
        rows.append([name, row["mean_us"], f"{row['ratio_to_single']:.3f} "
                     f"({ratios.min():.2f}-{ratios.max():.2f})",
                     " / ".join(f"{r:.2f}" for r in exit_rates) if exit_rates else ""])
    console.print(table(f"Exit paths against the single graph: {args.config.name}, "
                        f"{args.quantization}, prune {args.prune} ({args.rounds} rounds of "
                        f"{args.runs} samples, interleaved)",
                        ["variant", "mean us", "ratio to single (range)", "exit rates"], rows))
    write_json(args.workdir, "exit_overhead_bench",
               {"config": str(args.config), "quantization": args.quantization,
                "prune": args.prune, "rounds": args.rounds, "runs": args.runs,
                "exits": exits, "results": results})


if __name__ == "__main__":
    main()
