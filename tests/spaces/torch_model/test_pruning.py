"""Structured pruning: channels really leave, classes stay, the history replays."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from spaces import BuildError, StagedModel, as_staged
from spaces.torch_model.pruning import (
    count_macs_params,
    kept_stage_channels,
    prune_model,
    replay_pruning,
)


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


@pytest.fixture
def trained_copy(trained) -> StagedModel:
    return trained.fresh()


def test_half_ratio_removes_channels(trained_copy: StagedModel, example: torch.Tensor) -> None:
    before_macs, before_params = count_macs_params(trained_copy, example)
    widths = [c.out_channels for c in _convs(trained_copy)]
    result = prune_model(trained_copy, 0.5, example, round_to=8)

    assert result.model is trained_copy  # in place
    assert [c.out_channels for c in _convs(result.model)] == [w // 2 for w in widths]
    # every consumer shrinks with its producer: next conv inputs, BatchNorm, heads' inputs
    convs = _convs(result.model)
    assert [c.in_channels for c in convs[1:]] == [c.out_channels for c in convs[:-1]]
    for bn in (m for m in result.model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert bn.num_features == widths[0] // 2
    assert all(lin.in_features == widths[0] // 2 for lin in _linears(result.model))

    # roughly (1 - r) for the first conv and the heads, (1 - r)^2 for the inner convs
    assert 0.15 * before_params < result.params < 0.6 * before_params
    assert 0.15 * before_macs < result.macs < 0.6 * before_macs
    assert (result.macs, result.params) == count_macs_params(result.model, example)
    assert result.history


def test_classifiers_keep_the_classes(trained_copy: StagedModel, example: torch.Tensor) -> None:
    prune_model(trained_copy, 0.5, example)
    assert [lin.out_features for lin in _linears(trained_copy)] == [10, 10, 10]
    outputs = trained_copy(torch.zeros(4, 1, 8, 8))
    assert [tuple(o.shape) for o in outputs] == [(4, 10)] * 3


def test_ratio_zero_changes_nothing(trained_copy: StagedModel, example: torch.Tensor) -> None:
    shapes = _shapes(trained_copy)
    result = prune_model(trained_copy, 0.0, example)
    assert result.history == []
    assert _shapes(result.model) == shapes


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_outside_range_raises(trained_copy: StagedModel, example: torch.Tensor,
                                    ratio: float) -> None:
    with pytest.raises(BuildError, match="outside"):
        prune_model(trained_copy, ratio, example)


def test_unknown_importance_raises(trained_copy: StagedModel, example: torch.Tensor) -> None:
    with pytest.raises(BuildError, match="importance"):
        prune_model(trained_copy, 0.5, example, importance="random")


def test_l1_importance_also_prunes(trained_copy: StagedModel, example: torch.Tensor) -> None:
    result = prune_model(trained_copy, 0.5, example, importance="l1")
    assert [c.out_channels for c in _convs(result.model)] == [8, 8, 8]


def test_replay_gives_the_same_architecture(trained, example: torch.Tensor) -> None:
    pruned = prune_model(trained.fresh(), 0.5, example)
    # the history goes through JSON in the cache and the bundle's provenance
    history = json.loads(json.dumps(pruned.history))
    fresh = trained.fresh()
    replayed = replay_pruning(fresh, history, example)
    assert _shapes(replayed) == _shapes(pruned.model)
    replayed.load_state_dict(pruned.model.state_dict())  # strict: every key and shape matches
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        for a, b in zip(replayed.eval()(x), pruned.model.eval()(x), strict=True):
            torch.testing.assert_close(a, b)


def test_replay_of_empty_history_is_a_no_op(trained, example: torch.Tensor) -> None:
    model = trained.fresh()
    shapes = _shapes(model)
    assert _shapes(replay_pruning(model, [], example)) == shapes


def test_plain_classifier_keeps_its_output_layer(example: torch.Tensor) -> None:
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 10))
    model = as_staged(plain).eval()
    prune_model(model, 0.5, example)
    assert [c.out_channels for c in _convs(model)] == [8, 8]
    assert _linears(model)[-1].out_features == 10
    assert tuple(model(example)[-1].shape) == (1, 10)


def test_kept_channels_name_the_teacher_channels_each_stage_kept(trained,
                                                                 example: torch.Tensor) -> None:
    teacher = trained.fresh().eval()
    pruned = prune_model(trained.fresh(), 0.5, example)
    kept = kept_stage_channels(trained.fresh(), pruned.history, example)
    student_features, _ = pruned.model.eval().features_and_logits(example)
    assert [len(k) for k in kept] == [f.shape[1] for f in student_features]
    # stage 0 is one conv: its kept filters are the teacher's filters at those indices
    torch.testing.assert_close(_convs(pruned.model)[0].weight,
                               _convs(teacher)[0].weight.index_select(0, kept[0]))
    with torch.no_grad():
        teacher_features, _ = teacher.features_and_logits(example)
        torch.testing.assert_close(student_features[0],
                                   teacher_features[0].index_select(1, kept[0]))


def test_kept_channels_of_an_unpruned_model_are_all_of_them(trained,
                                                            example: torch.Tensor) -> None:
    kept = kept_stage_channels(trained.fresh(), [], example)
    widths = [f.shape[1] for f in trained.fresh().eval().features_and_logits(example)[0]]
    assert [k.tolist() for k in kept] == [list(range(w)) for w in widths]


def test_a_stage_without_a_head_layer_has_no_kept_channels(example: torch.Tensor) -> None:
    plain = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 64, 10))
    model = as_staged(plain)
    pruned = prune_model(as_staged(plain), 0.5, example)
    assert kept_stage_channels(model, pruned.history, example) == [None]
