"""What deploying and comparing read of a stored study: its config (kept with the study), the
trial a ``best`` query chooses, its fp32 baseline, and the splits of its data loader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.errors import ConfigError, QueryError
from search.records import TrialRecord
from search.workspace import Workspace

if TYPE_CHECKING:
    from search.config import StudyConfig


@dataclass(frozen=True)
class StudyQuery:
    """A ``best`` query: constraints and the metric to maximise or minimise."""

    where: str | None = None
    maximize: str | None = None
    minimize: str | None = None

    def describe(self) -> str:
        goal = (f"maximize {self.maximize}" if self.maximize else
                f"minimize {self.minimize}" if self.minimize else "")
        return "; ".join(p for p in (f"where {self.where}" if self.where else "", goal) if p)


@dataclass(frozen=True)
class StoredStudy:
    """A study as it lies in the workdir: its records, its user attrs, where it is."""

    workspace: Workspace
    records: tuple[TrialRecord, ...]
    attrs: dict[str, Any]

    @classmethod
    def load(cls, workdir: Path, study: str) -> StoredStudy:
        from search.workspace import load_records

        workspace = Workspace(Path(workdir).resolve(), study)
        records, attrs = load_records(workspace)
        return cls(workspace, tuple(records), dict(attrs))

    def config(self) -> StudyConfig:
        """The config the study ran with (kept in its user attrs), with the objectives it
        stored."""
        from search.study.confirmation import stored_config

        if "config" not in self.attrs or "config_dir" not in self.attrs:
            raise ConfigError(f"study {self.workspace.study!r} keeps no config (run it once with "
                              f"this version of paretoedge)")
        return stored_config(self.attrs)

    def best(self, query: StudyQuery) -> TrialRecord:
        """The trial ``paretoedge best`` answers for ``query``."""
        from search.objective_set import ObjectiveSet
        from search.results.query import best

        return best(list(self.records), where=query.where, maximize=query.maximize,
                    minimize=query.minimize, objectives=ObjectiveSet.of_study(self.attrs))

    def baseline(self) -> TrialRecord:
        found = next((r for r in self.records if r.baseline and r.complete), None)
        if found is None:
            raise QueryError(f"study {self.workspace.study!r} has no measured fp32 baseline")
        return found

    def bundle_of(self, record: TrialRecord) -> Path:
        path = record.bundle_path(self.workspace.workdir)
        if path is None or not path.is_dir():
            raise QueryError(f"trial {record.number} of {self.workspace.study!r} has no bundle "
                             f"in {self.workspace.workdir}")
        return path
