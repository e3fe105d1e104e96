"""Fixtures for the orchestration tests: a tiny model/data module and configs that use it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

TINY_MODEL = textwrap.dedent('''
    """A tiny staged CNN on sklearn digits: trains in about a second."""
    import numpy as np
    from torch import nn

    from spaces import DataSplits, StagedModel
    from device_agents import Preprocessing


    def _head(c):
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


    def build_model():
        stages = [nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
                  nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32),
                                nn.ReLU())]
        return StagedModel(stages=stages, heads=[_head(16), _head(32)])


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


def tiny_config_dict(study: str = "tiny", **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "study": study,
        "model": {"factory": "tiny_model.py:build_model", "train": {"epochs": 3}},
        "data": {"loader": "tiny_model.py:load_data"},
        "constraints": {"max_accuracy_drop": 0.05},
        "pruning": {"ratio_max": 0.5, "ratio_step": 0.25, "finetune": {"epochs": 1}},
        "quantization": {"calibration_samples": 32, "groups": "stages"},
        "measurement": {"warmup_runs": 5, "warmup_seconds": 0.0, "min_runs": 20,
                        "max_runs": 60, "round_runs": 20, "timeout_s": 120},
        "search": {"trials": 4, "sampler": "tpe", "seed": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def write_tiny_project(directory: Path, study: str = "tiny", name: str = "config.yaml",
                       **overrides: Any) -> Path:
    """Write ``tiny_model.py`` and a config next to it; return the config's path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tiny_model.py").write_text(TINY_MODEL)
    path = directory / name
    path.write_text(yaml.safe_dump(tiny_config_dict(study, **overrides)))
    return path


@pytest.fixture(scope="session")
def tiny_project():
    """:func:`write_tiny_project`, for fixtures of any scope."""
    return write_tiny_project


ROOT = Path(__file__).resolve().parents[2]
#: Trials of the session's end-to-end study (the fp32 baseline included).
E2E_TRIALS = 6


@dataclass(frozen=True)
class CliStudy:
    """A tiny study run through ``paretoedge run`` (``config.yaml``, ``tiny_model.py`` and the
    workdir ``runs`` in ``directory``), what the run printed, and a pristine copy of it."""

    directory: Path
    stdout: str
    pristine: Path

    def copy_to(self, destination: Path) -> Path:
        """The study as the run left it (before any test touched it) in ``destination``."""
        shutil.copytree(self.pristine, destination, dirs_exist_ok=True)
        return destination


@pytest.fixture(scope="session")
def e2e_study(tmp_path_factory) -> CliStudy:
    """One small study ``e2e`` (:data:`E2E_TRIALS` trials, confirmed and profiled at its end)
    run once per session through the CLI as a user runs it: a real Ray agent, MLflow on
    sqlite. The end-to-end tests read it; a test that changes a study works on
    :meth:`CliStudy.copy_to` (a copy of the study as the run left it)."""
    directory = tmp_path_factory.mktemp("e2e")
    config = write_tiny_project(directory, "e2e")
    done = subprocess.run([sys.executable, "-m", "search.cli", "run", str(config), "--trials",
                           str(E2E_TRIALS), "--workdir", str(directory / "runs")],
                          cwd=directory, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout + done.stderr
    pristine = tmp_path_factory.mktemp("e2e-pristine")
    shutil.copytree(directory, pristine, dirs_exist_ok=True)
    return CliStudy(directory, done.stdout, pristine)


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a tiny project into ``tmp_path``; return the config's path."""

    def write(study: str = "tiny", name: str = "config.yaml", **overrides: Any) -> Path:
        return write_tiny_project(tmp_path, study, name, **overrides)

    return write


def make_record(number: int, *, accuracy: float, p95: float, size: float = 100.0,
                feasible: bool = True, state: str = "COMPLETE", device: str = "local",
                baseline: bool = False):
    from search.records import TrialRecord

    return TrialRecord(number=number, state=state, candidate={}, feasible=feasible,
                       baseline=baseline, bundle=f"s/bundles/trial_{number:04d}",
                       bundle_digest="d", device_class=device,
                       metrics={"accuracy": accuracy, "latency_p95_ms": p95, "size_kb": size})


@pytest.fixture
def record():
    """A factory of :class:`TrialRecord` s with the three objective metrics."""
    return make_record


@pytest.fixture(autouse=True)
def _restore_affinity():
    """The local agent pool pins the driver to the builder's cores; undo it after a test."""
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    yield
    if before is not None:
        os.sched_setaffinity(0, before)


def _matmul_bundle(directory: Path, features: int = 64, classes: int = 10):
    """A one-stage bundle: logits = input @ W (a few microseconds a run)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from device_agents import BundleManifest, BundlePayload, InputSpec, StageSpec, write_bundle

    weights = np.random.default_rng(0).normal(size=(features, classes)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["logits"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        [helper.make_tensor("W", TensorProto.FLOAT, weights.shape, weights.flatten())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    manifest = BundleManifest(input=InputSpec("input", (1, features)),
                              stages=(StageSpec("model", "model.onnx", ""),), num_classes=classes)
    write_bundle(directory, manifest, {"model.onnx": model.SerializeToString()})
    onnx.checker.check_model(str(directory / "model.onnx"))
    return BundlePayload.from_directory(directory)


@pytest.fixture(scope="session")
def matmul_bundle():
    """Writes a one-stage MatMul bundle into a directory and returns its payload."""
    return _matmul_bundle


def _collect(pool, count: int, limit_s: float = 120) -> list:
    """Poll ``pool`` until ``count`` dispatches finished or ``limit_s`` passed."""
    import time

    done: list = []
    deadline = time.monotonic() + limit_s
    while len(done) < count and time.monotonic() < deadline:
        done.extend(pool.poll(timeout=1.0))
    return done


@pytest.fixture(scope="session")
def collect():
    """``collect(pool, count, limit_s=120)``: what finished, polling until ``count`` did."""
    return _collect
