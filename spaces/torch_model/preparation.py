"""From a PyTorch model factory and its data to a ready :class:`TorchBuilder`: check the
architecture (layer groups, their operators) before anything is trained, train or load the fp32
model (or take it as given: a checkpoint, or a factory with its own weights), retrofit exit
heads, and set up the builder. What the search calls to get a builder for a torch model;
everything torch happens behind it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from spaces.data import DataSplits
from spaces.errors import ModelError, SpaceError, SplitError
from spaces.layer_groups import LayerGroups
from spaces.references import file_digest, load_reference, reference_file
from spaces.settings import BuildSettings, ExitHeadSpec, TrainSettings
from spaces.torch_model.baseline import (
    TrainedModel,
    build_untrained,
    given_baseline,
    train_or_load_baseline,
)
from spaces.torch_model.builder import TorchBuilder
from spaces.torch_model.checkpoint import load_checkpoint, read_checkpoint
from spaces.torch_model.exit_heads import retrofit_exits
from spaces.torch_model.module_groups import (
    auto_groups,
    explicit_groups,
    operators_by_group,
    stage_groups,
)
from spaces.torch_model.staged_model import StagedModel, as_staged

log = logging.getLogger(__name__)
#: ``auto``, ``stages``, or group name -> module paths.
GroupsSpec = str | Mapping[str, Sequence[str]]
#: Called with each group's compute operators before the model is trained (raise to stop).
OperatorCheck = Callable[[Mapping[str, tuple[str, ...]]], None]


@dataclass(frozen=True)
class TorchModelSpec:
    """The user's torch model: a factory reference and how it is trained and grouped.

    ``exit_heads`` retrofits heads after named modules (None: the model declares its exits, or
    has none); ``exit_loss_weights`` weights a declared model's exits during training.
    ``checkpoint`` is a state_dict file loaded strictly into the factory's module, and
    ``trains`` False takes the factory's module as it comes (it loads its own weights): in both
    cases nothing is trained (``train.seed`` seeds whatever the factory leaves random).
    """

    factory: str
    base_dir: Path
    train: TrainSettings
    groups: GroupsSpec = "auto"
    exit_heads: ExitHeadSpec | None = None
    exit_loss_weights: tuple[float, ...] = ()
    checkpoint: Path | None = None
    trains: bool = True

    def __post_init__(self) -> None:
        if self.checkpoint is not None and self.trains:
            raise ValueError("a checkpoint is a trained model: it is not trained again "
                             "(trains=False)")


def layer_groups_of(model: StagedModel, spec: GroupsSpec, example: torch.Tensor) -> LayerGroups:
    """The layer groups ``spec`` asks for; raises :class:`SpaceError` naming what is wrong."""
    if spec == "auto":
        return auto_groups(model, example)
    if spec == "stages":
        return stage_groups(model)
    if isinstance(spec, str):
        raise SpaceError(f"quantization.groups: expected auto, stages or a mapping, got {spec!r}")
    return explicit_groups(model, spec, example)


def declared_exit_weights(spec: TorchModelSpec, factory: Callable[[], nn.Module]
                          ) -> tuple[float, ...]:
    """The loss weights of a model that declares its exits (a StagedModel), checked against
    its number of exits."""
    weights = spec.exit_loss_weights
    if spec.exit_heads is not None or not weights:
        return ()
    try:
        stages = as_staged(factory()).num_stages
    except Exception:  # the baseline's own checks report a broken factory clearly
        return tuple(weights)
    if len(weights) != stages:
        raise SpaceError(f"early_exit.heads.loss_weights: {len(weights)} values for a model "
                         f"with {stages} exits (one per exit, the last one the classifier)")
    return tuple(weights)


def _factory(spec: TorchModelSpec) -> Callable[[], nn.Module]:
    factory = load_reference(spec.factory, spec.base_dir)
    if not callable(factory):
        raise ModelError(f"model.factory {spec.factory!r} is not callable")
    return factory  # type: ignore[no-any-return]


def check_checkpoint(spec: TorchModelSpec, *, against_factory: bool = True) -> None:
    """What ``paretoedge validate`` checks of ``spec.checkpoint`` without data or training: the
    file reads as a checkpoint, and (``against_factory``) it loads strictly into the module the
    factory makes (the factory is called once).

    Raises:
        ModelError: one line naming the checkpoint file (and its first bad key), or
            ``model.factory`` when the factory cannot be called.
        ReferenceError_: the factory does not import.
    """
    if spec.checkpoint is None:
        return
    state = read_checkpoint(spec.checkpoint)
    if not against_factory:
        return
    factory = _factory(spec)
    try:
        module = factory()
    except Exception as exc:  # the user's code can raise anything
        raise ModelError(f"model.factory {spec.factory!r} failed: {type(exc).__name__}: "
                         f"{exc}") from exc
    if not isinstance(module, nn.Module):
        raise ModelError(f"model.factory {spec.factory!r} returned {type(module).__name__}, "
                         f"not a torch.nn.Module")
    load_checkpoint(module, state, spec.checkpoint)


def prepare_torch_builder(spec: TorchModelSpec, data: DataSplits, settings: BuildSettings,
                          cache_dir: Path, *, check_operators: OperatorCheck | None = None
                          ) -> TorchBuilder:
    """Train (or load) the fp32 model, retrofit its exits, and return its builder."""
    torch.set_num_threads(1)
    factory = _factory(spec)
    example = torch.from_numpy(data.preprocess(data.train_x[:1]))
    digest = f"{spec.factory}:{file_digest(reference_file(spec.factory, spec.base_dir))}"

    def check(model: StagedModel) -> None:
        if check_operators is not None:  # fail on bad groups or precisions before training
            check_operators(operators_by_group(
                model, example, layer_groups_of(model, spec.groups, example)))

    trained: TrainedModel
    if spec.trains:
        check(build_untrained(factory, data))
        train = replace(spec.train, exit_weights=declared_exit_weights(spec, factory))
        trained = train_or_load_baseline(factory, data, train, cache_dir, model_digest=digest)
        source = "loaded from cache" if trained.from_cache else "trained"
    else:  # the user's weights, untouched: nothing trained, nothing run in train mode
        trained = given_baseline(factory, data, model_digest=digest,
                                 checkpoint=spec.checkpoint, seed=spec.train.seed)
        check(trained.fresh())
        source = (f"loaded from checkpoint {spec.checkpoint}" if spec.checkpoint is not None
                  else "as the factory made it")
    log.info("fp32 model %s (validation accuracy per exit %s)", source,
             ", ".join(f"{a:.4f}" for a in trained.exit_accuracies))
    if spec.exit_heads is not None:
        try:
            trained = retrofit_exits(trained, data, spec.exit_heads, cache_dir)
        except SplitError as exc:
            raise SplitError(exc.module, f"early_exit.after: {exc}") from exc
        log.info("exit heads after %s %s (validation accuracy per exit %s)",
                 ", ".join(spec.exit_heads.after),
                 "loaded from cache" if trained.from_cache else "trained",
                 ", ".join(f"{a:.4f}" for a in trained.exit_accuracies))
    return TorchBuilder(trained=trained, data=data, cache_dir=cache_dir, settings=settings,
                        groups=layer_groups_of(trained.fresh(), spec.groups, example))
