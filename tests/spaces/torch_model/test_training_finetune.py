"""The finetune after pruning: budget in epochs or steps, schedules, subsets, distillation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spaces import BuildError, DataSplits, FinetuneSettings, TrainSettings
from spaces.torch_model.pruning import kept_stage_channels, prune_model, replay_pruning
from spaces.torch_model.training import _Plan, _scheduler, exit_logits, train_model


def _count_training_forwards(model) -> list[int]:
    calls = [0]

    def hook(module, args):
        if module.training:
            calls[0] += 1

    model.register_forward_pre_hook(hook)
    return calls


def _xy(data: DataSplits, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    return data.preprocess(data.train_x[:n]), data.train_y[:n]


def test_budget_in_steps_overrides_epochs(trained, digits: DataSplits) -> None:
    x, y = _xy(digits)
    model = trained.fresh()
    calls = _count_training_forwards(model)
    train_model(model, x, y, FinetuneSettings(epochs=9, steps=7, batch_size=64,
                                              distill_alpha=0.0))
    assert calls[0] == 7
    assert not model.training


def test_steps_can_run_over_several_epochs(trained, digits: DataSplits) -> None:
    x, y = _xy(digits, 100)  # 2 batches per epoch
    model = trained.fresh()
    calls = _count_training_forwards(model)
    train_model(model, x, y, FinetuneSettings(steps=5, batch_size=64, distill_alpha=0.0))
    assert calls[0] == 5


def test_budget_in_epochs_and_subset() -> None:
    assert FinetuneSettings(epochs=2, batch_size=64).total_steps(1000) == 32
    assert FinetuneSettings(epochs=2, batch_size=64, train_subset=128).total_steps(1000) == 4
    assert FinetuneSettings(epochs=2, steps=3).total_steps(1000) == 3
    settings = FinetuneSettings(train_subset=50, seed=3)
    chosen = settings.subset_indices(1000)
    assert len(chosen) == 50 == len(set(chosen.tolist()))
    assert np.array_equal(chosen, FinetuneSettings(train_subset=50, seed=3).subset_indices(1000))
    assert not np.array_equal(chosen, FinetuneSettings(train_subset=50, seed=4)
                              .subset_indices(1000))
    assert np.array_equal(FinetuneSettings().subset_indices(10), np.arange(10))
    assert np.array_equal(FinetuneSettings(train_subset=20).subset_indices(10), np.arange(10))


def _learning_rates(schedule: str, total: int, warmup: float) -> list[float]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = _scheduler(optimizer, _Plan(total, schedule, warmup), 0.1)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_cosine_schedule_warms_up_then_decays_to_zero() -> None:
    rates = _learning_rates("cosine", 100, 0.1)
    assert rates[0] == pytest.approx(0.01)  # 1/10 of the warm-up
    assert max(rates) == pytest.approx(0.1) and rates.index(max(rates)) in (9, 10)
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))  # monotone decay
    assert rates[-1] < 0.001
    assert rates[55] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))


def test_onecycle_schedule_peaks_after_its_warmup() -> None:
    rates = _learning_rates("onecycle", 100, 0.3)
    peak = rates.index(max(rates))
    assert 25 <= peak <= 31
    assert rates[0] < 0.1 * 0.1 and rates[-1] < 0.1 * 0.01


def test_bad_settings_are_named() -> None:
    with pytest.raises(BuildError, match="schedule 'linear'"):
        FinetuneSettings(schedule="linear")
    with pytest.raises(BuildError, match=r"warmup 1\.0"):
        FinetuneSettings(warmup=1.0)
    with pytest.raises(BuildError, match=r"distill_alpha 1\.5"):
        FinetuneSettings(distill_alpha=1.5)
    with pytest.raises(BuildError, match="distill_target 'middle'"):
        FinetuneSettings(distill_target="middle")


def test_distill_target_is_in_the_dict_only_when_not_the_default() -> None:
    assert "distill_target" not in FinetuneSettings().to_dict()
    assert FinetuneSettings(distill_target="exit").to_dict()["distill_target"] == "exit"


def test_every_exit_head_is_finetuned(trained, digits: DataSplits) -> None:
    x, y = _xy(digits)
    model = trained.fresh()
    before = [h[-1].weight.detach().clone() for h in model.heads]
    train_model(model, x, y, FinetuneSettings(steps=3, distill_alpha=0.5),
                teacher=trained.fresh())
    assert all(not torch.equal(b, h[-1].weight) for b, h in zip(before, model.heads,
                                                                   strict=True))


def _kl_to_teacher(student, teacher, x: np.ndarray, tau: float = 4.0) -> list[float]:
    s, t = exit_logits(student, x), exit_logits(teacher, x)[-1]
    teacher_p = F.softmax(torch.from_numpy(t) / tau, dim=1)
    return [float(F.kl_div(F.log_softmax(torch.from_numpy(lg) / tau, dim=1), teacher_p,
                           reduction="batchmean")) for lg in s]


def _kl_to_teacher_exits(student, teacher, x: np.ndarray, tau: float = 4.0) -> list[float]:
    s, t = exit_logits(student, x), exit_logits(teacher, x)
    return [float(F.kl_div(F.log_softmax(torch.from_numpy(a) / tau, dim=1),
                           F.softmax(torch.from_numpy(b) / tau, dim=1), reduction="batchmean"))
            for a, b in zip(s, t, strict=True)]


def test_per_exit_distillation_follows_the_teachers_own_exits(trained, digits: DataSplits,
                                                              tiny_factory) -> None:
    x, y = _xy(digits, 600)
    wrong = np.random.default_rng(0).permutation(y)
    held_out = digits.preprocess(digits.val_x)
    students = {}
    for target in ("final", "exit"):
        torch.manual_seed(1)
        settings = FinetuneSettings(epochs=4, lr=5e-3, distill_alpha=1.0, distill_target=target)
        students[target] = train_model(tiny_factory().eval(), x, wrong, settings,
                                       teacher=trained.fresh())
    per_exit = _kl_to_teacher_exits(students["exit"], trained.fresh(), held_out)
    to_final = _kl_to_teacher_exits(students["final"], trained.fresh(), held_out)
    # exit 0 imitates the teacher's exit 0 better when that is what it is taught
    assert per_exit[0] < to_final[0]
    assert per_exit[-1] == pytest.approx(to_final[-1], rel=0.5)  # the last exit: same target


def test_distillation_pulls_every_exit_towards_the_teacher(trained, digits: DataSplits,
                                                           tiny_factory) -> None:
    """alpha = 1 is pure distillation: with shuffled labels, only the teacher can teach."""
    x, y = _xy(digits, 600)
    wrong = np.random.default_rng(0).permutation(y)
    tiny_model = tiny_factory
    torch.manual_seed(1)
    untrained = tiny_model()
    settings = FinetuneSettings(epochs=4, lr=5e-3, distill_alpha=1.0)
    student = train_model(tiny_model().eval(), x, wrong, settings, teacher=trained.fresh())
    plain = train_model(tiny_model().eval(), x, wrong,
                        FinetuneSettings(epochs=4, lr=5e-3, distill_alpha=0.0))
    held_out = digits.preprocess(digits.val_x)
    distilled_kl = _kl_to_teacher(student, trained.fresh(), held_out)
    plain_kl = _kl_to_teacher(plain, trained.fresh(), held_out)
    start_kl = _kl_to_teacher(untrained.eval(), trained.fresh(), held_out)
    assert all(d < p for d, p in zip(distilled_kl, plain_kl, strict=True))
    assert all(d < s for d, s in zip(distilled_kl, start_kl, strict=True))
    agreement = (exit_logits(student, held_out)[-1].argmax(1)
                 == exit_logits(trained.fresh(), held_out)[-1].argmax(1)).mean()
    assert agreement > 0.5  # learned the teacher's labels, not the shuffled ones


def _reference_train(model, x, y, settings: TrainSettings):
    """train_model as it was before finetune settings existed (the fp32 model's training)."""
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
    model.train()
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, settings.batch_size):
            index = order[start:start + settings.batch_size]
            loss = sum(F.cross_entropy(lg, labels[index]) for lg in model(inputs[index]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def test_the_fp32_training_is_unchanged(digits: DataSplits, tiny_factory) -> None:
    """The cached fp32 models stay valid: TrainSettings train exactly as before."""
    tiny_model = tiny_factory
    x, y = _xy(digits, 200)
    settings = TrainSettings(epochs=2, batch_size=32, seed=5)
    torch.manual_seed(0)
    a = tiny_model()
    b = tiny_model()
    b.load_state_dict(a.state_dict())
    train_model(a, x, y, settings)
    _reference_train(b, x, y, settings)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_feature_distillation_pulls_pruned_stages_towards_the_teachers_kept_channels(
        trained, digits: DataSplits) -> None:
    x, y = _xy(digits, 600)
    example = torch.from_numpy(x[:1])
    pruned = prune_model(trained.fresh(), 0.5, example)
    kept = kept_stage_channels(trained.fresh(), pruned.history, example)
    teacher = trained.fresh().eval()
    held_out = torch.from_numpy(digits.preprocess(digits.val_x))

    def feature_error(settings: FinetuneSettings) -> float:
        student = replay_pruning(trained.fresh(), pruned.history, example)
        student.load_state_dict(pruned.model.state_dict())
        torch.manual_seed(1)
        train_model(student, x, y, settings, teacher=trained.fresh(), teacher_channels=kept)
        with torch.no_grad():
            s, _ = student.features_and_logits(held_out)
            t, _ = teacher.features_and_logits(held_out)
        return sum(float(F.mse_loss(a, b.index_select(1, k)))
                   for a, b, k in zip(s, t, kept, strict=True))

    plain = feature_error(FinetuneSettings(epochs=3, lr=5e-3, distill_alpha=0.0,
                                           distill_features=0.0))
    hinted = feature_error(FinetuneSettings(epochs=3, lr=5e-3, distill_alpha=0.0,
                                            distill_features=1.0))
    assert hinted < plain


def test_feature_weight_is_in_the_dict_only_when_set() -> None:
    assert "distill_features" not in FinetuneSettings(distill_features=0.0).to_dict()
    assert FinetuneSettings().to_dict()["distill_features"] == 1.0
    with pytest.raises(BuildError, match="distill_features"):
        FinetuneSettings(distill_features=-1.0)


def test_training_runs_on_cuda_only_where_this_torch_has_it(monkeypatch) -> None:
    """A build node whose torch has CUDA finetunes there (``auto``); ``cpu`` keeps it on the
    CPU; asking for ``cuda`` without a device, or for something else, is an error. The model
    always comes back on the CPU (pruning, export and quantization run there)."""
    from spaces.torch_model.training import TRAIN_DEVICE_ENV, training_device

    monkeypatch.setenv(TRAIN_DEVICE_ENV, "cpu")
    assert training_device().type == "cpu"
    monkeypatch.setenv(TRAIN_DEVICE_ENV, "auto")
    assert training_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv(TRAIN_DEVICE_ENV, "tpu")
    with pytest.raises(ValueError, match="expected auto, cpu or cuda"):
        training_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv(TRAIN_DEVICE_ENV, "cuda")
        with pytest.raises(ValueError, match="no CUDA device"):
            training_device()
