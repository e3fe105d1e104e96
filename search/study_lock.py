"""One driver per study (several on a shared storage), and the clean-up after a driver that was
killed (SIGKILL, OOM, reboot).

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

    With the journal (the default storage) one driver runs a study: its record is
    ``<study>/driver.json`` and a second driver is refused. With a shared storage
    (``search.storage: postgresql://...``) several drivers run it at once, each with a record of
    its own, ``<study>/drivers/<host>-<pid>.json``; a starting driver cleans up after the dead
    drivers of its host only.

    Example:
        >>> lock = StudyLock(Workspace(Path("runs"), "digits"))  # doctest: +SKIP
        >>> notes = lock.acquire()          # raises SearchError while another driver runs
        >>> lock.remember_children()        # after the local cluster started
        >>> lock.release()
    """

    def __init__(self, workspace: Workspace, *, shared: bool = False) -> None:
        self.workspace = workspace
        self.shared = shared
        self.me = ProcessId.of(os.getpid()) or ProcessId(os.getpid(), 0)
        self.host = socket.gethostname()
        self.path = (self.drivers_dir / f"{self.host}-{self.me.pid}.json" if shared
                     else workspace.study_dir / "driver.json")

    @property
    def drivers_dir(self) -> Path:
        return self.workspace.study_dir / "drivers"

    @staticmethod
    def _read_file(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def _read(self) -> dict | None:
        return self._read_file(self.path)

    def _write(self, processes: list[ProcessId]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"driver": asdict(self.me), "host": self.host,
                                   "processes": [asdict(p) for p in processes]}))
        tmp.replace(self.path)

    def _records(self) -> list[tuple[Path, dict]]:
        """Every driver record of the study: the single driver's, and the shared ones."""
        paths = [self.workspace.study_dir / "driver.json",
                 *sorted(self.drivers_dir.glob("*.json"))]
        return [(path, record) for path in paths
                if (record := self._read_file(path)) is not None]

    def running_driver(self) -> int | None:
        """The pid of a driver running the study now, if any (on this host)."""
        for _, record in self._records():
            if record.get("host") != self.host:
                continue
            driver = ProcessId(**record["driver"])
            if driver.alive():
                return driver.pid
        return None

    def acquire(self) -> list[str]:
        """Take the study, cleaning up after a dead driver; return what was cleaned up."""
        self.workspace.study_dir.mkdir(parents=True, exist_ok=True)
        notes = self._clean_up_shared() if self.shared else self._acquire_single()
        self._write([])
        return notes

    def _acquire_single(self) -> list[str]:
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
        return notes

    def _clean_up_shared(self) -> list[str]:
        """The records of this host's drivers that died: end what they left, drop them."""
        notes: list[str] = []
        for path in sorted(self.drivers_dir.glob("*.json")):
            record = self._read_file(path)
            if record is None or record.get("host") != self.host:
                continue
            driver = ProcessId(**record["driver"])
            if driver.alive():
                continue
            ended = end_processes([ProcessId(**p) for p in record.get("processes", [])])
            if ended:
                notes.append(f"ended {ended} process(es) left by the killed driver "
                             f"(pid {driver.pid})")
            path.unlink(missing_ok=True)
        return notes

    def owner(self) -> dict[str, object]:
        """This driver, as the trials it asks name it (trial user attr ``driver``)."""
        return {"host": self.host, "pid": self.me.pid, "started": self.me.started}

    def owner_gone(self, owner: object) -> bool:
        """Whether the driver a trial names is known to be dead: one of this host that no
        longer runs (a trial that names none is from before this record: gone too). A driver
        of another host is never judged from here."""
        if not isinstance(owner, dict):
            return True
        if owner.get("host") != self.host:
            return False
        return not ProcessId(int(owner["pid"]), int(owner["started"])).alive()

    def remember_children(self) -> None:
        """Record the processes this driver started so far (call once the agents are up)."""
        self._write(descendants(self.me.pid))

    def release(self) -> None:
        record = self._read()
        if record is not None and ProcessId(**record["driver"]) == self.me:
            self.path.unlink(missing_ok=True)
