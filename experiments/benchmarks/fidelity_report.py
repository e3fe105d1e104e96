"""What a finished multi-fidelity study did: its trials per fidelity, what each promotion's long
finetune bought, and its confirmed front.

Reads a stored study (nothing is measured again): the driver's wall time (the trials' time,
from the agents being ready to the last trial; the confirmation after it is not counted), the
trials at each fidelity, every configuration measured at both fidelities with its accuracy drop
on the selection split and its p95 at each, and the feasible front at each configuration's
highest fidelity with the confirmation's held-out accuracy and speed-ups (the baseline and the
front timed in one process, interleaved in rounds: ``paretoedge confirm``).

Usage:

    PYTHONPATH=$PWD .venv/bin/python experiments/benchmarks/fidelity_report.py \\
        --workdir runs/reference --study fashion-mnist-overnight

``--at 30m`` reports the study as it stood 30 minutes after its baseline (the trials finished
by then), so that searches of equal wall time (``fidelity_bench.py``) compare at one cut; the
confirmed columns are still the end-of-run confirmation's, for the members it timed.

Prints rich tables and writes ``<workdir>/<study>/fidelity_report.json``
(``fidelity_report_at_<at>.json`` with ``--at``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, console, table, write_json

sys.path.insert(0, str(ROOT))

from search.records import TrialRecord


def fidelity_pairs(records: Sequence[TrialRecord]) -> list[dict[str, Any]]:
    """Each configuration measured at both fidelities: the screened trial and the promoted
    one, their selection-split accuracy drop (pp) and p95 (ms)."""
    screened = {r.configuration: r for r in records if r.complete and not r.fidelity
                and not r.reused and not r.baseline}
    pairs = []
    for full in sorted((r for r in records if r.complete and r.fidelity and not r.reused),
                       key=lambda r: r.number):
        short = screened.get(full.configuration)
        if short is None:
            continue
        pairs.append({
            "configuration": full.configuration, "screened_trial": short.number,
            "full_trial": full.number,
            "screened_drop_pp": 100 * short.metrics["accuracy_drop"],
            "full_drop_pp": 100 * full.metrics["accuracy_drop"],
            "recovered_pp": 100 * (short.metrics["accuracy_drop"]
                                   - full.metrics["accuracy_drop"]),
            "screened_p95_ms": short.metrics.get("latency_p95_ms"),
            "full_p95_ms": full.metrics.get("latency_p95_ms"),
            "full_feasible": full.feasible})
    return pairs


def counts(records: Sequence[TrialRecord]) -> dict[str, int]:
    """Trials by fidelity and outcome (reused twins apart: they were not measured again)."""
    measured = [r for r in records if r.complete and not r.reused]
    return {"measured": len(measured),
            "screened": sum(not r.fidelity and not r.baseline for r in measured),
            "full_fidelity": sum(bool(r.fidelity) for r in measured),
            "reused": sum(r.reused for r in records),
            "failed": sum(r.state == "FAIL" and not r.interrupted for r in records),
            "interrupted": sum(r.interrupted for r in records)}


def records_until(records: Sequence[TrialRecord], seconds: float) -> list[TrialRecord]:
    """The study as it stood ``seconds`` after its baseline was measured: the trials finished
    by then (the baseline included). Searches of equal wall time compare at one cut."""
    baseline = next(r for r in records if r.baseline)
    if baseline.finished_at is None:
        raise SystemExit("the baseline has no finish time: the study cannot be cut")
    cut = baseline.finished_at + seconds
    return [r for r in records
            if r.baseline or (r.finished_at is not None and r.finished_at <= cut)]


def front_rows(members: Sequence[TrialRecord], baseline: TrialRecord) -> list[dict[str, Any]]:
    """The front members, fastest at p95 first: the search's own p95 and its ratio to the
    baseline's (two measurements from different processes), and the confirmation's."""
    from spaces.candidate import candidate_label

    rows = []
    for r in sorted(members, key=lambda r: r.metrics["latency_p95_ms"]):
        m: Mapping[str, float] = r.metrics
        rows.append({"trial": r.number, "candidate": candidate_label(r.candidate),
                     "selection_drop_pp": 100 * m["accuracy_drop"],
                     "search_p95_ms": m["latency_p95_ms"],
                     "search_speedup_p95": (baseline.metrics["latency_p95_ms"]
                                            / m["latency_p95_ms"]),
                     "test_drop_pp": (100 * m["test_accuracy_drop"]
                                      if "test_accuracy_drop" in m else None),
                     "confirmed_p50_ms": m.get("confirmed_latency_p50_ms"),
                     "confirmed_p95_ms": m.get("confirmed_latency_p95_ms"),
                     "confirmed_speedup_p50": m.get("confirmed_speedup_p50"),
                     "confirmed_speedup_p95": m.get("confirmed_speedup_p95"),
                     "size_kb": m.get("size_kb")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--at", default=None,
                        help="the study as it stood this long after its baseline (e.g. 30m): "
                             "the trials finished by then")
    args = parser.parse_args()

    from search.durations import parse_duration
    from search.objective_set import ObjectiveSet
    from search.results.pareto import ParetoFront
    from search.workspace import Workspace, load_records
    from spaces.candidate import candidate_label

    records, attrs = load_records(Workspace(args.workdir, args.study))
    if args.at is not None:
        records = records_until(records, parse_duration(args.at, "--at"))
    front = ParetoFront.from_records(records, attrs["max_accuracy_drop"],
                                     objectives=ObjectiveSet.of_study(attrs))
    timing = attrs.get("timing", {})
    tally = counts(records)
    pairs = fidelity_pairs(records)
    baseline = next(r for r in records if r.baseline)
    rows = front_rows(front.members, baseline)

    title = args.study if args.at is None else f"{args.study} at {args.at}"
    console.print(table(f"{title}: trials", ["wall s (trials)", "build s", *tally],
                        [[timing.get("wall_s", "-"), timing.get("build_s", "-"),
                          *tally.values()]]))
    console.print(table("Configurations measured at both fidelities (selection split)",
                        ["configuration", "screened trial", "drop pp", "p95 ms",
                         "full trial", "drop pp", "p95 ms", "recovered pp", "feasible"],
                        [[candidate_label(json.loads(p["configuration"])),
                          p["screened_trial"], p["screened_drop_pp"], p["screened_p95_ms"],
                          p["full_trial"], p["full_drop_pp"], p["full_p95_ms"],
                          p["recovered_pp"], p["full_feasible"]] for p in pairs]))
    console.print(table(
        f"Feasible front at each configuration's highest fidelity (baseline: selection "
        f"{baseline.metrics['accuracy']:.4f}, test {baseline.metrics.get('test_accuracy', '-')}; "
        f"hypervolume {front.hypervolume():.4g})",
        ["trial", "candidate", "sel. drop pp", "search p95 ms", "search speed-up p95",
         "test drop pp", "confirmed p50 ms", "confirmed p95 ms", "confirmed speed-up p50",
         "confirmed speed-up p95", "size KB"],
        [[r["trial"], r["candidate"], r["selection_drop_pp"], r["search_p95_ms"],
          r["search_speedup_p95"], "-" if r["test_drop_pp"] is None else r["test_drop_pp"],
          *("-" if r[k] is None else r[k] for k in (
              "confirmed_p50_ms", "confirmed_p95_ms", "confirmed_speedup_p50",
              "confirmed_speedup_p95", "size_kb"))] for r in rows]))
    name = "fidelity_report" if args.at is None else f"fidelity_report_at_{args.at}"
    write_json(args.workdir / args.study, name, {
        "study": args.study, "at": args.at, "timing": timing, "counts": tally, "pairs": pairs,
        "hypervolume": front.hypervolume(), "front": rows,
        "baseline": {"accuracy": baseline.metrics.get("accuracy"),
                     "test_accuracy": baseline.metrics.get("test_accuracy"),
                     "confirmed_p95_ms": baseline.metrics.get("confirmed_latency_p95_ms")}})


if __name__ == "__main__":
    main()
