"""MLflow's side of a study: the workdir's sqlite store, the study's parent run and its trial
runs. :mod:`search.tracking.mlflow_sync` decides what to write; this module only knows how.

The driver is the only writer while a study runs (sqlite is not for parallel writers,
docs/STACK.md); ``paretoedge sync`` writes only when no driver runs the study.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from search.records import TrialRecord

log = logging.getLogger(__name__)

STUDY_TAG = "paretoedge.study"
ROLE_TAG = "paretoedge.role"
TRIAL_TAG = "trial_number"
BUNDLE_LOGGED_TAG = "bundle_logged"
CONFIRMED_TAG = "confirmed"
PROFILED_TAG = "profiled"
#: MLflow 3 opens an experiment on its GenAI overview ("Traces: no data") unless it is of this
#: kind, which opens it on the runs table (docs/TRACKING.md)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def tracking_uri(workdir: Path) -> str:
    return f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


def artifact_root(workdir: Path) -> Path:
    """Where runs keep their artifacts: inside the workdir, never the current directory."""
    return Path(workdir).resolve() / "mlartifacts"


def experiment_name(study: str, experiment: str | None = None) -> str:
    return experiment or f"paretoedge/{study}"


def store_writable(workdir: Path, timeout_s: float = 0.2) -> bool:
    """Whether the sqlite store takes a write lock within ``timeout_s``.

    MLflow waits up to 20 s on a locked sqlite database for every call (``busy_timeout``); a
    cheap probe first keeps a study from stalling for minutes behind a lock.
    """
    db = Path(workdir) / "mlflow.db"
    if not db.exists():
        return True
    try:
        connection = sqlite3.connect(str(db), timeout=timeout_s, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
        finally:
            connection.close()
    except sqlite3.Error:
        return False
    return True


def flatten(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    """Nested mappings as dotted keys; lists as JSON (MLflow params are strings)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


@dataclass(frozen=True)
class ChildRun:
    """What the store holds for one trial."""

    run_id: str
    status: str
    pareto: bool
    bundle_logged: bool
    #: which confirmation its confirmed metrics come from (``""``: none logged)
    confirmed: str = ""
    #: which per-operator profile its run holds (``""``: none logged)
    profiled: str = ""


class MlflowStore:
    """One study's runs in ``<workdir>/mlflow.db``.

    Example:
        >>> store = MlflowStore.open(Path("runs"), "digits")  # doctest: +SKIP
        >>> store.children[0].run_id  # doctest: +SKIP
        '3f1c...'
    """

    def __init__(self, client: Any, experiment_id: str, study: str) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.study = study
        self.parent_id: str | None = None
        self.children: dict[int, ChildRun] = {}

    @classmethod
    def open(cls, workdir: Path, study: str, experiment: str | None = None, *,
             create: bool = True) -> MlflowStore:
        """Connect, creating the experiment (artifacts under the workdir) when ``create``."""
        from mlflow.tracking import MlflowClient

        from search.errors import StudyNotFoundError

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        if not create and not (Path(workdir) / "mlflow.db").is_file():
            raise StudyNotFoundError(f"{Path(workdir) / 'mlflow.db'}: no MLflow store in "
                                     f"workdir {workdir}")
        client = MlflowClient(tracking_uri=tracking_uri(workdir))
        name = experiment_name(study, experiment)
        found = client.get_experiment_by_name(name)
        if found is not None:
            experiment_id = found.experiment_id
            if create and (found.tags or {}).get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        elif create:
            experiment_id = client.create_experiment(
                name, artifact_location=(artifact_root(workdir) / study).as_uri(),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        else:  # a study logged under an experiment name of its own (tracking.experiment)
            ids = [e.experiment_id for e in client.search_experiments()]
            runs = client.search_runs(ids, filter_string=f"tags.`{STUDY_TAG}` = '{study}' and "
                                                         f"tags.`{ROLE_TAG}` = 'study'",
                                      max_results=1) if ids else []
            if not runs:
                raise StudyNotFoundError(f"no study {study!r} in {tracking_uri(workdir)}")
            experiment_id = runs[0].info.experiment_id
        store = cls(client, experiment_id, study)
        store.load()
        return store

    def load(self) -> None:
        """Read the parent run and the trial runs of the study."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = '{self.study}' and tags.`{ROLE_TAG}` = 'study'",
            max_results=1)
        self.parent_id = runs[0].info.run_id if runs else None
        self.children = {}
        if self.parent_id is None:
            return
        for child in self.trial_runs():
            number = child.data.tags.get(TRIAL_TAG)
            if number is not None:
                self.children[int(number)] = ChildRun(
                    child.info.run_id, child.info.status, child.data.tags.get("pareto") == "true",
                    child.data.tags.get(BUNDLE_LOGGED_TAG) == "true",
                    child.data.tags.get(CONFIRMED_TAG, ""),
                    child.data.tags.get(PROFILED_TAG, ""))

    def trial_runs(self) -> list[Any]:
        """Every trial run of the study (``mlflow.entities.Run``), paging through them all."""
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_id}'",
                max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    # -- the study run ------------------------------------------------------------------------
    def ensure_parent(self, tags: Mapping[str, str]) -> bool:
        """Create the study's parent run if it does not exist; True when it was created."""
        if self.parent_id is not None:
            return False
        run = self.client.create_run(self.experiment_id, run_name=self.study,
                                     tags={STUDY_TAG: self.study, ROLE_TAG: "study", **tags})
        self.parent_id = run.info.run_id
        return True

    def parent(self) -> Any:
        assert self.parent_id is not None
        return self.client.get_run(self.parent_id)

    def log_params(self, run_id: str, params: Mapping[str, str]) -> int:
        """Log the params the run does not have yet; how many were new."""
        from mlflow.entities import Param

        existing = self.client.get_run(run_id).data.params
        fresh = [Param(k, v[:6000]) for k, v in params.items() if k not in existing]
        for i in range(0, len(fresh), 100):
            self.client.log_batch(run_id, params=fresh[i:i + 100])
        return len(fresh)

    def log_metrics(self, run_id: str, rows: Iterable[tuple[str, float, int, int]]) -> None:
        """``(key, value, timestamp_ms, step)`` rows, in batches."""
        from mlflow.entities import Metric

        metrics = [Metric(k, float(v), ts, step) for k, v, ts, step in rows]
        for i in range(0, len(metrics), 500):
            self.client.log_batch(run_id, metrics=metrics[i:i + 500])

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(run_id, key)}

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_files(self, run_id: str, files: Mapping[str, str | bytes]) -> None:
        """Write each ``name -> content`` into a temporary file and log it as an artifact."""
        with tempfile.TemporaryDirectory() as tmp:
            for name, content in files.items():
                path = Path(tmp) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, bytes):
                    path.write_bytes(content)
                else:
                    path.write_text(content)
                folder = str(Path(name).parent)
                self.client.log_artifact(run_id, str(path),
                                         artifact_path=None if folder == "." else folder)

    def set_status(self, run_id: str, status: str) -> None:
        if status in ("FINISHED", "FAILED", "KILLED"):
            self.client.set_terminated(run_id, status=status)
        else:
            self.client.update_run(run_id, status=status)

    # -- trial runs ---------------------------------------------------------------------------
    def log_trial(self, record: TrialRecord) -> ChildRun:
        """One trial's run: metrics, the candidate as params, tags; replaces a partial one."""
        from mlflow.entities import Metric, Param, RunTag

        assert self.parent_id is not None
        stale = self.children.get(record.number)
        if stale is not None:  # a run left half-written by a failure: write it again
            self.client.delete_run(stale.run_id)
        tags = {"mlflow.parentRunId": self.parent_id, STUDY_TAG: self.study,
                ROLE_TAG: "trial", TRIAL_TAG: str(record.number),
                "baseline": str(record.baseline).lower(),
                "feasible": str(record.feasible).lower(), "pareto": "false",
                "contended": str(record.contended).lower(),
                "state": record.state}
        for name in ("fail_reason", "bundle", "bundle_digest", "device_class", "agent_id",
                     "reused_from"):
            value = getattr(record, name)
            if value is not None and value != "":  # reused_from may be trial 0
                tags[name] = str(value)[:4000]
        if record.fingerprint:
            tags["fingerprint"] = json.dumps(dict(record.fingerprint), sort_keys=True)[:4000]
        # Timestamps are the trial's own (when it finished), so a replay writes the same run.
        finished = int((record.finished_at or 0) * 1000) or None
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{record.number:04d}",
                                     tags=tags, start_time=finished)
        params = flatten("", {**record.params, "candidate": dict(record.candidate)}, {})
        stamp = finished or 0
        self.client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, float(v), stamp, 0) for k, v in sorted(record.metrics.items())],
            params=[Param(k, v[:6000]) for k, v in sorted(params.items())],
            tags=[RunTag("candidate", json.dumps(dict(record.candidate), sort_keys=True))])
        status = "FINISHED" if record.complete else "FAILED"
        self.client.set_terminated(run.info.run_id, status=status, end_time=finished)
        child = ChildRun(run.info.run_id, status, False, False)
        self.children[record.number] = child
        return child

    def set_pareto(self, number: int, member: bool) -> None:
        child = self.children[number]
        self.client.set_tag(child.run_id, "pareto", str(member).lower())
        self.children[number] = replace(child, pareto=member)

    def log_confirmed(self, number: int, metrics: Mapping[str, float], key: str) -> None:
        """Add a confirmation's metrics to a trial's (finished) run."""
        child = self.children[number]
        stamp = int(time.time() * 1000)
        self.log_metrics(child.run_id, [(k, v, stamp, 0) for k, v in sorted(metrics.items())])
        self.client.set_tag(child.run_id, CONFIRMED_TAG, key)
        self.children[number] = replace(child, confirmed=key)

    def log_profile(self, number: int, files: Mapping[str, str | bytes], key: str) -> None:
        """Add a per-operator profile (its table and chart) to a trial's run."""
        child = self.children[number]
        self.log_files(child.run_id, files)
        self.client.set_tag(child.run_id, PROFILED_TAG, key)
        self.children[number] = replace(child, profiled=key)

    def log_bundle(self, number: int, directory: Path) -> None:
        child = self.children[number]
        self.client.log_artifacts(child.run_id, str(directory), artifact_path="bundle")
        self.client.set_tag(child.run_id, BUNDLE_LOGGED_TAG, "true")
        self.children[number] = replace(child, bundle_logged=True)


