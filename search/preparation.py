"""Everything a study needs before its first trial: data, the trained model, the builder."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from search.config import StudyConfig
from spaces import (
    BuildSettings,
    CandidateBuilder,
    DataSplits,
    ExitSpace,
    FinetuneSettings,
    ModelError,
    PruningSettings,
    PruningSpace,
    QuantizationSpace,
    QuantSettings,
    SearchSpace,
    TrainedModel,
    TrainSettings,
    load_reference,
    train_or_load_baseline,
)
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
        seed=t.seed if f.seed is None else f.seed)


def pruning_settings(config: StudyConfig) -> PruningSettings:
    p = config.pruning
    return PruningSettings(importance=p.importance, round_to=p.round_to_for(config.device.class_),
                           taylor_batches=p.taylor_batches,
                           ignored_layers=tuple(p.ignored_layers))


def build_settings(config: StudyConfig) -> BuildSettings:
    q = config.quantization
    return BuildSettings(
        finetune=finetune_settings(config),
        quant=QuantSettings(activation_type=q.activation_type, weight_type=q.weight_type,
                            per_channel=q.per_channel, method=q.method,
                            calibration_samples=q.calibration_samples),
        pruning=pruning_settings(config),
        confidence=config.early_exit.confidence)


def search_space(config: StudyConfig, builder: CandidateBuilder) -> SearchSpace:
    e = config.early_exit
    return SearchSpace(
        quantization=QuantizationSpace(groups=builder.groups,
                                       precisions=tuple(config.quantization.precisions)),
        pruning=PruningSpace(ratio_max=config.pruning.ratio_max,
                             ratio_step=config.pruning.ratio_step,
                             per_stage=config.pruning.per_stage,
                             num_stages=builder.num_stages),
        exits=ExitSpace(num_exits=builder.num_stages - 1, enabled=e.enabled,
                        threshold_low=e.threshold[0], threshold_high=e.threshold[1]))


def prepare(config: StudyConfig, cache_dir: Path) -> Prepared:
    """Load the data, train (or load) the fp32 model, and set up the builder and space."""
    data = load_data(config)
    factory = load_reference(config.model.factory, config.base_dir)
    if not callable(factory):
        raise ModelError(f"model.factory {config.model.factory!r} is not callable")
    t = config.model.train
    settings = TrainSettings(epochs=t.epochs, lr=t.lr, weight_decay=t.weight_decay,
                             batch_size=t.batch_size, seed=t.seed)
    digest = file_digest(reference_file(config.model.factory, config.base_dir))
    trained = train_or_load_baseline(factory, data, settings, cache_dir,
                                     model_digest=f"{config.model.factory}:{digest}")
    log.info("fp32 model %s (validation accuracy per exit %s)",
             "loaded from cache" if trained.from_cache else "trained",
             ", ".join(f"{a:.4f}" for a in trained.exit_accuracies))
    builder = CandidateBuilder(trained=trained, data=data, cache_dir=cache_dir,
                               settings=build_settings(config))
    space = search_space(config, builder)
    return Prepared(data=data, trained=trained, builder=builder, space=space)
