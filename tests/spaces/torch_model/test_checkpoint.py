"""A trained checkpoint (model.checkpoint) or a factory with its own weights (model.train:
false): loaded strictly, never trained, never run in train mode; keyed by its content."""

from __future__ import annotations

import collections
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from device_agents.cascade import CascadeRunner
from spaces import Candidate, DataSplits, ExitHeadSpec, ModelError, TrainSettings, load_reference
from spaces.torch_model.baseline import given_baseline
from spaces.torch_model.checkpoint import load_checkpoint, read_checkpoint
from spaces.torch_model.preparation import (
    TorchModelSpec,
    check_checkpoint,
    prepare_torch_builder,
)

from ..conftest import BUILD_SETTINGS, EXPERIMENTS

FACTORY = "digits_plain_model.py:build_model"
HEADS = ExitHeadSpec(after=("block1", "block2"), epochs=3)


def _plain() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))


def _spec(checkpoint: Path, factory: str = FACTORY, base_dir: Path = EXPERIMENTS,
          exit_heads: ExitHeadSpec | None = HEADS) -> TorchModelSpec:
    return TorchModelSpec(factory=factory, base_dir=base_dir, train=TrainSettings(),
                          exit_heads=exit_heads, checkpoint=checkpoint, trains=False)


@pytest.fixture(scope="module")
def checkpointed(digits: DataSplits, tmp_path_factory):
    """The plain digits CNN trained by an ordinary loop (2 epochs), its state_dict saved."""
    model = load_reference("digits_plain_model.py:train", EXPERIMENTS)(digits, epochs=2)
    path = tmp_path_factory.mktemp("checkpoint") / "plain.pt"
    torch.save(model.state_dict(), path)
    return model.eval(), path


@pytest.fixture(scope="module")
def checkpoint_builder(checkpointed, digits: DataSplits, tmp_path_factory):
    _, path = checkpointed
    cache = tmp_path_factory.mktemp("checkpoint-cache")
    return prepare_torch_builder(_spec(path), digits, BUILD_SETTINGS, cache)


def _torch_logits(model: nn.Module, data: DataSplits) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(data.preprocess(data.test_x))).numpy()


def test_the_checkpoint_is_the_baseline_and_exit_heads_leave_it_untouched(
        checkpointed, checkpoint_builder, digits: DataSplits) -> None:
    model, path = checkpointed
    builder = checkpoint_builder
    assert builder.num_stages == 3  # exits after block1 and block2, then the classifier
    staged = builder.trained.fresh()
    for name, value in model.state_dict().items():  # BatchNorm statistics included
        kind = name.rsplit(".", 1)[-1]
        assert any(k.endswith(kind) and v.shape == value.shape and torch.equal(v, value)
                   for k, v in builder.trained.state.items()), name
    with torch.no_grad():
        final = staged(torch.from_numpy(digits.preprocess(digits.test_x)))[-1].numpy()
    np.testing.assert_allclose(final, _torch_logits(model, digits), rtol=0, atol=1e-5)
    assert read_checkpoint(path).keys() == model.state_dict().keys()


def test_the_fp32_bundle_predicts_exactly_what_the_checkpoint_does(
        checkpointed, checkpoint_builder, digits: DataSplits, tmp_path: Path) -> None:
    model, _ = checkpointed
    built = checkpoint_builder.build(Candidate(quantization=("fp32",) * len(
        checkpoint_builder.groups)), tmp_path / "fp32")
    runner = CascadeRunner.load(built.directory)
    logits = np.stack([runner.run(x)[0] for x in digits.test_x])
    expected = _torch_logits(model, digits)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    assert logits.argmax(1).tolist() == expected.argmax(1).tolist()
    accuracy = float((logits.argmax(1) == digits.test_y).mean())
    assert accuracy == float((expected.argmax(1) == digits.test_y).mean())


def test_the_key_follows_the_checkpoint_content(checkpointed, small_digits: DataSplits,
                                                tmp_path: Path) -> None:
    model, path = checkpointed
    factory = load_reference(FACTORY, EXPERIMENTS)
    first = given_baseline(factory, small_digits, model_digest="m", checkpoint=path)
    again = given_baseline(factory, small_digits, model_digest="m", checkpoint=path)
    assert first.key == again.key and not first.from_cache
    state = model.state_dict()
    state["classifier.bias"] = state["classifier.bias"] + 1.0
    changed_path = tmp_path / "changed.pt"
    torch.save(state, changed_path)
    changed = given_baseline(factory, small_digits, model_digest="m", checkpoint=changed_path)
    assert changed.key != first.key
    torch.save(state, path.with_name("moved.pt"))  # same content elsewhere: same key
    moved = given_baseline(factory, small_digits, model_digest="m",
                           checkpoint=path.with_name("moved.pt"))
    assert moved.key == changed.key


def test_every_cache_key_of_the_builder_changes_with_the_checkpoint(
        checkpointed, checkpoint_builder, digits: DataSplits, tmp_path: Path) -> None:
    model, _ = checkpointed
    state = model.state_dict()
    state["classifier.bias"] = state["classifier.bias"] - 0.5
    torch.save(state, tmp_path / "other.pt")
    other = prepare_torch_builder(_spec(tmp_path / "other.pt", exit_heads=None), digits,
                                  BUILD_SETTINGS, tmp_path / "cache")
    plain = prepare_torch_builder(_spec(checkpointed[1], exit_heads=None), digits,
                                  BUILD_SETTINGS, tmp_path / "cache")
    assert other.model_key != plain.model_key != checkpoint_builder.model_key
    assert other.pruned_key(0.25) != plain.pruned_key(0.25)


def test_a_factory_with_its_own_weights_is_used_as_it_comes(small_digits: DataSplits) -> None:
    torch.manual_seed(123)
    weights = _plain().state_dict()

    def factory() -> nn.Module:
        model = _plain()
        model.load_state_dict(weights)
        return model

    trained = given_baseline(factory, small_digits, model_digest="own")
    for name, value in weights.items():
        torch.testing.assert_close(trained.state[f"stages.0.{name}"], value, rtol=0, atol=0)
    weights["5.bias"] += 1.0
    assert given_baseline(factory, small_digits, model_digest="own").key != trained.key


def test_a_checkpoint_dict_may_nest_the_state_dict(tmp_path: Path) -> None:
    state = _plain().state_dict()
    for key in ("state_dict", "model"):
        torch.save({key: state, "epoch": 7, "optimizer": {"lr": 0.1}}, tmp_path / f"{key}.pt")
        assert read_checkpoint(tmp_path / f"{key}.pt").keys() == state.keys()


@pytest.mark.parametrize(("write", "words"), [
    (None, ["missing.pt", "file not found"]),
    (lambda p: p.write_text("not a checkpoint\n"), ["not a PyTorch checkpoint"]),
    (lambda p: p.write_bytes(pickle.dumps(collections.Counter("ab"))),
     ["not a PyTorch checkpoint", "UnpicklingError", "state_dict"]),
    (lambda p: torch.save(_plain(), p), ["not a PyTorch checkpoint", "Python objects"]),
    (lambda p: torch.save([1, 2, 3], p), ["holds a list", "state_dict"]),
    (lambda p: torch.save({"epoch": 3, "lr": 0.1}, p), ["without a state_dict", "'epoch'"]),
], ids=["missing", "text", "pickle", "whole-module", "list", "dict-without-state"])
def test_a_file_that_is_not_a_checkpoint(tmp_path: Path, write, words: list[str]) -> None:
    path = tmp_path / "missing.pt"
    if write is not None:
        write(path)
    with pytest.raises(ModelError) as caught:
        read_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"model.checkpoint: {path}: ")
    for word in words:
        assert word in message


def test_keys_and_shapes_must_fit_strictly(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    state = _plain().state_dict()
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "1.running_var"},
                    "key '1.running_var' of the model is missing from the checkpoint"),
        "unexpected": ({**state, "extra.weight": torch.zeros(1)},
                       "unexpected key 'extra.weight'"),
        "shape": ({**state, "5.weight": torch.zeros(10, 8)},
                  "key '5.weight' has shape (10, 8) in the checkpoint, the model expects "
                  "(10, 4)"),
        "prefix": ({f"module.{k}": v for k, v in state.items()}, "carry the prefix 'module.'"),
    }
    for name, (bad, words) in cases.items():
        with pytest.raises(ModelError) as caught:
            load_checkpoint(_plain(), bad, path)
        message = str(caught.value)
        assert "\n" not in message and str(path) in message and words in message, name
    assert load_checkpoint(_plain(), state, path) is not None


def test_preparing_with_a_bad_checkpoint_names_the_file(small_digits: DataSplits,
                                                         tmp_path: Path) -> None:
    torch.save({"classifier.weight": torch.zeros(10, 128)}, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match=r"bad\.pt: does not fit model\.factory's module: key "
                                         r"'block1\.0\.weight' of the model is missing"):
        prepare_torch_builder(_spec(tmp_path / "bad.pt"), small_digits, BUILD_SETTINGS,
                              tmp_path / "cache")
    assert not (tmp_path / "cache" / "baseline").exists()  # nothing was trained


def test_the_check_calls_the_factory_once_and_names_it(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def broken():\n    raise RuntimeError('no GPU here')\n")
    torch.save(_plain().state_dict(), tmp_path / "ck.pt")
    with pytest.raises(ModelError, match=r"model\.factory 'm\.py:broken' failed: RuntimeError: "
                                         r"no GPU here"):
        check_checkpoint(_spec(tmp_path / "ck.pt", "m.py:broken", tmp_path))
    check_checkpoint(_spec(tmp_path / "ck.pt", "m.py:broken", tmp_path), against_factory=False)
    with pytest.raises(ModelError, match="does not fit"):
        check_checkpoint(_spec(tmp_path / "ck.pt"))


def test_a_checkpoint_is_never_trained_again() -> None:
    with pytest.raises(ValueError, match="not trained again"):
        TorchModelSpec(factory=FACTORY, base_dir=EXPERIMENTS, train=TrainSettings(),
                       checkpoint=Path("x.pt"))
