"""The early_exit section: bad input names its field (exit 2); a plain model gets exit heads
after named modules, trained once and cached, and a study searches a threshold per exit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from search.config import load_config, parse_config
from search.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]

PLAIN_MODEL = textwrap.dedent('''
    """A plain CNN (no StagedModel) on sklearn digits, forward with functional calls."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    from spaces import DataSplits
    from device_agents import Preprocessing


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 16, 3, padding=1)
            self.layer1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
            self.layer2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = self.layer2(self.layer1(F.relu(self.stem(x))))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


    def build_model():
        return Net()


    def load_data(seed=0):
        from sklearn.datasets import load_digits

        d = load_digits()
        x = d.images.astype(np.float32)[:, None]
        y = d.target.astype(np.int64)
        order = np.random.default_rng(seed).permutation(len(x))
        tr, va, te = order[:1000], order[1000:1300], order[1300:1500]
        return DataSplits(train_x=x[tr], train_y=y[tr], val_x=x[va], val_y=y[va],
                          test_x=x[te], test_y=y[te], num_classes=10,
                          preprocessing=Preprocessing(scale=1 / 16, mean=(0.3,), std=(0.4,)))
''')

BASE = {"study": "s", "model": {"factory": "m.py:f"}, "data": {"loader": "m.py:d"}}


def _plain_project(directory: Path, write_config, **early_exit) -> Path:
    path = write_config(name="plain.yaml", model={"factory": "plain_model.py:build_model",
                                                  "train": {"epochs": 2}},
                        data={"loader": "plain_model.py:load_data"},
                        pruning={"ratio_max": 0.0},
                        early_exit={"after": ["layer1", "layer2"], "heads": {"epochs": 10},
                                    **early_exit})
    (directory / "plain_model.py").write_text(PLAIN_MODEL)
    return path


def paretoedge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.mark.parametrize(("early_exit", "field", "words"), [
    ({"threshold": [0.0, 0.9]}, "early_exit.threshold", "0 < low"),
    ({"threshold": [0.5, 1.2]}, "early_exit.threshold", "<= 1"),
    ({"threshold": [-0.5, 0.9]}, "early_exit.threshold", "0 < low"),
    ({"threshold": [0.9, 0.8]}, "early_exit.threshold", "low <= high"),
    ({"after": []}, "early_exit.after", "module names"),
    ({"after": ["layer1", "layer1"]}, "early_exit.after", "twice"),
    ({"after": ["a"], "heads": {"loss_weights": [1, 1, 1]}}, "early_exit", "heads.loss_weights"),
    ({"heads": {"loss_weights": [-1, 1]}}, "early_exit.heads.loss_weights", "non-negative"),
    ({"heads": {"training": "thawed"}}, "early_exit.heads.training", "frozen"),
    ({"confidence": []}, "early_exit.confidence", "measure"),
    ({"confidence": "top2"}, "early_exit.confidence", "max_softmax"),
    ({"confidence": ["margin", "top2"]}, "early_exit.confidence", "entropy"),
    ({"scale": "sqrt"}, "early_exit.scale", "log"),
    ({"thresholds": "each"}, "early_exit.thresholds", "per_exit"),
    ({"fallback": "first"}, "early_exit.fallback", "most_confident"),
])
def test_a_bad_early_exit_field_is_named(tmp_path: Path, early_exit: dict, field: str,
                                         words: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**BASE, "early_exit": early_exit}))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert f"c.yaml: {field}: " in message
    assert words in message


def test_defaults_and_a_searched_confidence() -> None:
    config = parse_config(BASE, "c.yaml", Path("."))
    e = config.early_exit
    assert (e.after, e.thresholds, e.scale, e.fallback, e.measures) == (
        None, "per_exit", "log", "last", ("max_softmax",))
    assert e.heads.training == "frozen"
    searched = parse_config({**BASE, "early_exit": {"confidence": ["margin", "entropy"]}},
                            "c.yaml", Path("."))
    assert searched.early_exit.measures == ("margin", "entropy")


def test_thresholds_outside_the_unit_interval_exit_2(write_config, tmp_path: Path) -> None:
    path = write_config(early_exit={"threshold": [0.5, 1.5]})
    for args in (["validate", str(path)], ["run", str(path), "--workdir", str(tmp_path / "r")]):
        line = one_error_line(paretoedge(*args, cwd=tmp_path))
        assert "early_exit.threshold" in line and "<= 1" in line


@pytest.mark.slow
def test_an_unknown_module_exits_2_naming_it(write_config, tmp_path: Path) -> None:
    path = _plain_project(tmp_path, write_config, after=["layer1", "layer9"])
    line = one_error_line(paretoedge("run", str(path), "--workdir", str(tmp_path / "runs"),
                                     cwd=tmp_path))
    assert "early_exit.after" in line and "'layer9'" in line
    assert "stem, layer1, layer2, fc" in line  # what the model does have


@pytest.mark.slow
def test_a_model_that_cannot_be_split_there_is_a_config_error(write_config,
                                                              tmp_path: Path) -> None:
    from search.study.preparation import prepare

    path = _plain_project(tmp_path, write_config, after=["fc"])
    with pytest.raises(ConfigError, match=r"^early_exit\.after: .*'fc'.*nothing would be left"):
        prepare(load_config(path), tmp_path / "cache")


@pytest.mark.slow
def test_a_study_on_a_plain_model_searches_a_threshold_per_retrofitted_exit(
        write_config, tmp_path: Path) -> None:
    from device_agents import LocalDeviceAgent
    from search.fleet.dispatch import InlineDispatcher
    from search.study.runner import RunOptions, StudyRunner
    from search.tracking.tracker import NullTracker
    from search.workspace import Workspace

    path = _plain_project(tmp_path, write_config, threshold=[0.5, 0.9999])
    config = load_config(path)
    workspace = Workspace(tmp_path / "runs", config.study)
    agent = LocalDeviceAgent(device_class="local", cache_dir=tmp_path / "agent", isolate=False)

    def run(trials: int):
        return StudyRunner(config, workspace, tracker=NullTracker(),
                           dispatcher_factory=lambda c, w: InlineDispatcher(agent)).run(
            RunOptions(trials=trials))

    summary = run(6)
    heads = sorted((workspace.cache / "exit_heads").iterdir())
    assert [p.suffix for p in heads] == [".json", ".pt"]
    cascades = [r for r in summary.records if r.candidate["exit_thresholds"]]
    assert cascades, "the sampler never switched exits on"
    for record in summary.records:
        assert record.complete, record.fail_reason
    for record in cascades:
        thresholds = record.candidate["exit_thresholds"]
        assert len(thresholds) == 2
        assert {"ece", "ece_exit_0", "ece_exit_1", "ece_exit_2", "exit_rate_0",
                "exit_threshold_0", "exit_threshold_1"} <= set(record.metrics)
        assert record.metrics["exit_threshold_1"] == pytest.approx(thresholds[1])
        assert min(thresholds) >= 0.5 and max(thresholds) <= 0.9999
    assert any(len(set(r.candidate["exit_thresholds"])) == 2 for r in cascades)  # per exit
    baseline = summary.records[0]
    assert baseline.baseline and "ece_exit_0" not in baseline.metrics

    mtime = heads[1].stat().st_mtime_ns
    run(7)  # resuming trains nothing again: the heads come from the cache
    assert heads[1].stat().st_mtime_ns == mtime
    assert sorted((workspace.cache / "exit_heads").iterdir()) == heads
