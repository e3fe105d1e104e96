"""split_model: a plain model cut after named modules computes exactly what the model does."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spaces import SplitError, split_model


class Block(nn.Module):
    """A residual block: its skip connection stays inside the block."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Identity() if c_in == c_out and stride == 1
                         else nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)) + self.shortcut(x))


class PlainNet(nn.Module):
    """A torchvision-style classifier: functional calls in its forward, no StagedModel."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.layer1 = Block(8, 8)
        self.layer2 = Block(8, 16, 2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(F.relu(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class LongSkip(PlainNet):
    """The stem's output is added after layer2: no cut between them is possible."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = F.relu(self.stem(x))
        x = self.layer2(self.layer1(stem) + stem)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Twice(PlainNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.layer1(F.relu(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layer2(x), 1), 1))


class Untraceable(nn.Module):
    """Data-dependent control flow defeats torch.fx; the forward runs its children in order."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        if x.sum() > 1e9:  # never true, but torch.fx cannot know
            x = x * 0
        return x


class UntraceableShuffled(Untraceable):
    """Untraceable, and its forward does not call its children in declaration order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.sum() > 1e9:
            x = x * 0
        return self.head(self.act(x) * 2)


@pytest.fixture
def example() -> torch.Tensor:
    return torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _run(stages: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        for stage in stages:
            x = stage(x)
    return x


@pytest.mark.parametrize("after", [["layer1"], ["layer2"], ["layer1", "layer2"], ["stem"],
                                   ["layer2.bn"]])
def test_stages_in_sequence_compute_the_model_exactly(example: torch.Tensor,
                                                      after: list[str]) -> None:
    if after == ["layer2.bn"]:  # inside a block: its shortcut crosses the cut
        with pytest.raises(SplitError, match="skip connection"):
            split_model(PlainNet().eval(), after, example)
        return
    model = PlainNet().eval()
    stages = split_model(model, after, example)
    assert len(stages) == len(after) + 1
    assert torch.equal(_run(stages, example), model(example))


def test_stages_share_the_models_parameters(example: torch.Tensor) -> None:
    model = PlainNet().eval()
    stages = split_model(model, ["layer1"], example)
    assert stages[1].layer2.conv.weight is model.layer2.conv.weight
    assert stages[0].layer1 is model.layer1
    assert set(stages[1].state_dict()) >= {"layer2.conv.weight", "fc.weight", "fc.bias"}
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    assert torch.equal(_run(stages, example), model(example))


def test_a_sequential_model_splits_at_named_children(example: torch.Tensor) -> None:
    model = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(1, 4, 3), act=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(),
        fc=nn.Linear(4, 3))).eval()
    stages = split_model(model, ["act"], example)
    assert torch.equal(_run(stages, example), model(example))
    assert _run(stages[:1], example).shape == (3, 4, 6, 6)


@pytest.mark.parametrize(("model", "after", "module", "words"), [
    (PlainNet(), ["layer9"], "layer9", "has no module 'layer9'"),
    (PlainNet(), ["layer2", "layer1"], "layer1", "in the order"),
    (PlainNet(), ["fc"], "fc", "nothing would be left"),
    (PlainNet(), ["layer1.conv"], "layer1.conv", "skip connection"),
    (LongSkip(), ["layer1"], "layer1", "skip connection"),
    (Twice(), ["layer1"], "layer1", "called 2 times"),
    (PlainNet(), ["layer1", "layer1"], "layer1", "twice"),
])
def test_a_model_that_cannot_be_split_there_names_the_module(example: torch.Tensor,
                                                             model: nn.Module, after: list[str],
                                                             module: str, words: str) -> None:
    with pytest.raises(SplitError) as caught:
        split_model(model.eval(), after, example)
    assert caught.value.module == module
    assert words in str(caught.value)
    assert module in str(caught.value)


def test_an_untraceable_sequence_of_children_splits_between_them(example: torch.Tensor) -> None:
    model = Untraceable().eval()
    stages = split_model(model, ["act"], example)
    assert torch.equal(_run(stages, example), model(example))
    assert isinstance(stages[0], nn.Sequential) and list(stages[0]._modules) == ["conv", "act"]


def test_an_untraceable_model_that_is_no_sequence_is_refused(example: torch.Tensor) -> None:
    with pytest.raises(SplitError, match="not the sequence of its named children") as caught:
        split_model(UntraceableShuffled().eval(), ["act"], example)
    assert caught.value.module == "act"
    with pytest.raises(SplitError, match="only direct children"):
        split_model(UntraceableShuffled().eval(), ["head.0"], example)
