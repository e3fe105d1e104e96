"""What can change: candidates, the search space, and the transforms that build bundles."""

from __future__ import annotations

from spaces.baseline import TrainedModel, build_untrained, train_or_load_baseline
from spaces.builder import BuildSettings, BuiltBundle, CandidateBuilder
from spaces.candidate import PRECISIONS, Candidate
from spaces.data import DataSplits
from spaces.errors import (
    BuildError,
    ModelError,
    ReferenceError_,
    SpaceError,
    SpacesError,
    SplitError,
)
from spaces.exit_heads import ExitHeadSpec, retrofit_exits
from spaces.exit_space import ExitSpace
from spaces.model_split import split_model
from spaces.pruning import PruningSettings
from spaces.pruning_space import PruningSpace
from spaces.quantization_space import QuantizationSpace
from spaces.quantize import QuantSettings
from spaces.references import load_reference
from spaces.search_space import SearchSpace
from spaces.staged_model import StagedModel, as_staged
from spaces.training import FinetuneSettings, TrainSettings

__all__ = [
    "PRECISIONS",
    "BuildError",
    "BuildSettings",
    "BuiltBundle",
    "Candidate",
    "CandidateBuilder",
    "DataSplits",
    "ExitHeadSpec",
    "ExitSpace",
    "FinetuneSettings",
    "ModelError",
    "PruningSettings",
    "PruningSpace",
    "QuantSettings",
    "QuantizationSpace",
    "ReferenceError_",
    "SearchSpace",
    "SpaceError",
    "SpacesError",
    "SplitError",
    "StagedModel",
    "TrainSettings",
    "TrainedModel",
    "as_staged",
    "build_untrained",
    "load_reference",
    "retrofit_exits",
    "split_model",
    "train_or_load_baseline",
]
