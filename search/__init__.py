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
    "ParetoFront": "search.pareto",
    "best": "search.lookup",
    "BestTrial": "search.lookup",
    "study_records": "search.lookup",
    "TrialRecord": "search.records",
    "HypervolumeHistory": "search.pareto",
    "Budget": "search.budget",
    "RunOptions": "search.study",
    "StudyRunner": "search.study",
    "StudySummary": "search.study",
    "Workspace": "search.workspace",
    "load_records": "search.workspace",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")
