"""NSGA-II as the study runs it: Optuna's ``NSGAIISampler`` with a search space that costs one
intersection per finished trial, not one per finished trial at every ask.

Optuna's ``IntersectionSearchSpace`` caches its result only up to the oldest trial still
running; with tens of trials in flight (a fleet of agents, docs/SCALING.md) every ask
intersects again the distributions of every finished trial after it: 80 of them with 84
trials in flight, which was most of the driver's ask. :class:`IncrementalIntersection` keeps
the trials it has intersected and takes each finished trial once, whatever still runs before
it; the result (the intersection of the finished trials' distributions) is the same.
"""

from __future__ import annotations

import copy
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState


class IncrementalIntersection:
    """The intersection of the distributions of a study's finished trials, each trial taken
    once (``optuna.search_space.IntersectionSearchSpace``'s ``calculate``)."""

    def __init__(self, include_pruned: bool = False) -> None:
        self._states = (TrialState.COMPLETE, TrialState.PRUNED) if include_pruned else (
            TrialState.COMPLETE,)
        self._seen: set[int] = set()
        self._space: dict[str, BaseDistribution] | None = None
        self._study_id: int | None = None

    def calculate(self, study: optuna.Study) -> dict[str, BaseDistribution]:
        if self._study_id is None:
            self._study_id = study._study_id
        elif self._study_id != study._study_id:
            raise ValueError("IncrementalIntersection cannot handle multiple studies.")
        for trial in study.get_trials(deepcopy=False, states=self._states):
            if trial.number in self._seen:
                continue
            self._seen.add(trial.number)
            if self._space is None:
                self._space = copy.copy(trial.distributions)
            else:
                self._space = {name: d for name, d in self._space.items()
                               if trial.distributions.get(name) == d}
        return copy.deepcopy(dict(sorted((self._space or {}).items())))


class IncrementalNSGAIISampler(optuna.samplers.NSGAIISampler):
    """``NSGAIISampler`` whose relative search space is an :class:`IncrementalIntersection`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._intersection = IncrementalIntersection()

    def infer_relative_search_space(self, study: optuna.Study, trial: Any
                                    ) -> dict[str, BaseDistribution]:
        # single-valued distributions are sampled independently, as NSGAIISampler does
        return {name: d for name, d in self._intersection.calculate(study).items()
                if not d.single()}


# Optuna names a GA sampler's trial attrs after its class; keep NSGA-II's, so that a study
# started with Optuna's own NSGAIISampler resumes its generations here (and back).
IncrementalNSGAIISampler._GENERATION_KEY = "NSGAIISampler:generation"
IncrementalNSGAIISampler._PARENT_CACHE_KEY_PREFIX = "NSGAIISampler:parent:"
