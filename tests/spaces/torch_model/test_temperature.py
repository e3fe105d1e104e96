"""Temperature scaling: T > 1 cools over-confident heads, T < 1 sharpens under-confident ones."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from spaces.torch_model.temperature import fit_temperature, fit_temperatures


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    z = torch.from_numpy(logits.astype(np.float32)) / temperature
    return float(F.cross_entropy(z, torch.from_numpy(labels.astype(np.int64))))


def _logits(rng: np.random.Generator, n: int = 2000, classes: int = 10) -> tuple:
    """Correct-ish logits: the true class gets +2, plus unit noise (about 70 % accurate)."""
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), labels] += 2.0
    return logits.astype(np.float32), labels


def test_over_confident_logits_get_t_above_one(rng: np.random.Generator) -> None:
    logits, labels = _logits(rng)
    hot = logits * 8.0
    assert (hot.argmax(1) != labels).mean() > 0.1  # confident and often wrong
    t = fit_temperature(hot, labels)
    assert t > 1.0
    assert _nll(hot, labels, t) < _nll(hot, labels)


def test_under_confident_logits_get_t_below_one(rng: np.random.Generator) -> None:
    logits, labels = _logits(rng)
    cold = logits * 0.1
    t = fit_temperature(cold, labels)
    assert t < 1.0
    assert _nll(cold, labels, t) < _nll(cold, labels)


def test_recovers_the_scaling_of_calibrated_logits(rng: np.random.Generator) -> None:
    # Sample labels from softmax(z): z is then calibrated, so z * 4 must be undone by T ~= 4.
    z = rng.normal(scale=2.0, size=(5000, 5)).astype(np.float32)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in p])
    t = fit_temperature(z * 4.0, labels)
    assert 3.0 < t < 5.3


def test_fit_temperatures_one_per_exit(rng: np.random.Generator) -> None:
    logits, labels = _logits(rng)
    temperatures = fit_temperatures([logits * 8.0, logits, logits * 0.1], labels)
    assert len(temperatures) == 3
    assert temperatures[0] > temperatures[1] > temperatures[2] > 0
