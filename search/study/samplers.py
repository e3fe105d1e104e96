"""The Optuna samplers a study can use (``search.sampler``), with the settings chosen for them."""

from __future__ import annotations

import warnings
from typing import Any

from search.errors import SearchError


def make_sampler(name: str, seed: int, trials: int) -> Any:
    import optuna

    if name == "tpe":
        with warnings.catch_warnings():  # multivariate and group are "experimental" since 2.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # random start-up trials: 6 up to 60 trials, then a tenth of the budget up to 10 (the
            # replayed searches of search_efficiency_bench reach 95 % of the exhaustive
            # hypervolume in a median of 12 / 10 measurements on fashion / digits with 6, 14 / 14
            # with 10; 15 seeds each)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                              n_startup_trials=min(10, max(6, trials // 10)))
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=min(20, max(4, trials)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise SearchError(f"search.sampler: unknown sampler {name!r}")
