"""Where a study keeps its files: ``<workdir>/mlflow.db``, ``<workdir>/<study>/journal.log``
(or ``storage.json`` naming the study's database, :mod:`search.storage`),
``<workdir>/<study>/bundles/``, and ``<workdir>/cache/`` (builds shared by studies)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.errors import StudyNotFoundError

if TYPE_CHECKING:
    from search.storage import StudyStorage


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

    def storage(self, url: str = "journal") -> StudyStorage:
        """The study's storage: its journal, or the database ``url`` (``search.storage``)."""
        from search.storage import StudyStorage

        return StudyStorage(self.study, self.study_dir, url)

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
        """Raise :class:`StudyNotFoundError` unless the study has a journal here, or a
        ``storage.json`` naming its database (``search.storage``)."""
        if not self.journal.is_file() and not (self.study_dir / "storage.json").is_file():
            known = sorted({p.parent.name for pattern in ("*/journal.log", "*/storage.json")
                            for p in self.workdir.glob(pattern)})
            hint = f" (studies here: {', '.join(known)})" if known else ""
            raise StudyNotFoundError(f"{self.journal}: no study {self.study!r} in workdir "
                                     f"{self.workdir}{hint}")


def open_storage(journal: Path) -> Any:
    """Optuna's journal storage on ``journal`` (:func:`search.storage.open_journal`)."""
    from search.storage import open_journal

    return open_journal(journal)


def study_storage(workspace: Workspace) -> StudyStorage:
    """The storage a stored study of ``workspace`` was run on (journal or database)."""
    from search.storage import StudyStorage

    return StudyStorage.stored(workspace.study, workspace.study_dir)


def load_records(workspace: Workspace):
    """Every trial of a stored study, as :class:`TrialRecord` s, and the study's user attrs."""
    import optuna

    from search.records import records_of

    workspace.require()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=workspace.study,
                              storage=study_storage(workspace).optuna())
    return records_of(study), study.user_attrs
