"""``NAME@ALIAS`` and ``NAME@VERSION``: how a command names one version of a registered model.

Example:
    >>> ModelRef.parse("digits@production")
    ModelRef(name='digits', alias='production', version=None)
    >>> ModelRef.parse("digits@3").version
    '3'
"""

from __future__ import annotations

from dataclasses import dataclass

from search.errors import RegistryError


@dataclass(frozen=True)
class ModelRef:
    """A registered model's name and either an alias or a version number (all digits)."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, text: str, *, what: str = "model") -> ModelRef:
        """``NAME@ALIAS`` or ``NAME@VERSION``; ``what`` names the argument in the error."""
        name, sep, after = text.partition("@")
        if not sep or not name.strip() or not after.strip():
            raise RegistryError(f"{what} {text!r}: expected NAME@ALIAS or NAME@VERSION "
                                f"(e.g. digits@production, digits@3)")
        if after.isdigit():
            return cls(name=name, version=str(int(after)))
        return cls(name=name, alias=after)

    def __str__(self) -> str:
        return f"{self.name}@{self.alias if self.alias is not None else self.version}"
