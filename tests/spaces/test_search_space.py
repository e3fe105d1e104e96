"""SearchSpace: trials become candidates inside the spec; the baseline is enqueueable."""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
import pytest

from spaces import (
    PRECISIONS,
    Candidate,
    ExitSpace,
    PruningSpace,
    QuantizationSpace,
    SearchSpace,
    SpaceError,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

GROUPS = ("stage0", "stage1", "stage2")


@dataclass(frozen=True)
class SpaceSpec:
    """A flat view of the three knobs (one exit per group but the last), for these tests."""

    groups: tuple[str, ...]
    precisions: tuple[str, ...] = PRECISIONS
    prune_ratio_max: float = 0.5
    prune_ratio_step: float = 0.125
    early_exit: bool = True
    threshold_low: float = 0.5
    threshold_high: float = 0.999

    def __post_init__(self) -> None:
        space_of(self)  # the knobs validate themselves


def space_of(spec: SpaceSpec) -> SearchSpace:
    return SearchSpace(
        quantization=QuantizationSpace(groups=spec.groups, precisions=spec.precisions),
        pruning=PruningSpace(ratio_max=spec.prune_ratio_max, ratio_step=spec.prune_ratio_step),
        exits=ExitSpace(num_exits=len(spec.groups) - 1, enabled=spec.early_exit,
                        threshold_low=spec.threshold_low, threshold_high=spec.threshold_high))


def _is_multiple(value: float, step: float) -> bool:
    return math.isclose(value / step, round(value / step), abs_tol=1e-9)


def test_baseline_is_all_fp32_unpruned_without_exits() -> None:
    space = space_of(SpaceSpec(groups=GROUPS))
    assert space.baseline() == Candidate(quantization=("fp32",) * 3, prune_ratio=0.0,
                                         exit_thresholds=())
    assert space.exits.num_exits == 2


def test_baseline_params() -> None:
    params = space_of(SpaceSpec(groups=GROUPS)).baseline_params()
    assert params == {"quant_stage0": "fp32", "quant_stage1": "fp32", "quant_stage2": "fp32",
                      "prune_ratio": 0.0, "early_exit": False}
    # knobs that are off have no params at all
    params = space_of(SpaceSpec(groups=("only",), prune_ratio_max=0.0)).baseline_params()
    assert params == {"quant_only": "fp32"}


@pytest.mark.parametrize("spec", [
    SpaceSpec(groups=GROUPS),
    SpaceSpec(groups=GROUPS, prune_ratio_max=0.75, prune_ratio_step=0.25, threshold_low=0.8,
              threshold_high=0.95),
    SpaceSpec(groups=("a", "b"), precisions=("int8",), prune_ratio_max=0.3,
              prune_ratio_step=0.1),
])
def test_suggest_stays_inside_the_spec(spec: SpaceSpec) -> None:
    space = space_of(spec)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_exit, seen_no_exit, ratios = False, False, set()
    for _ in range(60):
        trial = study.ask()
        candidate = space.suggest(trial)
        assert isinstance(candidate, Candidate)
        assert len(candidate.quantization) == len(spec.groups)
        assert set(candidate.quantization) <= set(spec.precisions)
        assert 0.0 <= candidate.prune_ratio <= spec.prune_ratio_max + 1e-9
        assert _is_multiple(candidate.prune_ratio, spec.prune_ratio_step)
        ratios.add(candidate.prune_ratio)
        if candidate.exit_thresholds:
            seen_exit = True
            assert len(candidate.exit_thresholds) == len(spec.groups) - 1
            assert all(spec.threshold_low <= t <= spec.threshold_high
                       for t in candidate.exit_thresholds)
        else:
            seen_no_exit = True
        study.tell(trial, 0.0)
    assert seen_exit and seen_no_exit
    assert len(ratios) > 1


def test_suggest_with_all_precisions_explores_both() -> None:
    space = space_of(SpaceSpec(groups=GROUPS))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(20):
        seen.update(space.suggest(study.ask()).quantization)
    assert seen == set(PRECISIONS)


def test_fixed_trial_of_baseline_params_gives_the_baseline() -> None:
    space = space_of(SpaceSpec(groups=GROUPS))
    assert space.suggest(optuna.trial.FixedTrial(space.baseline_params())) == space.baseline()


def test_enqueued_baseline_is_the_first_trial() -> None:
    space = space_of(SpaceSpec(groups=GROUPS))
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.enqueue_trial(space.baseline_params())
    assert space.suggest(study.ask()) == space.baseline()


def test_fixed_trial_with_exits_gives_one_threshold_per_exit() -> None:
    space = space_of(SpaceSpec(groups=GROUPS))
    params = {"quant_stage0": "int8", "quant_stage1": "fp32", "quant_stage2": "int8",
              "prune_ratio": 0.25, "early_exit": True, "exit_threshold": 0.9}
    candidate = space.suggest(optuna.trial.FixedTrial(params))
    assert candidate == Candidate(quantization=("int8", "fp32", "int8"), prune_ratio=0.25,
                                  exit_thresholds=(0.9, 0.9))


def test_no_exits_for_a_single_stage_or_when_disabled() -> None:
    for spec in (SpaceSpec(groups=("only",)), SpaceSpec(groups=GROUPS, early_exit=False)):
        space = space_of(spec)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(10):
            trial = study.ask()
            assert space.suggest(trial).exit_thresholds == ()
            assert "early_exit" not in trial.params
        assert "early_exit" not in space.baseline_params()


def test_pruning_disabled_suggests_no_ratio() -> None:
    space = space_of(SpaceSpec(groups=GROUPS, prune_ratio_max=0.0))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        assert space.suggest(trial).prune_ratio == 0.0
        assert "prune_ratio" not in trial.params


@pytest.mark.parametrize("kwargs", [
    {"groups": ()},
    {"groups": GROUPS, "precisions": ("fp32", "int4")},
    {"groups": GROUPS, "prune_ratio_max": -0.1},
    {"groups": GROUPS, "prune_ratio_max": 0.96},
    {"groups": GROUPS, "threshold_low": 0.0},
    {"groups": GROUPS, "threshold_low": 0.9, "threshold_high": 0.8},
    {"groups": GROUPS, "threshold_high": 1.01},
])
def test_spec_rejects_bad_ranges(kwargs: dict) -> None:
    with pytest.raises(SpaceError):
        SpaceSpec(**kwargs)


def test_spec_accepts_edges() -> None:
    SpaceSpec(groups=GROUPS, prune_ratio_max=0.95, threshold_low=0.9, threshold_high=0.9)
    SpaceSpec(groups=GROUPS, prune_ratio_max=0.0, threshold_high=1.0)


def _qat_space(qat: tuple[bool, ...], precisions: tuple[str, ...] = PRECISIONS) -> SearchSpace:
    return SearchSpace(quantization=QuantizationSpace(groups=GROUPS, precisions=precisions,
                                                      qat=qat),
                       pruning=PruningSpace(ratio_max=0.5, ratio_step=0.25))


def _sampled(space: SearchSpace, n: int = 40) -> list[optuna.trial.FrozenTrial]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(n):
        trial = study.ask()
        candidate = space.suggest(trial)
        trial.set_user_attr("candidate", candidate.to_dict())
        study.tell(trial, 0.0)
    return study.trials


def test_qat_is_searched_only_when_configured_and_for_int8_candidates() -> None:
    default = _sampled(_qat_space((False,)))
    assert not any("qat" in t.params or "qat" in t.user_attrs["candidate"] for t in default)
    searched = _sampled(_qat_space((False, True)))
    for t in searched:
        candidate = Candidate.from_dict(t.user_attrs["candidate"])
        assert ("qat" in t.params) == ("int8" in candidate.quantization)
        assert candidate.qat == t.params.get("qat", False)
    assert {t.params.get("qat") for t in searched} == {None, False, True}
    always = _sampled(_qat_space((True,)))  # one value: no param, every int8 candidate QAT
    for t in always:
        candidate = Candidate.from_dict(t.user_attrs["candidate"])
        assert "qat" not in t.params and candidate.qat == ("int8" in candidate.quantization)
    no_int8 = _sampled(_qat_space((False, True), precisions=("fp32", "fp16")), n=10)
    assert not any("qat" in t.params for t in no_int8)


def test_qat_baseline_params_are_unchanged() -> None:
    space = _qat_space((False, True))
    assert "qat" not in space.baseline_params()
    assert space.suggest(optuna.trial.FixedTrial(space.baseline_params())) == space.baseline()


@pytest.mark.parametrize("qat", [(), (True, True)])
def test_bad_qat_values(qat: tuple[bool, ...]) -> None:
    with pytest.raises(SpaceError, match=r"quantization\.qat"):
        QuantizationSpace(groups=GROUPS, qat=qat)
