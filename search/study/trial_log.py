"""The study's trials as :class:`TrialRecord` s, kept in memory by the driver: read from the
storage once when a run starts, then updated on every ask and tell, so the loop never rebuilds
them from Optuna's storage (nor touches its private API)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from search.records import TrialRecord, record_from_parts, records_of

if TYPE_CHECKING:
    import optuna


class TrialLog:
    """Every trial of one study, by number.

    Example:
        >>> log = TrialLog.load(study)  # doctest: +SKIP
        >>> log.told(trial, "COMPLETE", constraints={"accuracy_band": -0.01})  # doctest: +SKIP
        >>> [r.number for r in log.records()]  # doctest: +SKIP
        [0, 1]
    """

    def __init__(self, records: list[TrialRecord] | None = None) -> None:
        self._by_number = {r.number: r for r in records or ()}

    @classmethod
    def load(cls, study: optuna.Study) -> TrialLog:
        return cls(records_of(study))

    def records(self) -> list[TrialRecord]:
        return [self._by_number[n] for n in sorted(self._by_number)]

    def told(self, trial: optuna.Trial, state: str,
             constraints: Mapping[str, float] | None = None) -> TrialRecord:
        """Record ``trial`` as it stands now (``RUNNING`` after ask; the told state after tell)."""
        record = record_from_parts(
            number=trial.number, state=state, params=trial.params, user_attrs=trial.user_attrs,
            constraints=list((constraints or {}).values()),
            finished_at=None if state == "RUNNING" else time.time())
        self._by_number[record.number] = record
        return record

    def replace(self, record: TrialRecord) -> None:
        self._by_number[record.number] = record
