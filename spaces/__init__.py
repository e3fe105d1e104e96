"""What can change: candidates, the search space, and the transforms that build bundles."""

from __future__ import annotations

from spaces.baseline import TrainedModel, build_untrained, train_or_load_baseline
from spaces.builder import BuildSettings, BuiltBundle, CandidateBuilder
from spaces.candidate import PRECISIONS, Candidate
from spaces.data import DataSplits
from spaces.errors import BuildError, ModelError, ReferenceError_, SpaceError, SpacesError
from spaces.quantize import QuantSettings
from spaces.references import load_reference
from spaces.search_space import SearchSpace, SpaceSpec
from spaces.staged_model import StagedModel, as_staged
from spaces.training import TrainSettings

__all__ = [
    "PRECISIONS",
    "BuildError",
    "BuildSettings",
    "BuiltBundle",
    "Candidate",
    "CandidateBuilder",
    "DataSplits",
    "ModelError",
    "QuantSettings",
    "ReferenceError_",
    "SearchSpace",
    "SpaceError",
    "SpaceSpec",
    "SpacesError",
    "StagedModel",
    "TrainSettings",
    "TrainedModel",
    "as_staged",
    "build_untrained",
    "load_reference",
    "train_or_load_baseline",
]
