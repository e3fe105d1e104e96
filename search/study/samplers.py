"""The Optuna samplers a study can use (``search.sampler``), with the settings chosen for them.

Several trials are in flight at once (agents measuring, a candidate built while they measure,
other drivers of a shared study): TPE runs with ``constant_liar`` so that a trial still running
counts as a poor result and the next ask samples elsewhere; NSGA-II breeds each generation
from finished trials and needs nothing more. A sequential study (one trial at a time) samples
exactly as without it.

TPE's multi-objective ask grows with the study (about 30 ms at 500 trials, 90 ms at 2,000 on the
reference machine, docs/SCALING.md), too slow for a driver feeding many agents; past
``TPE_TRIALS_MAX`` finished trials the ``tpe`` sampler hands over to NSGA-II (a few ms at
2,000), which takes the study's front from there (:class:`TpeThenNsga2`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from search.errors import SearchError

#: Finished trials after which the ``tpe`` sampler samples with NSGA-II (docs/SCALING.md).
TPE_TRIALS_MAX = 1000


def make_sampler(name: str, seed: int, trials: int) -> Any:
    import optuna

    if name == "tpe":
        return TpeThenNsga2(seed=seed, trials=trials)
    if name == "nsga2":
        return nsga2(seed, trials)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise SearchError(f"search.sampler: unknown sampler {name!r}")


def tpe(seed: int, trials: int) -> Any:
    import optuna

    with warnings.catch_warnings():  # multivariate, group and constant_liar are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # random start-up trials: 6 up to 60 trials, then a tenth of the budget up to 10 (the
        # replayed searches of search_efficiency_bench reach 95 % of the exhaustive
        # hypervolume in a median of 12 / 10 measurements on fashion / digits with 6, 14 / 14
        # with 10; 15 seeds each)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          constant_liar=True,
                                          n_startup_trials=min(10, max(6, trials // 10)))


def nsga2(seed: int, trials: int) -> Any:
    """NSGA-II (:mod:`search.study.nsga2_sampler`: its search space stays cheap with many
    trials in flight)."""
    from search.study.nsga2_sampler import IncrementalNSGAIISampler

    return IncrementalNSGAIISampler(seed=seed, population_size=min(20, max(4, trials)))


class TpeThenNsga2:
    """TPE (with constant liar) until ``switch_after`` trials have finished, NSGA-II after.

    An Optuna sampler (the methods of ``optuna.samplers.BaseSampler``, delegated; not a
    subclass, so that importing this module imports no optuna). Each trial is sampled whole by
    the sampler chosen when it started (``before_trial``).

    Example:
        >>> sampler = TpeThenNsga2(seed=0, trials=5000)  # doctest: +SKIP
        >>> study = optuna.create_study(directions=["maximize", "minimize"],
        ...                             sampler=sampler)  # doctest: +SKIP
    """

    def __init__(self, *, seed: int, trials: int, switch_after: int = TPE_TRIALS_MAX) -> None:
        self.tpe = tpe(seed, trials)
        self.nsga2 = nsga2(seed, trials)
        self.switch_after = switch_after
        self._by_trial: dict[int, Any] = {}

    def _finished(self, study: Any) -> int:
        from optuna.trial import TrialState

        return len(study.get_trials(deepcopy=False,
                                    states=(TrialState.COMPLETE, TrialState.FAIL)))

    def sampler_for(self, study: Any, trial: Any) -> Any:
        """The sampler of ``trial`` (a frozen or live trial), chosen once per trial."""
        chosen = self._by_trial.get(trial.number)
        if chosen is None:
            chosen = self.tpe if self._finished(study) < self.switch_after else self.nsga2
            self._by_trial[trial.number] = chosen
        return chosen

    def reseed_rng(self) -> None:
        self.tpe.reseed_rng()
        self.nsga2.reseed_rng()

    def before_trial(self, study: Any, trial: Any) -> None:
        self.sampler_for(study, trial).before_trial(study, trial)

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.sampler_for(study, trial).infer_relative_search_space(
            study, trial)
        return result

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]
                        ) -> dict[str, Any]:
        result: dict[str, Any] = self.sampler_for(study, trial).sample_relative(
            study, trial, search_space)
        return result

    def sample_independent(self, study: Any, trial: Any, param_name: str,
                           param_distribution: Any) -> Any:
        return self.sampler_for(study, trial).sample_independent(
            study, trial, param_name, param_distribution)

    def after_trial(self, study: Any, trial: Any, state: Any,
                    values: Sequence[float] | None) -> None:
        self.sampler_for(study, trial).after_trial(study, trial, state, values)
        self._by_trial.pop(trial.number, None)
