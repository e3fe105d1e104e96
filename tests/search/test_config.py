from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search.config import load_config
from search.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_experiment_validates() -> None:
    config = load_config(ROOT / "experiments" / "digits.yaml")
    assert config.study == "digits"
    assert config.constraints.max_accuracy_drop == 0.01
    assert config.device.class_ == "local"
    assert config.base_dir == (ROOT / "experiments").resolve()


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BASE = {"study": "s", "model": {"factory": "m.py:f"}, "data": {"loader": "m.py:d"}}


@pytest.mark.parametrize(("patch", "field", "words"), [
    ({"spaec": {}}, "spaec", "unknown key"),
    ({"pruning": {"ratio_max": 0.99}}, "pruning.ratio_max", "0.95"),
    ({"early_exit": {"threshold": [0.9, 1.5]}}, "early_exit.threshold", "0 < low"),
    ({"quantization": {"precisions": ["fp32", "int3"]}}, "quantization.precisions.1", "fp32"),
    ({"measurement": {"min_runs": "many"}}, "measurement.min_runs", "integer"),
    ({"constraints": {"max_accuracy_drop": -1}}, "constraints.max_accuracy_drop",
     "greater than or equal to 0"),
    ({"study": "has space"}, "study", "pattern"),
    ({"model": {"factory": "m.py:f", "checkpoint": "w.pt", "train": {"epochs": 3}}}, "model",
     "'train' settings beside 'checkpoint'"),
    ({"model": {"factory": "m.py:f", "onnx": "m.onnx"}}, "model", "exactly one of"),
    ({"model": {"onnx": "m.onnx", "checkpoint": "w.pt"}}, "model", "'checkpoint' needs"),
    ({"objectives": {"accuracy": "max"}}, "objectives", "2 to 4"),
    ({"objectives": {"accuracy": "max", "speed": "max"}}, "objectives", "speed: not a"),
    ({"objectives": {"accuracy": "max", "size_kb": "smallest"}}, "objectives.size_kb", "'min'"),
    ({"constraints": {"peak_mem": 64}}, "constraints", "peak_mem: not a metric"),
    ({"constraints": {"peak_mem_mb": "lots"}}, "constraints", "must be a number"),
    ({"quantization": {"qat": ["yes"]}}, "quantization.qat.0", "valid boolean"),
    ({"quantization": {"qat": [True, True]}}, "quantization.qat", "each once"),
    ({"quantization": {"qat": []}}, "quantization.qat", "false and/or true"),
    ({"quantization": {"qat": True}}, "quantization.qat", "valid list"),
    ({"quantization": {"precisions": ["fp32", "fp16"], "qat": [False, True]}},
     "quantization.qat", "needs int8"),
    ({"model": {"onnx": "m.onnx"}, "quantization": {"qat": [True]}}, "quantization.qat",
     "needs the model's PyTorch code"),
])
def test_a_bad_field_is_named_in_one_line(tmp_path: Path, patch: dict, field: str,
                                          words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, {**BASE, **patch}))
    message = str(caught.value)
    assert "\n" not in message
    assert f": {field}: " in message
    assert words in message
    assert str(tmp_path / "c.yaml") in message


def test_every_problem_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, {"study": "s", "model": {}, "bogus": 1}))
    fields = {p.split(": ")[1] for p in caught.value.problems}
    assert {"model", "data", "bogus"} <= fields
    assert "and 2 more" in str(caught.value)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(top)


def test_an_onnx_model_refuses_the_knobs_that_need_torch(tmp_path: Path) -> None:
    onnx_base = {**BASE, "model": {"onnx": "m.onnx"}}
    for key, value in (("pruning", {"ratio_max": 0.25}), ("early_exit", {"enabled": False})):
        with pytest.raises(ConfigError) as caught:
            load_config(_write(tmp_path, {**onnx_base, key: value}))
        assert str(caught.value) == (f"{tmp_path / 'c.yaml'}: {key}: needs the model's PyTorch "
                                     f"code (model.factory); an ONNX model searches quantization"
                                     f" and runtime options only")
    config = load_config(_write(tmp_path, onnx_base))
    assert not config.searches_pruning and not config.searches_exits
    assert not config.model.trains


def test_a_checkpoint_or_train_false_means_nothing_is_trained(tmp_path: Path) -> None:
    with_checkpoint = load_config(_write(tmp_path, {
        **BASE, "model": {"factory": "m.py:f", "checkpoint": "w.pt"}}))
    assert not with_checkpoint.model.trains
    assert with_checkpoint.model.train_settings.batch_size == 64
    assert not load_config(_write(tmp_path, {
        **BASE, "model": {"factory": "m.py:f", "train": False}})).model.trains
    assert load_config(_write(tmp_path, BASE)).model.trains


def test_objectives_and_limits_name_any_measured_metric(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, {
        **BASE, "objectives": {"accuracy": "max", "latency_mean_ms": "min"},
        "constraints": {"peak_mem_mb": 64, "latency_p95_ms": 2}}))
    assert config.objectives == {"accuracy": "max", "latency_mean_ms": "min"}
    assert config.constraints.limits() == {"latency_p95_ms": 2.0, "peak_mem_mb": 64.0}
    assert load_config(_write(tmp_path, BASE)).objectives == {
        "accuracy": "max", "latency_p95_ms": "min", "size_kb": "min"}


def test_qat_defaults_to_false_and_lists_the_searched_values(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, BASE)).quantization.qat == [False]
    config = load_config(_write(tmp_path, {**BASE, "quantization": {"qat": [False, True]}}))
    assert config.quantization.qat == [False, True]
