"""What multi-fidelity finetunes buy: three searches of one model at equal wall time.

From one study config (which must search pruning), this script runs three studies one after
another, each with the same wall-clock budget (``paretoedge run --timeout``) and its own
workdir (the trained baseline is copied into each, so none pays for training):

- ``screen``: every candidate with the config's ``pruning.finetune`` (no promotion);
- ``full``: every candidate with the long finetune (``pruning.finetune`` := ``--full``);
- ``multi``: screened with ``pruning.finetune``, promoted to ``--full`` by the study's rule
  (``pruning.finetune_full``, ``pruning.promotion``).

Each study confirms its front at the end (one agent, interleaved rounds, held-out test split);
the table gives, per search: trials (and per fidelity), the hypervolume, and the best confirmed
speed-up at p95 within the accuracy band (feasible on the selection split, confirmed on the
test split). Run it with nothing else running on the machine; budgets of an hour or more per
search on the reference model (``--timeout 1h``). ``fidelity_report.py`` shows each search in
detail, and ``fidelity_report.py --at T`` a search as it stood T after its baseline.

Usage:

    PYTHONPATH=$PWD .venv/bin/python experiments/benchmarks/fidelity_bench.py \\
        --config experiments/fashion_mnist.yaml --workdir runs/fidelity_bench --timeout 1h \\
        --full '{"epochs": 4}' --baseline-cache runs/reference/cache

Prints a rich table and writes ``<workdir>/fidelity_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, console, copy_baseline, table, write_json
from fidelity_report import counts

sys.path.insert(0, str(ROOT))

SEARCHES = ("screen", "full", "multi")


def absolute(reference: str, base_dir: Path) -> str:
    """``file.py:attr`` or a file path made absolute; ``package.module:attr`` as it is."""
    path, colon, attr = reference.rpartition(":") if ":" in reference else (reference, "", "")
    if colon and not path.endswith(".py"):
        return reference
    resolved = path if Path(path).is_absolute() else str((base_dir / path).resolve())
    return f"{resolved}:{attr}" if colon else resolved


def variant(raw: dict[str, Any], name: str, full: dict[str, Any], base_dir: Path
            ) -> dict[str, Any]:
    """The config of one search: the user's, with its finetunes set for ``name``."""
    config = json.loads(json.dumps(raw))
    config["study"] = f"{raw['study']}-{name}"
    pruning = config.setdefault("pruning", {})
    pruning.pop("finetune_full", None)
    if name == "full":
        pruning["finetune"] = {**pruning.get("finetune", {}), **full}
    elif name == "multi":
        pruning["finetune_full"] = {**pruning.get("finetune", {}), **full}
    # files relative to the original config; the Python files it names stay relative (each
    # search's directory gets a copy of them, see copy_sources): the fp32 model's cache key
    # holds the reference as written, so the trained model copied in is found
    for key, field in (("model", "factory"), ("data", "loader"), ("model", "checkpoint"),
                       ("model", "onnx")):
        value = config.get(key, {}).get(field)
        beside = field in ("factory", "loader") and "/" not in str(value)
        if isinstance(value, str) and not beside:
            config[key][field] = absolute(value, base_dir)
    return config


def copy_sources(base_dir: Path, workdir: Path) -> None:
    """The Python files beside the original config (its model and data modules, and any
    sibling they import), copied next to a search's config."""
    import shutil

    for source in base_dir.glob("*.py"):
        shutil.copyfile(source, workdir / source.name)


def summary(workdir: Path, study: str) -> dict[str, Any]:
    from search.objective_set import ObjectiveSet
    from search.results.pareto import ParetoFront
    from search.workspace import Workspace, load_records

    records, attrs = load_records(Workspace(workdir, study))
    objectives = ObjectiveSet.of_study(attrs)
    front = ParetoFront.from_records(records, attrs["max_accuracy_drop"], objectives=objectives)
    tally = counts(records)
    confirmed = [r for r in front.members if "confirmed_speedup_p95" in r.metrics]
    top = max(confirmed, key=lambda r: r.metrics["confirmed_speedup_p95"], default=None)
    return {"trials": tally["measured"], "screened": tally["screened"],
            "full_fidelity": tally["full_fidelity"],
            "hypervolume": front.hypervolume(), "front": len(front.members),
            "best_confirmed_speedup_p95": top.metrics["confirmed_speedup_p95"] if top else None,
            "best_trial": top.number if top else None,
            "best_test_accuracy_drop": top.metrics.get("test_accuracy_drop") if top else None,
            "best_candidate": dict(top.candidate) if top else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--timeout", required=True, help="wall time of each search, e.g. 1h")
    parser.add_argument("--full", default='{"epochs": 4}',
                        help="the long finetune, JSON keys of pruning.finetune")
    parser.add_argument("--baseline-cache", type=Path, default=None,
                        help="a workdir cache holding the trained model (copied, not trained)")
    parser.add_argument("--searches", nargs="+", choices=SEARCHES, default=list(SEARCHES))
    parser.add_argument("--no-confirm", action="store_true",
                        help="skip each search's confirmation (compare the searches' own "
                             "measurements, e.g. with fidelity_report.py --at)")
    args = parser.parse_args()
    raw = yaml.safe_load(args.config.read_text())
    full = json.loads(args.full)
    results: dict[str, Any] = {}
    for name in args.searches:
        workdir = args.workdir / name
        config = variant(raw, name, full, args.config.resolve().parent)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        copy_sources(args.config.resolve().parent, workdir)
        if args.baseline_cache is not None:
            copy_baseline(args.baseline_cache, workdir / "cache")
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "search.cli", "run", str(path),
                               "--workdir", str(workdir), "--timeout", args.timeout,
                               "--trials", "100000",
                               *(["--no-confirm"] if args.no_confirm else [])],
                              env={**os.environ, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True)
        (workdir / "run.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise SystemExit(f"{name}: paretoedge run failed ({done.returncode}); see "
                             f"{workdir / 'run.log'}")
        results[name] = {**summary(workdir, config["study"]),
                         "wall_s": time.monotonic() - started}
    rows = [[name, r["trials"], r["screened"], r["full_fidelity"], r["hypervolume"], r["front"],
             r["best_confirmed_speedup_p95"] if r["best_confirmed_speedup_p95"] else "-",
             r["best_test_accuracy_drop"] if r["best_test_accuracy_drop"] is not None else "-",
             r["wall_s"]] for name, r in results.items()]
    console.print(table(f"Equal wall time ({args.timeout} each): {args.config.name}",
                        ["search", "trials", "screened", "full", "hypervolume", "front",
                         "best confirmed speed-up p95", "its test drop", "wall s"], rows))
    write_json(args.workdir, "fidelity_bench", {"config": str(args.config),
                                                "timeout": args.timeout, "full": full,
                                                "results": results})


if __name__ == "__main__":
    main()
