"""Where a study keeps its files: ``<workdir>/mlflow.db``, ``<workdir>/<study>/journal.log``,
``<workdir>/<study>/bundles/``, and ``<workdir>/cache/`` (builds shared by studies)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from search.errors import StudyNotFoundError


@dataclass(frozen=True)
class Workspace:
    workdir: Path
    study: str

    @property
    def study_dir(self) -> Path:
        return self.workdir / self.study

    @property
    def journal(self) -> Path:
        return self.study_dir / "journal.log"

    @property
    def bundles(self) -> Path:
        return self.study_dir / "bundles"

    @property
    def cache(self) -> Path:
        return self.workdir / "cache"

    def bundle_dir(self, trial_number: int) -> Path:
        return self.bundles / f"trial_{trial_number:04d}"

    def relative(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.workdir.resolve()))

    def create(self) -> None:
        self.bundles.mkdir(parents=True, exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)

    def require(self) -> None:
        if not self.journal.is_file():
            known = sorted(p.parent.name for p in self.workdir.glob("*/journal.log"))
            hint = f" (studies here: {', '.join(known)})" if known else ""
            raise StudyNotFoundError(f"{self.journal}: no study {self.study!r} in workdir "
                                     f"{self.workdir}{hint}")


def open_storage(journal: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(journal)))


def load_records(workspace: Workspace):
    """Every trial of a stored study, as :class:`TrialRecord` s, and the study's user attrs."""
    import optuna

    from search.records import records_of

    workspace.require()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=workspace.study, storage=open_storage(workspace.journal))
    return records_of(study), study.user_attrs
