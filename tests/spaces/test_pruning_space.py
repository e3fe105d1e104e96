"""The pruning knob: a global ratio or one per stage, as Optuna params; candidates carry them."""

from __future__ import annotations

import json
import math

import optuna
import pytest

from spaces import Candidate, ExitSpace, PruningSpace, QuantizationSpace, SearchSpace, SpaceError
from spaces.pruning_space import normalize_stage_ratios

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(**pruning) -> SearchSpace:
    return SearchSpace(quantization=QuantizationSpace(groups=("stage0", "stage1", "stage2")),
                       pruning=PruningSpace(**pruning), exits=ExitSpace(num_exits=2))


def test_global_ratio_is_one_param() -> None:
    space = PruningSpace(ratio_max=0.5, ratio_step=0.25, num_stages=3)
    assert space.param_names() == ("prune_ratio",)
    assert space.suggest(optuna.trial.FixedTrial({"prune_ratio": 0.25})) == (0.25, ())
    assert space.baseline_params() == {"prune_ratio": 0.0}


def test_per_stage_adds_one_param_per_stage() -> None:
    space = PruningSpace(ratio_max=0.75, ratio_step=0.25, per_stage=True, num_stages=3)
    assert space.param_names() == ("prune_ratio_stage0", "prune_ratio_stage1",
                                   "prune_ratio_stage2")
    trial = optuna.trial.FixedTrial({"prune_ratio_stage0": 0.0, "prune_ratio_stage1": 0.5,
                                     "prune_ratio_stage2": 0.75})
    assert space.suggest(trial) == (pytest.approx(0.416667), (0.0, 0.5, 0.75))
    assert space.baseline_params() == {f"prune_ratio_stage{k}": 0.0 for k in range(3)}


def test_equal_stage_ratios_are_the_global_ratio() -> None:
    assert normalize_stage_ratios((0.5, 0.5, 0.5)) == (0.5, ())
    assert normalize_stage_ratios(()) == (0.0, ())
    assert normalize_stage_ratios((0.125, 0.25)) == (0.1875, (0.125, 0.25))


def test_per_stage_on_a_one_stage_model_is_the_global_ratio() -> None:
    space = PruningSpace(per_stage=True, num_stages=1)
    assert space.param_names() == ("prune_ratio",)


def test_disabled_pruning_has_no_params() -> None:
    space = PruningSpace(ratio_max=0.0, per_stage=True, num_stages=3)
    assert space.param_names() == ()
    assert space.suggest(optuna.trial.FixedTrial({})) == (0.0, ())


@pytest.mark.parametrize(("kwargs", "field"), [({"ratio_max": 0.96}, "pruning.ratio_max"),
                                               ({"ratio_max": -0.1}, "pruning.ratio_max"),
                                               ({"ratio_step": 0.0}, "pruning.ratio_step")])
def test_out_of_range_is_named(kwargs: dict, field: str) -> None:
    with pytest.raises(SpaceError, match=field):
        PruningSpace(**kwargs)


def test_a_study_samples_per_stage_candidates_on_the_grid() -> None:
    space = _space(ratio_max=0.5, ratio_step=0.25, per_stage=True, num_stages=3)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    study.enqueue_trial(space.baseline_params())
    seen = []
    for _ in range(25):
        trial = study.ask()
        candidate = space.suggest(trial)
        seen.append(candidate)
        study.tell(trial, 0.0)
        ratios = candidate.stage_ratios(3)
        assert all(math.isclose(r / 0.25, round(r / 0.25)) and 0 <= r <= 0.5 for r in ratios)
        assert candidate.prune_ratio == pytest.approx(sum(ratios) / 3, abs=1e-6)
        if candidate.stage_prune_ratios:
            assert len(set(candidate.stage_prune_ratios)) > 1
    assert seen[0] == space.baseline()  # the enqueued baseline: unpruned, no stage tuple
    assert any(c.stage_prune_ratios for c in seen)


def test_candidates_round_trip_and_old_dicts_still_read() -> None:
    candidate = Candidate(quantization=("fp32", "int8", "fp32"), prune_ratio=0.25,
                          stage_prune_ratios=(0.0, 0.25, 0.5))
    data = json.loads(json.dumps(candidate.to_dict()))
    assert data["stage_prune_ratios"] == [0.0, 0.25, 0.5]
    assert Candidate.from_dict(data) == candidate
    assert candidate.describe() == "fp32/int8/fp32 prune=0/0.25/0.5 no-exit"
    assert candidate.stage_ratios(3) == (0.0, 0.25, 0.5)
    old = {"quantization": ["fp32", "fp32"], "prune_ratio": 0.5, "exit_thresholds": []}
    assert Candidate.from_dict(old) == Candidate(quantization=("fp32", "fp32"), prune_ratio=0.5)
    assert Candidate.from_dict(old).to_dict() == old  # no new key for a global ratio
    assert Candidate.from_dict(old).stage_ratios(2) == (0.5, 0.5)
