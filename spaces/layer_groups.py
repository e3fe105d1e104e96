"""Layer groups: which layers of a model share one precision.

A group is a list of module paths of the :class:`StagedModel` (``stages.1``, ``heads.2.2``); a
layer belongs to the group with the longest matching path, so ``first: [stages.0.0]`` carves the
first conv out of ``stage0: [stages.0]``. The groups are derived automatically (the first layer,
each stage, the last layer) or given in the config (:mod:`spaces.torch_model.module_groups`);
graph nodes are mapped onto them by :mod:`spaces.onnx_graph.node_groups`.
"""

from __future__ import annotations

from dataclasses import dataclass

FULL = -1  # graph kind: the whole model in one graph (FullGraph); k >= 0: stage k's graph


@dataclass(frozen=True)
class LayerGroup:
    """A named set of module paths that get one precision."""

    name: str
    modules: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "modules": list(self.modules)}


def covers(prefix: str, path: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


@dataclass(frozen=True)
class LayerGroups:
    """The layer groups of one model, in execution order.

    Example:
        >>> groups = LayerGroups((LayerGroup("first", ("stages.0.0",)),
        ...                       LayerGroup("stage0", ("stages.0", "heads.0"))))
        >>> groups.group_of("stages.0.0"), groups.group_of("stages.0.3.conv1")
        ('first', 'stage0')
    """

    groups: tuple[LayerGroup, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    def group_of(self, module_path: str | None) -> str | None:
        """The group of a module: the one with the longest path that covers it."""
        if module_path is None:
            return None
        best, length = None, -1
        for group in self.groups:
            for prefix in group.modules:
                if covers(prefix, module_path) and len(prefix) > length:
                    best, length = group.name, len(prefix)
        return best

    def to_dict(self) -> list[dict[str, object]]:
        return [g.to_dict() for g in self.groups]


