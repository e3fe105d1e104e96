"""MLflow tracking: one parent run per study, one child run per trial, ``pareto`` tags kept
current. The driver is the only writer (sqlite is not for parallel writers, FACTS.md)."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from search.records import TrialRecord

log = logging.getLogger(__name__)

STUDY_TAG = "paretoedge.study"
ROLE_TAG = "paretoedge.role"
TRIAL_TAG = "trial_number"


def tracking_uri(workdir: Path) -> str:
    return f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


class Tracker(Protocol):
    def start_study(self, params: Mapping[str, Any], tags: Mapping[str, str]) -> None: ...

    def log_trial(self, record: TrialRecord, params: Mapping[str, Any]) -> None: ...

    def update_front(self, front: Iterable[int], summary: Mapping[str, float],
                     table_csv: str) -> None: ...

    def close(self) -> None: ...


class NullTracker:
    """Tracking switched off (``tracking.mlflow: false``)."""

    def start_study(self, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        pass

    def log_trial(self, record: TrialRecord, params: Mapping[str, Any]) -> None:
        pass

    def update_front(self, front: Iterable[int], summary: Mapping[str, float],
                     table_csv: str) -> None:
        pass

    def close(self) -> None:
        pass


def _flat(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)


class MlflowTracker:
    """Logs a study into the workdir's sqlite store.

    Re-running a study reuses its parent run and skips trials already logged, so a resumed
    study has exactly one child run per trial.
    """

    def __init__(self, workdir: Path, study: str, experiment: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=tracking_uri(workdir))
        self.study = study
        name = experiment or f"paretoedge/{study}"
        found = self.client.get_experiment_by_name(name)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        self.parent_id: str | None = None
        self._children: dict[int, str] = {}
        self._pareto: dict[int, bool] = {}

    def start_study(self, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = '{self.study}' and tags.`{ROLE_TAG}` = 'study'",
            max_results=1)
        if runs:
            self.parent_id = runs[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            for child in self.client.search_runs(
                    [self.experiment_id],
                    filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_id}'",
                    max_results=50000):
                number = child.data.tags.get(TRIAL_TAG)
                if number is not None:
                    self._children[int(number)] = child.info.run_id
                    self._pareto[int(number)] = child.data.tags.get("pareto") == "true"
        else:
            run = self.client.create_run(self.experiment_id, run_name=self.study,
                                         tags={STUDY_TAG: self.study, ROLE_TAG: "study",
                                               **tags})
            self.parent_id = run.info.run_id
        from mlflow.entities import Param

        flat: dict[str, str] = {}
        _flat("", params, flat)
        existing = self.client.get_run(self.parent_id).data.params
        fresh = [Param(k, v[:6000]) for k, v in flat.items() if k not in existing]
        for i in range(0, len(fresh), 100):
            self.client.log_batch(self.parent_id, params=fresh[i:i + 100])

    def log_trial(self, record: TrialRecord, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        if self.parent_id is None or record.number in self._children:
            return
        tags = {"mlflow.parentRunId": self.parent_id, STUDY_TAG: self.study,
                ROLE_TAG: "trial", TRIAL_TAG: str(record.number),
                "baseline": str(record.baseline).lower(),
                "feasible": str(record.feasible).lower(), "pareto": "false",
                "state": record.state}
        if record.fail_reason:
            tags["fail_reason"] = record.fail_reason[:4000]
        if record.bundle:
            tags["bundle"] = record.bundle
            tags["bundle_digest"] = record.bundle_digest or ""
        if record.device_class:
            tags["device_class"] = record.device_class
        if record.agent_id:
            tags["agent_id"] = record.agent_id
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{record.number:04d}",
                                     tags=tags)
        now = int(time.time() * 1000)
        flat: dict[str, str] = {}
        _flat("", params, flat)
        self.client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in record.metrics.items()],
            params=[Param(k, v[:6000]) for k, v in flat.items()],
            tags=[RunTag("candidate", json.dumps(dict(record.candidate)))])
        self.client.set_terminated(run.info.run_id,
                                   status="FINISHED" if record.complete else "FAILED")
        self._children[record.number] = run.info.run_id
        self._pareto[record.number] = False

    def update_front(self, front: Iterable[int], summary: Mapping[str, float],
                     table_csv: str) -> None:
        from mlflow.entities import Metric

        members = set(front)
        for number, run_id in self._children.items():
            now_member = number in members
            if self._pareto.get(number) != now_member:
                self.client.set_tag(run_id, "pareto", str(now_member).lower())
                self._pareto[number] = now_member
        if self.parent_id is None:
            return
        now = int(time.time() * 1000)
        step = len(self._children)
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, step)
                                                       for k, v in summary.items()])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "pareto.csv"
            path.write_text(table_csv)
            self.client.log_artifact(self.parent_id, str(path))

    def close(self) -> None:
        if self.parent_id is not None:
            self.client.set_terminated(self.parent_id, status="FINISHED")
