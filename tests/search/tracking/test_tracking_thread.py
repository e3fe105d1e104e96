"""MLflow syncs on a thread of their own: the study never waits for them, except at the end."""

from __future__ import annotations

import threading

from search.tracking.background import BackgroundTracking


class SlowTracker:
    """Blocks every sync until released; records what it was given and on which thread."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.synced: list[tuple[object, bool]] = []
        self.threads: set[str] = set()

    def sync(self, snapshot: object, *, final: bool = False) -> None:
        self.started.set()
        self.release.wait(timeout=10)
        self.synced.append((snapshot, final))
        self.threads.add(threading.current_thread().name)


def test_sync_returns_at_once_and_only_the_newest_waiting_snapshot_is_written() -> None:
    tracker = SlowTracker()
    tracking = BackgroundTracking(tracker)
    tracking.sync("trial 1")
    assert tracker.started.wait(timeout=10)  # the thread is busy writing "trial 1"
    tracking.sync("trial 2")  # returns although the tracker is blocked
    tracking.sync("trial 3")
    assert tracker.synced == []
    tracker.release.set()
    tracking.sync("end", final=True)  # waits until written
    written = [snapshot for snapshot, _ in tracker.synced]
    assert written[0] == "trial 1" and tracker.synced[-1] == ("end", True)
    assert "trial 2" not in written  # replaced by a newer snapshot before it was taken
    assert tracker.threads == {"paretoedge-tracking"}  # every write on the tracking thread


def test_a_failing_sync_is_reported_and_the_next_one_still_runs() -> None:
    warnings: list[str] = []

    class Flaky:
        def __init__(self) -> None:
            self.calls = 0

        def sync(self, snapshot: object, *, final: bool = False) -> None:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("database is locked")

    flaky = Flaky()
    tracking = BackgroundTracking(flaky, warn=warnings.append)
    tracking.sync("a", final=True)
    tracking.sync("b", final=True)
    assert flaky.calls == 2 and tracking.written == 1
    assert warnings == ["MLflow: could not log: RuntimeError: database is locked"]
