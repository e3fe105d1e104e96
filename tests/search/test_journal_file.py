"""The study journal: Optuna's format, one fsync per finished trial, safe for several writers."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from search import journal_file
from search.journal_file import SyncedJournalFile, must_sync
from search.storage import open_journal

ROOT = Path(__file__).resolve().parents[2]


def _objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0, 1) + trial.suggest_int("k", 0, 3)


def test_a_study_written_here_reads_back_with_optunas_own_backend(tmp_path: Path) -> None:
    journal = tmp_path / "journal.log"
    study = optuna.create_study(study_name="s", storage=open_journal(journal))
    study.optimize(_objective, n_trials=5)
    study.set_user_attr("note", "kept")
    plain = optuna.load_study(study_name="s",
                              storage=JournalStorage(JournalFileBackend(str(journal))))
    assert [t.params for t in plain.trials] == [t.params for t in study.trials]
    assert [t.state for t in plain.trials] == [optuna.trial.TrialState.COMPLETE] * 5
    assert plain.user_attrs == {"note": "kept"}


def test_a_tell_does_not_wait_for_the_fsync_and_wait_synced_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release, fsyncing = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:  # the disk is busy until the test releases it
        fsyncing.set()
        assert release.wait(60)
        real_fsync(fd)

    monkeypatch.setattr(journal_file.os, "fsync", slow_fsync)
    backend = SyncedJournalFile(tmp_path / "journal.log")
    study = optuna.create_study(study_name="s", storage=JournalStorage(backend))
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    study.tell(trial, 1.0)  # returns although the fsync is held
    assert fsyncing.wait(60) and backend.syncs == 0
    plain = optuna.load_study(study_name="s",
                              storage=JournalStorage(JournalFileBackend(str(tmp_path /
                                                                            "journal.log"))))
    assert plain.trials[0].state == optuna.trial.TrialState.COMPLETE  # in the file already
    release.set()
    backend.wait_synced()
    assert backend.syncs >= 1


def test_operations_of_running_trials_wait_for_the_interval(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_file, "SYNC_INTERVAL_S", 3600.0)
    backend = SyncedJournalFile(tmp_path / "journal.log")
    study = optuna.create_study(study_name="s", storage=JournalStorage(backend))
    backend.wait_synced()
    before = backend.syncs
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trial.set_user_attr("agent", "a0")
    time.sleep(0.3)  # time for the thread to fsync, if it (wrongly) would
    assert backend.syncs == before
    backend.wait_synced()  # asked for: done now
    assert backend.syncs == before + 1


def test_what_ends_a_trial_or_touches_the_study_must_sync() -> None:
    assert must_sync({"op_code": 0})  # create study
    assert must_sync({"op_code": 2})  # study user attr
    assert must_sync({"op_code": 6, "state": optuna.trial.TrialState.COMPLETE.value})
    assert must_sync({"op_code": 6, "state": optuna.trial.TrialState.FAIL.value})
    assert not must_sync({"op_code": 6, "state": optuna.trial.TrialState.RUNNING.value})
    assert not must_sync({"op_code": 4})  # create trial
    assert not must_sync({"op_code": 5})  # a param
    assert not must_sync({"op_code": 8})  # a trial's user attr


def _write_trials(journal: str, n: int) -> None:
    study = optuna.load_study(study_name="s", storage=open_journal(Path(journal)))
    study.optimize(_objective, n_trials=n)


def test_two_writer_processes_interleave_whole_operations(tmp_path: Path) -> None:
    journal = tmp_path / "journal.log"
    optuna.create_study(study_name="s", storage=open_journal(journal))
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_trials, args=(str(journal), 20))
               for _ in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(120)
        assert w.exitcode == 0
    study = optuna.load_study(study_name="s", storage=open_journal(journal))
    assert len(study.trials) == 40
    assert {t.number for t in study.trials} == set(range(40))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_a_told_trial_survives_the_driver_being_killed(tmp_path: Path) -> None:
    journal = tmp_path / "journal.log"
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        import optuna
        from pathlib import Path
        from search.storage import open_journal
        study = optuna.create_study(study_name="s", storage=open_journal(Path({str(journal)!r})))
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        study.tell(trial, 0.5)
        running = study.ask()
        running.suggest_float("x", 0, 1)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert result.returncode == -signal.SIGKILL
    study = optuna.load_study(study_name="s", storage=open_journal(journal))
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING]
    assert study.trials[0].values == [0.5]


def test_operations_of_running_trials_are_fsynced_within_the_interval(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_file, "SYNC_INTERVAL_S", 0.05)
    backend = SyncedJournalFile(tmp_path / "journal.log")
    study = optuna.create_study(study_name="s", storage=JournalStorage(backend))
    backend.wait_synced()
    before = backend.syncs
    study.ask().set_user_attr("agent", "a0")
    deadline = time.monotonic() + 30
    while backend.syncs == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.syncs > before


def test_what_another_writer_appends_is_read_at_the_next_operation(tmp_path: Path) -> None:
    journal = tmp_path / "journal.log"
    ours = optuna.create_study(study_name="s", storage=open_journal(journal))
    ours.optimize(_objective, n_trials=2)
    assert len(ours.trials) == 2  # read to the end of the file
    theirs = optuna.load_study(study_name="s",
                               storage=JournalStorage(JournalFileBackend(str(journal))))
    theirs.optimize(_objective, n_trials=3)
    assert len(ours.trials) == 5
    assert ours.ask().number == 5


def test_a_journal_removed_before_its_fsync_ends_the_wait(tmp_path: Path) -> None:
    backend = SyncedJournalFile(tmp_path / "journal.log")
    study = optuna.create_study(study_name="s", storage=JournalStorage(backend))
    study.ask()
    (tmp_path / "journal.log").unlink()
    backend.wait_synced()  # returns: nothing is left to sync, and the thread is still alive
    assert backend._syncer is not None and backend._syncer._thread.is_alive()
