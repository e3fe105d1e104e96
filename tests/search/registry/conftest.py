"""Fixtures of the registry tests: small one-stage bundles (logits = input @ W) and a stored
study of them whose data loader labels samples by the same W, so that a bundle built with
another seed is clearly less accurate."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
FEATURES = 16

DATA_MODULE = textwrap.dedent(f'''
    """Samples labelled by a fixed linear map: the seed-0 bundle is right on every one."""
    import numpy as np

    from spaces import DataSplits


    def load_data(seed=0):
        weights = np.random.default_rng(0).normal(size=({FEATURES}, 10)).astype(np.float32)
        x = np.random.default_rng(seed + 1).normal(size=(240, {FEATURES})).astype(np.float32)
        y = np.argmax(x @ weights, axis=1).astype(np.int64)
        return DataSplits(train_x=x[:80], train_y=y[:80], val_x=x[80:160], val_y=y[80:160],
                          test_x=x[160:], test_y=y[160:], num_classes=10)
''')


def linear_bundle(directory: Path, seed: int = 0) -> str:
    """A one-stage bundle whose weights come from ``seed``; return its digest."""
    import numpy as np
    from onnx import TensorProto, helper

    from device_agents import BundleManifest, InputSpec, StageSpec, write_bundle

    weights = np.random.default_rng(seed).normal(size=(FEATURES, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["logits"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor("W", TensorProto.FLOAT, weights.shape, weights.flatten())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    manifest = BundleManifest(input=InputSpec("input", (1, FEATURES)),
                              stages=(StageSpec("model", "model.onnx", ""),), num_classes=10)
    return write_bundle(directory, manifest, {"model.onnx": model.SerializeToString()})


#: trial -> (bundle seed, accuracy, p50, p95, size): trial 2 is the fastest but a wrong model
TRIALS = {0: (0, 1.0, 0.020, 0.030, 1.0), 1: (0, 1.0, 0.015, 0.025, 0.9),
          2: (1, 0.99, 0.010, 0.012, 0.8)}


def store_study(workdir: Path, name: str = "lin", trials: dict[int, Any] | None = None) -> Path:
    """A stored study of linear bundles (an Optuna journal, bundles, the config it kept), as a
    run leaves it; return the workdir."""
    import optuna

    from search.config import StudyConfig
    from search.workspace import Workspace, open_storage

    project = workdir.parent / f"{name}-project"
    project.mkdir(parents=True, exist_ok=True)
    (project / "lin_data.py").write_text(DATA_MODULE)
    config = StudyConfig.model_validate({
        "study": name, "model": {"factory": "lin_data.py:build_model"},  # never called
        "data": {"loader": "lin_data.py:load_data"},
        "constraints": {"max_accuracy_drop": 0.05}, "base_dir": str(project),
        "confirm": {"rounds": 3, "runs_per_round": 30},
        "measurement": {"warmup_runs": 5, "warmup_seconds": 0.0, "timeout_s": 120}})
    workspace = Workspace(workdir.resolve(), name)
    workspace.create()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, directions=["maximize", "minimize", "minimize"],
                                storage=open_storage(workspace.journal))
    study.set_user_attr("config", config.model_dump(mode="json", by_alias=True))
    study.set_user_attr("config_dir", str(project))
    study.set_user_attr("max_accuracy_drop", 0.05)
    for number, (seed, accuracy, p50, p95, size) in (trials or TRIALS).items():
        directory = workspace.bundle_dir(number)
        digest = linear_bundle(directory, seed)
        metrics = {"accuracy": accuracy, "latency_p50_ms": p50, "latency_p95_ms": p95,
                   "size_kb": size, "accuracy_drop": 1.0 - accuracy, "exit_rate_0": 1.0}
        study.add_trial(optuna.trial.create_trial(
            values=[accuracy, p95, size], constraints={"accuracy_band": -0.01},
            user_attrs={"metrics": metrics, "baseline": number == 0, "candidate": {},
                        "bundle": workspace.relative(directory), "bundle_digest": digest,
                        "device_class": "local", "fingerprint": {"onnxruntime": "test"}}))
    return workdir


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store, its tables created once (MLflow's migrations take
    seconds): each test copies it into its workdir."""
    from search.registry.model_registry import ModelRegistry

    workdir = tmp_path_factory.mktemp("empty-store")
    ModelRegistry.open(workdir=workdir).client.search_experiments()
    return workdir / "mlflow.db"


@pytest.fixture
def store_copy(empty_store: Path):
    """``store_copy(workdir)``: an empty ``mlflow.db`` in ``workdir``; returns the workdir."""
    import shutil

    def copy(workdir: Path) -> Path:
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(empty_store, workdir / "mlflow.db")
        return workdir

    return copy


@pytest.fixture
def lin_study(tmp_path: Path, store_copy) -> Path:
    """A stored study ``lin`` in ``tmp_path / 'runs'`` (with an empty MLflow store); returns
    the workdir."""
    return store_study(store_copy(tmp_path / "runs"))


def paretoedge(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def assert_one_line_error(done: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert done.returncode == code, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="session")
def make_bundle():
    """``make_bundle(directory, seed=0) -> digest``: :func:`linear_bundle`."""
    return linear_bundle


@pytest.fixture(scope="session")
def cli():
    """``cli(*args, cwd=...)``: ``paretoedge`` in a subprocess of this checkout."""
    return paretoedge


@pytest.fixture(scope="session")
def one_line_error():
    """``one_line_error(done, code, *words)``: :func:`assert_one_line_error`."""
    return assert_one_line_error
