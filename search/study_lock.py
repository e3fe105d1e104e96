"""One driver per study, and the clean-up after a driver that was killed (SIGKILL, OOM, reboot).

The driver writes ``<workdir>/<study>/driver.json`` with its pid and, once its agents are up,
the processes it started (the local Ray cluster: raylet, GCS, agents). A driver killed with
SIGKILL leaves some of them behind (Ray's dashboard and runtime-env agents outlive it,
docs/STACK.md); the next run of the study finds the record, sees that its driver is gone, and
ends exactly the recorded processes that still run (same pid and same start time, so a reused
pid is never hit).
It also removes the journal's lock file if the killed driver held it and cuts a line it left
half-written, so the resumed study reads every trial that was told.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from search.errors import SearchError
from search.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessId:
    """A process as the kernel knows it: the pid, and when it started (clock ticks)."""

    pid: int
    started: int

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        started = process_start(pid)
        return None if started is None else cls(pid, started)

    def alive(self) -> bool:
        return process_start(self.pid) == self.started


def process_start(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``; None when the process is gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def descendants(pid: int) -> list[ProcessId]:
    """Every living process below ``pid`` (children first, then theirs)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rfind(")") + 2:].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop(0)
        process = ProcessId.of(child)
        if process is not None:
            found.append(process)
        todo.extend(children.get(child, []))
    return found


def end_processes(processes: list[ProcessId], grace_s: float = 3.0) -> int:
    """SIGTERM the recorded processes that still run, then SIGKILL what is left; how many."""
    living = [p for p in processes if p.alive()]
    for process in living:
        with contextlib.suppress(OSError):
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(p.alive() for p in living):
        time.sleep(0.1)
    for process in living:
        if process.alive():
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGKILL)
    return len(living)


def repair_journal(journal: Path) -> bool:
    """Cut a half-written last line (a write killed mid-way); True when something was cut.

    Optuna's journal appends whole lines and reads only lines that end with a newline; a torn
    tail would swallow the next line appended after it.
    """
    if not journal.is_file():
        return False
    data = journal.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    keep = data.rfind(b"\n") + 1
    with journal.open("r+b") as handle:
        handle.truncate(keep)
    return True


class StudyLock:
    """The driver record of one study.

    Example:
        >>> lock = StudyLock(Workspace(Path("runs"), "digits"))  # doctest: +SKIP
        >>> notes = lock.acquire()          # raises SearchError while another driver runs
        >>> lock.remember_children()        # after the local cluster started
        >>> lock.release()
    """

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.path = workspace.study_dir / "driver.json"
        self.me = ProcessId.of(os.getpid()) or ProcessId(os.getpid(), 0)
        self.host = socket.gethostname()

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _write(self, processes: list[ProcessId]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"driver": asdict(self.me), "host": self.host,
                                   "processes": [asdict(p) for p in processes]}))
        tmp.replace(self.path)

    def running_driver(self) -> int | None:
        """The pid of the driver running the study now, if any (on this host)."""
        record = self._read()
        if record is None or record.get("host") != self.host:
            return None
        driver = ProcessId(**record["driver"])
        return driver.pid if driver.alive() else None

    def acquire(self) -> list[str]:
        """Take the study, cleaning up after a dead driver; return what was cleaned up."""
        self.workspace.study_dir.mkdir(parents=True, exist_ok=True)
        notes: list[str] = []
        record = self._read()
        if record is not None:
            driver = ProcessId(**record["driver"])
            if record.get("host") != self.host:
                raise SearchError(f"{self.path}: study {self.workspace.study!r} was last run by "
                                  f"pid {driver.pid} on host {record.get('host')}; if that "
                                  f"driver is gone, delete this file")
            if driver.alive() and driver != self.me:
                raise SearchError(f"study {self.workspace.study!r} is already running (driver "
                                  f"pid {driver.pid}); wait for it or stop it first")
            ended = end_processes([ProcessId(**p) for p in record.get("processes", [])])
            if ended:
                notes.append(f"ended {ended} process(es) left by the killed driver "
                             f"(pid {driver.pid})")
            lock_file = Path(str(self.workspace.journal) + ".lock")
            if lock_file.is_symlink() or lock_file.exists():
                lock_file.unlink()
                notes.append("removed the journal lock the killed driver held")
        if repair_journal(self.workspace.journal):
            notes.append("cut a half-written line at the end of the journal")
        self._write([])
        return notes

    def remember_children(self) -> None:
        """Record the processes this driver started so far (call once the agents are up)."""
        self._write(descendants(self.me.pid))

    def release(self) -> None:
        record = self._read()
        if record is not None and ProcessId(**record["driver"]) == self.me:
            self.path.unlink(missing_ok=True)
