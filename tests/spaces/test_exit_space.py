"""ExitSpace: thresholds per exit or shared, on a scale that concentrates near 1; the
confidence measure searched or fixed."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from spaces import Candidate, ExitSpace, PruningSpace, QuantizationSpace, SearchSpace, SpaceError

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _sample(space: ExitSpace, n: int = 200, seed: int = 0) -> list[tuple[dict, tuple, str]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        thresholds, measure = space.suggest(trial)
        out.append((dict(trial.params), thresholds, measure))
        study.tell(trial, 0.0)
    return out


def test_per_exit_thresholds_are_one_param_each() -> None:
    space = ExitSpace(num_exits=3, per_exit=True, threshold_low=0.6, threshold_high=0.99)
    samples = [s for s in _sample(space) if s[1]]
    assert samples
    for params, thresholds, measure in samples:
        assert set(params) == {"early_exit", "exit_threshold_0", "exit_threshold_1",
                               "exit_threshold_2"}
        assert thresholds == tuple(round(params[f"exit_threshold_{k}"], 6) for k in range(3))
        assert all(0.6 <= t <= 0.99 for t in thresholds)
        assert measure == ""
    assert any(len(set(t)) == 3 for _, t, _ in samples)


def test_a_shared_threshold_is_one_param() -> None:
    for params, thresholds, _ in _sample(ExitSpace(num_exits=2, scale="log"), n=40):
        if thresholds:
            assert set(params) == {"early_exit", "exit_gap"}
            assert thresholds == (round(1 - params["exit_gap"], 6),) * 2


def test_the_log_scale_concentrates_thresholds_near_one() -> None:
    linear = ExitSpace(num_exits=1, threshold_low=0.5, threshold_high=0.9999)
    log = ExitSpace(num_exits=1, threshold_low=0.5, threshold_high=0.9999, scale="log",
                    per_exit=True)
    lin_t = np.array([t[0] for _, t, _ in _sample(linear, 400) if t])
    log_t = np.array([t[0] for _, t, _ in _sample(log, 400) if t])
    assert lin_t.min() >= 0.5 and log_t.min() >= 0.5
    assert lin_t.max() <= 0.9999 and log_t.max() <= 0.9999
    # 1 - t is log-uniform on [1e-4, 0.5]: 54 % of the samples lie above 0.99 and 27 % above
    # 0.999 (log(100)/log(5000) and log(10)/log(5000)) ...
    assert 0.45 < (log_t > 0.99).mean() < 0.65
    assert 0.18 < (log_t > 0.999).mean() < 0.36
    # ... against 2 % and 0.2 % on the linear scale
    assert (lin_t > 0.99).mean() < 0.06


def test_the_log_scale_reaches_one_without_dividing_by_zero() -> None:
    space = ExitSpace(num_exits=2, per_exit=True, scale="log", threshold_low=0.9,
                      threshold_high=1.0)
    thresholds = [t for _, ts, _ in _sample(space, 100) for t in ts]
    assert thresholds and all(0.9 <= t < 1.0 for t in thresholds)
    assert max(thresholds) > 0.9999


def test_searched_confidence_measure() -> None:
    space = ExitSpace(num_exits=2, confidences=("max_softmax", "margin", "entropy"))
    seen = {measure for _, thresholds, measure in _sample(space, 60) if thresholds}
    assert seen == {"max_softmax", "margin", "entropy"}
    fixed = optuna.trial.FixedTrial({"early_exit": True, "exit_threshold": 0.8,
                                     "exit_confidence": "margin"})
    assert space.suggest(fixed) == ((0.8, 0.8), "margin")


def test_the_search_space_carries_thresholds_and_measure_into_the_candidate() -> None:
    space = SearchSpace(quantization=QuantizationSpace(groups=("a", "b", "c")),
                        pruning=PruningSpace(ratio_max=0.0),
                        exits=ExitSpace(num_exits=2, per_exit=True, scale="log",
                                        confidences=("max_softmax", "entropy")))
    trial = optuna.trial.FixedTrial({"quant_a": "int8", "quant_b": "fp32", "quant_c": "int8",
                                     "early_exit": True, "exit_gap_0": 0.01, "exit_gap_1": 1e-3,
                                     "exit_confidence": "entropy"})
    candidate = space.suggest(trial)
    assert candidate == Candidate(quantization=("int8", "fp32", "int8"),
                                  exit_thresholds=(0.99, 0.999), exit_confidence="entropy")
    assert Candidate.from_dict(candidate.to_dict()) == candidate
    assert candidate.describe() == "int8/fp32/int8 prune=0 exit@0.99,0.999(entropy)"
    assert space.suggest(optuna.trial.FixedTrial(space.baseline_params())) == space.baseline()


@pytest.mark.parametrize("kwargs", [
    {"threshold_low": 0.0},
    {"threshold_high": 1.5},
    {"threshold_low": 0.9, "threshold_high": 0.8},
    {"scale": "sqrt"},
    {"confidences": ()},
    {"confidences": ("max_softmax", "top2")},
])
def test_bad_exit_spaces(kwargs: dict) -> None:
    with pytest.raises(SpaceError, match="early_exit"):
        ExitSpace(num_exits=2, **kwargs)
