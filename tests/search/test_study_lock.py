"""One driver per study, and the clean-up after a driver killed with SIGKILL."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from search.errors import SearchError
from search.study_lock import ProcessId, StudyLock, descendants, repair_journal
from search.workspace import Workspace


def _dead_driver_with_a_leftover(tmp_path: Path) -> tuple[ProcessId, subprocess.Popen]:
    """A real driver process that started a child and was then SIGKILLed."""
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
              "print(child.pid, flush=True)\n"
              "time.sleep(120)\n")
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child_pid = int(driver.stdout.readline())
    record = ProcessId.of(driver.pid)
    assert record is not None
    children = descendants(driver.pid)
    assert child_pid in {p.pid for p in children}
    workspace = Workspace(tmp_path, "s")
    workspace.study_dir.mkdir(parents=True)
    (workspace.study_dir / "driver.json").write_text(json.dumps({
        "driver": {"pid": record.pid, "started": record.started}, "host": socket.gethostname(),
        "processes": [{"pid": p.pid, "started": p.started} for p in children]}))
    driver.kill()
    driver.wait()
    return ProcessId.of(child_pid), driver  # the child outlives its driver, as Ray's agents do


def test_a_second_driver_of_the_same_study_is_refused(tmp_path: Path) -> None:
    first = StudyLock(Workspace(tmp_path, "s"))
    assert first.acquire() == []
    other = StudyLock(Workspace(tmp_path, "s"))
    other.me = ProcessId(os.getppid(), ProcessId.of(os.getppid()).started)  # a live process
    with pytest.raises(SearchError, match="already running"):
        other.acquire()
    assert other.running_driver() == os.getpid()
    first.release()
    assert not first.path.exists()
    assert other.acquire() == []  # the study is free again


def test_a_killed_drivers_leftovers_are_ended_and_its_journal_repaired(tmp_path: Path) -> None:
    leftover, _ = _dead_driver_with_a_leftover(tmp_path)
    assert leftover is not None and leftover.alive()
    workspace = Workspace(tmp_path, "s")
    journal_lock = Path(str(workspace.journal) + ".lock")
    workspace.journal.write_bytes(b'{"op_code": 0}\n{"op_code": 4, "tri')  # torn last write
    os.symlink(workspace.journal, journal_lock)  # the killed driver held the journal's lock
    lock = StudyLock(workspace)
    notes = lock.acquire()
    try:
        assert not leftover.alive()
        assert any("ended 1 process" in n for n in notes), notes
        assert not journal_lock.is_symlink()
        assert workspace.journal.read_bytes() == b'{"op_code": 0}\n'
        assert lock.running_driver() == os.getpid()
    finally:
        lock.release()


def test_remember_children_records_what_the_driver_started(tmp_path: Path) -> None:
    lock = StudyLock(Workspace(tmp_path, "s"))
    lock.acquire()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.remember_children()
        recorded = json.loads(lock.path.read_text())["processes"]
        assert child.pid in {p["pid"] for p in recorded}
    finally:
        child.kill()
        child.wait()
        lock.release()


def test_a_reused_pid_is_not_mistaken_for_the_recorded_process() -> None:
    me = ProcessId.of(os.getpid())
    assert me is not None and me.alive()
    assert not ProcessId(me.pid, me.started + 1).alive()
    assert ProcessId.of(2 ** 22 + 12345) is None


def test_repair_journal_leaves_a_whole_journal_alone(tmp_path: Path) -> None:
    path = tmp_path / "journal.log"
    path.write_bytes(b'{"a": 1}\n')
    assert not repair_journal(path) and path.read_bytes() == b'{"a": 1}\n'
    assert not repair_journal(tmp_path / "missing.log")
