"""Ctrl-C during a study: the first stops it gracefully, the second aborts.

On a terminal, Ctrl-C sends SIGINT to the whole foreground process group: the driver and the
local Ray cluster it started. The cluster is therefore started with SIGINT ignored
(:func:`sigint_ignored`; the disposition is inherited by every process it starts), so that only
the driver sees the signal and the agents can finish the measurements in flight.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while processes are started inside, so that they inherit it ignored."""
    if not _main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class GracefulStop:
    """The first SIGINT sets :attr:`requested`; the second raises ``KeyboardInterrupt``.

    The handler only sets a flag: the study loop notices it, stops asking for trials, lets the
    trials in flight finish and prints the front.

    Example:
        >>> with GracefulStop() as stop:  # doctest: +SKIP
        ...     while not stop.requested:
        ...         run_one_trial()
    """

    def __init__(self) -> None:
        self.requested = False
        self.announced = False
        self._previous: Any = None

    def __enter__(self) -> GracefulStop:
        if _main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def announce(self) -> bool:
        """True once, the first time this is asked after a stop was requested."""
        if self.requested and not self.announced:
            self.announced = True
            return True
        return False
