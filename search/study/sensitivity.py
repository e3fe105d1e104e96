"""Quantization sensitivity: per layer group, the accuracy drop when only that group is
quantized, measured with onnxruntime (the bundle runtime) on the selection split; saved next to
the study (``<workdir>/<study>/sensitivity.json``), logged to MLflow, and used to seed a study
with mixed configurations (``quantization.seed_from_sensitivity``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console

from search.config import StudyConfig
from search.study.preparation import Prepared
from search.workspace import Workspace
from spaces import Candidate
from spaces.sensitivity import SensitivityReport

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


SENSITIVITY_FILE = "sensitivity.json"


SEED_ATTR = "sensitivity_seeds"


def bundle_accuracy(directory: Path, inputs: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of a bundle run end to end by the cascade runtime, one sample at a time."""
    from device_agents import CascadeRunner

    runner = CascadeRunner.load(directory)
    predicted = np.array([runner.predict(inputs[i]).label for i in range(len(inputs))])
    return float((predicted == np.asarray(labels)).mean())


def _precisions(config: StudyConfig) -> tuple[str, ...]:
    wanted = [*config.quantization.precisions,
              *(p for ps in config.quantization.group_precisions.values() for p in ps)]
    return tuple(p for p in dict.fromkeys(wanted) if p != "fp32")


def sensitivity_key(config: StudyConfig, prepared: Prepared, samples: int) -> str:
    from spaces.candidate import stable_key

    builder = prepared.builder
    return stable_key("sensitivity", prepared.builder.model_key, builder.settings.quant.to_dict(),
                      builder.layer_groups.to_dict(), samples, _precisions(config))


def compute_sensitivity(config: StudyConfig, workspace: Workspace, prepared: Prepared, *,
                        samples: int | None = None,
                        console: Console | None = None) -> SensitivityReport:
    """Build and evaluate the fp32 model and every single-group candidate; save the report."""
    from spaces.sensitivity import measure_sensitivity

    selection = prepared.data.selection_set()  # decides the seeds: never the test split
    n = min(samples or len(selection), len(selection))
    inputs, labels = selection.inputs[:n], selection.labels[:n]
    directory = workspace.study_dir / "sensitivity"

    def accuracy_of(candidate: Candidate) -> float:
        started = time.perf_counter()
        built = prepared.builder.build(candidate, directory / "_".join(candidate.quantization))
        accuracy = bundle_accuracy(built.directory, inputs, labels)
        if console is not None:
            console.print(f"  {'/'.join(candidate.quantization):<40} accuracy {accuracy:.4f} "
                          f"({time.perf_counter() - started:.1f} s)")
        return accuracy

    report = measure_sensitivity(prepared.space.quantization, accuracy_of,
                                 precisions=_precisions(config), split="selection", samples=n,
                                 key=sensitivity_key(config, prepared, n))
    workspace.study_dir.mkdir(parents=True, exist_ok=True)
    (workspace.study_dir / SENSITIVITY_FILE).write_text(json.dumps(report.to_dict(), indent=2))
    return report


def load_sensitivity(workspace: Workspace, key: str) -> SensitivityReport | None:
    """The saved report, when it was computed for the same model, groups and settings."""

    path = workspace.study_dir / SENSITIVITY_FILE
    if not path.is_file():
        return None
    report = SensitivityReport.from_dict(json.loads(path.read_text()))
    return report if report.key == key else None


def seeds_for(config: StudyConfig, prepared: Prepared,
              report: SensitivityReport) -> list[tuple[str, ...]]:
    from spaces.sensitivity import seed_configurations

    return seed_configurations(report, prepared.space.quantization,
                               max_accuracy_drop=config.constraints.max_accuracy_drop,
                               count=config.quantization.seed_trials)


def log_sensitivity(config: StudyConfig, workspace: Workspace, report: SensitivityReport,
                    seeds: list[tuple[str, ...]]) -> None:
    """One MLflow run (tag ``paretoedge.role = sensitivity``) in the study's experiment."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from search.tracking.mlflow_store import (
        EXPERIMENT_KIND,
        EXPERIMENT_KIND_TAG,
        ROLE_TAG,
        STUDY_TAG,
        tracking_uri,
    )

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=tracking_uri(workspace.workdir))
    name = config.tracking.experiment or f"paretoedge/{config.study}"
    found = client.get_experiment_by_name(name)
    # artifacts next to mlflow.db (MLflow's default is ./mlruns in the current directory)
    experiment = found.experiment_id if found else client.create_experiment(
        name, artifact_location=(workspace.workdir.resolve() / "mlruns").as_uri(),
        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})  # opens on the runs (docs/TRACKING.md)
    run = client.create_run(experiment, run_name="sensitivity",
                            tags={STUDY_TAG: config.study, ROLE_TAG: "sensitivity"})
    now = int(time.time() * 1000)
    metrics = [Metric("baseline_accuracy", report.baseline_accuracy, now, 0)]
    for e in report.entries:
        metrics.append(Metric(f"drop.{e.group}.{e.precision}", e.drop, now, 0))
        metrics.append(Metric(f"accuracy.{e.group}.{e.precision}", e.accuracy, now, 0))
    params = [Param("split", report.split), Param("samples", str(report.samples)),
              Param("groups", json.dumps(list(report.groups))),
              Param("seeds", json.dumps([list(s) for s in seeds])[:6000])]
    client.log_batch(run.info.run_id, metrics=metrics, params=params,
                     tags=[RunTag("sensitivity_key", report.key)])
    client.log_artifact(run.info.run_id, str(workspace.study_dir / SENSITIVITY_FILE))
    client.set_terminated(run.info.run_id, status="FINISHED")


def run_sensitivity(config: StudyConfig, workspace: Workspace, *, samples: int | None,
                    console: Console) -> tuple[SensitivityReport, list[tuple[str, ...]]]:
    """What ``paretoedge sensitivity`` does: prepare, measure, save, log; return the report
    and the seeds it suggests."""
    from search.study.preparation import prepare

    workspace.create()
    prepared = prepare(config, workspace.cache)
    console.print(f"layer groups of {config.study}: " + ", ".join(
        f"{g} ({'/'.join(prepared.space.quantization.choices_for(g))})"
        for g in prepared.space.quantization.groups))
    report = compute_sensitivity(config, workspace, prepared, samples=samples, console=console)
    seeds = seeds_for(config, prepared, report)
    if config.tracking.mlflow:
        log_sensitivity(config, workspace, report, seeds)
    return report, seeds


def seed_study(study: optuna.Study, prepared: Prepared, config: StudyConfig, workspace: Workspace,
               console: Console) -> list[tuple[str, ...]]:
    """With ``quantization.seed_from_sensitivity``, enqueue the mixed configurations the
    sensitivity report suggests (computed now when no current report is saved), once per
    study. Other knobs keep their baseline values so each seed measures quantization alone."""
    if not config.quantization.seed_from_sensitivity or SEED_ATTR in study.user_attrs:
        return []
    n = len(prepared.data.selection_set())
    report = load_sensitivity(workspace, sensitivity_key(config, prepared, n))
    fresh = report is None
    if report is None:
        console.print("quantization sensitivity (seeding the study):")
        report = compute_sensitivity(config, workspace, prepared, console=console)
    seeds = seeds_for(config, prepared, report)
    if fresh and config.tracking.mlflow:
        try:
            log_sensitivity(config, workspace, report, seeds)
        except Exception as exc:  # tracking must never stop a study
            console.print(f"[yellow]MLflow: could not log the sensitivity: {exc}")
    space = prepared.space
    for quantization in seeds:
        study.enqueue_trial({**space.baseline_params(), **space.quantization.params(quantization)},
                            user_attrs={"seed": "sensitivity"})
    study.set_user_attr(SEED_ATTR, [list(q) for q in seeds])
    console.print(f"seeded {len(seeds)} mixed configurations from the sensitivity report: "
                  + "; ".join("/".join(q) for q in seeds))
    return seeds
