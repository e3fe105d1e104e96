"""The names of what an agent measures, with their direction and unit: the one list that the
measurement, the study's objectives, MLflow and the query language share.

``direction`` is ``max`` or ``min`` for a metric where more or less is better, ``""`` for a
diagnostic (a count, a share). Names that end in ``_`` are per exit or per stage: the metric is
``<name><k>`` for exit (stage) ``k``.

Example:
    >>> METRICS["latency_p95_ms"].direction, METRICS["latency_p95_ms"].unit
    ('min', 'ms')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["max", "min", ""]


@dataclass(frozen=True)
class MetricName:
    """One metric: its name, which way is better, its unit and what it is."""

    name: str
    direction: Direction
    unit: str
    doc: str

    @property
    def per_index(self) -> bool:
        """A family ``<name><k>``, one per exit or stage."""
        return self.name.endswith("_") or self.name.endswith("stage")


def _m(name: str, direction: Direction, unit: str, doc: str) -> MetricName:
    return MetricName(name, direction, unit, doc)


#: What a device agent reports for one bundle (``Measurement.metrics()``).
MEASURED: tuple[MetricName, ...] = (
    _m("accuracy", "max", "", "top-1 accuracy over the eval set, end to end"),
    _m("latency_mean_ms", "min", "ms", "mean latency of one inference, preprocessing included"),
    _m("latency_p50_ms", "min", "ms", "median latency"),
    _m("latency_p90_ms", "min", "ms", "90th percentile latency"),
    _m("latency_p95_ms", "min", "ms", "95th percentile latency"),
    _m("latency_p99_ms", "min", "ms", "99th percentile latency"),
    _m("latency_std_ms", "", "ms", "standard deviation of the latency"),
    _m("latency_n", "", "runs", "timed runs"),
    _m("latency_ci_rel_width", "", "", "width of the median's 95 % CI over the median"),
    _m("latency_cpu_share", "", "", "CPU time of the measuring process over wall time"),
    _m("latency_converged", "", "", "1 when timing stopped because every ranked percentile's "
       "95 % CI was tight enough, 0 when it stopped at max_runs or max_seconds"),
    *(_m(f"latency_p{q}_ci_{end}_ms", "", "ms",
         f"{'lower' if end == 'low' else 'upper'} end of the {q}th percentile's 95 % CI "
         f"(when that percentile is ranked)")
      for q in (50, 90, 95, 99) for end in ("low", "high")),
    _m("size_kb", "min", "KB", "size of the bundle's graphs"),
    _m("peak_mem_mb", "min", "MB", "peak resident memory of the measuring process"),
    _m("ece", "min", "", "expected calibration error of the cascade's answers"),
    _m("energy_mj", "min", "mJ", "energy per inference above the idle power, where a "
       "hardware counter exists"),
    _m("energy_package_mj", "", "mJ", "the counters' whole energy per inference, idle power "
       "included"),
    _m("energy_idle_mw", "", "mW", "idle power measured before timing and subtracted from "
       "energy_mj"),
    _m("exit_rate_", "", "", "share of samples that left at exit k"),
    _m("ece_exit_", "min", "", "expected calibration error of exit k's head"),
)
METRICS: dict[str, MetricName] = {m.name: m for m in MEASURED}


def is_measured(name: str) -> bool:
    """Whether ``name`` is a measured metric (``exit_rate_2`` included)."""
    return name in METRICS or any(
        m.per_index and name.startswith(m.name) and name.removeprefix(m.name).isdigit()
        for m in MEASURED)
