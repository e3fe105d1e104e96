"""What does each runtime knob change? The fastest bundles timed under every knob value,
interleaved in rounds in one process (docs/RUNTIME.md).

The bundles are a finished study's fp32 baseline and its ``--fastest`` feasible front members
(``--workdir W --study S``), and/or bundle directories (``--bundle DIR``, repeatable). Each is
timed end to end (preprocessing and every stage, through ``CascadeRunner.run``, the path the
agents time) under each variant:

- ``default``: the bundle as its manifest says (today: all graph optimizations, 1 thread);
- ``opt=<level>``: onnxruntime's graph optimization level (``--levels``);
- ``threads=<n>``: intra-op threads (``--threads``; more than 1 only makes sense with as many
  cores: pin with ``--cores``);
- ``ep=<provider>``: an execution provider this onnxruntime has (``--providers``);
- ``dynamic`` / ``static``: the same candidate rebuilt by the study's builder with the batch
  axis the bundle does not have (``static_shape`` flipped; needs ``--workdir/--study``, skipped
  with ``--no-rebuild``; the pruned models come from the study's cache, so only export and
  quantization run);
- ``unbound``: ``CascadeRunner`` with ``bind_buffers=False``: every stage through
  ``InferenceSession.run`` on new arrays, the runtime's per-call path before it bound its
  buffers (``--unbound``; device_agents/bound_stage.py);
- ``--null-graph``: adds a bundle with the first bundle's input, preprocessing and classes
  whose graph only flattens its input and slices the logits from it (two trivial operators):
  what the runner costs per inference whatever the model, the floor under every bundle's
  latency (timed, like the others, with its own variants);
- ``openvino``: the bundle on OpenVINO's own runtime, as a bundle with ``runtime.engine:
  openvino`` runs (``CascadeRunner``: one inference thread, the latency hint, float kept
  float, the input bound once); ``openvino infer()``: a single-graph bundle's ``model.onnx``
  compiled the same way, called through ``request.infer([x])`` (``--openvino``; needs
  ``pip install paretoedge[openvino]``). A study's front is mostly cascades (one graph
  per stage): ``--single-graphs RATIO`` adds the study's fp32, int8 and int8-pruned-by-RATIO
  candidates without exits, built by its builder.

In each of ``--rounds`` rounds every (bundle, variant) pair takes a turn in rotated order:
``--warmup`` untimed runs, then ``--runs`` timed ones cycling through the test samples. A
variant's figure is the median over the rounds of its p50 (p95) over the default's in the same
round, so the host's drift between rounds cancels; its speed-up is the median over the rounds of
the first bundle's default (a study's fp32 baseline) over the variant, the same way. Accuracy
on the samples is measured once per variant (a knob must not change the answers). Prints the
table and writes JSON:

    .venv/bin/python experiments/benchmarks/runtime_knobs_bench.py --workdir runs \\
        --study digits --fastest 3 --single-graphs 0.5 --cores 1 --openvino \\
        --out runs/runtime_knobs_bench
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

#: one raw sample (by index) end to end; returns the predicted label
Runner = Callable[[int], int]


@dataclasses.dataclass
class Variant:
    bundle: str
    name: str
    run: Runner
    accuracy: float = float("nan")
    p50s: list[float] = dataclasses.field(default_factory=list)
    p95s: list[float] = dataclasses.field(default_factory=list)


def runtime_variant(directory: Path, inputs: np.ndarray, **change: Any) -> Runner:
    """The bundle through ``CascadeRunner`` with its manifest's runtime options changed."""
    from device_agents import CascadeRunner, verify_bundle

    manifest = verify_bundle(directory)
    threads = change.pop("threads", None)
    providers = change.pop("providers", None)
    bind_buffers = change.pop("bind_buffers", True)
    if change:
        manifest = dataclasses.replace(manifest, runtime_options=dataclasses.replace(
            manifest.runtime_options, **change))
    runner = CascadeRunner(directory, manifest, threads=threads, providers=providers,
                           bind_buffers=bind_buffers)
    return lambda i: int(np.argmax(runner.run(inputs[i])[0]))


def openvino_variant(directory: Path, inputs: np.ndarray) -> Runner | None:
    """OpenVINO called the plain way, ``request.infer([x])`` (a new input tensor and a dict of
    outputs per call), on a single-graph bundle (None for a cascade); compiled as the engine
    compiles it (device_agents/openvino_stage.py)."""
    import openvino as ov

    from device_agents import CascadeRunner, read_manifest

    manifest = read_manifest(directory)
    if len(manifest.stages) != 1:
        return None
    pre = CascadeRunner.load(directory).preprocess
    compiled = ov.Core().compile_model(str(directory / manifest.stages[0].file), "CPU",
                                       {"INFERENCE_NUM_THREADS": 1,
                                        "PERFORMANCE_HINT": "LATENCY",
                                        "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    output = compiled.output(0)
    return lambda i: int(np.argmax(request.infer([pre(inputs[i])])[output]))


def rebuilt_variant(record: Any, builder: Any, out: Path) -> tuple[str, Path] | None:
    """The record's candidate rebuilt with the batch axis flipped: ``(name, directory)``, or
    None where the builder has nothing to flip (an ONNX file whose input is static)."""
    from spaces import Candidate

    candidate = Candidate.from_dict(record.candidate)
    dynamic_input = getattr(builder, "dynamic_input", None)
    if candidate.static_shape is None and dynamic_input is None:  # torch export: static
        flipped, name = False, "dynamic"
    elif candidate.static_shape is None:  # an ONNX file as given
        if not dynamic_input:
            return None
        flipped, name = True, "static"
    else:
        flipped, name = not candidate.static_shape, "static" if not candidate.static_shape \
            else "dynamic"
    directory = out / "rebuilt" / f"trial_{record.number:04d}_{name}"
    builder.build(dataclasses.replace(candidate, static_shape=flipped), directory)
    return name, directory


def single_graph_bundles(builder: Any, prune_ratio: float, out: Path) -> dict[str, Path]:
    """The study's fp32, int8 and pruned int8 candidates without exits (one graph each, what
    OpenVINO can run), built by its builder: int8 on every group whose operators run it."""
    from spaces import Candidate
    from spaces.quantization_space import why_not_runnable

    operators = builder.operators()
    int8 = tuple("int8" if why_not_runnable("int8", operators[g]) is None else "fp32"
                 for g in builder.groups)
    candidates = {"fp32 single graph": Candidate(quantization=("fp32",) * len(int8)),
                  "int8 single graph": Candidate(quantization=int8)}
    if prune_ratio > 0:
        candidates[f"int8 prune={prune_ratio:g} single graph"] = Candidate(
            quantization=int8, prune_ratio=prune_ratio)
    bundles = {}
    for name, candidate in candidates.items():
        directory = out / "built" / name.replace(" ", "_").replace("=", "")
        builder.build(candidate, directory)
        bundles[name] = directory
    return bundles


def null_graph_bundle(like: Path, out: Path) -> Path:
    """A one-stage bundle with ``like``'s input, preprocessing and classes, whose graph only
    flattens its input and slices the first ``num_classes`` values as the logits."""
    import dataclasses as dc

    from onnx import TensorProto, helper

    from device_agents import StageSpec, read_manifest, write_bundle

    manifest = read_manifest(like)
    shape, classes = list(manifest.input.shape), manifest.num_classes
    width = int(np.prod(shape[1:]))
    if width < classes:
        raise SystemExit(f"--null-graph: {like}'s input has fewer values than classes")
    constants = [helper.make_tensor(name, TensorProto.INT64, [1], [value])
                 for name, value in (("start", 0), ("end", classes), ("axis", 1))]
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
         helper.make_node("Slice", ["flat", "start", "end", "axis"], ["logits"])],
        "null", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [shape[0], classes])],
        constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    null = dc.replace(manifest, stages=(StageSpec("null", "model.onnx", ""),),
                      exits=dc.replace(manifest.exits, thresholds=(), temperatures=(1.0,)),
                      provenance={"null_graph_of": str(like)}, disabled_optimizers=(),
                      deployment=None)
    directory = out / "null_graph"
    write_bundle(directory, null, {"model.onnx": model.SerializeToString()})
    return directory


def accuracy(run: Runner, labels: np.ndarray) -> float:
    return float(np.mean([run(i) == labels[i] for i in range(len(labels))]))


def time_rounds(variants: list[Variant], n_inputs: int, *, rounds: int, runs: int,
                warmup: int) -> None:
    """Every variant's per-round p50 and p95 (ms), interleaved in rotated order."""
    clock = time.perf_counter_ns
    position = [0] * len(variants)
    for r in range(rounds):
        order = [(r + k) % len(variants) for k in range(len(variants))]
        for v in order:
            run = variants[v].run
            for i in range(warmup):
                run(i % n_inputs)
            samples = np.empty(runs, dtype=np.float64)
            start = position[v]
            for k in range(runs):
                t0 = clock()
                run((start + k) % n_inputs)
                samples[k] = clock() - t0
            position[v] = start + runs
            p50, p95 = np.percentile(samples / 1e6, [50, 95])
            variants[v].p50s.append(float(p50))
            variants[v].p95s.append(float(p95))
        console.print(f"round {r + 1}/{rounds}")


def ratios(variant: Variant, default: Variant, which: str) -> list[float]:
    mine, base = getattr(variant, which), getattr(default, which)
    return [m / b for m, b in zip(mine, base, strict=True)]


def study_bundles(args: argparse.Namespace) -> tuple[dict[str, Path], Any, list[Any], Any]:
    """The baseline and the fastest feasible front members of the study: their bundles, the
    test split, the records, and the study's config."""
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
    members = sorted((r for r in front.members if not r.baseline),
                     key=lambda r: r.metrics["latency_p95_ms"])[:args.fastest]
    chosen = [front.baseline, *members]
    bundles = {f"trial {r.number}" + (" (fp32)" if r.baseline else ""):
               r.bundle_path(workspace.workdir) for r in chosen}
    return bundles, load_data(config).test_set(), chosen, (config, workspace)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, help="a finished study's workdir")
    parser.add_argument("--study", help="the study (with --workdir)")
    parser.add_argument("--fastest", type=int, default=3,
                        help="the study's fastest feasible front members to time")
    parser.add_argument("--bundle", type=Path, action="append", default=[],
                        help="a bundle directory (repeatable; with --eval-npz or a study)")
    parser.add_argument("--eval-npz", type=Path,
                        help="raw samples for --bundle alone: an .npz with inputs and labels")
    parser.add_argument("--out", type=Path, required=True, help="where the JSON goes")
    parser.add_argument("--levels", default="all,extended,basic,disabled",
                        help="graph optimization levels (the bundle's own is its default)")
    parser.add_argument("--threads", default="", help="intra-op thread counts, e.g. 2,4")
    parser.add_argument("--providers", default="", help="execution providers, e.g. XNNPACK")
    parser.add_argument("--openvino", action="store_true", help="add OpenVINO's runtime")
    parser.add_argument("--null-graph", action="store_true",
                        help="add a bundle whose graph does nothing: the runner's own cost")
    parser.add_argument("--unbound", action="store_true",
                        help="add the runner without bound buffers (InferenceSession.run)")
    parser.add_argument("--single-graphs", type=float, default=None, metavar="RATIO",
                        help="also build the study's fp32, int8 and int8 pruned by RATIO "
                             "candidates without exits (for --openvino; 0: no pruned one)")
    parser.add_argument("--no-rebuild", action="store_true",
                        help="skip the static/dynamic batch axis variants")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=1000, help="timed runs per turn")
    parser.add_argument("--warmup", type=int, default=100, help="untimed runs per turn")
    parser.add_argument("--eval-samples", type=int, default=None,
                        help="use the first N samples (timing and accuracy)")
    parser.add_argument("--cores", default="", help="pin this process, e.g. 1 or 0,1")
    args = parser.parse_args()
    if not args.bundle and not (args.workdir and args.study):
        parser.error("give --workdir and --study, or --bundle DIR")
    if args.bundle and not (args.workdir and args.study) and args.eval_npz is None:
        parser.error("--bundle without a study needs --eval-npz (its inputs and labels)")
    return args


def main() -> None:
    args = parse_args()
    if args.cores:
        os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})
    from device_agents import read_manifest
    from device_agents.runtime_options import provider_from_text

    bundles: dict[str, Path] = {}
    records: list[Any] = []
    study: Any = None
    if args.workdir and args.study:
        bundles, test, records, study = study_bundles(args)
        inputs, labels = np.asarray(test.inputs), np.asarray(test.labels)
    else:
        data = np.load(args.eval_npz)
        inputs, labels = data["inputs"], data["labels"]
    bundles.update({str(path): path for path in args.bundle})
    if args.eval_samples is not None:
        inputs, labels = inputs[:args.eval_samples], labels[:args.eval_samples]
    if args.null_graph:
        bundles["null graph"] = null_graph_bundle(next(iter(bundles.values())),
                                                  args.out.resolve())

    rebuilt: dict[str, tuple[str, Path]] = {}
    if records and (not args.no_rebuild or args.single_graphs is not None):
        from search.study.preparation import prepare

        config, workspace = study
        builder = prepare(config, workspace.cache).builder
        names = list(bundles)
        for name, record in zip(names, records, strict=False):
            made = None if args.no_rebuild else rebuilt_variant(record, builder,
                                                                args.out.resolve())
            if made is not None:
                rebuilt[name] = made
        if args.single_graphs is not None:
            bundles.update(single_graph_bundles(builder, args.single_graphs,
                                                args.out.resolve()))

    variants: list[Variant] = []
    for name, directory in bundles.items():
        variants.append(Variant(name, "default", runtime_variant(directory, inputs)))
        own = read_manifest(directory).runtime_options.graph_optimization
        for level in [lv for lv in args.levels.split(",") if lv and lv != own]:
            variants.append(Variant(name, f"opt={level}",
                                    runtime_variant(directory, inputs, graph_optimization=level)))
        for threads in [int(t) for t in args.threads.split(",") if t]:
            variants.append(Variant(name, f"threads={threads}",
                                    runtime_variant(directory, inputs, threads=threads)))
        for text in [p for p in args.providers.split(",") if p]:
            provider = provider_from_text(text)
            chosen = [provider.spec] + ([] if provider.name == "CPUExecutionProvider"
                                        else ["CPUExecutionProvider"])
            variants.append(Variant(name, f"ep={provider.name}",
                                    runtime_variant(directory, inputs, providers=chosen)))
        if args.unbound:
            variants.append(Variant(name, "unbound",
                                    runtime_variant(directory, inputs, bind_buffers=False)))
        if name in rebuilt:
            label, path = rebuilt[name]
            variants.append(Variant(name, label, runtime_variant(path, inputs)))
        if args.openvino:
            variants.append(Variant(name, "openvino",
                                    runtime_variant(directory, inputs, engine="openvino")))
            run = openvino_variant(directory, inputs)
            if run is not None:
                variants.append(Variant(name, "openvino infer()", run))
    for variant in variants:
        variant.accuracy = accuracy(variant.run, labels)
    time_rounds(variants, len(inputs), rounds=args.rounds, runs=args.runs, warmup=args.warmup)

    defaults = {v.bundle: v for v in variants if v.name == "default"}
    first = variants[0]  # the first bundle's default (a study's fp32 baseline)
    rows, out = [], []
    for v in variants:
        base = defaults[v.bundle]
        r50, r95 = ratios(v, base, "p50s"), ratios(v, base, "p95s")
        speedup50 = [1 / r for r in ratios(v, first, "p50s")]
        speedup95 = [1 / r for r in ratios(v, first, "p95s")]
        row = {"bundle": v.bundle, "variant": v.name, "accuracy": v.accuracy,
               "p50_ms": float(np.median(v.p50s)), "p95_ms": float(np.median(v.p95s)),
               "ratio_p50": float(np.median(r50)), "ratio_p95": float(np.median(r95)),
               "ratio_p95_range": [min(r95), max(r95)],
               "speedup_p50_vs_first": float(np.median(speedup50)),
               "speedup_p95_vs_first": float(np.median(speedup95)),
               "round_p50_ms": v.p50s, "round_p95_ms": v.p95s}
        out.append(row)
        rows.append([v.bundle, v.name, v.accuracy, row["p50_ms"], row["p95_ms"],
                     row["ratio_p50"], row["ratio_p95"],
                     f"{min(r95):.2f}-{max(r95):.2f}", row["speedup_p50_vs_first"],
                     row["speedup_p95_vs_first"]])
    console.print(table(
        f"runtime knobs: {len(bundles)} bundles x their variants, {args.rounds} interleaved "
        f"rounds of {args.runs} runs, {len(inputs)} samples"
        + (f", cores {args.cores}" if args.cores else "")
        + " (ratio: median over rounds of the variant's over the default's in that round; "
          "< 1 is faster)",
        ["bundle", "variant", "accuracy", "p50 ms", "p95 ms", "ratio p50", "ratio p95",
         "ratio p95 range", "speed-up p50 vs first", "speed-up p95 vs first"], rows))
    write_json(args.out, "runtime_knobs" + (f"_{args.study}" if args.study else ""),
               {"study": args.study, "rounds": args.rounds, "runs": args.runs,
                "warmup": args.warmup, "cores": args.cores, "samples": len(inputs),
                "rows": out})


if __name__ == "__main__":
    main()
