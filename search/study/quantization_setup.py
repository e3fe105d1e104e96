"""From the config's ``quantization`` section to the builder's int8 settings and the
quantization space (which precisions each group is offered)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from search.config import StudyConfig
from search.errors import ConfigError

if TYPE_CHECKING:
    from spaces import QuantizationSpace, QuantSettings

log = logging.getLogger(__name__)


def quant_target(config: StudyConfig) -> str:
    """``x86`` or ``arm``: what the int8 defaults are chosen for."""
    from device_agents.profiles import profile_for

    q = config.quantization
    return profile_for(config.device.class_).int8_target if q.target == "auto" else q.target


def quant_settings(config: StudyConfig) -> QuantSettings:
    """How int8 and weight-only groups are built; the activation type defaults per target."""
    from device_agents.profiles import int8_activation_type
    from spaces import QuantSettings

    q = config.quantization
    return QuantSettings(
        activation_type=q.activation_type or int8_activation_type(quant_target(config)),
        weight_type=q.weight_type, per_channel=q.per_channel, method=q.method,
        calibration_samples=q.calibration_samples,
        weight_only_block_size=q.weight_only.block_size,
        weight_only_accuracy_level=q.weight_only.accuracy_level,
        weight_only_symmetric=q.weight_only.symmetric)


def quantization_space(config: StudyConfig, operators: Mapping[str, Sequence[str]]
                       ) -> QuantizationSpace:
    """Each group's choices: the configured precisions its operators (group -> compute op
    types, e.g. ``TorchBuilder.operators()``) can execute.

    A precision named for a group in ``group_precisions`` that the group cannot execute is a
    :class:`ConfigError` naming the group and its operators.
    """
    from spaces import QuantizationSpace
    from spaces.errors import SpaceError
    from spaces.quantization_space import UnsupportedPrecisionError, describe_operators

    q = config.quantization
    try:
        space = QuantizationSpace.for_operators(operators, precisions=tuple(q.precisions),
                                                overrides=q.group_precisions,
                                                qat=tuple(q.qat))
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
