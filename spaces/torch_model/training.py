"""Training and finetuning of staged models, with optional distillation from a teacher."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from spaces.settings import FinetuneSettings, TrainSettings
from spaces.torch_model.staged_model import StagedModel


@dataclass(frozen=True)
class _Plan:
    total_steps: int
    schedule: str
    warmup: float


def _plan(settings: TrainSettings | FinetuneSettings, n: int) -> _Plan:
    if isinstance(settings, FinetuneSettings):
        return _Plan(settings.total_steps(n), settings.schedule, settings.warmup)
    steps_per_epoch = max(math.ceil(n / settings.batch_size), 1)
    return _Plan(settings.epochs * steps_per_epoch, "onecycle", 0.15)


def _scheduler(optimizer: torch.optim.Optimizer, plan: _Plan,
               lr: float) -> torch.optim.lr_scheduler.LRScheduler:
    total = max(plan.total_steps, 1)
    if plan.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total,
                                                   pct_start=plan.warmup)
    warm = int(plan.warmup * total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(total - warm, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _weights(settings: TrainSettings | FinetuneSettings, num_exits: int) -> list[float]:
    if settings.exit_weights:
        return list(settings.exit_weights)[-num_exits:]
    return [1.0] * num_exits


def _feature_loss(student: list[torch.Tensor], teacher: list[torch.Tensor],
                  channels: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Relative squared error of each stage's output to the teacher's kept channels."""
    loss = torch.zeros(())
    for s, t, kept in zip(student, teacher, channels, strict=True):
        if kept is None:
            continue
        target = t.index_select(1, kept)
        loss = loss + F.mse_loss(s, target) / (target.pow(2).mean() + 1e-8)
    return loss


#: ``cpu`` keeps training on the CPU on a machine whose torch has CUDA (``auto``: CUDA there).
TRAIN_DEVICE_ENV = "PARETOEDGE_TRAIN_DEVICE"


def training_device() -> torch.device:
    """Where training and finetuning run: CUDA where this node's torch has it (a build node
    with a GPU), unless ``PARETOEDGE_TRAIN_DEVICE=cpu``; else the CPU."""
    wanted = os.environ.get(TRAIN_DEVICE_ENV, "auto")
    if wanted not in ("auto", "cpu", "cuda"):
        raise ValueError(f"{TRAIN_DEVICE_ENV}={wanted!r}: expected auto, cpu or cuda")
    if wanted == "cpu" or (wanted == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"{TRAIN_DEVICE_ENV}=cuda, but this torch has no CUDA device")
    return torch.device("cuda")


def train_model(model: StagedModel, x: np.ndarray, y: np.ndarray,
                settings: TrainSettings | FinetuneSettings,
                teacher: StagedModel | None = None,
                teacher_channels: Sequence[torch.Tensor | None] | None = None,
                on_share: tuple[float, Callable[[], None]] | None = None) -> StagedModel:
    """Train every head jointly (cross-entropy, plus KL to ``teacher`` when distilling).

    ``x`` is preprocessed input; the model is trained in place and returned in eval mode. With a
    teacher, each exit learns from the teacher's final logits (or its own exit's, with
    ``distill_target="exit"``) softened by the distillation temperature (Hinton et al. 2015),
    mixed with cross-entropy by ``distill_alpha``.
    :class:`TrainSettings` train for ``epochs`` with a one-cycle schedule (the fp32 model);
    :class:`FinetuneSettings` bring a budget in epochs or steps and a schedule (a finetune).
    With ``distill_features`` > 0 and ``teacher_channels`` (the channels each stage kept, see
    :func:`spaces.torch_model.pruning.kept_stage_channels`), each stage's output also learns to
    reproduce the teacher's at those channels; the teacher then runs alongside, batch by batch.
    ``on_share=(share, callback)`` calls ``callback`` once, before the step at that share of
    the steps (in [0, 1]): the quantization-aware finetune starts its fake quantization there
    and freezes the BatchNorms (:mod:`spaces.torch_model.fake_quant`).
    """
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    device = training_device()
    model.to(device)
    if teacher is not None:
        teacher.to(device)
    if teacher_channels is not None:
        teacher_channels = [c.to(device) if c is not None else None for c in teacher_channels]
    inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    n = len(inputs)
    plan = _plan(settings, n)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    schedule = _scheduler(optimizer, plan, settings.lr)
    weights = _weights(settings, model.num_stages)
    feature_weight = getattr(settings, "distill_features", 0.0)
    hints = (teacher is not None and feature_weight > 0 and teacher_channels is not None
             and any(c is not None for c in teacher_channels))
    distills = teacher is not None and settings.distill_alpha > 0
    per_exit = getattr(settings, "distill_target", "final") == "exit"
    # the teacher's logits: computed once up front, unless it runs batch by batch for the hints
    teacher_logits: list[torch.Tensor] | None = None
    if teacher is not None:
        teacher.eval()
        if distills and not hints:
            with torch.no_grad():
                chunks = [[t.cpu() for t in teacher(inputs[i:i + 512].to(device))]
                          for i in range(0, n, 512)]
            teacher_logits = [torch.cat([c[k] for c in chunks]) for k in range(len(chunks[0]))]
    tau = settings.distill_temperature
    model.train()
    switch_step = None if on_share is None else int(on_share[0] * plan.total_steps)
    step = 0
    while step < plan.total_steps and n > 0:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, settings.batch_size):
            if step >= plan.total_steps:
                break
            if step == switch_step and on_share is not None:
                on_share[1]()
            index = order[start:start + settings.batch_size]
            batch, target = inputs[index].to(device), labels[index].to(device)
            loss = torch.zeros((), device=device)
            teacher_out: list[torch.Tensor] | None = None
            if hints:
                assert teacher is not None and teacher_channels is not None
                features, outputs = model.features_and_logits(batch)
                with torch.no_grad():
                    teacher_features, teacher_out = teacher.features_and_logits(batch)
                loss = loss + feature_weight * _feature_loss(features, teacher_features,
                                                             teacher_channels)
            else:
                outputs = model(batch)
                if teacher_logits is not None:
                    teacher_out = [t[index].to(device) for t in teacher_logits]
            for k, (weight, logits) in enumerate(zip(weights, outputs, strict=True)):
                term = F.cross_entropy(logits, target)
                if distills and teacher_out is not None:
                    soft = F.kl_div(F.log_softmax(logits / tau, dim=1),
                                    F.softmax(teacher_out[k if per_exit else -1] / tau, dim=1),
                                    reduction="batchmean") * tau * tau
                    term = (1 - settings.distill_alpha) * term + settings.distill_alpha * soft
                loss = loss + weight * term
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
    if teacher is not None:
        teacher.cpu()
    return model.cpu().eval()  # pruning, export and quantization run on the CPU


@torch.no_grad()
def exit_logits(model: StagedModel, x: np.ndarray) -> list[np.ndarray]:
    """Logits of every exit for a preprocessed batch."""
    model.eval()
    inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    chunks = [model(inputs[i:i + 512]) for i in range(0, len(inputs), 512)]
    return [torch.cat([c[k] for c in chunks]).numpy() for k in range(model.num_stages)]


def exit_accuracies(model: StagedModel, x: np.ndarray, y: np.ndarray) -> list[float]:
    return [float((logits.argmax(1) == y).mean()) for logits in exit_logits(model, x)]
