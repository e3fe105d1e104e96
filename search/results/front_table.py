"""Rendering trials and fronts: rich tables, JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from rich.table import Table

from search.metrics import METRICS
from search.objective_set import ObjectiveSet
from search.records import TrialRecord
from spaces.candidate import candidate_label

COLUMNS = ("accuracy", "accuracy_drop", "latency_p50_ms", "latency_p95_ms", "latency_mean_ms",
           "size_kb", "peak_mem_mb", "ece", "macs_m")
#: The metrics every table shows; the study's other objectives get a column of their own.
_SHOWN = ("accuracy", "accuracy_drop", "latency_p50_ms", "latency_p95_ms", "latency_mean_ms",
          "size_kb")


def _header(metric: str) -> str:
    unit = METRICS[metric].unit if metric in METRICS else ""
    return metric.removesuffix("_ms").removesuffix("_kb").removesuffix("_mb").removesuffix(
        "_mj") + (f" {unit}" if unit else "")


def front_table(records: Sequence[TrialRecord], baseline: TrialRecord | None,
                title: str, objectives: ObjectiveSet | None = None) -> Table:
    """Trials with their main metrics, and a column for each of the study's ``objectives``
    not among them (``peak_mem_mb``, ``energy_mj``, ...). ``acc`` is the selection split's
    (what the search decided with); once the study is confirmed, ``test acc`` is the held-out
    split's and the speed-up is the confirmed one (the baseline and the trial timed in one
    process) and so are the latencies; before, the latencies are the search's and the speed-up
    is the ratio of two search measurements, taken at different times."""
    extra = [name for name in (objectives or ObjectiveSet.default()).names
             if name not in _SHOWN]
    confirmed = any("confirmed_speedup_p95" in r.metrics for r in records)
    if confirmed:
        title += "; latencies and speed-up: the confirmation's"
    table = Table(title=title, title_justify="left")
    table.add_column("trial", justify="right", no_wrap=True)
    table.add_column("candidate", no_wrap=True)
    latency = ("confirmed_latency_p50_ms", "confirmed_latency_p95_ms",
               "confirmed_latency_mean_ms") if confirmed else (
               "latency_p50_ms", "latency_p95_ms", "latency_mean_ms")
    names = ["acc", "drop pp", *(["test acc", "test drop pp"] if confirmed else []),
             "p50 ms", "p95 ms", "mean ms", "size KB",
             *(_header(n) for n in extra),
             "speed-up p95 (confirmed)" if confirmed else "speed-up p95"]
    for name in names:
        table.add_column(name, justify="right")
    nan = float("nan")
    for r in records:
        m = r.metrics
        if confirmed:
            speedup = m.get("confirmed_speedup_p95", nan)
        else:
            speedup = (baseline.metrics["latency_p95_ms"] / m["latency_p95_ms"]
                       if baseline and m.get("latency_p95_ms") else nan)
        test = ([f"{m.get('test_accuracy', nan):.4f}",
                 f"{100 * m.get('test_accuracy_drop', nan):+.2f}"] if confirmed else [])
        table.add_row(str(r.number) + (" (fp32)" if r.baseline else ""),
                      candidate_label(dict(r.candidate)),
                      f"{m.get('accuracy', nan):.4f}",
                      f"{100 * m.get('accuracy_drop', nan):+.2f}",
                      *test,
                      *(f"{m.get(name, nan):.4f}" for name in latency),
                      f"{m.get('size_kb', nan):.1f}",
                      *(f"{m.get(n, nan):.4g}" for n in extra),
                      f"{speedup:.2f}x")
    return table


def records_json(records: Sequence[TrialRecord]) -> str:
    return json.dumps([r.to_dict() for r in records], indent=2, sort_keys=True)


def records_csv(records: Sequence[TrialRecord]) -> str:
    metric_names = sorted({k for r in records for k in r.metrics})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["trial", "baseline", "feasible", "candidate", *metric_names, "bundle"])
    for r in records:
        writer.writerow([r.number, r.baseline, r.feasible, candidate_label(dict(r.candidate)),
                         *(r.metrics.get(k, "") for k in metric_names), r.bundle or ""])
    return buffer.getvalue()
