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
    ModelError,
    QuantSettings,
    SearchSpace,
    SpaceSpec,
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


def build_settings(config: StudyConfig) -> BuildSettings:
    b = config.build
    return BuildSettings(
        finetune=TrainSettings(epochs=b.finetune.epochs, lr=b.finetune.lr,
                               batch_size=config.model.train.batch_size,
                               weight_decay=config.model.train.weight_decay,
                               distill_alpha=b.finetune.distill_alpha,
                               distill_temperature=b.finetune.distill_temperature,
                               seed=config.model.train.seed),
        quant=QuantSettings(activation_type=b.quantization.activation_type,
                            weight_type=b.quantization.weight_type,
                            per_channel=b.quantization.per_channel,
                            method=b.quantization.method,
                            calibration_samples=b.quantization.calibration_samples),
        prune_importance=b.pruning.importance, round_to=b.pruning.round_to,
        confidence=b.confidence)


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
    s = config.space
    space = SearchSpace(SpaceSpec(groups=builder.groups, precisions=tuple(s.precisions),
                                  prune_ratio_max=s.prune_ratio_max,
                                  prune_ratio_step=s.prune_ratio_step, early_exit=s.early_exit,
                                  threshold_low=s.exit_threshold[0],
                                  threshold_high=s.exit_threshold[1]))
    return Prepared(data=data, trained=trained, builder=builder, space=space)
