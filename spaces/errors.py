"""Exceptions raised while turning a model and a candidate into a bundle."""

from __future__ import annotations


class SpacesError(Exception):
    """Base class of every error raised by ``spaces``."""


class ReferenceError_(SpacesError):
    """A ``module:attribute`` reference in the config does not import."""


class ModelError(SpacesError):
    """The user's model or data does not have the shape paretoedge needs."""


class BuildError(SpacesError):
    """A candidate could not be built into a bundle (the trial fails, the study goes on)."""


class SpaceError(SpacesError):
    """The search space is inconsistent with the model (e.g. an unknown layer group)."""


class SplitError(SpaceError):
    """A model cannot be cut into stages after a named module (``early_exit.after``)."""

    def __init__(self, module: str, message: str) -> None:
        super().__init__(message)
        self.module = module
