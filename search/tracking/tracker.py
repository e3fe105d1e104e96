"""Where a study is mirrored while it runs: the one-method :class:`Tracker` interface."""

from __future__ import annotations

from typing import Any, Protocol


class Tracker(Protocol):
    """Where a study is mirrored while it runs (MLflow, or nothing)."""

    def sync(self, snapshot: Any, *, final: bool = False) -> None: ...


class NullTracker:
    """Tracking switched off (``tracking.mlflow: false``)."""

    def sync(self, snapshot: Any, *, final: bool = False) -> None:
        pass
