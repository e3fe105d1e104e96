"""The journal file a study's trials are kept in: Optuna's journal format, fsynced by a thread
of its own (group commit) instead of once per operation in the driver's thread.

Optuna's ``JournalFileBackend`` fsyncs every appended operation and takes a symlink lock for
each (a ``symlink``, a ``rename`` and an ``unlink``): an ask and a tell of one trial are five to
ten of them, and under load one fsync here takes 5-30 ms, more than the sampler itself
(docs/SCALING.md, "The journal's cost"). Here each append is written and flushed to the kernel
at once, under an ``flock`` of ``<journal>.flock``: a reader, and a driver restarted after a
crash, an OOM kill or a SIGKILL, sees every operation. The fsync (what a power loss or a kernel
crash needs) is a background thread's: an operation that ends a trial (COMPLETE, PRUNED, FAIL),
touches the study itself or discards trials wakes it at once, anything else is fsynced within
:data:`SYNC_INTERVAL_S`; appends that arrive during an fsync are flushed by the next one. What a
power loss can take is therefore the operations of the last fsync's duration (finished trials a
restarted driver finds running and re-queues) and, at most, a second of running trials' params
and attrs. :meth:`SyncedJournalFile.wait_synced` blocks until everything appended so far is on
disk; it runs when the process exits normally. The file is the one Optuna's own backend reads
and writes (``read_logs`` is Optuna's).

Every writer of a study's journal goes through :func:`search.storage.open_journal`, hence this
lock; a file system without ``flock`` (some network file systems) needs a study database
instead (``search.storage: postgresql://...``).
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import threading
import weakref
from collections.abc import Generator
from pathlib import Path
from typing import Any

from optuna.storages.journal import BaseJournalBackend, JournalFileBackend
from optuna.trial import TrialState

#: An append after this many seconds without an fsync is fsynced whatever it is.
SYNC_INTERVAL_S = 1.0
#: Optuna's journal operation codes (``optuna.storages.journal._storage.JournalOperation``).
_STUDY_OPS = frozenset({0, 1, 2, 3})  # create / delete study, study user / system attr
_SET_TRIAL_STATE_VALUES = 6
_DISCARD_TRIALS = 10


def must_sync(log: dict[str, Any]) -> bool:
    """Whether an operation wakes the fsync thread at once (rather than within
    :data:`SYNC_INTERVAL_S`): it ends a trial, touches the study or discards trials."""
    op = log.get("op_code")
    if op in _STUDY_OPS or op == _DISCARD_TRIALS:
        return True
    return op == _SET_TRIAL_STATE_VALUES and TrialState(log["state"]).is_finished()


class _Syncer:
    """The thread that fsyncs one file: at once when asked, else what is dirty every
    :data:`SYNC_INTERVAL_S`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._written = 0  # appends so far
        self._urgent = 0  # the latest append that must be synced at once
        self._synced = 0  # appends on disk
        self.syncs = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"fsync {path.name}",
                                        daemon=True)
        self._thread.start()

    def appended(self, urgent: bool) -> None:
        with self._cond:
            self._written += 1
            if urgent:
                self._urgent = self._written
                self._cond.notify_all()

    def wait_synced(self) -> None:
        with self._cond:
            target = self._written
            self._urgent = max(self._urgent, target)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._synced >= target)

    def stop(self) -> None:
        """End the thread once what is written is on disk (its backend is gone)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._urgent > self._synced or self._stopping,
                                    timeout=SYNC_INTERVAL_S)
                target, stopping = self._written, self._stopping
            if target > self._synced:
                try:
                    fd = os.open(self.path, os.O_RDONLY)
                except FileNotFoundError:  # the journal was removed: nothing left to keep
                    pass
                else:
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                with self._cond:
                    self._synced = target
                    self.syncs += 1
                    self._cond.notify_all()
            if stopping:
                return


_LIVE: weakref.WeakSet[SyncedJournalFile] = weakref.WeakSet()


@atexit.register
def _sync_at_exit() -> None:
    for backend in list(_LIVE):
        backend.wait_synced()


class SyncedJournalFile(BaseJournalBackend):
    """Optuna's journal file, fsynced by a thread of its own (see the module's docstring).

    Example:
        >>> from optuna.storages import JournalStorage
        >>> backend = SyncedJournalFile(Path("runs/digits/journal.log"))  # doctest: +SKIP
        >>> storage = JournalStorage(backend)  # doctest: +SKIP
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._reader = JournalFileBackend(str(self.path))  # creates the file when missing
        self._lock_path = self.path.with_name(self.path.name + ".flock")
        self._syncer: _Syncer | None = None
        self._syncer_pid = 0
        self._read_to = (0, -1)  # (the next log number, the file's size) after the last read

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_syncer"], state["_syncer_pid"] = None, 0
        return state

    @property
    def syncs(self) -> int:
        """The fsyncs done so far in this process."""
        return self._syncer.syncs if self._syncer is not None else 0

    def _sync_thread(self) -> _Syncer:
        if self._syncer is None or self._syncer_pid != os.getpid():  # none yet, or forked
            self._syncer, self._syncer_pid = _Syncer(self.path), os.getpid()
            weakref.finalize(self, self._syncer.stop)
            _LIVE.add(self)
        return self._syncer

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        # Optuna reads the journal before every operation of a study: a file of the size it
        # had when the last read ended holds nothing new, and a stat is cheaper than reading
        size = os.stat(self.path).st_size
        if (log_number_from, size) == self._read_to:
            return
        number = log_number_from
        for log in self._reader.read_logs(log_number_from):
            number += 1
            yield log
        self._read_to = (number, size)  # the reader read at least ``size`` bytes

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(self.path, "ab") as f:
                    f.write(text.encode("utf-8"))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self._sync_thread().appended(urgent=any(must_sync(log) for log in logs))

    def wait_synced(self) -> None:
        """Block until every operation appended so far in this process is on disk."""
        if self._syncer is not None and self._syncer_pid == os.getpid():
            self._syncer.wait_synced()
