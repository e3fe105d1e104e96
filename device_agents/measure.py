"""The measurement protocol, run on the device: accuracy, latency, memory, energy."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from device_agents.bundle import bundle_size_bytes
from device_agents.calibration import expected_calibration_error  # noqa: F401 (re-exported)
from device_agents.cascade import CascadeRunner
from device_agents.energy import EnergyMeter, open_counters
from device_agents.eval_set import EvalSet
from device_agents.profiles import CPU_PROVIDER, ProviderLike, as_providers, provider_names
from device_agents.protocol import LatencyStats, Measurement, MeasurementProtocol

Z95 = 1.959963984540054


def median_ci(sorted_ms: np.ndarray) -> tuple[float, float]:
    """Distribution-free 95 % confidence interval of the median (binomial order statistics)."""
    n = len(sorted_ms)
    half = Z95 * math.sqrt(n) / 2.0
    lo = max(math.floor(n / 2.0 - half), 0)
    hi = min(math.ceil(n / 2.0 + half), n - 1)
    return float(sorted_ms[lo]), float(sorted_ms[hi])


def latency_stats(samples_ms: np.ndarray, *, converged: bool,
                  cpu_share: float | None = None) -> LatencyStats:
    ordered = np.sort(samples_ms)
    p50, p90, p95, p99 = np.percentile(ordered, [50, 90, 95, 99])
    lo, hi = median_ci(ordered)
    return LatencyStats(mean_ms=float(ordered.mean()), std_ms=float(ordered.std(ddof=1)),
                        p50_ms=float(p50), p90_ms=float(p90), p95_ms=float(p95),
                        p99_ms=float(p99), n=len(ordered), median_ci_low_ms=lo,
                        median_ci_high_ms=hi, converged=converged, cpu_share=cpu_share)


class PeakMemory:
    """Peak resident memory of this process while a bundle runs, above the level before it.

    On Linux, writing 5 to ``/proc/self/clear_refs`` resets the high-water mark ``VmHWM``.
    """

    def __init__(self) -> None:
        self._start_kb = _status_kb("VmRSS")
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")

    def peak_mb(self) -> float:
        peak_kb = _status_kb("VmHWM")
        if peak_kb is None or self._start_kb is None:
            return float("nan")
        return max(peak_kb - self._start_kb, 0) / 1024.0


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def device_fingerprint(threads: int, providers: Sequence[ProviderLike]) -> dict[str, Any]:
    """What a measurement ran on: host, CPU, cores, onnxruntime and its providers (as
    ``NAME[:key=value;...]`` text), threads."""
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return {
        "host": socket.gethostname(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "affinity": affinity,
        "onnxruntime": ort.__version__,
        "providers": [p.spec for p in as_providers(providers)],
        "threads": threads,
    }


def measure_bundle(directory: Path, eval_set: EvalSet, protocol: MeasurementProtocol, *,
                   expected_digest: str | None = None,
                   providers: Sequence[ProviderLike] = (CPU_PROVIDER,),
                   agent_id: str = "") -> Measurement:
    """Run the whole protocol on one bundle directory and return the measurement."""
    providers = as_providers(providers)
    started = time.perf_counter()
    memory = PeakMemory()
    runner = CascadeRunner.load(directory, threads=protocol.threads,
                                expected_digest=expected_digest, providers=providers)
    inputs = [eval_set.inputs[i] for i in range(len(eval_set))]
    n = len(inputs)

    # Warm-up: by count and by time, cycling through the eval set.
    deadline = time.perf_counter() + protocol.warmup_seconds
    i = 0
    while i < protocol.warmup_runs or time.perf_counter() < deadline:
        runner.run(inputs[i % n])
        i += 1

    # Accuracy: the whole eval set, one sample at a time, end to end (and every exit's own).
    evaluation = runner.evaluate(inputs, eval_set.labels)

    # Timing: rounds cycling through the eval set until the median's CI is tight.
    energy = EnergyMeter(open_counters(provider_names(providers)))
    energy.start()
    clock = time.perf_counter_ns
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    samples: list[int] = []
    converged = False
    k = 0
    while len(samples) < protocol.max_runs:
        for _ in range(min(protocol.round_runs, protocol.max_runs - len(samples))):
            sample = inputs[k % n]
            k += 1
            t0 = clock()
            runner.run(sample)
            samples.append(clock() - t0)
        if len(samples) >= protocol.min_runs:
            lo, hi = median_ci(np.sort(np.asarray(samples)))
            if hi - lo <= protocol.ci_rel_width * float(np.median(samples)):
                converged = True
                break
    wall = time.perf_counter() - wall_start
    cpu_share = min((time.process_time() - cpu_start) / (wall * protocol.threads), 1.0) \
        if wall > 0 else None
    energy_mj = energy.per_run_mj(len(samples))
    energy.close()
    latency_ms = np.asarray(samples, dtype=np.float64) / 1e6
    fingerprint = device_fingerprint(protocol.threads, providers)
    fingerprint["energy_counters"] = energy.sources if energy_mj is not None else []

    return Measurement(
        bundle_digest=expected_digest or "",
        accuracy=evaluation.accuracy,
        n_eval=n,
        ece=evaluation.ece,
        exit_rates=evaluation.exit_rates,
        exit_eces=evaluation.exit_eces if runner.num_stages > 1 else (),
        latency=latency_stats(latency_ms, converged=converged, cpu_share=cpu_share),
        size_kb=bundle_size_bytes(runner.directory, runner.manifest) / 1024.0,
        peak_mem_mb=memory.peak_mb(),
        fingerprint=fingerprint,
        agent_id=agent_id,
        energy_mj=energy_mj,
        duration_s=time.perf_counter() - started,
    )
