"""The example model/data modules under experiments/ (loaded the way a config names them)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from spaces import DataSplits, load_reference

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files_and_splits_55k_5k(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (60_000, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 60_000))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (100, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 100))
    monkeypatch.setenv("PARETOEDGE_FASHION_MNIST", str(tmp_path))
    data = load_reference("fashion_mnist_model.py:load_data", EXPERIMENTS)(0)
    assert isinstance(data, DataSplits)
    assert data.train_x.shape == (55_000, 1, 28, 28) and data.val_x.shape == (5_000, 1, 28, 28)
    assert data.test_x.shape == (100, 1, 28, 28) and data.test_x.dtype == np.uint8


def test_fashion_mnist_missing_says_how_to_install_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PARETOEDGE_FASHION_MNIST", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_reference("fashion_mnist_model.py:load_data", EXPERIMENTS)(0)


@pytest.mark.parametrize(("reference", "shape"), [
    ("fashion_mnist_model.py:build_model", (2, 1, 28, 28)),
    ("digits_model.py:build_model", (2, 1, 8, 8)),
])
def test_example_models_have_an_exit_after_every_stage(reference: str, shape: tuple) -> None:
    model = load_reference(reference, EXPERIMENTS)().eval()
    with torch.no_grad():
        outputs = model(torch.zeros(shape))
    assert len(outputs) == model.num_stages == 3
    assert all(tuple(o.shape) == (2, 10) for o in outputs)


@pytest.mark.slow
def test_the_checkpoint_example_starts_from_the_checkpoint_itself(tmp_path: Path) -> None:
    """digits_checkpoint.yaml end to end on a real (in-process) agent: nothing is trained, the
    fp32 baseline measures exactly the checkpoint's accuracy, on the selection and test split."""
    import yaml

    from device_agents import LocalDeviceAgent
    from search.config import parse_config
    from search.fleet.dispatch import InlineDispatcher
    from search.study.runner import RunOptions, StudyRunner
    from search.tracking.tracker import NullTracker
    from search.workspace import Workspace

    write_checkpoint = load_reference("digits_plain_model.py:write_checkpoint", EXPERIMENTS)
    model = write_checkpoint(tmp_path / "digits_plain.pt", epochs=3)
    raw = yaml.safe_load((EXPERIMENTS / "digits_checkpoint.yaml").read_text())
    raw["model"]["checkpoint"] = str(tmp_path / "digits_plain.pt")  # the test's own checkpoint
    raw.update(  # the example, shortened: 3 trials, small finetunes, short timing
        quantization={"precisions": ["fp32", "int8"], "calibration_samples": 32},
        pruning={"ratio_max": 0.5, "ratio_step": 0.25,
                 "finetune": {"epochs": 1, "train_subset": 128}},
        early_exit={**raw["early_exit"], "heads": {"epochs": 5}},
        measurement={"warmup_runs": 5, "warmup_seconds": 0.0, "min_runs": 20, "max_runs": 40,
                     "round_runs": 20, "min_seconds": 0.0},
        confirm={"rounds": 1, "runs_per_round": 10}, tracking={"mlflow": False},
        search={"trials": 3, "seed": 0})
    config = parse_config(raw, "digits_checkpoint.yaml", EXPERIMENTS)
    workspace = Workspace(tmp_path / "runs", config.study)
    agent = LocalDeviceAgent(device_class="local", cache_dir=tmp_path / "agent", isolate=False)
    summary = StudyRunner(config, workspace, dispatcher_factory=lambda c, w: InlineDispatcher(
        agent), tracker=NullTracker()).run(RunOptions(trials=3))

    data = load_reference("digits_model.py:load_data", EXPERIMENTS)(0)
    baseline = summary.records[0]
    assert baseline.baseline and baseline.complete and baseline.candidate["prune_ratio"] == 0
    with torch.no_grad():
        def accuracy(x: np.ndarray, y: np.ndarray) -> float:
            predicted = model.eval()(torch.from_numpy(data.preprocess(x))).argmax(1).numpy()
            return float((predicted == y).mean())

        selection = data.selection_set()
        assert baseline.metrics["accuracy"] == accuracy(selection.inputs, selection.labels)
        assert baseline.metrics["test_accuracy"] == accuracy(data.test_x, data.test_y)
    assert not (workspace.workdir / "cache" / "baseline").exists()  # nothing was trained
    assert list((workspace.workdir / "cache" / "exit_heads").glob("*.pt"))  # heads were
    assert summary.completed == 3


def test_the_overnight_reference_search_is_the_reference_space_with_a_long_fidelity() -> None:
    """experiments/fashion_mnist_overnight.yaml (BENCHMARKS.md section 8) searches exactly the
    reference study's space with its screening finetune, and adds a longer finetune over every
    training image for the candidates the promotion rule picks."""
    import yaml

    from search.config import StudyConfig, parse_config

    def parsed(name: str) -> StudyConfig:
        return parse_config(yaml.safe_load((EXPERIMENTS / name).read_text()), name, EXPERIMENTS)

    reference, overnight = parsed("fashion_mnist.yaml"), parsed("fashion_mnist_overnight.yaml")
    for section in ("model", "data", "device", "constraints", "quantization", "early_exit",
                    "measurement", "objectives", "runtime"):
        assert getattr(overnight, section) == getattr(reference, section), section
    same = ("ratio_max", "ratio_step", "per_stage", "importance", "finetune")
    assert {k: getattr(overnight.pruning, k) for k in same} == \
        {k: getattr(reference.pruning, k) for k in same}
    assert reference.pruning.finetune_full is None
    full, screen = overnight.pruning.finetune_full, overnight.pruning.finetune
    assert full is not None and full.train_subset is None and screen.train_subset is not None
    assert full.epochs > screen.epochs
    assert overnight.study != reference.study  # its own study beside the reference's
