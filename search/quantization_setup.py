"""From the config's ``quantization`` section to the builder's layer groups, its int8 settings
and the quantization space (which precisions each group is offered)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from search.config import StudyConfig
from search.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from spaces import QuantizationSpace, QuantSettings, StagedModel
    from spaces.layer_groups import LayerGroups

log = logging.getLogger(__name__)


def quant_target(config: StudyConfig) -> str:
    """``x86`` or ``arm``: what the int8 defaults are chosen for."""
    from spaces.quantize import target_of

    q = config.quantization
    return target_of(config.device.class_) if q.target == "auto" else q.target


def quant_settings(config: StudyConfig) -> QuantSettings:
    """How int8 and weight-only groups are built; the activation type defaults per target."""
    from spaces import QuantSettings
    from spaces.quantize import default_activation_type

    q = config.quantization
    return QuantSettings(
        activation_type=q.activation_type or default_activation_type(quant_target(config)),
        weight_type=q.weight_type, per_channel=q.per_channel, method=q.method,
        calibration_samples=q.calibration_samples,
        weight_only_block_size=q.weight_only.block_size,
        weight_only_accuracy_level=q.weight_only.accuracy_level,
        weight_only_symmetric=q.weight_only.symmetric)


def layer_groups(config: StudyConfig, model: StagedModel, example: torch.Tensor) -> LayerGroups:
    """The layer groups the config asks for (``auto``, ``stages`` or an explicit mapping)."""
    from spaces.errors import SpaceError
    from spaces.layer_groups import auto_groups, explicit_groups, stage_groups

    spec = config.quantization.groups
    try:
        if spec == "auto":
            return auto_groups(model, example)
        if spec == "stages":
            return stage_groups(model)
        return explicit_groups(model, spec, example)
    except SpaceError as exc:
        raise ConfigError(str(exc)) from exc


def check_quantization(config: StudyConfig, model: StagedModel,
                       example: torch.Tensor) -> None:
    """Raise :class:`ConfigError` for bad groups or precisions, from the architecture alone
    (before the fp32 model is trained)."""
    from spaces.layer_groups import operators_by_group

    groups = layer_groups(config, model, example)
    quantization_space(config, operators_by_group(model, example, groups))


def quantization_space(config: StudyConfig, operators: Mapping[str, Sequence[str]]
                       ) -> QuantizationSpace:
    """Each group's choices: the configured precisions its operators (group -> compute op
    types, e.g. ``CandidateBuilder.operators()``) can execute.

    A precision named for a group in ``group_precisions`` that the group cannot execute is a
    :class:`ConfigError` naming the group and its operators.
    """
    from spaces import QuantizationSpace
    from spaces.errors import SpaceError
    from spaces.quantization_space import UnsupportedPrecisionError, describe_operators

    q = config.quantization
    try:
        space = QuantizationSpace.for_operators(operators, precisions=tuple(q.precisions),
                                                overrides=q.group_precisions)
    except UnsupportedPrecisionError as exc:
        raise ConfigError(f"quantization.group_precisions.{exc.group}: {exc}") from exc
    except SpaceError as exc:
        raise ConfigError(str(exc)) from exc
    for group in space.groups:
        left_out = [p for p in q.precisions if p not in space.choices_for(group)]
        if left_out and group not in q.group_precisions:
            log.info("layer group %s (%s) is not offered %s: its operators cannot run it",
                     group, describe_operators(operators[group]), ", ".join(left_out))
    return space
