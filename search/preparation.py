"""Everything a study needs before its first trial: data, the trained model, the builder."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from search.config import StudyConfig
from search.errors import ConfigError
from search.quantization_setup import (
    check_quantization,
    layer_groups,
    quant_settings,
    quantization_space,
)
from spaces import (
    BuildSettings,
    CandidateBuilder,
    DataSplits,
    ExitSpace,
    FinetuneSettings,
    ModelError,
    PruningSettings,
    PruningSpace,
    SearchSpace,
    TrainedModel,
    TrainSettings,
    as_staged,
    build_untrained,
    load_reference,
    train_or_load_baseline,
)
from spaces.errors import SplitError
from spaces.exit_heads import ExitHeadSpec, retrofit_exits
from spaces.references import file_digest, reference_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    data: DataSplits
    trained: TrainedModel
    builder: CandidateBuilder
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


def finetune_settings(config: StudyConfig) -> FinetuneSettings:
    f, t = config.pruning.finetune, config.model.train
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
        quant=quant_settings(config),
        pruning=pruning_settings(config),
        confidence=config.early_exit.measures[0], exit_fallback=config.early_exit.fallback)


def search_space(config: StudyConfig, builder: CandidateBuilder) -> SearchSpace:
    e = config.early_exit
    return SearchSpace(
        quantization=quantization_space(config, builder.operators()),
        pruning=PruningSpace(ratio_max=config.pruning.ratio_max,
                             ratio_step=config.pruning.ratio_step,
                             per_stage=config.pruning.per_stage,
                             num_stages=builder.num_stages),
        exits=ExitSpace(num_exits=builder.num_stages - 1, enabled=e.enabled,
                        threshold_low=e.threshold[0], threshold_high=e.threshold[1],
                        per_exit=e.thresholds == "per_exit", scale=e.scale,
                        confidences=e.measures))


def exit_head_spec(config: StudyConfig) -> ExitHeadSpec:
    """The retrofitted heads of ``early_exit.after`` (training settings from ``model.train``)."""
    e, t = config.early_exit, config.model.train
    assert e.after is not None
    h = e.heads
    return ExitHeadSpec(after=tuple(e.after), hidden=h.hidden, training=h.training,
                        epochs=h.epochs, lr=h.lr, joint_epochs=h.joint_epochs,
                        joint_lr=h.joint_lr, weight_decay=t.weight_decay,
                        batch_size=t.batch_size, loss_weights=tuple(h.loss_weights or ()),
                        seed=t.seed)


def with_exit_heads(config: StudyConfig, trained: TrainedModel, data: DataSplits,
                    cache_dir: Path) -> TrainedModel:
    """Retrofit exit heads after ``early_exit.after`` (trained once per baseline, cached)."""
    try:
        return retrofit_exits(trained, data, exit_head_spec(config), cache_dir)
    except SplitError as exc:
        raise ConfigError(f"early_exit.after: {exc}") from exc


def _declared_exit_weights(config: StudyConfig, factory: object) -> tuple[float, ...]:
    """``early_exit.heads.loss_weights`` for a model that declares its exits (StagedModel)."""
    weights = config.early_exit.heads.loss_weights
    if config.early_exit.after is not None or not weights:
        return ()
    try:
        stages = as_staged(factory()).num_stages  # type: ignore[operator]
    except Exception:  # the baseline's own checks report a broken factory clearly
        return tuple(weights)
    if len(weights) != stages:
        raise ConfigError(f"early_exit.heads.loss_weights: {len(weights)} values for a model "
                          f"with {stages} exits (one per exit, the last one the classifier)")
    return tuple(weights)


def prepare(config: StudyConfig, cache_dir: Path) -> Prepared:
    """Load the data, train (or load) the fp32 model, and set up the builder and space."""
    import torch

    data = load_data(config)
    factory = load_reference(config.model.factory, config.base_dir)
    if not callable(factory):
        raise ModelError(f"model.factory {config.model.factory!r} is not callable")
    example = torch.from_numpy(data.preprocess(data.train_x[:1]))
    check_quantization(config, build_untrained(factory, data), example)  # fail before training
    t = config.model.train
    settings = TrainSettings(epochs=t.epochs, lr=t.lr, weight_decay=t.weight_decay,
                             batch_size=t.batch_size, seed=t.seed,
                             exit_weights=_declared_exit_weights(config, factory))
    digest = file_digest(reference_file(config.model.factory, config.base_dir))
    trained = train_or_load_baseline(factory, data, settings, cache_dir,
                                     model_digest=f"{config.model.factory}:{digest}")
    log.info("fp32 model %s (validation accuracy per exit %s)",
             "loaded from cache" if trained.from_cache else "trained",
             ", ".join(f"{a:.4f}" for a in trained.exit_accuracies))
    if config.early_exit.enabled and config.early_exit.after:
        trained = with_exit_heads(config, trained, data, cache_dir)
        log.info("exit heads after %s %s (validation accuracy per exit %s)",
                 ", ".join(config.early_exit.after),
                 "loaded from cache" if trained.from_cache else "trained",
                 ", ".join(f"{a:.4f}" for a in trained.exit_accuracies))
    builder = CandidateBuilder(trained=trained, data=data, cache_dir=cache_dir,
                               settings=build_settings(config),
                               groups=layer_groups(config, trained.fresh(), example))
    space = search_space(config, builder)
    return Prepared(data=data, trained=trained, builder=builder, space=space)
