"""Everything a study needs before its first trial: the data, a builder for the model (behind
the :class:`spaces.Builder` seam: torch is imported only there), and the search space."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from search.config import StudyConfig
from search.errors import ConfigError
from search.study.quantization_setup import quant_settings, quantization_space
from spaces import (
    Builder,
    BuildSettings,
    DataSplits,
    ExitSpace,
    FinetuneSettings,
    ModelError,
    PruningSettings,
    PruningSpace,
    RuntimeSpace,
    SearchSpace,
    TrainSettings,
    load_reference,
)
from spaces.errors import SpaceError
from spaces.settings import ExitHeadSpec

if TYPE_CHECKING:
    from spaces.torch_model.preparation import TorchModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """The data, the builder of the study's model, and the search space it offers."""

    data: DataSplits
    builder: Builder
    space: SearchSpace


def load_data(config: StudyConfig) -> DataSplits:
    loader = load_reference(config.data.loader, config.base_dir)
    try:
        data = loader(config.data.seed)
    except Exception as exc:
        raise ModelError(f"data.loader {config.data.loader!r} failed: "
                         f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(data, DataSplits):
        raise ModelError(f"data.loader {config.data.loader!r} returned "
                         f"{type(data).__name__}, expected spaces.DataSplits")
    return data


def finetune_settings(config: StudyConfig, full: bool = False) -> FinetuneSettings:
    """The finetune after pruning (``pruning.finetune``), or the long one of promoted
    candidates (``pruning.finetune_full``, which must be set)."""
    f = config.pruning.finetune_full if full else config.pruning.finetune
    assert f is not None
    t = config.model.train_settings
    return FinetuneSettings(
        epochs=f.epochs, steps=f.steps or 0, train_subset=f.train_subset or 0, lr=f.lr,
        weight_decay=t.weight_decay, batch_size=f.batch_size or t.batch_size,
        schedule=f.schedule, warmup=f.warmup, distill_alpha=f.distill_alpha,
        distill_temperature=f.distill_temperature, distill_target=f.distill_target,
        distill_features=f.distill_features, seed=t.seed if f.seed is None else f.seed)


def pruning_settings(config: StudyConfig) -> PruningSettings:
    p = config.pruning
    return PruningSettings(importance=p.importance, round_to=p.round_to_for(config.device.class_),
                           taylor_batches=p.taylor_batches,
                           ignored_layers=tuple(p.ignored_layers))


def build_settings(config: StudyConfig) -> BuildSettings:
    return BuildSettings(
        finetune=finetune_settings(config),
        finetune_full=(finetune_settings(config, full=True)
                       if config.pruning.finetune_full is not None else None),
        quant=quant_settings(config),
        pruning=pruning_settings(config),
        confidence=config.early_exit.measures[0], exit_fallback=config.early_exit.fallback)


def search_space(config: StudyConfig, builder: Builder) -> SearchSpace:
    e = config.early_exit
    return SearchSpace(
        quantization=quantization_space(config, builder.operators()),
        pruning=PruningSpace(ratio_max=config.pruning.ratio_max if config.searches_pruning
                             else 0.0,
                             ratio_step=config.pruning.ratio_step,
                             per_stage=config.pruning.per_stage,
                             num_stages=builder.num_stages),
        exits=ExitSpace(num_exits=builder.num_stages - 1, enabled=config.searches_exits,
                        threshold_low=e.threshold[0], threshold_high=e.threshold[1],
                        per_exit=e.thresholds == "per_exit", scale=e.scale,
                        confidences=e.measures),
        runtime=runtime_space(config, builder))


def static_shape_problem(config: StudyConfig, dynamic_input: bool) -> str | None:
    """Why ``runtime.static_shape`` cannot be given to a model whose input is (not)
    dynamic: ``false`` for an ONNX file whose input is already static; or None."""
    r = config.runtime
    if r.static_shape is not None and False in r.static_shape and not dynamic_input:
        return (f"runtime.static_shape: {config.model.onnx}'s input is static (batch 1), so "
                f"there is no dynamic batch axis to keep; list [true] or leave the key out")
    return None


def runtime_space(config: StudyConfig, builder: Builder) -> RuntimeSpace:
    """The config's ``runtime`` knobs; raise :class:`ConfigError` for a value the model
    cannot take (:func:`static_shape_problem`)."""
    problem = static_shape_problem(config, getattr(builder, "dynamic_input", True))
    if problem is not None:
        raise ConfigError(problem)
    r = config.runtime
    try:
        return RuntimeSpace(graph_optimizations=tuple(r.graph_optimization or ()),
                            threads=tuple(r.threads or ()),
                            providers=tuple(r.providers or ()),
                            static_shapes=tuple(r.static_shape or ()),
                            engines=tuple(r.engines or ()))
    except SpaceError as exc:
        raise ConfigError(str(exc)) from exc


def exit_head_spec(config: StudyConfig) -> ExitHeadSpec:
    """The retrofitted heads of ``early_exit.after`` (training settings from ``model.train``)."""
    e, t = config.early_exit, config.model.train_settings
    assert e.after is not None
    h = e.heads
    return ExitHeadSpec(after=tuple(e.after), hidden=h.hidden, training=h.training,
                        epochs=h.epochs, lr=h.lr, joint_epochs=h.joint_epochs,
                        joint_lr=h.joint_lr, weight_decay=t.weight_decay,
                        batch_size=t.batch_size, loss_weights=tuple(h.loss_weights or ()),
                        seed=t.seed)


def _check_quantization(config: StudyConfig, operators: Mapping[str, tuple[str, ...]]) -> None:
    """Raise :class:`ConfigError` for precisions the groups' operators cannot run."""
    quantization_space(config, operators)


def torch_model_spec(config: StudyConfig) -> TorchModelSpec:
    """The config's ``model`` and the parts of ``early_exit`` and ``quantization`` that shape
    the torch model and its layer groups; ``model.checkpoint`` is resolved against the config's
    folder, and with it (or ``model.train: false``) nothing is trained."""
    from spaces.torch_model.preparation import TorchModelSpec

    m, e = config.model, config.early_exit
    t = m.train_settings
    if m.factory is None:
        raise ConfigError("model.factory: a torch model needs its factory")
    return TorchModelSpec(
        factory=m.factory, base_dir=config.base_dir,
        train=TrainSettings(epochs=t.epochs, lr=t.lr, weight_decay=t.weight_decay,
                            batch_size=t.batch_size, seed=t.seed),
        groups=config.quantization.groups,
        exit_heads=exit_head_spec(config) if e.enabled and e.after else None,
        exit_loss_weights=tuple(e.heads.loss_weights or ()) if e.after is None else (),
        checkpoint=config.base_dir / m.checkpoint if m.checkpoint is not None else None,
        trains=m.trains)


def onnx_builder(config: StudyConfig, data: DataSplits, cache_dir: Path) -> Builder:
    """The graph-only builder of ``model.onnx`` (no torch): its layer groups come from the
    graph, or ``quantization.groups`` as node-name prefixes."""
    from spaces.onnx_graph.preparation import OnnxModelSpec, prepare_onnx_builder

    assert config.model.onnx is not None
    spec = OnnxModelSpec(path=config.base_dir / config.model.onnx,
                         groups=config.quantization.groups)
    return prepare_onnx_builder(spec, data, build_settings(config), cache_dir,
                                check_operators=lambda ops: _check_quantization(config, ops))


def prepare(config: StudyConfig, cache_dir: Path) -> Prepared:
    """Load the data, get a builder for the model (an ONNX file's, or the torch model trained
    or loaded) and set up the space (quantization only for an ONNX file)."""
    data = load_data(config)
    if config.model.onnx is not None:
        try:
            builder: Builder = onnx_builder(config, data, cache_dir)
        except SpaceError as exc:
            raise ConfigError(str(exc)) from exc
        return Prepared(data=data, builder=builder, space=search_space(config, builder))
    from spaces.torch_model.preparation import prepare_torch_builder

    try:
        builder = prepare_torch_builder(
            torch_model_spec(config), data, build_settings(config), cache_dir,
            check_operators=lambda operators: _check_quantization(config, operators))
    except SpaceError as exc:
        raise ConfigError(str(exc)) from exc
    return Prepared(data=data, builder=builder, space=search_space(config, builder))
