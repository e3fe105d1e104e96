"""The samplers with several trials in flight, and TPE's hand-over to NSGA-II in long studies."""

from __future__ import annotations

import optuna
import pytest

from search.study.samplers import TPE_TRIALS_MAX, TpeThenNsga2, make_sampler

CHOICES = ["a", "b", "c", "d", "e", "f"]


def ask_point(study: optuna.Study) -> tuple[optuna.Trial, tuple[str, float]]:
    trial = study.ask()
    return trial, (trial.suggest_categorical("q", CHOICES),
                   trial.suggest_float("r", 0, 1, step=0.25))


@pytest.mark.parametrize("seed", range(3))
def test_trials_in_flight_are_not_asked_for_the_same_point(seed: int) -> None:
    """TPE's constant liar: a running trial counts as a poor result, so candidates asked while
    others are measured spread out (without it, TPE proposes the incumbent again and again)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=make_sampler("tpe", seed, 40))
    for _ in range(12):
        trial, (q, r) = ask_point(study)
        study.tell(trial, [CHOICES.index(q) + r, r])
    in_flight = [ask_point(study)[1] for _ in range(4)]
    assert len(set(in_flight)) == 4


def test_tpe_hands_over_to_nsga2_after_its_trial_limit() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = TpeThenNsga2(seed=0, trials=100, switch_after=15)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    for _ in range(30):
        trial, (q, r) = ask_point(study)
        study.tell(trial, [CHOICES.index(q) + r, 1 - r])
    by_nsga2 = [t.number for t in study.trials
                if "NSGAIISampler:generation" in t.system_attrs]
    assert by_nsga2 == list(range(15, 30))
    assert TPE_TRIALS_MAX == 1000 and make_sampler("tpe", 0, 10).switch_after == TPE_TRIALS_MAX
