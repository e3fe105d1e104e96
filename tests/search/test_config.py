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
    assert {"model.factory", "data", "bogus"} <= fields
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
