"""Quantization-aware finetuning (issue 15): post-training vs quantization-aware int8 accuracy.

For one study config (the reference model, experiments/fashion_mnist.yaml), at each pruning
ratio of ``--ratios`` the all-int8 candidate (every layer group int8, no exits: one graph) is
built twice by ``TorchBuilder`` with the config's finetune (``pruning.finetune``, the same
budget, subset and seed): once finetuned in float and quantized after training
(``qat: false``, onnxruntime's static QDQ calibrated on ``quantization.calibration_samples``
training images), once finetuned with fake quantization on every group (``qat: true``, the
export taking the learned weights and input ranges). Each int8 bundle, the fp32 bundle of the
same pruned model (the post-training one's) and the unpruned fp32 baseline are run by
``CascadeRunner`` (onnxruntime, one thread, one sample at a time) on the selection split (what
a search decides with) and on the held-out test split. Accuracy only: no timing, so it may
run beside other work; torch uses one thread.

    PYTHONPATH=$PWD .venv/bin/python experiments/benchmarks/qat_bench.py \\
        --config experiments/fashion_mnist.yaml --workdir /tmp/ref/runs \\
        --ratios 0.375,0.5,0.625

The builds are cached in ``<workdir>/cache`` (the study's cache: a workdir whose fp32 model
is trained is not trained again; finetunes already there are reused); bundles go to
``<workdir>/<name>/`` (``--name``, default ``qat_bench``); the results to
``<workdir>/<name>/qat_bench.json``. ``--quantization per_channel=false`` (repeatable) changes
a key of the config's ``quantization`` section, e.g. to compare where post-training int8 loses
more.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, console, table, write_json

sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True,
                        help="the study workdir whose cache/ holds the trained fp32 model")
    parser.add_argument("--ratios", default="0.375,0.5,0.625",
                        help="comma-separated pruning ratios")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quantization", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the config's quantization section (a YAML "
                             "value), e.g. per_channel=false; repeatable")
    parser.add_argument("--name", default="qat_bench",
                        help="the folder under the workdir for the bundles and the JSON")
    return parser.parse_args(argv)


def accuracies(directory: Path, data: Any) -> dict[str, float]:
    """The bundle's accuracy on the selection and the test split (onnxruntime, 1 thread)."""
    from device_agents.cascade import CascadeRunner

    runner = CascadeRunner.load(directory)
    out = {}
    for split, eval_set in (("selection", data.selection_set()), ("test", data.test_set())):
        out[split] = runner.evaluate(eval_set.inputs, eval_set.labels).accuracy
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import yaml

    from search.config import parse_config
    from search.study.preparation import prepare
    from spaces import Candidate

    torch.set_num_threads(args.threads)
    raw = yaml.safe_load(args.config.read_text())
    for item in args.quantization:
        key, _, value = item.partition("=")
        raw.setdefault("quantization", {})[key] = yaml.safe_load(value)
    config = parse_config(raw, str(args.config), args.config.resolve().parent)
    cache = args.workdir / "cache"
    prepared = prepare(config, cache)
    builder, data = prepared.builder, prepared.data
    out_dir = args.workdir / args.name
    groups = len(builder.groups)
    ratios = [float(r) for r in args.ratios.split(",") if r.strip()]

    def build(name: str, candidate: Candidate) -> dict[str, Any]:
        started = time.perf_counter()
        built = builder.build(candidate, out_dir / name)
        seconds = time.perf_counter() - started
        pruned = builder.pruned(candidate.prune_ratio, (), "", builder.qat_groups(candidate))
        meta_path = cache / "pruned" / pruned.key / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        acc = accuracies(built.directory, data)
        row = {"name": name, "candidate": candidate.to_dict(), "bundle": str(built.directory),
               "macs_m": built.info["macs_m"], "integer_ops": built.info["integer_ops"],
               "fused_int_ops_ratio": built.info["fused_int_ops_ratio"],
               "finetune_s": meta.get("seconds", 0.0),
               "finetune_samples": meta.get("finetune_samples", 0), "build_s": seconds, **acc}
        console.print(f"{name:>14}: selection {acc['selection']:.4f}, test {acc['test']:.4f}, "
                      f"integer ops {row['integer_ops']}, finetune {row['finetune_s']:.0f} s "
                      f"(build {seconds:.0f} s)")
        return row

    baseline = build("fp32_baseline", Candidate(quantization=("fp32",) * groups))
    rows = []
    for ratio in ratios:
        fp32 = build(f"fp32_{ratio:g}", Candidate(quantization=("fp32",) * groups,
                                                  prune_ratio=ratio))
        ptq = build(f"int8_ptq_{ratio:g}", Candidate(quantization=("int8",) * groups,
                                                     prune_ratio=ratio))
        qat = build(f"int8_qat_{ratio:g}", Candidate(quantization=("int8",) * groups,
                                                     prune_ratio=ratio, qat=True))
        rows.append({"ratio": ratio, "fp32": fp32, "ptq": ptq, "qat": qat})
    return {"config": str(args.config), "workdir": str(args.workdir), "ratios": ratios,
            "quantization_overrides": list(args.quantization),
            "finetune": builder.settings.finetune.to_dict(),
            "quant": builder.settings.quant.to_dict(), "baseline_key": builder.model_key,
            "baseline": baseline, "rows": rows}


def report(results: dict[str, Any]) -> None:
    base = results["baseline"]
    rows = []
    for row in results["rows"]:
        for kind in ("fp32", "ptq", "qat"):
            r = row[kind]
            label = {"fp32": "fp32 (pruned)", "ptq": "int8 post-training",
                     "qat": "int8 quantization-aware"}[kind]
            rows.append([f"{row['ratio']:g}", label, f"{r['selection']:.4f}",
                         f"{100 * (r['selection'] - base['selection']):+.2f}",
                         f"{r['test']:.4f}", f"{100 * (r['test'] - base['test']):+.2f}",
                         str(r["integer_ops"]), f"{r['finetune_s']:.0f}"])
    console.print(table(
        f"int8 accuracy after the finetune; fp32 baseline: selection {base['selection']:.4f}, "
        f"test {base['test']:.4f}",
        ["ratio", "bundle", "selection acc", "drop pp", "test acc", "test drop pp",
         "integer ops", "finetune s"], rows))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    write_json(args.workdir / args.name, "qat_bench", results)
    report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
