"""The user's model, trained once and cached under a key of model source, data and settings;
or taken as it comes (a checkpoint loaded into it, or a factory that loads its own weights)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spaces.candidate import stable_key
from spaces.data import DataSplits
from spaces.errors import ModelError
from spaces.settings import TrainSettings
from spaces.torch_model.checkpoint import load_checkpoint, read_checkpoint
from spaces.torch_model.staged_model import StagedModel, as_staged
from spaces.torch_model.training import exit_accuracies, train_model


@dataclass(frozen=True)
class TrainedModel:
    """The fp32 model every candidate starts from.

    ``exits`` says where its exits come from (empty: declared by the model itself, or none),
    e.g. the modules that retrofitted heads follow; it goes into every bundle's provenance.
    """

    factory: Callable[[], nn.Module]
    state: dict[str, torch.Tensor]
    key: str
    exit_accuracies: tuple[float, ...]
    from_cache: bool
    exits: Mapping[str, Any] = field(default_factory=dict)

    def fresh(self) -> StagedModel:
        """A new copy of the trained fp32 model."""
        model = as_staged(self.factory())
        model.load_state_dict(self.state)
        return model.eval()


def build_untrained(factory: Callable[[], nn.Module], data: DataSplits) -> StagedModel:
    """Instantiate the user's model and check it maps a sample to ``num_classes`` logits."""
    try:
        model = as_staged(factory())
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"model factory failed: {type(exc).__name__}: {exc}") from exc
    example = torch.from_numpy(data.preprocess(data.train_x[:2]))
    try:
        with torch.no_grad():
            outputs = model.eval()(example)
    except Exception as exc:
        raise ModelError(f"model does not accept inputs of shape {tuple(example.shape)}: "
                         f"{type(exc).__name__}: {exc}") from exc
    for k, logits in enumerate(outputs):
        if tuple(logits.shape) != (2, data.num_classes):
            raise ModelError(f"model exit {k} returns shape {tuple(logits.shape)}, expected "
                             f"(batch, {data.num_classes})")
    return model


def train_or_load_baseline(factory: Callable[[], nn.Module], data: DataSplits,
                           settings: TrainSettings, cache_dir: Path,
                           model_digest: str) -> TrainedModel:
    """Train the fp32 model, or load it when the same model, data and settings were trained."""
    key = stable_key("baseline", model_digest, data.digest(), settings.to_dict())
    path = cache_dir / "baseline" / f"{key}.pt"
    torch.manual_seed(settings.seed)  # the initial weights are part of what the key stands for
    model = build_untrained(factory, data)
    if path.is_file():
        state = torch.load(path, weights_only=True)
        meta = json.loads(path.with_suffix(".json").read_text())
        return TrainedModel(factory=factory, state=state, key=key,
                            exit_accuracies=tuple(meta["val_exit_accuracies"]), from_cache=True)
    train_model(model, data.preprocess(data.train_x), data.train_y, settings)
    accuracies = tuple(exit_accuracies(model, data.preprocess(data.calibration_x),
                                           data.calibration_y))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    path.with_suffix(".json").write_text(json.dumps({"val_exit_accuracies": accuracies,
                                                     "settings": settings.to_dict()}))
    tmp.rename(path)
    return TrainedModel(factory=factory, state=model.state_dict(), key=key,
                        exit_accuracies=accuracies, from_cache=False)


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """A sha256 of a state_dict's names, dtypes, shapes and values."""
    h = hashlib.sha256(b"state_dict")
    for name, value in state.items():
        h.update(name.encode())
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            h.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class CheckpointedFactory:
    """The user's factory with a checkpoint loaded strictly into each module it makes."""

    factory: Callable[[], nn.Module]
    state: Mapping[str, torch.Tensor]
    path: Path

    def __call__(self) -> nn.Module:
        model = self.factory()
        if not isinstance(model, nn.Module):  # as_staged names what it got
            return model
        return load_checkpoint(model, self.state, self.path)


def given_baseline(factory: Callable[[], nn.Module], data: DataSplits, *, model_digest: str,
                   checkpoint: Path | None = None, seed: int = 0) -> TrainedModel:
    """The fp32 model exactly as the user gives it: nothing is trained.

    With ``checkpoint``, its state_dict is loaded strictly into the factory's module; without,
    the factory's module is used as it comes (it loads its own weights). The key stands for the
    factory's source, the weights (a sha256 of every tensor: a checkpoint's content, wherever the
    file is) and the data, so every cache after it (exit heads, pruning, graphs) follows a
    changed checkpoint. The model only ever runs in eval mode here: its BatchNorm statistics
    stay the user's.

    Raises:
        ModelError: the checkpoint is missing, is not one, or does not fit the module; or the
            module does not map a sample to ``num_classes`` logits.
    """
    build: Callable[[], nn.Module] = factory
    if checkpoint is not None:
        build = CheckpointedFactory(factory, read_checkpoint(checkpoint), checkpoint)
    torch.manual_seed(seed)  # whatever the factory leaves random is then the same every time
    model = build_untrained(build, data)
    state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    key = stable_key("given", model_digest, state_digest(state), data.digest())
    accuracies = tuple(exit_accuracies(model, data.preprocess(data.calibration_x),
                                       data.calibration_y))
    return TrainedModel(factory=factory, state=state, key=key, exit_accuracies=accuracies,
                        from_cache=False)
