"""Energy per inference, only from counters the hardware really has: RAPL and NVML.

Nothing is estimated: where no counter is readable the energy is absent (``None``). The
counters see a whole package (or GPU): other cores' work and the idle power too. So the idle
power is measured over a short sleep before the bundle is loaded, on the same agent, and subtracted
(:func:`energy_per_run`); the gross figure is kept alongside.

- RAPL (Intel, and AMD Zen on Linux >= 5.8): the package counters under
  ``/sys/class/powercap/intel-rapl:N/energy_uj``, microjoules, wrapping at
  ``max_energy_range_uj``. Recent kernels make them readable by root only.
- NVML (NVIDIA GPUs, Volta and later): ``nvmlDeviceGetTotalEnergyConsumption``, millijoules
  since the driver loaded. Used only when the measurement runs on a GPU provider and the
  ``pynvml`` module (``pip install nvidia-ml-py``) is installed; it is never required.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Protocol

from device_agents.profiles import energy_counters_for

POWERCAP = Path("/sys/class/powercap")


class EnergyCounter(Protocol):
    """Monotonic energy counters: ``read()`` gives raw values (one per domain), ``None`` when
    unreadable; ``span_mj`` turns two readings into millijoules."""

    @property
    def name(self) -> str:
        """``rapl`` or ``nvml``."""
        ...

    def read(self) -> tuple[float, ...] | None: ...

    def span_mj(self, start: tuple[float, ...], end: tuple[float, ...]) -> float:
        """Energy between two readings, allowing for one wrap-around of each counter (NaN
        when a counter went backwards with no known range)."""
        ...


@dataclass(frozen=True)
class RaplCounter:
    """The sum of the RAPL package domains (``intel-rapl:N``, not their sub-domains)."""

    domains: tuple[Path, ...]
    name: str = "rapl"

    @classmethod
    def open(cls, root: Path = POWERCAP) -> RaplCounter | None:
        """The readable package domains under ``root``, or ``None`` when there is none."""
        try:
            candidates = sorted(p for p in root.iterdir()
                                if re.fullmatch(r"intel-rapl:\d+", p.name))
        except OSError:
            return None
        domains = tuple(p for p in candidates if _read_int(p / "energy_uj") is not None)
        return cls(domains) if domains else None

    def read(self) -> tuple[float, ...] | None:
        values = [_read_int(d / "energy_uj") for d in self.domains]
        if any(v is None for v in values):
            return None
        return tuple(float(v) for v in values if v is not None)

    def span_mj(self, start: tuple[float, ...], end: tuple[float, ...]) -> float:
        total_uj = 0.0
        for domain, a, b in zip(self.domains, start, end, strict=True):
            if b >= a:
                total_uj += b - a
                continue
            wrap = _read_int(domain / "max_energy_range_uj") or 0
            if wrap <= 0:
                return float("nan")
            total_uj += b + wrap - a
        return total_uj / 1000.0


@dataclass(frozen=True)
class NvmlCounter:
    """Total energy of one NVIDIA GPU from NVML (millijoules)."""

    #: the ``pynvml`` module (optional, untyped) and its opaque handle of the GPU
    nvml: ModuleType
    handle: object
    name: str = "nvml"

    @classmethod
    def open(cls, index: int = 0) -> NvmlCounter | None:
        """GPU ``index`` when pynvml is installed and the GPU reports its energy, else None."""
        try:
            import pynvml  # optional: nvidia-ml-py
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # NotSupported before Volta
        except Exception:
            return None
        return cls(pynvml, handle)

    def read(self) -> tuple[float, ...] | None:
        try:
            return (float(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)),)
        except Exception:
            return None

    def span_mj(self, start: tuple[float, ...], end: tuple[float, ...]) -> float:
        return end[0] - start[0] if end[0] >= start[0] else float("nan")


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def open_counters(providers: Sequence[str]) -> list[EnergyCounter]:
    """The counters that can measure a run on ``providers`` on this machine (maybe none)."""
    counters: list[EnergyCounter] = []
    for name in energy_counters_for(providers):
        counter = RaplCounter.open() if name == "rapl" else NvmlCounter.open()
        if counter is not None:
            counters.append(counter)
    return counters


@dataclass(frozen=True)
class EnergyPerRun:
    """Energy of one inference: ``energy_mj`` above the idle power, ``package_mj`` as the
    counters saw it (idle power included), and the idle power subtracted (``None``: none)."""

    energy_mj: float
    package_mj: float
    idle_mw: float | None = None


def energy_per_run(span_mj: float | None, runs: int, wall_s: float,
                   idle_mw: float | None) -> EnergyPerRun | None:
    """``(span - idle power x wall time) / runs``, from the energy ``span_mj`` the counters
    measured over ``runs`` runs that took ``wall_s``; ``None`` when nothing was measured.

    A net energy below zero (the idle power was measured higher than the package drew while
    timing: noise larger than the bundle's own energy) is reported as 0.

    Example:
        >>> energy_per_run(1500.0, 100, 1.0, idle_mw=1000.0)
        EnergyPerRun(energy_mj=5.0, package_mj=15.0, idle_mw=1000.0)
    """
    if span_mj is None or runs <= 0:
        return None
    idle_mj = (idle_mw or 0.0) * wall_s  # mW x s = mJ
    return EnergyPerRun(energy_mj=max(span_mj - idle_mj, 0.0) / runs,
                        package_mj=span_mj / runs, idle_mw=idle_mw)


class EnergyMeter:
    """Reads every available counter around a timed region.

    Example:
        >>> meter = EnergyMeter(open_counters(["CPUExecutionProvider"]))
        >>> idle_mw = meter.idle_power_mw(0.5)  # None where no counter exists
        >>> meter.start()
        >>> ...  # run the model ``runs`` times, ``wall_s`` seconds
        >>> energy_per_run(meter.span_mj(), runs, wall_s, idle_mw)  # doctest: +SKIP
    """

    def __init__(self, counters: Sequence[EnergyCounter]) -> None:
        self.counters = list(counters)
        self._start: list[tuple[float, ...] | None] = []

    @property
    def sources(self) -> list[str]:
        return [c.name for c in self.counters]

    def start(self) -> None:
        self._start = [c.read() for c in self.counters]

    def span_mj(self) -> float | None:
        """Energy of every counter together since :meth:`start`, millijoules; ``None`` when
        there is no counter, one is unreadable, or one went backwards (untrusted)."""
        if not self.counters or len(self._start) != len(self.counters):
            return None
        total = 0.0
        for counter, start in zip(self.counters, self._start, strict=True):
            end = counter.read()
            if start is None or end is None:
                return None
            span = counter.span_mj(start, end)
            if not span >= 0:  # NaN: the counter went backwards and cannot be trusted
                return None
            total += span
        return total

    def per_run_mj(self, runs: int) -> float | None:
        """Energy per run over the region since :meth:`start`, or ``None`` if unmeasured."""
        span = self.span_mj() if runs > 0 else None
        return None if span is None else span / runs

    def idle_power_mw(self, seconds: float, *, sleep: Callable[[float], None] = time.sleep,
                      clock: Callable[[], float] = time.perf_counter) -> float | None:
        """The counters' power over ``seconds`` of sleep, milliwatts (mJ/s); ``None`` when
        there is no counter, ``seconds`` is 0, or the counters cannot be trusted."""
        if not self.counters or seconds <= 0:
            return None
        self.start()
        began = clock()
        sleep(seconds)
        span = self.span_mj()
        elapsed = clock() - began
        if span is None or elapsed <= 0:
            return None
        return span / elapsed

    def close(self) -> None:
        for counter in self.counters:
            if isinstance(counter, NvmlCounter):
                with contextlib.suppress(Exception):
                    counter.nvml.nvmlShutdown()
