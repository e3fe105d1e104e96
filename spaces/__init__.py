"""What can change: candidates, the search space, the build settings, and the builders.

The top level needs no torch: the candidate, the spaces, the settings, the data splits and the
:class:`Builder` protocol. The torch-side transforms live in :mod:`spaces.torch_model`, the ONNX
graph transforms in :mod:`spaces.onnx_graph`. The torch-side names below are imported lazily,
so that ``from spaces import DataSplits`` (in a user's data module) loads no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from spaces.builder import Builder, BuiltBundle
from spaces.candidate import Candidate
from spaces.data import DataSplits
from spaces.errors import (
    BuildError,
    ModelError,
    ReferenceError_,
    SpaceError,
    SpacesError,
    SplitError,
)
from spaces.exit_space import ExitSpace
from spaces.precisions import ALL_PRECISIONS, PRECISIONS
from spaces.pruning_space import PruningSpace
from spaces.quantization_space import QuantizationSpace
from spaces.references import load_reference
from spaces.runtime_space import RuntimeSpace
from spaces.search_space import SearchSpace
from spaces.settings import (
    BuildSettings,
    ExitHeadSpec,
    FinetuneSettings,
    PruningSettings,
    QuantSettings,
    TrainSettings,
)

if TYPE_CHECKING:
    from spaces.torch_model.baseline import (
        TrainedModel,
        build_untrained,
        given_baseline,
        train_or_load_baseline,
    )
    from spaces.torch_model.builder import TorchBuilder
    from spaces.torch_model.exit_heads import retrofit_exits
    from spaces.torch_model.model_split import split_model
    from spaces.torch_model.staged_model import StagedModel, as_staged

_TORCH_SIDE = {
    "TorchBuilder": "spaces.torch_model.builder",
    "TrainedModel": "spaces.torch_model.baseline",
    "build_untrained": "spaces.torch_model.baseline",
    "train_or_load_baseline": "spaces.torch_model.baseline",
    "given_baseline": "spaces.torch_model.baseline",
    "retrofit_exits": "spaces.torch_model.exit_heads",
    "split_model": "spaces.torch_model.model_split",
    "StagedModel": "spaces.torch_model.staged_model",
    "as_staged": "spaces.torch_model.staged_model",
}

__all__ = [
    "ALL_PRECISIONS",
    "PRECISIONS",
    "BuildError",
    "BuildSettings",
    "Builder",
    "BuiltBundle",
    "Candidate",
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
    "RuntimeSpace",
    "SearchSpace",
    "SpaceError",
    "SpacesError",
    "SplitError",
    "StagedModel",
    "TorchBuilder",
    "TrainSettings",
    "TrainedModel",
    "as_staged",
    "build_untrained",
    "given_baseline",
    "load_reference",
    "retrofit_exits",
    "split_model",
    "train_or_load_baseline",
]


def __getattr__(name: str) -> Any:
    if name in _TORCH_SIDE:
        return getattr(importlib.import_module(_TORCH_SIDE[name]), name)
    raise AttributeError(f"module 'spaces' has no attribute {name!r}")
