"""Temperature scaling fitted on the validation split lowers the ECE of a held-out split."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from device_agents.bundle import read_manifest, write_bundle
from device_agents.calibration import expected_calibration_error
from device_agents.cascade import CascadeRunner
from spaces import Candidate, DataSplits, TorchBuilder
from spaces.torch_model.temperature import fit_temperature
from spaces.torch_model.training import exit_logits


def _ece(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    p = torch.softmax(torch.from_numpy(logits) / temperature, dim=1).numpy()
    return expected_calibration_error(p.max(1), p.argmax(1) == labels)


def test_over_confident_logits_calibrate_on_a_held_out_half(rng: np.random.Generator) -> None:
    labels = rng.integers(0, 10, 4000)
    logits = rng.normal(size=(4000, 10)).astype(np.float32)
    logits[np.arange(4000), labels] += 2.0
    logits *= 6.0  # about 70 % right, nearly always sure of itself
    t = fit_temperature(logits[:2000], labels[:2000])
    before, after = _ece(logits[2000:], labels[2000:]), _ece(logits[2000:], labels[2000:], t)
    assert before > 0.2
    assert after < before / 4


def test_fitted_head_temperatures_lower_ece_on_the_test_split(builder: TorchBuilder,
                                                              digits: DataSplits) -> None:
    """Fitted on validation, judged on test: every exit the fit moved is better calibrated."""
    temperatures = builder.pruned(0.0).temperatures
    test_logits = exit_logits(builder.trained.fresh(), digits.preprocess(digits.test_x))
    moved = [k for k, t in enumerate(temperatures) if abs(np.log(t)) > 0.1]
    assert moved  # the 3-epoch tiny model's heads are far from calibrated
    for k in moved:
        assert _ece(test_logits[k], digits.test_y, temperatures[k]) < \
            _ece(test_logits[k], digits.test_y), f"exit {k}"


def test_the_bundle_measures_a_lower_ece_with_its_temperatures(builder: TorchBuilder,
                                                               digits: DataSplits,
                                                               tmp_path: Path) -> None:
    """The same cascade with temperatures 1: the runtime's ECE (cascade and per exit) is worse."""
    built = builder.build(Candidate(quantization=("fp32",) * 3, exit_thresholds=(0.9, 0.9)),
                          tmp_path / "calibrated")
    manifest = read_manifest(built.directory)
    uncalibrated = tmp_path / "uncalibrated"
    write_bundle(uncalibrated,
                 replace(manifest, exits=replace(manifest.exits, temperatures=(1.0,) * 3)),
                 {s.file: built.directory / s.file for s in manifest.stages})

    calibrated = CascadeRunner.load(built.directory).evaluate(digits.test_x, digits.test_y)
    plain = CascadeRunner.load(uncalibrated).evaluate(digits.test_x, digits.test_y)
    assert calibrated.ece < plain.ece
    moved = [k for k, t in enumerate(manifest.exits.temperatures) if abs(np.log(t)) > 0.1]
    for k in moved:
        assert calibrated.exit_eces[k] < plain.exit_eces[k], f"exit {k}"
    assert calibrated.exit_accuracies == pytest.approx(plain.exit_accuracies)
