"""Where a study's trials are stored (``search.storage``): Optuna's journal file under the
workdir (``journal``, the default: one driver at a time), or a PostgreSQL database
(``postgresql://user@host:port/database``: Optuna's RDB storage, which several drivers of one
study share; see docs/SCALING.md).

A study run on PostgreSQL leaves ``<workdir>/<study>/storage.json`` naming the database (the URL
without its password: give that with ``PGPASSWORD`` or ``~/.pgpass``), so that ``front``,
``best``, ``confirm`` and ``sync`` find its trials from the workdir alone.

Several drivers serialise what must not interleave (opening the study, the baseline, asking
within the trial budget) with a PostgreSQL advisory lock keyed by the study's name
(:meth:`StudyStorage.exclusive`); the journal needs none, its driver being the only one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from search.errors import ConfigError, SearchError

JOURNAL = "journal"
#: The URL schemes of ``search.storage`` besides ``journal`` (psycopg 3 is the driver).
POSTGRES_SCHEMES = ("postgresql", "postgresql+psycopg")
STORAGE_FILE = "storage.json"
JOURNAL_FILE = "journal.log"
__all__ = ["JOURNAL", "JOURNAL_FILE", "STORAGE_FILE", "StudyStorage", "check_storage",
           "open_journal", "without_password"]


def check_storage(value: str) -> str:
    """``journal`` or a ``postgresql://`` URL with a host and a database; ValueError else."""
    if value == JOURNAL:
        return value
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in POSTGRES_SCHEMES or not parts.hostname \
            or not parts.path.strip("/"):
        shown = without_password(value) if parts is not None else "(not a URL)"
        raise ValueError(f"expected 'journal' or postgresql://user@host:port/database, not "
                         f"{shown!r}")
    return value


def without_password(url: str) -> str:
    """``url`` with the password left out (what may be written to disk or printed)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc}" if user else netloc))


def open_journal(journal: Path) -> Any:
    """Optuna's journal storage on the file ``journal`` (created with its folder), fsynced
    once per finished trial (:class:`search.journal_file.SyncedJournalFile`)."""
    from optuna.storages import JournalStorage

    from search.journal_file import SyncedJournalFile

    journal.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(SyncedJournalFile(journal))


def _lock_key(study: str) -> int:
    """A signed 64-bit advisory-lock key for ``study`` (the same in every driver)."""
    digest = hashlib.sha256(f"paretoedge-study:{study}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class StudyStorage:
    """The Optuna storage of one study, and whether several drivers may share it.

    Example:
        >>> storage = StudyStorage("digits", Path("runs/digits"), "journal")
        >>> storage.shared
        False
        >>> with storage.exclusive():  # a PostgreSQL advisory lock when shared
        ...     pass
    """

    def __init__(self, study: str, study_dir: Path, url: str = JOURNAL) -> None:
        self.study = study
        self.study_dir = study_dir
        self.url = check_storage(url)
        self._optuna: Any = None
        self._lock_connection: Any = None

    @classmethod
    def stored(cls, study: str, study_dir: Path) -> StudyStorage:
        """The storage a study of the workdir was run on (its ``storage.json``, else the
        journal)."""
        path = study_dir / STORAGE_FILE
        try:
            url = json.loads(path.read_text())["url"]
        except FileNotFoundError:
            return cls(study, study_dir)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SearchError(f"{path}: unreadable ({exc})") from exc
        try:
            return cls(study, study_dir, url)
        except ValueError as exc:
            raise SearchError(f"{path}: {exc}") from exc

    @property
    def journal(self) -> Path:
        return self.study_dir / JOURNAL_FILE

    @property
    def shared(self) -> bool:
        """Whether several drivers may run the study at once (a database, not the journal)."""
        return self.url != JOURNAL

    def describe(self) -> str:
        return str(self.journal) if not self.shared else without_password(self.url)

    def optuna(self) -> Any:
        """The Optuna storage (opened once)."""
        if self._optuna is None:
            if not self.shared:
                self._optuna = open_journal(self.journal)
            else:
                self._optuna = self._open_rdb()
        return self._optuna

    def _open_rdb(self) -> Any:
        from optuna.storages import RDBStorage

        url = self.url.replace("postgresql://", "postgresql+psycopg://", 1)
        try:
            # pre-ping: a connection the server dropped overnight is replaced, not an error
            return RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"search.storage: cannot open {without_password(self.url)}: "
                              f"{first}") from exc

    def remember(self) -> None:
        """Write ``storage.json`` so that the workdir's commands find the study's trials."""
        if not self.shared:
            return
        self.study_dir.mkdir(parents=True, exist_ok=True)
        path = self.study_dir / STORAGE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"url": without_password(self.url)}))
        tmp.replace(path)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the study's advisory lock (shared storage only): one driver at a time gets
        through, the others wait here."""
        if not self.shared:
            yield
            return
        connection = self._connection()
        key = _lock_key(self.study)
        connection.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            connection.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def _connection(self) -> Any:
        import psycopg

        if self._lock_connection is None or self._lock_connection.closed:
            conninfo = self.url.replace("postgresql+psycopg://", "postgresql://", 1)
            try:
                self._lock_connection = psycopg.connect(conninfo, autocommit=True)
            except psycopg.Error as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ConfigError(f"search.storage: cannot connect to "
                                  f"{without_password(self.url)}: {first}") from exc
        return self._lock_connection

    def close(self) -> None:
        """Close the lock's connection (the Optuna storage closes with the process)."""
        if self._lock_connection is not None:
            with contextlib.suppress(Exception):
                self._lock_connection.close()
            self._lock_connection = None

