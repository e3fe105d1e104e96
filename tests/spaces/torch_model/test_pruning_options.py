"""Pruning options: importance criteria, per-stage ratios, ignored layers, channel rounding."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from spaces import BuildError, DataSplits, SpaceError, StagedModel
from spaces.settings import PruningSettings
from spaces.torch_model.pruning import prune_model, replay_pruning


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _batches(data: DataSplits, n: int = 2, size: int = 64) -> list[tuple[torch.Tensor, ...]]:
    x = torch.from_numpy(data.preprocess(data.train_x[: n * size]))
    y = torch.from_numpy(data.train_y[: n * size])
    return [(x[i:i + size], y[i:i + size]) for i in range(0, n * size, size)]


def test_per_stage_ratios_prune_each_stage_by_its_own_ratio(trained, example) -> None:
    model = trained.fresh()
    result = prune_model(model, 0.0, example, stage_ratios=(0.0, 0.5, 0.0), round_to=8)
    assert [c.out_channels for c in _convs(model)] == [16, 8, 16]
    # consumers shrink with their producer: the next stage's conv and head 1's classifier
    assert [c.in_channels for c in _convs(model)] == [1, 16, 8]
    assert [lin.in_features for lin in _linears(model)] == [16, 8, 16]
    assert [lin.out_features for lin in _linears(model)] == [10, 10, 10]  # heads keep classes
    assert result.history
    assert [tuple(o.shape) for o in model(torch.zeros(2, 1, 8, 8))] == [(2, 10)] * 3


def test_per_stage_ratios_replay_like_a_global_ratio(trained, example) -> None:
    pruned = prune_model(trained.fresh(), 0.0, example, stage_ratios=(0.5, 0.0, 0.5))
    replayed = replay_pruning(trained.fresh(), json.loads(json.dumps(pruned.history)), example)
    replayed.load_state_dict(pruned.model.state_dict())  # strict: same architecture
    assert [c.out_channels for c in _convs(replayed)] == [8, 16, 8]


def test_stage_ratios_must_match_the_stages_and_the_range(trained, example) -> None:
    with pytest.raises(BuildError, match="2 stage pruning ratios"):
        prune_model(trained.fresh(), 0.0, example, stage_ratios=(0.5, 0.5))
    with pytest.raises(BuildError, match=r"stage 2 .* outside"):
        prune_model(trained.fresh(), 0.0, example, stage_ratios=(0.5, 0.5, 0.96))
    with pytest.raises(BuildError, match=r"0.97 is outside \[0, 0.95\]"):
        prune_model(trained.fresh(), 0.97, example)


@pytest.mark.parametrize(("ratio", "round_to", "expected"), [(0.95, 1, 1), (0.75, 8, 8),
                                                              (0.95, 8, 8), (0.75, 4, 4)])
def test_a_layer_keeps_at_least_round_to_channels(trained, example, ratio: float,
                                                  round_to: int, expected: int) -> None:
    result = prune_model(trained.fresh(), ratio, example, round_to=round_to)
    assert [c.out_channels for c in _convs(result.model)] == [expected] * 3
    assert [tuple(o.shape) for o in result.model(example)] == [(1, 10)] * 3


@pytest.mark.parametrize(("round_to", "expected"), [(1, 12), (4, 12), (8, 8)])
def test_round_to_keeps_multiples(trained, example, round_to: int, expected: int) -> None:
    result = prune_model(trained.fresh(), 0.25, example, round_to=round_to)
    assert [c.out_channels for c in _convs(result.model)] == [expected] * 3


def test_ignored_layers_keep_their_channels(trained, example) -> None:
    model = trained.fresh()
    prune_model(model, 0.5, example, ignored_layers=("stages.1.0",))
    assert [c.out_channels for c in _convs(model)] == [8, 16, 8]


def test_an_unknown_layer_name_is_named(trained, example) -> None:
    with pytest.raises(SpaceError, match=r"pruning.ignored_layers: .*'stages.1.9'.*"
                                         r"did you mean 'stages.1.\d'"):
        prune_model(trained.fresh(), 0.5, example, ignored_layers=("stages.1.9",))


def test_taylor_importance_uses_gradients(trained, example, digits: DataSplits) -> None:
    magnitude = prune_model(trained.fresh(), 0.5, example, importance="l2")
    taylor = prune_model(trained.fresh(), 0.5, example, importance="taylor",
                         taylor_batches=_batches(digits))
    assert [c.out_channels for c in _convs(taylor.model)] == [8, 8, 8]
    assert taylor.history != magnitude.history  # a different criterion keeps other channels
    assert all(p.grad is None for p in taylor.model.parameters())  # gradients cleaned up
    assert not taylor.model.training
    # BatchNorm statistics are untouched by the gradient passes (eval mode)
    fresh = trained.fresh()
    counts = {n: int(b) for n, b in fresh.named_buffers() if n.endswith("num_batches_tracked")}
    assert {n: int(b) for n, b in taylor.model.named_buffers() if n in counts} == counts


def test_taylor_without_batches_is_a_build_error(trained, example) -> None:
    with pytest.raises(BuildError, match="taylor importance needs training batches"):
        prune_model(trained.fresh(), 0.5, example, importance="taylor")


def test_pruning_settings_validate_and_serialise() -> None:
    with pytest.raises(BuildError, match="importance 'random'"):
        PruningSettings(importance="random")
    with pytest.raises(BuildError, match="round_to 0"):
        PruningSettings(round_to=0)
    assert "taylor_batches" not in PruningSettings().to_dict()
    assert PruningSettings(importance="taylor", taylor_batches=2).to_dict() == {
        "importance": "taylor", "round_to": 8, "ignored_layers": [], "taylor_batches": 2}


def test_exit_heads_with_hidden_layers_are_never_pruned(example) -> None:
    torch.manual_seed(0)

    def head(c: int) -> nn.Module:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 24), nn.ReLU(),
                             nn.Linear(24, 10))

    model = StagedModel(stages=[nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU()),
                                nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())],
                        heads=[head(16), head(16)]).eval()
    prune_model(model, 0.5, example)
    assert [c.out_channels for c in _convs(model)] == [8, 8]
    # the heads' inputs shrink with their stage, their hidden and output widths never do
    assert [(lin.in_features, lin.out_features) for lin in _linears(model)] == [
        (8, 24), (24, 10), (8, 24), (24, 10)]
