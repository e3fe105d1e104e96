"""Exit heads retrofitted onto a plain model after named modules, trained once and cached.

``early_exit.after: [layer1, layer2]`` cuts the user's trained model after those modules
(:func:`spaces.torch_model.model_split.split_model`) and hangs a small classifier head (global
pooling and a linear layer by default) after each cut. The heads are trained either on the
frozen backbone (the default: the model's own predictions stay exactly what they were) or
jointly with it, with a loss weight per exit. Training happens once per baseline: the result
is cached under a key of the baseline's key and the head settings, and every candidate starts
from it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spaces.candidate import stable_key
from spaces.data import DataSplits
from spaces.errors import ModelError, SplitError
from spaces.settings import ExitHeadSpec, TrainSettings
from spaces.torch_model.baseline import TrainedModel
from spaces.torch_model.model_split import split_model
from spaces.torch_model.staged_model import StagedModel
from spaces.torch_model.training import exit_accuracies, train_model


class TokenMean(nn.Module):
    """Mean over the sequence axis of ``(batch, tokens, channels)`` features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


class ExitHead(nn.Module):
    """A parameter-free ``pool`` to one vector per sample, then a trainable ``classifier``."""

    def __init__(self, pool: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.pool = pool
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(x))


def make_head(features: torch.Tensor, num_classes: int, hidden: int = 0) -> ExitHead:
    """A head for a batch of ``features``: pool (4-D: spatial, 3-D: tokens) and linear layers."""
    if features.dim() == 4:
        pool: nn.Module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    elif features.dim() == 3:
        pool = TokenMean()
    elif features.dim() == 2:
        pool = nn.Identity()
    else:
        raise ModelError(f"exit heads: features of shape {tuple(features.shape)} (expected "
                         f"(N, C, H, W), (N, T, C) or (N, C))")
    width = int(pool(features).shape[1])
    classifier: nn.Module = (nn.Linear(width, num_classes) if hidden <= 0 else
                             nn.Sequential(nn.Linear(width, hidden), nn.ReLU(),
                                           nn.Linear(hidden, num_classes)))
    return ExitHead(pool, classifier)


@dataclass(frozen=True)
class RetrofittedModelFactory:
    """Builds the user's model cut after ``after``, with a fresh exit head after each cut.

    Used as the factory of the :class:`TrainedModel` the builder starts from, so that
    ``fresh()`` gives the staged architecture the cached state fits.
    """

    factory: Callable[[], nn.Module]
    after: tuple[str, ...]
    sample_shape: tuple[int, ...]
    num_classes: int
    hidden: int = 0

    def __call__(self) -> StagedModel:
        return self.from_model(self.factory())

    def from_model(self, model: nn.Module) -> StagedModel:
        """Cut ``model`` (its parameters are shared, not copied) and attach fresh heads."""
        if isinstance(model, StagedModel):
            raise SplitError(self.after[0], "the model already declares its exits (it is a "
                                            "StagedModel); early_exit.after is for plain models")
        example = torch.zeros(1, *self.sample_shape)
        stages = split_model(model, self.after, example)
        heads: list[nn.Module] = []
        with torch.no_grad():
            x = example
            for stage in stages[:-1]:
                x = stage(x)
                heads.append(make_head(x, self.num_classes, self.hidden))
        return StagedModel(stages=stages, heads=[*heads, nn.Identity()])


def _batches(n: int, size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    return [order[i:i + size] for i in range(0, n, size)]


@torch.no_grad()
def pooled_features(model: StagedModel, x: torch.Tensor) -> list[torch.Tensor]:
    """What each exit head's classifier sees, for every sample (the backbone is frozen)."""
    model.eval()
    pooled: list[list[torch.Tensor]] = [[] for _ in range(model.num_stages - 1)]
    for start in range(0, len(x), 512):
        h = x[start:start + 512]
        for k in range(model.num_stages - 1):
            h = model.stages[k](h)
            head = model.heads[k]
            assert isinstance(head, ExitHead)
            pooled[k].append(head.pool(h))
    return [torch.cat(chunks) for chunks in pooled]


def fit_heads_on_frozen_backbone(model: StagedModel, x: np.ndarray, y: np.ndarray,
                                 spec: ExitHeadSpec) -> StagedModel:
    """Train the exit heads' classifiers on pooled features of the frozen backbone."""
    heads = [h for k in range(model.num_stages - 1) if isinstance(h := model.heads[k], ExitHead)]
    if len(heads) != model.num_stages - 1:
        raise ModelError("exit heads: only retrofitted ExitHead heads train on a frozen "
                         "backbone")
    torch.manual_seed(spec.seed)
    generator = torch.Generator().manual_seed(spec.seed)
    features = pooled_features(model, torch.from_numpy(np.ascontiguousarray(x, np.float32)))
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    weights = spec.weights()[:len(heads)]
    params = [p for h in heads for p in h.classifier.parameters()]
    steps = max(spec.epochs * math.ceil(len(labels) / spec.batch_size), 1)
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=spec.lr, total_steps=steps,
                                                   pct_start=0.15)
    for head in heads:
        head.train()
    for _ in range(spec.epochs):
        for index in _batches(len(labels), spec.batch_size, generator):
            loss = torch.zeros(())
            for weight, head, pooled in zip(weights, heads, features, strict=True):
                loss = loss + weight * F.cross_entropy(head.classifier(pooled[index]),
                                                       labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def train_exit_heads(model: StagedModel, x: np.ndarray, y: np.ndarray,
                     spec: ExitHeadSpec) -> StagedModel:
    """Train retrofitted heads as ``spec`` says (``x`` preprocessed); in place, eval mode."""
    fit_heads_on_frozen_backbone(model, x, y, spec)
    if spec.training == "joint":
        train_model(model, x, y, TrainSettings(
            epochs=spec.joint_epochs, lr=spec.joint_lr, weight_decay=spec.weight_decay,
            batch_size=spec.batch_size, exit_weights=tuple(spec.weights()), seed=spec.seed))
    return model.eval()


def retrofit_key(trained: TrainedModel, spec: ExitHeadSpec) -> str:
    return stable_key("exit_heads", trained.key, spec.to_dict())


def retrofit_exits(trained: TrainedModel, data: DataSplits, spec: ExitHeadSpec,
                   cache_dir: Path) -> TrainedModel:
    """The trained model with exit heads after ``spec.after``: trained once, then cached.

    The cache entry sits next to the baseline's (``cache_dir/exit_heads/<key>.pt``) under a key
    of the baseline's key and ``spec``; the returned model's ``key`` is that key, so every
    later cache (pruning, graphs) is keyed by the heads too.

    Raises:
        SplitError: a module of ``spec.after`` does not exist or cannot be split after.
    """
    factory = RetrofittedModelFactory(trained.factory, spec.after, data.sample_shape,
                                      data.num_classes, spec.hidden)
    key = retrofit_key(trained, spec)
    path = Path(cache_dir) / "exit_heads" / f"{key}.pt"
    baseline = trained.fresh()
    if baseline.num_stages > 1 or not isinstance(baseline.heads[0], nn.Identity):
        raise SplitError(spec.after[0], "the model already declares its exits (it is a "
                                        "StagedModel); early_exit.after is for plain models")
    torch.manual_seed(spec.seed)  # fresh heads' initial weights are part of what key stands for
    model = factory.from_model(baseline.stages[0])
    if path.is_file():
        meta = json.loads(path.with_suffix(".json").read_text())
        state = torch.load(path, weights_only=True)
        return TrainedModel(factory=factory, state=state, key=key,
                            exit_accuracies=tuple(meta["val_exit_accuracies"]),
                            from_cache=True, exits=meta["exits"])
    train_exit_heads(model, data.preprocess(data.train_x), data.train_y, spec)
    accuracies = tuple(exit_accuracies(model, data.preprocess(data.calibration_x),
                                           data.calibration_y))
    exits = {"source": "retrofitted", "baseline_key": trained.key, **spec.to_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    path.with_suffix(".json").write_text(json.dumps({"val_exit_accuracies": accuracies,
                                                     "exits": exits}, indent=2))
    tmp.rename(path)
    return TrainedModel(factory=factory, state=model.state_dict(), key=key,
                        exit_accuracies=accuracies, from_cache=False, exits=exits)
