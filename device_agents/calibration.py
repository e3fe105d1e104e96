"""Calibration error of confidences against correctness (numpy only, runs on the device)."""

from __future__ import annotations

import itertools

import numpy as np


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray,
                               bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017); 0.0 for an empty sample."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidences.size == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        mask = (confidences > lo) & (confidences <= hi)
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidences[mask].mean())
    return float(ece)
