"""Exit heads retrofitted onto a plain model: trained once and cached, built into cascades that
reproduce the full model exactly when no exit is confident enough."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spaces.torch_model.exit_heads as exit_heads_module
from device_agents.bundle import verify_bundle
from device_agents.cascade import CascadeRunner
from spaces import (
    Candidate,
    DataSplits,
    ExitHeadSpec,
    ModelError,
    SplitError,
    TorchBuilder,
    TrainedModel,
    TrainSettings,
    retrofit_exits,
    train_or_load_baseline,
)
from spaces.torch_model.exit_heads import ExitHead
from spaces.torch_model.training import exit_logits

AFTER = ("layer1", "layer2")
FP32 = ("fp32", "fp32", "fp32")
SPEC = ExitHeadSpec(after=AFTER, epochs=20, lr=0.02)

pytestmark = pytest.mark.slow  # trains a plain model (a few seconds on a loaded machine)


class PlainNet(nn.Module):
    """A plain classifier (no StagedModel), its forward with functional calls."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.layer1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(16), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
                                    nn.BatchNorm2d(32), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False),
                                    nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(F.relu(self.stem(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("exit-heads-cache")


@pytest.fixture(scope="module")
def plain(digits: DataSplits, cache: Path) -> TrainedModel:
    return train_or_load_baseline(PlainNet, digits, TrainSettings(epochs=3, seed=0), cache,
                                  model_digest="tests-plain-net-v1")


@pytest.fixture(scope="module")
def retrofitted(plain: TrainedModel, digits: DataSplits, cache: Path) -> TrainedModel:
    return retrofit_exits(plain, digits, SPEC, cache)


@pytest.fixture(scope="module")
def retro_builder(retrofitted: TrainedModel, digits: DataSplits, builder: TorchBuilder,
                  tmp_path_factory: pytest.TempPathFactory) -> TorchBuilder:
    return TorchBuilder(trained=retrofitted, data=digits,
                            cache_dir=tmp_path_factory.mktemp("retro-build"),
                            settings=builder.settings)


def _test_inputs(data: DataSplits) -> torch.Tensor:
    return torch.from_numpy(data.preprocess(data.test_x))


# --- training and caching ----------------------------------------------------------------------


def test_frozen_heads_learn_and_leave_the_models_predictions_alone(
        plain: TrainedModel, retrofitted: TrainedModel, digits: DataSplits) -> None:
    model = retrofitted.fresh()
    assert model.num_stages == 3
    assert all(isinstance(h, ExitHead) for h in list(model.heads)[:2])
    with torch.no_grad():
        assert torch.equal(model(_test_inputs(digits))[-1],
                           plain.fresh()(_test_inputs(digits))[-1])
    accuracies = retrofitted.exit_accuracies
    assert accuracies[-1] == pytest.approx(plain.exit_accuracies[0])
    assert min(accuracies[:2]) > 0.3  # 10 classes: far above chance
    assert retrofitted.exits["source"] == "retrofitted"
    assert retrofitted.exits["after"] == list(AFTER)
    assert retrofitted.exits["baseline_key"] == plain.key


def test_heads_are_trained_once_per_baseline_and_cached(
        plain: TrainedModel, retrofitted: TrainedModel, digits: DataSplits, cache: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("trained cached exit heads again")

    monkeypatch.setattr(exit_heads_module, "fit_heads_on_frozen_backbone", forbidden)
    again = retrofit_exits(plain, digits, SPEC, cache)
    assert again.from_cache and again.key == retrofitted.key != plain.key
    assert again.exit_accuracies == pytest.approx(retrofitted.exit_accuracies)
    for name, tensor in retrofitted.state.items():
        assert torch.equal(again.state[name], tensor), name
    assert sorted(p.name for p in (cache / "exit_heads").iterdir()) == [
        f"{retrofitted.key}.json", f"{retrofitted.key}.pt"]
    with pytest.raises(AssertionError, match="trained cached exit heads again"):
        retrofit_exits(plain, digits, ExitHeadSpec(after=AFTER, epochs=20, lr=0.02, hidden=8),
                       cache)


def test_joint_training_moves_the_backbone_too(plain: TrainedModel, digits: DataSplits,
                                               cache: Path) -> None:
    spec = ExitHeadSpec(after=("layer2",), epochs=5, training="joint", joint_epochs=1,
                        loss_weights=(0.5, 1.0))
    joint = retrofit_exits(plain, digits, spec, cache)
    assert joint.fresh().num_stages == 2
    with torch.no_grad():
        x = _test_inputs(digits)
        assert not torch.equal(joint.fresh()(x)[-1], plain.fresh()(x)[-1])
    assert joint.exits["training"] == "joint"
    assert joint.exit_accuracies[-1] > 0.5


def test_bad_head_settings(plain: TrainedModel, digits: DataSplits, cache: Path) -> None:
    with pytest.raises(ModelError, match="2 loss weights for 3 exits"):
        ExitHeadSpec(after=AFTER, loss_weights=(1.0, 1.0))
    with pytest.raises(ModelError, match="training"):
        ExitHeadSpec(after=AFTER, training="thawed")
    with pytest.raises(SplitError, match="no module 'layer7'") as caught:
        retrofit_exits(plain, digits, ExitHeadSpec(after=("layer1", "layer7")), cache)
    assert caught.value.module == "layer7"


def test_a_model_that_declares_its_exits_takes_no_retrofit(trained: TrainedModel,
                                                           digits: DataSplits,
                                                           cache: Path) -> None:
    assert trained.fresh().num_stages == 3  # the tiny StagedModel of conftest
    with pytest.raises(SplitError, match="already declares its exits"):
        retrofit_exits(trained, digits, ExitHeadSpec(after=("stages.0",)), cache)


# --- bundles -------------------------------------------------------------------------------------


def _reachable_confidence(model: nn.Module, temperatures: tuple[float, ...],
                          data: DataSplits) -> float:
    """The highest calibrated max-softmax any early exit reaches on the test split."""
    logits = exit_logits(model, data.preprocess(data.test_x))
    return max(float(torch.softmax(torch.from_numpy(z) / t, 1).max())
               for z, t in zip(logits[:-1], temperatures[:-1], strict=True))


@pytest.mark.parametrize("declared", [False, True], ids=["retrofitted", "declared"])
def test_unreachable_thresholds_reproduce_the_full_model_exactly(
        declared: bool, retro_builder: TorchBuilder, builder: TorchBuilder,
        digits: DataSplits, tmp_path: Path) -> None:
    chosen = builder if declared else retro_builder
    model = chosen.trained.fresh()
    with torch.no_grad():
        expected = model(_test_inputs(digits))[-1].numpy()
    temperatures = chosen.pruned(0.0).temperatures
    reachable = _reachable_confidence(model, temperatures, digits)
    above = [1.0] + ([round((reachable + 1.0) / 2, 6)] if reachable < 1.0 else [])
    for threshold in above:
        built = chosen.build(Candidate(quantization=FP32, exit_thresholds=(threshold,) * 2),
                             tmp_path / f"t{threshold}")
        assert len(verify_bundle(built.directory).stages) == 3
        runner = CascadeRunner.load(built.directory)
        evaluation = runner.evaluate(digits.test_x, digits.test_y)
        assert evaluation.exits.tolist() == [2] * len(digits.test_x)
        assert evaluation.labels.tolist() == expected.argmax(1).tolist()
        for i in range(0, len(digits.test_x), 40):
            logits, exit_index = runner.run(digits.test_x[i])
            assert exit_index == 2
            np.testing.assert_allclose(logits, expected[i], rtol=1e-4, atol=1e-4)
    # ... and the bundle without exits is the same model as one graph
    single = CascadeRunner.load(chosen.build(Candidate(quantization=FP32),
                                             tmp_path / "single").directory)
    assert single.evaluate(digits.test_x, digits.test_y).labels.tolist() == \
        expected.argmax(1).tolist()


def test_retrofitted_cascade_exits_early_when_confident(retro_builder: TorchBuilder,
                                                        digits: DataSplits,
                                                        tmp_path: Path) -> None:
    built = retro_builder.build(Candidate(quantization=FP32, exit_thresholds=(0.6, 0.6)),
                                tmp_path / "exits")
    manifest = verify_bundle(built.directory)
    assert manifest.provenance["exits"]["source"] == "retrofitted"
    assert manifest.provenance["exits"]["after"] == list(AFTER)
    evaluation = CascadeRunner.load(built.directory).evaluate(digits.test_x, digits.test_y)
    assert evaluation.exit_rates[0] + evaluation.exit_rates[1] > 0.1
    assert evaluation.accuracy > 0.5


def test_retrofitted_heads_survive_pruning_and_int8(retro_builder: TorchBuilder,
                                                    digits: DataSplits, tmp_path: Path) -> None:
    candidate = Candidate(quantization=("int8", "fp32", "int8"), prune_ratio=0.5,
                          exit_thresholds=(0.9, 0.95))
    built = retro_builder.build(candidate, tmp_path / "pruned-int8")
    manifest = verify_bundle(built.directory)
    assert [s.file for s in manifest.stages] == ["stage0.onnx", "stage1.onnx", "stage2.onnx"]
    assert manifest.provenance["pruning_history"]
    assert built.info["integer_ops"] > 0
    assert built.info["macs_m"] < 0.6 * retro_builder.build(
        Candidate(quantization=FP32), tmp_path / "fp32").info["macs_m"]
    evaluation = CascadeRunner.load(built.directory).evaluate(digits.test_x, digits.test_y)
    assert evaluation.accuracy > 0.3
    assert len(evaluation.exit_eces) == 3
