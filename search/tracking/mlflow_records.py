"""Trials read back from MLflow, as the same :class:`TrialRecord` s the Optuna journal gives.

``paretoedge best --source mlflow`` answers from here; a query gives the same answer from either
source because both hold the same records (``tests/search/test_query_sources.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from search.errors import StudyNotFoundError
from search.objective_set import OBJECTIVES_ATTR
from search.records import TrialRecord
from search.tracking.mlflow_store import TRIAL_TAG, MlflowStore


def record_from_run(run: Any) -> TrialRecord:
    """Build a record from a trial's ``mlflow.entities.Run``."""
    tags = run.data.tags
    end = run.info.end_time
    return TrialRecord(
        number=int(tags[TRIAL_TAG]),
        state=tags.get("state", "COMPLETE" if run.info.status == "FINISHED" else "FAIL"),
        candidate=json.loads(tags.get("candidate", "{}")),
        metrics={k: float(v) for k, v in run.data.metrics.items()},
        feasible=tags.get("feasible") == "true",
        baseline=tags.get("baseline") == "true",
        bundle=tags.get("bundle"),
        bundle_digest=tags.get("bundle_digest"),
        fail_reason=tags.get("fail_reason"),
        agent_id=tags.get("agent_id"),
        device_class=tags.get("device_class"),
        fingerprint=json.loads(tags.get("fingerprint", "{}")),
        finished_at=end / 1000 if end else None,
    )


def load_records_from_mlflow(workdir: Path, study: str,
                             experiment: str | None = None) -> tuple[list[TrialRecord],
                                                                     dict[str, Any]]:
    """Every trial run of ``study`` in ``<workdir>/mlflow.db``, and the study's settings.

    The second value mirrors the Optuna study's user attrs that queries use
    (``max_accuracy_drop``, ``objectives``), read from the study run's params (the config's
    ``objectives.<metric>``; a study logged before objectives were configurable has none).
    """
    store = MlflowStore.open(Path(workdir), study, experiment, create=False)
    if store.parent_id is None:
        raise StudyNotFoundError(f"no study {study!r} in MLflow at {workdir}/mlflow.db")
    records = sorted((record_from_run(run) for run in store.trial_runs()
                      if TRIAL_TAG in run.data.tags), key=lambda r: r.number)
    params = store.parent().data.params
    attrs: dict[str, Any] = {}
    if "constraints.max_accuracy_drop" in params:
        attrs["max_accuracy_drop"] = float(params["constraints.max_accuracy_drop"])
    objectives = {k.removeprefix("objectives."): v for k, v in params.items()
                  if k.startswith("objectives.")}
    if objectives:
        attrs[OBJECTIVES_ATTR] = objectives
    return records, attrs
