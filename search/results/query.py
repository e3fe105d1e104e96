"""Constraint queries over trials: ``--where "latency_p95_ms < 2 and size_kb <= 500"``."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from search.errors import NothingFoundError, QueryError
from search.metrics import is_known_metric, metric_names
from search.objective_set import ObjectiveSet
from search.records import TrialRecord, at_highest_fidelity

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "<": operator.lt, ">": operator.gt,
}
_CLAUSE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|<|>)\s*"
                     r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Condition:
    metric: str
    op: str
    value: float

    def holds(self, record: TrialRecord) -> bool:
        actual = record.metrics.get(self.metric)
        return actual is not None and _OPS[self.op](actual, self.value)


def parse_where(expression: str | None) -> tuple[Condition, ...]:
    """Parse clauses joined by ``and``; each is ``metric OP number``."""
    if expression is None or not expression.strip():
        return ()
    conditions = []
    for clause in re.split(r"\s+and\s+", expression.strip(), flags=re.IGNORECASE):
        match = _CLAUSE.match(clause)
        if not match:
            raise QueryError(f"--where: cannot parse {clause.strip()!r}; expected "
                             f"'metric OP number' with OP one of < <= > >= ==, joined by 'and'")
        metric, op, value = match.groups()
        check_metric(metric, "--where")
        conditions.append(Condition(metric, op, float(value)))
    return tuple(conditions)


def check_metric(name: str, where: str) -> None:
    if not is_known_metric(name):
        raise QueryError(f"{where}: unknown metric {name!r}; known metrics: "
                         f"{', '.join(metric_names())}")


def tie_break_key(record: TrialRecord,
                  objectives: ObjectiveSet | None = None) -> tuple[float, ...]:
    """After the queried metric: the study's objectives in their order with accuracy last,
    each the way it is better (for the defaults: lower p95, smaller size, higher accuracy),
    then the earlier trial. A trial lacking an objective's value comes after those with it."""
    m = record.metrics
    ordered = sorted((objectives or ObjectiveSet.default()).objectives,
                     key=lambda o: o.metric == "accuracy")
    return (*(o.loss(m[o.metric]) if o.metric in m else float("inf") for o in ordered),
            float(record.number))


def best(records: Sequence[TrialRecord], *, where: str | None = None,
         maximize: str | None = None, minimize: str | None = None,
         device_class: str | None = None, feasible_only: bool = True,
         include_contended: bool = False, objectives: ObjectiveSet | None = None) -> TrialRecord:
    """The feasible completed trial that satisfies ``where`` and is best for the objective
    (a configuration measured at several fidelities counts at its highest).

    Exactly one of ``maximize`` and ``minimize`` names the metric to optimise. Ties are broken by
    :func:`tie_break_key` under the study's ``objectives`` (default: the default objectives).
    Raises :class:`NothingFoundError` when no trial qualifies.
    """
    if (maximize is None) == (minimize is None):
        raise QueryError("give exactly one of --maximize METRIC and --minimize METRIC")
    metric = maximize or minimize
    assert metric is not None
    check_metric(metric, "--maximize" if maximize else "--minimize")
    conditions = parse_where(where)
    pool = [r for r in at_highest_fidelity(records)
            if r.complete and (r.feasible or not feasible_only)
            and (include_contended or not r.contended)
            and (device_class is None or r.device_class == device_class)
            and metric in r.metrics and all(c.holds(r) for c in conditions)]
    if not pool:
        scope = f" where {where}" if where else ""
        raise NothingFoundError(f"no feasible trial{scope}"
                                + (f" on device class {device_class!r}" if device_class else ""))
    sign = -1.0 if maximize else 1.0
    return min(pool, key=lambda r: (sign * r.metrics[metric], *tie_break_key(r, objectives)))
