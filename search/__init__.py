"""Orchestration: config, the study loop, Pareto fronts, MLflow tracking, queries, the CLI.

Names are imported lazily so that ``paretoedge --help`` and config validation stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AgentUnavailableError": "search.errors",
    "ConfigError": "search.errors",
    "NothingFoundError": "search.errors",
    "QueryError": "search.errors",
    "SearchError": "search.errors",
    "StudyNotFoundError": "search.errors",
    "StudyConfig": "search.config",
    "load_config": "search.config",
    "ParetoFront": "search.results.pareto",
    "best": "search.cli.lookup",
    "BestTrial": "search.cli.lookup",
    "study_records": "search.cli.lookup",
    "TrialRecord": "search.records",
    "HypervolumeHistory": "search.results.pareto",
    "Budget": "search.study.budget",
    "RunOptions": "search.study.runner",
    "StudyRunner": "search.study.runner",
    "StudySummary": "search.study.runner",
    "Workspace": "search.workspace",
    "load_records": "search.workspace",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")
