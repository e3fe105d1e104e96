"""Temperature scaling of exit heads (Guo et al. 2017): one scalar per head, fit on validation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, max_iter: int = 100) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (LBFGS on log T)."""
    z = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    value = float(log_t.detach().exp())
    return value if np.isfinite(value) and value > 0 else 1.0


def fit_temperatures(exit_logits: list[np.ndarray], labels: np.ndarray) -> tuple[float, ...]:
    return tuple(fit_temperature(z, labels) for z in exit_logits)
