"""Training and finetuning of staged models, with optional distillation from a teacher."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from spaces.staged_model import StagedModel


@dataclass(frozen=True)
class TrainSettings:
    """One training run. ``exit_weights`` weight the heads' losses (last = the classifier)."""

    epochs: int = 30
    lr: float = 3e-3
    weight_decay: float = 5e-4
    batch_size: int = 64
    exit_weights: tuple[float, ...] = ()
    distill_alpha: float = 0.0
    distill_temperature: float = 4.0
    seed: int = 0

    def to_dict(self) -> dict[str, object]:
        return {"epochs": self.epochs, "lr": self.lr, "weight_decay": self.weight_decay,
                "batch_size": self.batch_size, "exit_weights": list(self.exit_weights),
                "distill_alpha": self.distill_alpha,
                "distill_temperature": self.distill_temperature, "seed": self.seed}


def _weights(settings: TrainSettings, num_exits: int) -> list[float]:
    if settings.exit_weights:
        return list(settings.exit_weights)[-num_exits:]
    return [1.0] * num_exits


def train_model(model: StagedModel, x: np.ndarray, y: np.ndarray, settings: TrainSettings,
                teacher: StagedModel | None = None) -> StagedModel:
    """Train every head jointly (cross-entropy, plus KL to ``teacher`` when distilling).

    ``x`` is preprocessed input; the model is trained in place and returned in eval mode. With a
    teacher, each exit learns from the teacher's final logits softened by the distillation
    temperature (Hinton et al. 2015), mixed with cross-entropy by ``distill_alpha``.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    n = len(inputs)
    steps_per_epoch = max(math.ceil(n / settings.batch_size), 1)
    total = max(settings.epochs * steps_per_epoch, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr,
                                                   total_steps=total, pct_start=0.15)
    weights = _weights(settings, model.num_stages)
    teacher_logits = None
    if teacher is not None and settings.distill_alpha > 0:
        teacher.eval()
        with torch.no_grad():
            teacher_logits = torch.cat([teacher(inputs[i:i + 512])[-1]
                                        for i in range(0, n, 512)])
    tau = settings.distill_temperature
    model.train()
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, settings.batch_size):
            index = order[start:start + settings.batch_size]
            outputs = model(inputs[index])
            target = labels[index]
            loss = torch.zeros(())
            for weight, logits in zip(weights, outputs, strict=True):
                term = F.cross_entropy(logits, target)
                if teacher_logits is not None:
                    soft = F.kl_div(F.log_softmax(logits / tau, dim=1),
                                    F.softmax(teacher_logits[index] / tau, dim=1),
                                    reduction="batchmean") * tau * tau
                    term = (1 - settings.distill_alpha) * term + settings.distill_alpha * soft
                loss = loss + weight * term
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def exit_logits(model: StagedModel, x: np.ndarray) -> list[np.ndarray]:
    """Logits of every exit for a preprocessed batch."""
    model.eval()
    inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    chunks = [model(inputs[i:i + 512]) for i in range(0, len(inputs), 512)]
    return [torch.cat([c[k] for c in chunks]).numpy() for k in range(model.num_stages)]


def exit_accuracies(model: StagedModel, x: np.ndarray, y: np.ndarray) -> list[float]:
    return [float((logits.argmax(1) == y).mean()) for logits in exit_logits(model, x)]
