"""NSGA-II's incremental search space: the same intersection and the same samples as Optuna's."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.search_space import IntersectionSearchSpace

from search.storage import open_journal
from search.study.nsga2_sampler import IncrementalIntersection, IncrementalNSGAIISampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _suggest(trial: optuna.Trial) -> tuple[float, float]:
    x = trial.suggest_float("x", 0, 1)
    kind = trial.suggest_categorical("kind", ["a", "b"])
    y = trial.suggest_int("y", 0, 4) if kind == "a" else 0  # conditional
    trial.suggest_float("fixed", 1.0, 1.0)  # single-valued
    return x + y, (1 - x) * (2 if kind == "b" else 1)


def test_the_intersection_is_optunas_with_trials_running_in_between() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=1))
    ours, theirs = IncrementalIntersection(), IntersectionSearchSpace()
    running = []
    for k in range(40):
        trial = study.ask()
        values = _suggest(trial)
        if k % 5 == 0:
            running.append(trial)  # left running: Optuna's cache stops here
        elif k % 7 == 0:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, values)
        assert ours.calculate(study) == theirs.calculate(study)
    for trial in running:
        study.tell(trial, _suggest(trial) if trial.params else (1.0, 1.0))
        assert ours.calculate(study) == theirs.calculate(study)
    assert "y" not in ours.calculate(study)  # not suggested by every finished trial
    assert set(ours.calculate(study)) == {"x", "kind", "fixed"}


def test_one_instance_serves_one_study(tmp_path: Path) -> None:
    space, storage = IncrementalIntersection(), open_journal(tmp_path / "journal.log")
    space.calculate(optuna.create_study(study_name="a", storage=storage))
    with pytest.raises(ValueError, match="multiple studies"):
        space.calculate(optuna.create_study(study_name="b", storage=storage))


def test_a_sequential_study_samples_what_optunas_nsga2_samples() -> None:
    def run(sampler: optuna.samplers.BaseSampler) -> list[dict]:
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
        study.optimize(_suggest, n_trials=30)
        return [t.params for t in study.trials]

    assert run(IncrementalNSGAIISampler(seed=3, population_size=6)) == \
        run(optuna.samplers.NSGAIISampler(seed=3, population_size=6))


def test_a_study_of_optunas_nsga2_resumes_its_generations_here() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=optuna.samplers.NSGAIISampler(seed=3, population_size=4))
    study.optimize(_suggest, n_trials=12)
    study.sampler = IncrementalNSGAIISampler(seed=3, population_size=4)
    study.optimize(_suggest, n_trials=8)
    generations = [t.system_attrs["NSGAIISampler:generation"] for t in study.trials]
    assert generations == sorted(generations) and generations[-1] == 4
