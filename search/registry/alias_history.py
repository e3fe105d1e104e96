"""MLflow keeps no history of an alias: who held it before is kept here, as a registered-model
tag ``paretoedge.alias_history.<alias>`` holding the previous holders' versions as a JSON list
(oldest first), so that ``paretoedge rollback`` can move the alias back.

Example:
    >>> AliasHistory(()).moved(from_version="1").moved(from_version="2").versions
    ('1', '2')
    >>> AliasHistory(("1", "2")).back_to(None)
    ('2', AliasHistory(versions=('1',)))
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from search.errors import RegistryError

TAG_PREFIX = "paretoedge.alias_history."


def history_tag(alias: str) -> str:
    return f"{TAG_PREFIX}{alias}"


@dataclass(frozen=True)
class AliasHistory:
    """The versions that held an alias before its holder now, oldest first."""

    versions: tuple[str, ...]

    @classmethod
    def from_tag(cls, value: str | None) -> AliasHistory:
        if not value:
            return cls(())
        try:
            versions = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RegistryError(f"alias history tag is not JSON: {value[:80]!r}") from exc
        return cls(tuple(str(v) for v in versions))

    def to_tag(self) -> str:
        return json.dumps(list(self.versions))

    def moved(self, *, from_version: str | None) -> AliasHistory:
        """The history after the alias moved away from ``from_version`` (None: it was unset)."""
        if from_version is None:
            return self
        return AliasHistory((*self.versions, from_version))

    def back_to(self, version: str | None) -> tuple[str, AliasHistory]:
        """Where a rollback moves the alias (``version``, or the previous holder when None)
        and the history after it: the holders after the one chosen are forgotten, so a second
        rollback goes one further back."""
        if version is None:
            if not self.versions:
                raise RegistryError("the alias has no previous holder to roll back to "
                                    "(name one with --to VERSION)")
            return self.versions[-1], AliasHistory(self.versions[:-1])
        if version in self.versions:
            index = len(self.versions) - 1 - self.versions[::-1].index(version)
            return version, AliasHistory(self.versions[:index])
        return version, self
