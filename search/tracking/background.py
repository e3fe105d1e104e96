"""MLflow off the study's path: syncs run on a thread of their own.

A sync mirrors the whole study and is idempotent (it writes what MLflow lacks), so when the
study finishes trials faster than MLflow takes them, only the newest snapshot needs writing:
the thread always takes the latest one. A final sync waits until it is written.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from search.tracking.tracker import Tracker

log = logging.getLogger(__name__)


class BackgroundTracking:
    """Hands a tracker's syncs to a worker thread; every call to the tracker runs there.

    Example:
        >>> tracking = BackgroundTracking(LiveTracking(mirror))  # doctest: +SKIP
        >>> tracking.sync(snapshot)  # returns at once  # doctest: +SKIP
        >>> tracking.sync(snapshot, final=True)  # returns once MLflow has it  # doctest: +SKIP
    """

    def __init__(self, tracker: Tracker, *,
                 warn: Callable[[str], None] = log.warning) -> None:
        self.tracker = tracker
        self.warn = warn
        self.written = 0  # syncs the tracker ran (skipped snapshots are not counted)
        self._cond = threading.Condition()
        self._pending: tuple[Any, bool] | None = None
        self._busy = False
        self._thread = threading.Thread(target=self._work, name="paretoedge-tracking",
                                        daemon=True)
        self._thread.start()

    def sync(self, snapshot: Any, *, final: bool = False) -> None:
        with self._cond:
            if self._pending is not None and self._pending[1]:
                final = True  # a newer snapshot must not downgrade a pending final sync
            self._pending = (snapshot, final)
            self._cond.notify_all()
            if final:
                self._cond.wait_for(lambda: self._pending is None and not self._busy)

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None)
                assert self._pending is not None
                snapshot, final = self._pending
                self._pending = None
                self._busy = True
            try:
                self.tracker.sync(snapshot, final=final)
                self.written += 1
            except Exception as exc:  # tracking must never stop a study
                self.warn(f"MLflow: could not log: {type(exc).__name__}: {exc}")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
