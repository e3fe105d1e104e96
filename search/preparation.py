"""Everything a study needs before its first trial: data, the trained model, the builder."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from search.config import StudyConfig
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
    ModelError,
    PruningSpace,
    SearchSpace,
    TrainedModel,
    TrainSettings,
    build_untrained,
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


def build_settings(config: StudyConfig) -> BuildSettings:
    p = config.pruning
    return BuildSettings(
        finetune=TrainSettings(epochs=p.finetune.epochs, lr=p.finetune.lr,
                               batch_size=config.model.train.batch_size,
                               weight_decay=config.model.train.weight_decay,
                               distill_alpha=p.finetune.distill_alpha,
                               distill_temperature=p.finetune.distill_temperature,
                               seed=config.model.train.seed),
        quant=quant_settings(config),
        prune_importance=p.importance, round_to=p.round_to,
        confidence=config.early_exit.confidence)


def search_space(config: StudyConfig, builder: CandidateBuilder) -> SearchSpace:
    e = config.early_exit
    return SearchSpace(
        quantization=quantization_space(config, builder.operators()),
        pruning=PruningSpace(ratio_max=config.pruning.ratio_max,
                             ratio_step=config.pruning.ratio_step),
        exits=ExitSpace(num_exits=builder.num_stages - 1, enabled=e.enabled,
                        threshold_low=e.threshold[0], threshold_high=e.threshold[1]))


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
                             batch_size=t.batch_size, seed=t.seed)
    digest = file_digest(reference_file(config.model.factory, config.base_dir))
    trained = train_or_load_baseline(factory, data, settings, cache_dir,
                                     model_digest=f"{config.model.factory}:{digest}")
    log.info("fp32 model %s (validation accuracy per exit %s)",
             "loaded from cache" if trained.from_cache else "trained",
             ", ".join(f"{a:.4f}" for a in trained.exit_accuracies))
    builder = CandidateBuilder(trained=trained, data=data, cache_dir=cache_dir,
                               settings=build_settings(config),
                               groups=layer_groups(config, trained.fresh(), example))
    space = search_space(config, builder)
    return Prepared(data=data, trained=trained, builder=builder, space=space)
