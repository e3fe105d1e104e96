"""What validate catches before a run would: references, checkpoints, ONNX files; and how the
config's model section becomes the torch model's spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search.config import load_config
from search.errors import ConfigError
from search.study.checks import check_sources, source_problems
from search.study.preparation import torch_model_spec

PLAIN = '''
from torch import nn


def build():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))


def broken():
    raise RuntimeError("weights server down")


NOT_A_FUNCTION = 3
'''


def _config(tmp_path: Path, model: dict, loader: str = "tiny_model.py:load_data"):
    (tmp_path / "plain.py").write_text(PLAIN)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"study": "s", "model": model, "data": {"loader": loader}}))
    return load_config(path)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    import torch

    from spaces import load_reference

    (tmp_path / "plain.py").write_text(PLAIN)
    path = tmp_path / "ck.pt"
    torch.save(load_reference("plain.py:build", tmp_path)().state_dict(), path)
    return path


def test_the_spec_resolves_the_checkpoint_and_trains_nothing(tmp_path: Path) -> None:
    spec = torch_model_spec(_config(tmp_path, {"factory": "plain.py:build",
                                               "checkpoint": "weights/ck.pt"}))
    assert spec.checkpoint == tmp_path / "weights" / "ck.pt" and not spec.trains
    own = torch_model_spec(_config(tmp_path, {"factory": "plain.py:build", "train": False}))
    assert own.checkpoint is None and not own.trains
    assert torch_model_spec(_config(tmp_path, {"factory": "plain.py:build"})).trains


def test_a_good_config_has_no_problems(write_config, checkpoint: Path, tmp_path: Path) -> None:
    write_config()  # tiny_model.py
    assert source_problems(_config(tmp_path, {"factory": "plain.py:build",
                                              "checkpoint": "ck.pt"})) == []


@pytest.mark.parametrize(("model", "loader", "words"), [
    ({"factory": "nope.py:build"}, None, ["model.factory", "nope.py", "does not exist"]),
    ({"factory": "plain.py:missing"}, None, ["model.factory", "no attribute 'missing'"]),
    ({"factory": "plain.py:NOT_A_FUNCTION"}, None, ["model.factory", "not callable (int)"]),
    ({"factory": "plain.py:build"}, "plain.py:NOT_A_FUNCTION", ["data.loader", "not callable"]),
    ({"factory": "plain.py:build"}, "no.such.module:f", ["data.loader", "does not import"]),
    ({"factory": "plain.py:build", "checkpoint": "gone.pt"}, None,
     ["model.checkpoint", "gone.pt", "file not found"]),
    ({"factory": "plain.py:broken", "checkpoint": "ck.pt"}, None,
     ["model.factory 'plain.py:broken' failed", "weights server down"]),
    ({"onnx": "gone.onnx"}, None, ["model.onnx", "gone.onnx", "file not found"]),
    ({"onnx": "garbage.onnx"}, None, ["model.onnx", "garbage.onnx", "onnxruntime"]),
], ids=["factory-file", "factory-attribute", "factory-not-callable", "loader-not-callable",
        "loader-module", "checkpoint-missing", "factory-fails", "onnx-missing", "onnx-garbage"])
def test_each_problem_is_one_line_naming_the_field_or_file(
        write_config, checkpoint: Path, tmp_path: Path, model: dict, loader: str | None,
        words: list[str]) -> None:
    write_config()
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x01garbage, not a protobuf model" * 8)
    config = _config(tmp_path, model, loader or "tiny_model.py:load_data")
    problems = source_problems(config)
    assert len(problems) == 1 and "\n" not in problems[0], problems
    for word in words:
        assert word in problems[0]


def test_a_checkpoint_that_does_not_fit_names_its_first_bad_key(write_config, checkpoint: Path,
                                                                tmp_path: Path) -> None:
    import torch

    write_config()
    state = torch.load(checkpoint, weights_only=True)
    torch.save({**state, "5.weight": torch.zeros(10, 8)}, tmp_path / "wide.pt")
    (tmp_path / "notes.pt").write_text("epoch 3, loss 0.1\n")
    for name, words in (("wide.pt", "key '5.weight' has shape (10, 8) in the checkpoint, the "
                                    "model expects (10, 4)"),
                        ("notes.pt", "not a PyTorch checkpoint")):
        problems = source_problems(_config(tmp_path, {"factory": "plain.py:build",
                                                      "checkpoint": name}))
        assert len(problems) == 1 and name in problems[0] and words in problems[0]


def test_every_problem_is_listed_at_once(write_config, tmp_path: Path) -> None:
    write_config()
    config = _config(tmp_path, {"factory": "nope.py:build", "checkpoint": "gone.pt"},
                     "plain.py:NOT_A_FUNCTION")
    with pytest.raises(ConfigError) as caught:
        check_sources(config, "config.yaml")
    problems = caught.value.problems
    assert len(problems) == 3 and all(p.startswith("config.yaml: ") for p in problems)
    assert [p.split(": ")[1].split(" ")[0] for p in problems] == [
        "model.factory", "model.checkpoint", "data.loader"]
    assert str(caught.value).endswith("(and 2 more)")
