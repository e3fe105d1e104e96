"""Exceptions raised by the orchestration side. Each has a one-line message for the CLI."""

from __future__ import annotations


class SearchError(Exception):
    """Base class of every error raised by ``search``."""


class ConfigError(SearchError):
    """The experiment config is missing, malformed or inconsistent (exit code 2)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class OptionError(ConfigError):
    """A command-line option's value is malformed, e.g. ``--shift`` (exit code 2)."""


class QueryError(SearchError):
    """A ``--where`` expression or metric name is not valid (exit code 2)."""


class NothingFoundError(SearchError):
    """A query matched no trial (exit code 1)."""


class StudyNotFoundError(SearchError):
    """No study of that name in the workdir (exit code 2)."""


class AgentUnavailableError(SearchError):
    """No agent of the device class answered within the timeout."""


class RegistryError(SearchError):
    """An unknown registered model, alias or version, or a pulled bundle that does not verify
    (exit code 2)."""


class CanaryRefusedError(SearchError):
    """``deploy --canary``: the newcomer is outside the accuracy band or slower at p95 than
    the alias's holder, so the alias stays (exit code 1)."""
