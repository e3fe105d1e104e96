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
