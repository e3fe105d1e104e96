"""How candidates are built, not searched: training, finetune, pruning and quantization settings.

These are the knobs of a build, plain frozen dataclasses with ``to_dict`` for cache keys and
provenance; they import no torch, so a graph-only build and config validation can use them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from spaces.errors import BuildError, ModelError

SCHEDULES = ("onecycle", "cosine")


DISTILL_TARGETS = ("final", "exit")


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


@dataclass(frozen=True)
class FinetuneSettings:
    """The finetune of a pruned model: a budget, a learning-rate schedule, distillation.

    The budget is ``steps`` optimizer steps when set (> 0), else ``epochs`` passes over the
    training samples; ``train_subset`` (> 0) finetunes on that many training samples, drawn by
    ``seed``. ``schedule`` is ``onecycle`` (warm-up for ``warmup`` of the steps, then annealing)
    or ``cosine`` (linear warm-up for ``warmup`` of the steps, then cosine decay to zero). Every
    exit head is finetuned; with ``distill_alpha`` > 0 each exit also learns from the unpruned
    teacher's logits softened by ``distill_temperature``: the teacher's final logits
    (``distill_target="final"``) or those of the same exit (``"exit"``).

    Example:
        >>> FinetuneSettings(steps=200, schedule="cosine").total_steps(n_samples=1000)
        200
    """

    epochs: int = 4
    steps: int = 0
    train_subset: int = 0
    lr: float = 2e-3
    weight_decay: float = 5e-4
    batch_size: int = 64
    schedule: str = "onecycle"
    warmup: float = 0.15
    distill_alpha: float = 0.5
    distill_temperature: float = 1.0
    exit_weights: tuple[float, ...] = ()
    seed: int = 0
    distill_target: str = "final"
    distill_features: float = 1.0

    def __post_init__(self) -> None:
        if self.distill_target not in DISTILL_TARGETS:
            raise BuildError(f"finetune distill_target {self.distill_target!r} is not one of "
                             f"{DISTILL_TARGETS}")
        if self.schedule not in SCHEDULES:
            raise BuildError(f"finetune schedule {self.schedule!r} is not one of {SCHEDULES}")
        if not 0.0 <= self.warmup < 1.0:
            raise BuildError(f"finetune warmup {self.warmup} is outside [0, 1)")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise BuildError(f"finetune distill_alpha {self.distill_alpha} is outside [0, 1]")
        if self.distill_features < 0:
            raise BuildError(f"finetune distill_features {self.distill_features} is negative")

    def total_steps(self, n_samples: int) -> int:
        if self.steps > 0:
            return self.steps
        n = min(n_samples, self.train_subset) if self.train_subset > 0 else n_samples
        return self.epochs * max(math.ceil(n / self.batch_size), 1)

    def subset_indices(self, n_samples: int) -> np.ndarray:
        """The training samples the finetune uses (all of them, or a seeded subset)."""
        if self.train_subset <= 0 or self.train_subset >= n_samples:
            return np.arange(n_samples)
        chosen = np.random.default_rng(self.seed).permutation(n_samples)[: self.train_subset]
        return np.sort(chosen)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "epochs": self.epochs, "steps": self.steps, "train_subset": self.train_subset,
            "lr": self.lr, "weight_decay": self.weight_decay, "batch_size": self.batch_size,
            "schedule": self.schedule, "warmup": self.warmup,
            "distill_alpha": self.distill_alpha, "distill_temperature": self.distill_temperature,
            "exit_weights": list(self.exit_weights), "seed": self.seed}
        if self.distill_target != "final":  # keys of entries cached before the option stay
            out["distill_target"] = self.distill_target
        if self.distill_features > 0:
            out["distill_features"] = self.distill_features
        return out


IMPORTANCE = ("l1", "l2", "taylor")


MAX_RATIO = 0.95


@dataclass(frozen=True)
class PruningSettings:
    """How channels are chosen and rounded (the ratios themselves come from the candidate).

    ``importance`` is ``l1``/``l2`` (weight magnitude) or ``taylor`` (first-order Taylor
    expansion of the loss, from gradients on ``taylor_batches`` training batches);
    ``round_to`` keeps channel counts multiples of it; ``ignored_layers`` names modules (as in
    ``model.named_modules()``, e.g. ``stages.1.conv1``) whose output channels are never pruned,
    on top of the heads, which are never pruned.

    Example:
        >>> PruningSettings(importance="taylor", round_to=16).to_dict()["importance"]
        'taylor'
    """

    importance: str = "l2"
    round_to: int = 8
    taylor_batches: int = 4
    ignored_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.importance not in IMPORTANCE:
            raise BuildError(f"pruning importance {self.importance!r} is not one of "
                             f"{IMPORTANCE}")
        if self.round_to < 1:
            raise BuildError(f"pruning round_to {self.round_to} must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"importance": self.importance, "round_to": self.round_to,
                               "ignored_layers": list(self.ignored_layers)}
        if self.importance == "taylor":
            out["taylor_batches"] = self.taylor_batches
        return out


@dataclass(frozen=True)
class QuantSettings:
    """How int8 groups are quantized."""

    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    method: str = "minmax"
    calibration_samples: int = 256
    weight_only_block_size: int = 32
    weight_only_accuracy_level: int = 4
    weight_only_symmetric: bool = True

    def to_dict(self) -> dict[str, object]:
        return {"activation_type": self.activation_type, "weight_type": self.weight_type,
                "per_channel": self.per_channel, "method": self.method,
                "calibration_samples": self.calibration_samples,
                "weight_only_block_size": self.weight_only_block_size,
                "weight_only_accuracy_level": self.weight_only_accuracy_level,
                "weight_only_symmetric": self.weight_only_symmetric}


#: The fidelity of a candidate promoted to the long finetune (``pruning.finetune_full``).
FULL_FIDELITY = "full"


@dataclass(frozen=True)
class BuildSettings:
    """How candidates are built (not searched): finetune, quantization, pruning details."""

    finetune: FinetuneSettings = FinetuneSettings()
    quant: QuantSettings = QuantSettings()
    pruning: PruningSettings = PruningSettings()
    confidence: str = "max_softmax"
    exit_fallback: str = "last"
    #: the long finetune of candidates promoted to the full fidelity (None: one fidelity)
    finetune_full: FinetuneSettings | None = None

    def finetune_for(self, fidelity: str) -> FinetuneSettings:
        """The finetune of a fidelity: ``""`` (screening, the only one without promotion) or
        ``"full"``."""
        if fidelity == "":
            return self.finetune
        if fidelity == FULL_FIDELITY and self.finetune_full is not None:
            return self.finetune_full
        raise ValueError(f"fidelity {fidelity!r}: the build settings have "
                         f"{'no full finetune' if fidelity == FULL_FIDELITY else 'no such one'}")

    def to_dict(self) -> dict[str, Any]:
        out = {"finetune": self.finetune.to_dict(), "quant": self.quant.to_dict(),
               "pruning": self.pruning.to_dict(), "confidence": self.confidence,
               "exit_fallback": self.exit_fallback}
        if self.finetune_full is not None:
            out["finetune_full"] = self.finetune_full.to_dict()
        return out


HEAD_TRAINING = ("frozen", "joint")


@dataclass(frozen=True)
class ExitHeadSpec:
    """Where exit heads go, what they look like and how they are trained.

    The heads are first fitted for ``epochs`` on the frozen backbone (on pooled features,
    computed once: cheap). With ``training="joint"`` the backbone and every head are then
    trained together for ``joint_epochs`` at ``joint_lr``, which changes the model's own
    predictions too. ``loss_weights`` has one weight per exit, the model's own classifier last
    (empty: all 1; the classifier's weight only matters when training jointly).
    """

    after: tuple[str, ...]
    hidden: int = 0
    training: str = "frozen"
    epochs: int = 30
    lr: float = 0.01
    joint_epochs: int = 2
    joint_lr: float = 1e-3
    weight_decay: float = 5e-4
    batch_size: int = 128
    loss_weights: tuple[float, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.training not in HEAD_TRAINING:
            raise ModelError(f"exit heads: training {self.training!r} is not one of "
                             f"{', '.join(HEAD_TRAINING)}")
        if self.loss_weights and len(self.loss_weights) != len(self.after) + 1:
            raise ModelError(f"exit heads: {len(self.loss_weights)} loss weights for "
                             f"{len(self.after) + 1} exits (one per exit, the classifier last)")

    def weights(self) -> list[float]:
        return list(self.loss_weights) or [1.0] * (len(self.after) + 1)

    def to_dict(self) -> dict[str, Any]:
        return {"after": list(self.after), "hidden": self.hidden, "training": self.training,
                "epochs": self.epochs, "lr": self.lr, "weight_decay": self.weight_decay,
                "joint_epochs": self.joint_epochs if self.training == "joint" else 0,
                "joint_lr": self.joint_lr if self.training == "joint" else 0.0,
                "batch_size": self.batch_size, "loss_weights": list(self.loss_weights),
                "seed": self.seed}
