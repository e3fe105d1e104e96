"""The seam between the search and whatever builds bundles: a :class:`Builder` turns a
candidate into a bundle directory. :class:`spaces.torch_model.builder.TorchBuilder` builds from a
PyTorch model (pruning, finetune, exits, export, then the graph transforms); a graph-only builder
starts from an ONNX file. The search sees only this protocol."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from spaces.candidate import Candidate
from spaces.layer_groups import LayerGroups
from spaces.settings import BuildSettings


@dataclass(frozen=True)
class BuiltBundle:
    """A bundle on disk, its digest, and what building it found out."""

    directory: Path
    digest: str
    build_seconds: float
    info: Mapping[str, Any] = field(default_factory=dict)


class Builder(Protocol):
    """Builds candidates of one model into bundles.

    ``model_key`` names the model the builder starts from (its weights and data), for cache
    keys; ``layer_groups`` and :meth:`operators` say what each group is and which compute
    operators it holds (what decides the precisions it can run); ``num_stages`` is 1 for a
    model without exits.
    """

    settings: BuildSettings
    layer_groups: LayerGroups
    num_stages: int

    @property
    def model_key(self) -> str: ...

    @property
    def groups(self) -> tuple[str, ...]: ...

    def operators(self) -> dict[str, tuple[str, ...]]: ...

    def build(self, candidate: Candidate, directory: Path) -> BuiltBundle:
        """Build ``candidate`` into a bundle at ``directory``; raise :class:`BuildError`."""
        ...
