"""Distribution-free confidence intervals of latency percentiles, from order statistics, and the
stopping rule of the timing: stop when every ranked percentile is known well enough.

For ``n`` samples the number below the true quantile ``q`` is binomial ``(n, q)``, so the
order statistics at ranks ``n·q ± z·√(n·q·(1−q))`` bound a ~95 % interval (``z`` = 1.96)
whatever the distribution; no normality of latencies is assumed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from device_agents.protocol import LatencyStats, PercentileCI

Z95 = 1.959963984540054


def quantile_ci_ranks(n: int, q: float, *, z: float = Z95) -> tuple[int, int]:
    """The ranks (0-based, unclipped: they may fall outside ``0..n-1``) of the order
    statistics bounding the distribution-free confidence interval of quantile ``q`` (0..1)
    of ``n`` samples: ``n·q ± z·√(n·q·(1−q))`` (the binomial's normal approximation)."""
    half = z * math.sqrt(n * q * (1.0 - q))
    return math.floor(n * q - half), math.ceil(n * q + half)


def quantile_ci(sorted_ms: np.ndarray, q: float, *, z: float = Z95) -> tuple[float, float]:
    """Distribution-free 95 % (for the default ``z``) confidence interval of quantile ``q``
    (0..1) of sorted samples: the order statistics at :func:`quantile_ci_ranks`, clipped to
    the smallest and largest sample.

    Example:
        >>> quantile_ci(np.arange(1000.0), 0.95)
        (936.0, 964.0)
    """
    n = len(sorted_ms)
    lo, hi = quantile_ci_ranks(n, q, z=z)
    return float(sorted_ms[max(lo, 0)]), float(sorted_ms[min(hi, n - 1)])


def median_ci(sorted_ms: np.ndarray) -> tuple[float, float]:
    """Distribution-free 95 % confidence interval of the median (binomial order statistics)."""
    return quantile_ci(sorted_ms, 0.5)


def ranked_cis(sorted_ms: np.ndarray, percentiles: Sequence[float]) -> tuple[PercentileCI, ...]:
    """The 95 % interval of each of ``percentiles`` (0..100) of sorted samples."""
    return tuple(PercentileCI(float(p), *quantile_ci(sorted_ms, p / 100.0))
                 for p in percentiles)


def ranked_converged(samples_ms: np.ndarray, percentiles: Sequence[float],
                     ci_rel_width: float) -> bool:
    """Whether every one of ``percentiles`` is known well enough: its 95 % interval lies
    inside the samples (not clipped: with too few samples above a high percentile no interval
    of that confidence exists) and is at most ``ci_rel_width`` times the percentile.

    ``samples_ms`` need not be sorted: only the order statistics at the interval's ranks and
    the percentile's are selected (``np.partition``, linear time), so the stopping rule can
    test after every round without sorting every sample again."""
    n = len(samples_ms)
    for p in percentiles:
        lo, hi = quantile_ci_ranks(n, p / 100.0)
        if lo < 0 or hi > n - 1:
            return False
        position = (n - 1) * p / 100.0  # np.percentile's linear interpolation
        below, above = math.floor(position), math.ceil(position)
        picked = np.partition(samples_ms, sorted({lo, hi, below, above}))
        percentile = picked[below] + (picked[above] - picked[below]) * (position - below)
        if picked[hi] - picked[lo] > ci_rel_width * float(percentile):
            return False
    return True


def latency_stats(samples_ms: np.ndarray, *, converged: bool, cpu_share: float | None = None,
                  ranked_percentiles: Sequence[float] = ()) -> LatencyStats:
    ordered = np.sort(samples_ms)
    p50, p90, p95, p99 = np.percentile(ordered, [50, 90, 95, 99])
    lo, hi = median_ci(ordered)
    return LatencyStats(mean_ms=float(ordered.mean()), std_ms=float(ordered.std(ddof=1)),
                        p50_ms=float(p50), p90_ms=float(p90), p95_ms=float(p95),
                        p99_ms=float(p99), n=len(ordered), median_ci_low_ms=lo,
                        median_ci_high_ms=hi, converged=converged, cpu_share=cpu_share,
                        ranked_cis=ranked_cis(ordered, ranked_percentiles))
