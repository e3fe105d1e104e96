"""The measurement protocol, run on the device: accuracy, latency, memory, energy."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device_agents.bundle import BundleManifest, bundle_size_bytes, verify_bundle
from device_agents.calibration import expected_calibration_error
from device_agents.cascade import CascadeEvaluation, CascadeRunner
from device_agents.energy import EnergyCounter, EnergyMeter, energy_per_run, open_counters
from device_agents.eval_set import EvalSet
from device_agents.order_statistics import (
    Z95,
    latency_stats,
    median_ci,
    quantile_ci,
    quantile_ci_ranks,
    ranked_cis,
    ranked_converged,
)
from device_agents.profiles import (
    CPU_PROVIDER,
    Provider,
    ProviderLike,
    as_providers,
    provider_names,
)
from device_agents.protocol import Confirmation, Measurement, MeasurementProtocol

__all__ = ["Z95", "BundleTiming", "LoadedBundle", "PeakMemory", "confirm_bundles",
           "device_fingerprint", "expected_calibration_error", "latency_stats",
           "load_and_evaluate", "measure_bundle", "median_ci", "quantile_ci",
           "quantile_ci_ranks", "ranked_cis", "ranked_converged", "rotated",
           "time_until_converged"]


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


@dataclass
class LoadedBundle:
    """A bundle opened for measuring, warmed up, its accuracy measured (not timed)."""

    runner: CascadeRunner
    inputs: list[np.ndarray]
    evaluation: CascadeEvaluation
    peak_mem_mb: float
    digest: str
    #: seconds spent loading, warming up and evaluating
    setup_s: float


def agent_runner(directory: Path, manifest: BundleManifest, threads: int,
                 providers: Sequence[ProviderLike], **options: Any) -> CascadeRunner:
    """The runtime an agent times a verified bundle with: the bundle's own runtime section wins
    over the agent's ``threads`` and ``providers`` (docs/RUNTIME.md); a provider it names that
    this onnxruntime lacks is an error (onnxruntime would run the CPU instead, silently)."""
    if manifest.runtime_options.providers:
        import onnxruntime as ort

        manifest.runtime_options.check_available(ort.get_available_providers())
    chosen_threads, chosen = manifest.runtime_options.on_agent(threads, providers)
    return CascadeRunner(directory, manifest, threads=chosen_threads, providers=chosen,
                         **options)


def load_and_evaluate(directory: Path, eval_set: EvalSet, protocol: MeasurementProtocol, *,
                      expected_digest: str | None, providers: Sequence[Provider]) -> LoadedBundle:
    """Open the bundle (verified against ``expected_digest``) with the peak-memory mark reset
    before, warm it up (by count and by time, cycling through the eval set), then measure its
    accuracy over the whole eval set, one sample at a time, end to end (every exit's too)."""
    started = time.perf_counter()
    memory = PeakMemory()
    runner = agent_runner(directory, verify_bundle(Path(directory), expected_digest),
                          protocol.threads, providers)
    inputs = [eval_set.inputs[i] for i in range(len(eval_set))]
    deadline = time.perf_counter() + protocol.warmup_seconds
    i = 0
    while i < protocol.warmup_runs or time.perf_counter() < deadline:
        runner.run(inputs[i % len(inputs)])
        i += 1
    evaluation = runner.evaluate(inputs, eval_set.labels)
    return LoadedBundle(runner=runner, inputs=inputs, evaluation=evaluation,
                        peak_mem_mb=memory.peak_mb(), digest=expected_digest or "",
                        setup_s=time.perf_counter() - started)


class BundleTiming:
    """The timed runs of one bundle, made in one segment or several (the rounds of a
    confirmation): the samples, and the wall clock, CPU time and energy of the segments.
    ``clock`` (nanoseconds) times the runs and the segments.

    Example:
        >>> timing = BundleTiming(load_and_evaluate(...), EnergyMeter([]))  # doctest: +SKIP
        >>> with timing.segment():  # doctest: +SKIP
        ...     timing.run(100)
        >>> timing.sorted_ms(), timing.cpu_share(threads=1)  # doctest: +SKIP
    """

    def __init__(self, bundle: LoadedBundle, meter: EnergyMeter, *,
                 clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self.bundle = bundle
        self.meter = meter
        self.clock = clock
        self.samples_ns: list[int] = []
        self.wall_s = 0.0
        self.cpu_s = 0.0
        #: the counters' energy over every segment; None once a segment could not be measured
        self.energy_span_mj: float | None = 0.0 if meter.counters else None
        self._next = 0
        self._ms = np.empty(0, dtype=np.float64)

    @contextlib.contextmanager
    def segment(self) -> Iterator[None]:
        """Account the clock, the CPU time and the energy of the runs made inside."""
        self.meter.start()
        cpu_start, wall_start = time.process_time(), self.clock()
        try:
            yield
        finally:
            self.wall_s += (self.clock() - wall_start) / 1e9
            self.cpu_s += time.process_time() - cpu_start
            span = self.meter.span_mj()
            self.energy_span_mj = (None if span is None or self.energy_span_mj is None
                                   else self.energy_span_mj + span)

    def run(self, runs: int, *, deadline_ns: int | None = None) -> list[int]:
        """Time ``runs`` calls of ``CascadeRunner.run`` (the deployed path), cycling through
        the eval set, each with :attr:`clock`; fewer when the clock passes ``deadline_ns``.
        Returns these samples (ns), also added to :attr:`samples_ns`."""
        runner, inputs, clock = self.bundle.runner, self.bundle.inputs, self.clock
        samples: list[int] = []
        for _ in range(runs):
            sample = inputs[self._next % len(inputs)]
            self._next += 1
            t0 = clock()
            runner.run(sample)
            t1 = clock()
            samples.append(t1 - t0)
            if deadline_ns is not None and t1 >= deadline_ns:
                break
        self.samples_ns.extend(samples)
        return samples

    def warm(self, runs: int) -> None:
        """``runs`` untimed runs (after another bundle ran: its cache footprint is paid here)."""
        runner, inputs = self.bundle.runner, self.bundle.inputs
        for _ in range(runs):
            runner.run(inputs[self._next % len(inputs)])
            self._next += 1

    def latencies_ms(self) -> np.ndarray:
        """Every sample so far in milliseconds, unsorted; only the samples added since the last
        call are converted."""
        new = self.samples_ns[len(self._ms):]
        if new:
            self._ms = np.concatenate([self._ms, np.asarray(new, dtype=np.float64) / 1e6])
        return self._ms

    def sorted_ms(self) -> np.ndarray:
        return np.sort(self.latencies_ms())

    def cpu_share(self, threads: int) -> float | None:
        """CPU time over wall time x threads (at most 1)."""
        return min(self.cpu_s / (self.wall_s * threads), 1.0) if self.wall_s > 0 else None

    def measurement(self, protocol: MeasurementProtocol, *, converged: bool,
                    idle_mw: float | None, fingerprint: Mapping[str, Any], agent_id: str,
                    duration_s: float) -> Measurement:
        """The measurement of this bundle from its accuracy pass and its timed runs."""
        bundle, runner = self.bundle, self.bundle.runner
        energy = energy_per_run(self.energy_span_mj, len(self.samples_ns), self.wall_s, idle_mw)
        return Measurement(
            bundle_digest=bundle.digest,
            accuracy=bundle.evaluation.accuracy,
            n_eval=len(bundle.inputs),
            ece=bundle.evaluation.ece,
            exit_rates=bundle.evaluation.exit_rates,
            exit_eces=bundle.evaluation.exit_eces if runner.num_stages > 1 else (),
            latency=latency_stats(self.sorted_ms(), converged=converged,
                                  cpu_share=self.cpu_share(runner.threads),
                                  ranked_percentiles=protocol.ranked_percentiles),
            size_kb=bundle_size_bytes(runner.directory, runner.manifest) / 1024.0,
            peak_mem_mb=bundle.peak_mem_mb,
            fingerprint=fingerprint,
            agent_id=agent_id,
            energy_mj=energy.energy_mj if energy else None,
            energy_package_mj=energy.package_mj if energy else None,
            energy_idle_mw=energy.idle_mw if energy else None,
            duration_s=duration_s,
        )


def _energy_setup(providers: Sequence[Provider], protocol: MeasurementProtocol,
                  counters: Sequence[EnergyCounter] | None) -> tuple[EnergyMeter, float | None]:
    """The energy meter (no counter: none, and no energy) and the idle power over
    ``protocol.idle_seconds`` of sleep, measured now (before loading and warm-up, so that the
    timing does not start on a core that just slept). When the idle power was asked for but
    could not be measured, the counters are not trusted: the meter gets none."""
    meter = EnergyMeter(open_counters(provider_names(providers)) if counters is None
                        else counters)
    if not meter.counters or protocol.idle_seconds <= 0:
        return meter, None
    idle_mw = meter.idle_power_mw(protocol.idle_seconds)
    if idle_mw is None:
        meter.close()
        return EnergyMeter([]), None
    return meter, idle_mw


def _fingerprint(protocol: MeasurementProtocol, providers: Sequence[Provider],
                 meter: EnergyMeter, measured: bool) -> dict[str, Any]:
    fingerprint = device_fingerprint(protocol.threads, providers)
    fingerprint["energy_counters"] = meter.sources if measured else []
    return fingerprint


def time_until_converged(timing: BundleTiming, protocol: MeasurementProtocol) -> bool:
    """Time rounds of ``round_runs`` runs until every ranked percentile's 95 % CI is within
    ``ci_rel_width`` of it, once ``min_runs`` runs were made and ``min_seconds`` spent: then
    ``True``; or until ``max_runs`` runs or ``max_seconds`` (0: no limit, checked after every
    run): then ``False``. One segment of ``timing``."""
    clock = timing.clock
    started = clock()
    deadline = started + int(protocol.max_seconds * 1e9) if protocol.max_seconds > 0 else None
    with timing.segment():
        while len(timing.samples_ns) < protocol.max_runs:
            timing.run(min(protocol.round_runs, protocol.max_runs - len(timing.samples_ns)),
                       deadline_ns=deadline)
            now = clock()
            if (len(timing.samples_ns) >= protocol.min_runs
                    and (now - started) / 1e9 >= protocol.min_seconds
                    and ranked_converged(timing.latencies_ms(), protocol.ranked_percentiles,
                                         protocol.ci_rel_width)):
                return True
            if deadline is not None and now >= deadline:
                return False
    return False


def measure_bundle(directory: Path, eval_set: EvalSet, protocol: MeasurementProtocol, *,
                   expected_digest: str | None = None,
                   providers: Sequence[ProviderLike] = (CPU_PROVIDER,),
                   agent_id: str = "",
                   energy_counters: Sequence[EnergyCounter] | None = None) -> Measurement:
    """Run the whole protocol on one bundle directory and return the measurement.

    ``energy_counters``: the counters to read (``None``: those this machine has).
    """
    started = time.perf_counter()
    providers = as_providers(providers)
    # The idle power first: a sleep just before timing would let the core slow down.
    meter, idle_mw = _energy_setup(providers, protocol, energy_counters)
    try:
        bundle = load_and_evaluate(directory, eval_set, protocol,
                                   expected_digest=expected_digest, providers=providers)
        timing = BundleTiming(bundle, meter)
        converged = time_until_converged(timing, protocol)
    finally:
        meter.close()
    fingerprint = _fingerprint(protocol, providers, meter, timing.energy_span_mj is not None)
    # what this bundle ran with: its own threads and providers where its manifest names them
    fingerprint["threads"] = bundle.runner.threads
    fingerprint["providers"] = [p.spec for p in bundle.runner.providers]
    return timing.measurement(protocol, converged=converged, idle_mw=idle_mw,
                              fingerprint=fingerprint, agent_id=agent_id,
                              duration_s=time.perf_counter() - started)


def rotated(count: int, by: int) -> list[int]:
    """``0..count-1`` rotated left by ``by``: the order of round ``by`` of a confirmation."""
    return [(by + i) % count for i in range(count)]


def confirm_bundles(directories: Sequence[Path], eval_set: EvalSet,
                    protocol: MeasurementProtocol, *, rounds: int, runs_per_round: int,
                    expected_digests: Sequence[str | None] | None = None,
                    keys: Sequence[int] = (),
                    providers: Sequence[ProviderLike] = (CPU_PROVIDER,), agent_id: str = "",
                    energy_counters: Sequence[EnergyCounter] | None = None) -> Confirmation:
    """Time several bundles interleaved, in this one process (the device half of a study's
    confirmation: see :class:`~device_agents.protocol.ConfirmRequest`).

    Every bundle is loaded, warmed up and its accuracy measured once (in turn, each with its
    own peak-memory mark); then in round ``r`` the bundles take turns in the order rotated by
    ``r``, each making ``protocol.warmup_runs`` untimed runs and then ``runs_per_round`` timed
    ones, with the same clock, CPU-share and energy bookkeeping as :func:`measure_bundle`.
    Each bundle's latency is over its samples of every round pooled; ``converged`` says
    whether the pooled ranked percentiles' intervals are within ``protocol.ci_rel_width``.
    """
    started = time.perf_counter()
    providers = as_providers(providers)
    digests = list(expected_digests) if expected_digests is not None else [None] * len(
        directories)
    if len(digests) != len(directories) or (keys and len(keys) != len(directories)):
        raise ValueError("one digest and one key per bundle directory")
    meter, idle_mw = _energy_setup(providers, protocol, energy_counters)
    p50s: list[list[float]] = [[] for _ in directories]
    p95s: list[list[float]] = [[] for _ in directories]
    try:
        timings = [BundleTiming(load_and_evaluate(Path(d), eval_set, protocol,
                                                  expected_digest=digest, providers=providers),
                                meter)
                   for d, digest in zip(directories, digests, strict=True)]
        for r in range(rounds):
            for i in rotated(len(timings), r):
                timings[i].warm(protocol.warmup_runs)
                with timings[i].segment():
                    samples = np.asarray(timings[i].run(runs_per_round), dtype=np.float64)
                p50, p95 = np.percentile(samples / 1e6, [50, 95])
                p50s[i].append(float(p50))
                p95s[i].append(float(p95))
    finally:
        meter.close()
    fingerprint = _fingerprint(protocol, providers, meter,
                               all(t.energy_span_mj is not None for t in timings))
    measurements = tuple(
        t.measurement(protocol, converged=ranked_converged(
                          t.sorted_ms(), protocol.ranked_percentiles, protocol.ci_rel_width),
                      idle_mw=idle_mw, fingerprint=fingerprint, agent_id=agent_id,
                      duration_s=t.bundle.setup_s + t.wall_s)
        for t in timings)
    return Confirmation(measurements=measurements,
                        round_p50_ms=tuple(tuple(v) for v in p50s),
                        round_p95_ms=tuple(tuple(v) for v in p95s), rounds=rounds,
                        fingerprint=fingerprint, agent_id=agent_id,
                        duration_s=time.perf_counter() - started, keys=tuple(keys))
