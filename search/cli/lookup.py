"""Queries on a stored study from Python: what ``paretoedge best`` and ``front`` answer.

Example:
    >>> import search
    >>> chosen = search.best("digits", workdir="runs", where="latency_p95_ms < 0.1",
    ...                      maximize="accuracy")  # doctest: +SKIP
    >>> chosen.record.metrics["accuracy"], chosen.bundle_path  # doctest: +SKIP
    (0.9861, PosixPath('runs/digits/bundles/trial_0007'))
    >>> chosen.export("deploy")  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from search.records import TrialRecord

if TYPE_CHECKING:
    from search.objective_set import ObjectiveSet

Source = Literal["optuna", "mlflow"]


@dataclass(frozen=True)
class BestTrial:
    """The answer of a query: the trial, and where its bundle is."""

    study: str
    record: TrialRecord
    bundle_path: Path | None
    baseline: TrialRecord | None = None
    #: the objectives the study was searched with (ties are broken along them)
    objectives: ObjectiveSet | None = None

    def export(self, directory: Path | str) -> Path:
        """Copy the bundle (verified) into ``directory`` with a README on how to run it."""
        from search.errors import QueryError
        from search.results.bundle_export import export_bundle

        if self.bundle_path is None:
            raise QueryError(f"trial {self.record.number} of {self.study!r} has no bundle")
        return export_bundle(self.record, self.bundle_path, Path(directory), self.study)


def study_records(study: str, workdir: Path | str = "runs",
                  source: Source = "optuna") -> tuple[list[TrialRecord], dict[str, Any]]:
    """Every trial of a stored study and its settings, from the Optuna journal or MLflow."""
    from search.errors import QueryError

    workdir = Path(workdir).resolve()
    if source == "optuna":
        from search.workspace import Workspace, load_records

        return load_records(Workspace(workdir, study))
    if source == "mlflow":
        from search.tracking.mlflow_records import load_records_from_mlflow

        return load_records_from_mlflow(workdir, study)
    raise QueryError(f"--source: expected optuna or mlflow, got {source!r}")


def best(study: str, *, workdir: Path | str = "runs", where: str | None = None,
         maximize: str | None = None, minimize: str | None = None,
         device_class: str | None = None, source: Source = "optuna",
         include_contended: bool = False) -> BestTrial:
    """The best feasible trial of a stored study under ``where``
    (see :func:`search.results.query.best`).

    Raises:
        QueryError: a bad expression or metric name.
        StudyNotFoundError: no such study in ``workdir``.
        NothingFoundError: no feasible trial satisfies ``where``.
    """
    from search.results.query import best as best_of
    from search.results.query import check_metric, parse_where

    parse_where(where)  # bad input is reported before the study is read
    for name in (maximize, minimize):
        if name is not None:
            check_metric(name, "--maximize" if name == maximize else "--minimize")
    from search.objective_set import ObjectiveSet

    records, attrs = study_records(study, workdir, source)
    chosen = best_of(records, where=where, maximize=maximize, minimize=minimize,
                     include_contended=include_contended, device_class=device_class,
                     objectives=ObjectiveSet.of_study(attrs))
    baseline = next((r for r in records if r.baseline and r.complete), None)
    return BestTrial(study, chosen, chosen.bundle_path(Path(workdir).resolve()), baseline,
                     ObjectiveSet.of_study(attrs))
