"""Configured objectives and limits in the study loop: Optuna's directions and constraints, the
front, the objectives stored with the study, and what a study refuses."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from device_agents import FakeAgent, LatencyStats, Measurement, MeasureRequest
from search.config import load_config
from search.errors import ConfigError
from search.fleet.dispatch import InlineDispatcher
from search.objective_set import OBJECTIVES_ATTR, ObjectiveSet
from search.results.pareto import ParetoFront
from search.study.runner import RunOptions, StudyRunner
from search.tracking.tracker import NullTracker
from search.workspace import Workspace, open_storage

EXPERIMENTS = Path(__file__).resolve().parents[3] / "experiments"
MEAN_LATENCY = {"accuracy": "max", "latency_mean_ms": "min"}


def cascade_device(*, energy: Callable[[dict], bool] = lambda c: True,
                   peak_mem: Callable[[dict], float] = lambda c: 10.0) -> FakeAgent:
    """Latency falls with int8 and pruning; a cascade with exits answers most samples early (a
    lower mean) but its slowest samples pay for the exit heads too (a higher p95). Accuracy
    depends on pruning alone, so an exit variant is as accurate as its no-exit twin. ``energy``
    and ``peak_mem`` say, per candidate, whether energy is measured and the peak memory."""

    def handler(request: MeasureRequest) -> Measurement:
        manifest = json.loads(request.bundle.files["manifest.json"])
        candidate = manifest["provenance"]["candidate"]
        ratio = candidate["prune_ratio"]
        int8 = sum(q == "int8" for q in candidate["quantization"])
        full = 1.0 * (1 - ratio) * (1 - 0.1 * int8)
        exits = bool(candidate["exit_thresholds"])
        mean, p95 = (0.5 * full, 1.2 * full) if exits else (0.9 * full, full)
        latency = LatencyStats(mean_ms=mean, std_ms=0.01, p50_ms=0.9 * mean, p90_ms=0.95 * p95,
                               p95_ms=p95, p99_ms=1.1 * p95, n=100,
                               median_ci_low_ms=0.89 * mean, median_ci_high_ms=0.91 * mean,
                               converged=True)
        size = sum(len(data) for name, data in request.bundle.files.items()
                   if name.endswith(".onnx")) / 1024
        return Measurement(bundle_digest=request.bundle_digest, accuracy=0.95 - 0.04 * ratio,
                           n_eval=200, ece=0.02, exit_rates=(0.7, 0.3) if exits else (1.0,),
                           latency=latency, size_kb=size, peak_mem_mb=peak_mem(candidate),
                           energy_mj=0.1 if energy(candidate) else None, agent_id="fake-0")

    return FakeAgent(handler)


def runner(config_path: Path, workdir: Path, agent: FakeAgent) -> StudyRunner:
    config = load_config(config_path)
    return StudyRunner(config, Workspace(workdir, config.study),
                       dispatcher_factory=lambda c, w: InlineDispatcher(agent),
                       tracker=NullTracker())


def stored_study(workdir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name,
                             storage=open_storage(Workspace(workdir, name).journal))


def short_digits(directory: Path, **changes: Any) -> Path:
    """experiments/digits.yaml next to a copy of its model module, shortened for a test."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXPERIMENTS / "digits_model.py", directory / "digits_model.py")
    config = yaml.safe_load((EXPERIMENTS / "digits.yaml").read_text())
    config["model"]["train"] = {"epochs": 1, "lr": 0.003, "batch_size": 64, "seed": 0}
    config["pruning"]["finetune"] = {"epochs": 1}
    config["quantization"]["calibration_samples"] = 32
    config["early_exit"]["scale"] = "linear"
    config["measurement"] = {"warmup_runs": 5, "warmup_seconds": 0.0, "min_runs": 20,
                             "max_runs": 60, "round_runs": 20, "timeout_s": 120}
    config["search"]["trials"] = 3
    config.update(changes)
    path = directory / "digits.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def seed_exit_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed the study (after its baseline) with one int8 candidate twice: without exits, then
    with exits at a 0.9 threshold."""

    def seed(study, prepared, config, workspace, console):
        space = prepared.space
        int8 = {**space.baseline_params(),
                **space.quantization.params(("int8",) * len(space.quantization.groups))}
        study.enqueue_trial({**int8, "early_exit": False})
        exits = space.exits
        thresholds = ({f"exit_threshold_{k}": 0.9 for k in range(exits.num_exits)}
                      if exits.per_exit else {"exit_threshold": 0.9})
        study.enqueue_trial({**int8, "early_exit": True, **thresholds})
        return []

    monkeypatch.setattr("search.study.runner.seed_study", seed)


@pytest.mark.slow
def test_a_digits_study_ranked_by_mean_latency_puts_the_exit_bundle_on_the_front(
        tmp_path, monkeypatch) -> None:
    seed_exit_twins(monkeypatch)
    path = short_digits(tmp_path / "project", objectives=MEAN_LATENCY)
    workdir = tmp_path / "runs"
    agent = cascade_device()
    summary = runner(path, workdir, agent).run(RunOptions(trials=3, confirm=False))
    baseline, plain, cascade = summary.records
    assert baseline.baseline and not plain.candidate["exit_thresholds"]
    assert cascade.candidate["exit_thresholds"] == [0.9, 0.9]
    assert plain.candidate["quantization"] == cascade.candidate["quantization"]
    assert all(r.complete and r.feasible for r in summary.records)
    # as accurate and faster on average: the exit bundle dominates its no-exit twin
    assert cascade.metrics["latency_mean_ms"] < plain.metrics["latency_mean_ms"]
    assert summary.front.numbers == {cascade.number}
    study = stored_study(workdir, "digits")
    assert study.user_attrs[OBJECTIVES_ATTR] == MEAN_LATENCY
    assert study.metric_names == ["accuracy", "latency_mean_ms"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.trials[cascade.number].values == [cascade.metrics["accuracy"],
                                                   cascade.metrics["latency_mean_ms"]]
    # the mean is no percentile: the stopping rule keeps bounding the median
    assert {r.protocol.ranked_percentiles for r in agent.requests} == {(50.0,)}
    # the same trials under the default objectives (p95, size): the twin without exits
    # wins, since the cascade's slowest samples pay for its heads
    default = ParetoFront.from_records(summary.records, 0.01, objectives=ObjectiveSet.default())
    assert cascade.number not in default.numbers and plain.number in default.numbers


@pytest.mark.slow
def test_a_limit_on_any_metric_is_an_optuna_constraint(write_config, tmp_path) -> None:
    # int8 bundles need more memory here: a 15 MB limit makes every one of them infeasible
    agent = cascade_device(peak_mem=lambda c: 10.0 + 10.0 * ("int8" in c["quantization"]))
    path = write_config(constraints={"max_accuracy_drop": 0.05, "peak_mem_mb": 15},
                        search={"trials": 8, "sampler": "random", "seed": 1})
    summary = runner(path, tmp_path / "runs", agent).run(RunOptions(trials=8, confirm=False))
    over = [r for r in summary.records if r.complete and r.metrics["peak_mem_mb"] > 15]
    assert over, "the sampler should have tried int8 in 8 trials"
    assert not any(r.feasible for r in over)
    assert not summary.front.numbers & {r.number for r in over}
    study = stored_study(tmp_path / "runs", "tiny")
    for trial in study.trials:
        if trial.state.name == "COMPLETE":
            peak = trial.user_attrs["metrics"]["peak_mem_mb"]
            assert set(trial.constraints) == {"accuracy_band", "peak_mem_mb"}
            assert trial.constraints["peak_mem_mb"] == pytest.approx(peak - 15)  # ok when <= 0


@pytest.mark.slow
def test_resuming_under_other_objectives_is_refused(write_config, tmp_path) -> None:
    workdir = tmp_path / "runs"
    runner(write_config(), workdir, cascade_device()).run(RunOptions(trials=2, confirm=False))
    assert stored_study(workdir, "tiny").user_attrs[OBJECTIVES_ATTR] == {
        "accuracy": "max", "latency_p95_ms": "min", "size_kb": "min"}
    other = write_config(name="other.yaml", objectives=MEAN_LATENCY)
    with pytest.raises(ConfigError, match=r"^objectives: study 'tiny' was searched under "
                                          r"\{accuracy: max, latency_p95_ms: min"):
        runner(other, workdir, cascade_device()).run(RunOptions(trials=3, confirm=False))
    assert len(stored_study(workdir, "tiny").trials) == 2  # nothing was mixed in


def test_a_study_from_before_stored_objectives_counts_as_the_defaults(write_config,
                                                                      tmp_path) -> None:
    workdir = tmp_path / "runs"
    study = optuna.create_study(study_name="tiny", directions=["maximize"] + ["minimize"] * 2,
                                storage=open_storage(Workspace(workdir, "tiny").journal))
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # it ran, with no attr
    with pytest.raises(ConfigError, match=r"^objectives: "):
        runner(write_config(objectives=MEAN_LATENCY), workdir, cascade_device()).run(
            RunOptions(trials=2, confirm=False))


@pytest.mark.slow
def test_a_trial_missing_an_objective_fails_with_a_reason(write_config, tmp_path,
                                                         monkeypatch) -> None:
    monkeypatch.setattr("device_agents.energy.open_counters", lambda providers: ["rapl"])
    path = write_config(objectives={"accuracy": "max", "energy_mj": "min"},
                        search={"trials": 6, "sampler": "random", "seed": 1})
    # the counter fails whenever a bundle has int8 groups
    agent = cascade_device(energy=lambda c: "int8" not in c["quantization"])
    summary = runner(path, tmp_path / "runs", agent).run(RunOptions(trials=6, confirm=False))
    failed = [r for r in summary.records if r.state == "FAIL"]
    assert failed, "the sampler should have tried int8 in 6 trials"
    assert all("int8" in r.candidate["quantization"] for r in failed)
    assert {r.fail_reason for r in failed} == {
        "measurement lacks energy_mj (objective or limit of the study)"}
    assert summary.records[0].complete and summary.front.members
    assert all(r.complete for r in summary.records if "int8" not in r.candidate["quantization"])


def test_energy_on_a_host_without_a_counter_is_refused_before_the_study(
        write_config, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("device_agents.energy.open_counters", lambda providers: [])
    path = write_config(objectives={"accuracy": "max", "energy_mj": "min"})
    with pytest.raises(ConfigError, match=r"^objectives: energy_mj needs an energy counter"):
        runner(path, tmp_path / "runs", cascade_device()).run(RunOptions(trials=2))
    assert not Workspace(tmp_path / "runs", "tiny").journal.exists()
