"""Rendering trials and fronts: rich tables, JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from rich.table import Table

from search.records import TrialRecord
from spaces.candidate import candidate_label

COLUMNS = ("accuracy", "accuracy_drop", "latency_p50_ms", "latency_p95_ms", "latency_mean_ms",
           "size_kb", "peak_mem_mb", "ece", "macs_m")


def front_table(records: Sequence[TrialRecord], baseline: TrialRecord | None,
                title: str) -> Table:
    """Trials with their main metrics. ``acc`` is the selection split's (what the search
    decided with); once the study is confirmed, ``test acc`` is the held-out split's and the
    speed-up is the confirmed one (the baseline and the trial timed in one process); before,
    it is the ratio of the two search measurements, taken at different times."""
    confirmed = any("confirmed_speedup_p95" in r.metrics for r in records)
    table = Table(title=title, title_justify="left")
    table.add_column("trial", justify="right", no_wrap=True)
    table.add_column("candidate", no_wrap=True)
    names = ["acc", "drop pp", *(["test acc", "test drop pp"] if confirmed else []),
             "p50 ms", "p95 ms", "mean ms", "size KB",
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
                      f"{m.get('latency_p50_ms', nan):.4f}",
                      f"{m.get('latency_p95_ms', nan):.4f}",
                      f"{m.get('latency_mean_ms', nan):.4f}",
                      f"{m.get('size_kb', nan):.1f}",
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
