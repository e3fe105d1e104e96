"""Energy per inference: only from a real counter (RAPL, NVML), never estimated."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from device_agents.energy import EnergyMeter, NvmlCounter, RaplCounter, open_counters


def powercap(root: Path, packages: dict[str, tuple[int, int]]) -> Path:
    """A powercap tree: ``intel-rapl:N/energy_uj`` and ``max_energy_range_uj`` per package,
    plus a sub-domain that must not be counted twice."""
    for name, (energy, wrap) in packages.items():
        (root / name).mkdir(parents=True)
        (root / name / "energy_uj").write_text(f"{energy}\n")
        (root / name / "max_energy_range_uj").write_text(f"{wrap}\n")
    (root / "intel-rapl:0:0").mkdir(parents=True, exist_ok=True)
    (root / "intel-rapl:0:0" / "energy_uj").write_text("999999\n")
    return root


def set_energy(root: Path, name: str, energy_uj: int) -> None:
    (root / name / "energy_uj").write_text(f"{energy_uj}\n")


def test_rapl_sums_the_packages_and_allows_for_a_wrap(tmp_path):
    root = powercap(tmp_path, {"intel-rapl:0": (1_000_000, 10_000_000),
                               "intel-rapl:1": (9_000_000, 10_000_000)})
    counter = RaplCounter.open(root)
    assert counter is not None and [d.name for d in counter.domains] == ["intel-rapl:0",
                                                                         "intel-rapl:1"]
    meter = EnergyMeter([counter])
    meter.start()
    set_energy(root, "intel-rapl:0", 1_500_000)   # +0.5 J
    set_energy(root, "intel-rapl:1", 500_000)     # wrapped: +1.5 J
    assert meter.per_run_mj(100) == pytest.approx((500 + 1500) / 100)
    assert meter.sources == ["rapl"]


def test_no_readable_counter_means_no_energy(tmp_path):
    assert RaplCounter.open(tmp_path / "missing") is None
    assert RaplCounter.open(tmp_path) is None  # empty powercap directory
    meter = EnergyMeter([])
    meter.start()
    assert meter.per_run_mj(100) is None


def test_a_counter_that_becomes_unreadable_gives_no_energy(tmp_path):
    root = powercap(tmp_path, {"intel-rapl:0": (1_000, 0)})
    meter = EnergyMeter([RaplCounter.open(root)])
    meter.start()
    (root / "intel-rapl:0" / "energy_uj").unlink()
    assert meter.per_run_mj(10) is None
    assert math.isnan(RaplCounter.open(powercap(tmp_path / "b", {"intel-rapl:0": (5, 0)}))
                      .span_mj((10.0,), (1.0,)))  # went backwards, no known wrap: untrusted


def test_nvml_only_for_gpu_providers_and_only_with_pynvml_and_a_gpu():
    cpu = open_counters(["CPUExecutionProvider"])
    assert all(c.name == "rapl" for c in cpu)
    gpu = open_counters(["CUDAExecutionProvider", "CPUExecutionProvider"])
    try:
        import pynvml  # noqa: F401
    except ImportError:
        assert NvmlCounter.open() is None
        assert [c.name for c in gpu] == [c.name for c in cpu]
    else:  # where pynvml is installed, a counter exists only if a GPU reports its energy
        counter = NvmlCounter.open()
        assert (counter is None) or (counter.read() is not None)


def test_a_measurement_has_energy_exactly_when_this_machine_has_a_counter(
        make_bundle, cascade, fast_protocol):
    import numpy as np

    from device_agents import EvalSet
    from device_agents.measure import measure_bundle

    directory, digest = make_bundle(cascade.TWO_STAGE)
    eval_set = EvalSet(inputs=np.eye(4, dtype=np.float32), labels=np.arange(4) % 3)
    measured = measure_bundle(directory, eval_set, fast_protocol, expected_digest=digest)
    counters = [c.name for c in open_counters(["CPUExecutionProvider"])]
    if counters:
        assert measured.energy_mj is not None and measured.energy_mj >= 0
        assert measured.fingerprint["energy_counters"] == counters
    else:
        assert measured.energy_mj is None and "energy_mj" not in measured.metrics()
        assert measured.fingerprint["energy_counters"] == []


# --- the idle power, subtracted --------------------------------------------------------------


class ScriptedCounter:
    """A counter that returns scripted readings (mJ), one per read."""

    name = "scripted"

    def __init__(self, readings):
        self.readings = list(readings)
        self.reads = 0

    def read(self):
        value = self.readings[self.reads]
        self.reads += 1
        return (float(value),)

    def span_mj(self, start, end):
        return end[0] - start[0] if end[0] >= start[0] else float("nan")


def test_energy_per_run_subtracts_the_idle_power_over_the_timed_wall_time():
    from device_agents.energy import EnergyPerRun, energy_per_run

    # 1500 mJ over 100 runs in 1 s, with 1 W idle: 1000 mJ of it was idle
    assert energy_per_run(1500.0, 100, 1.0, 1000.0) == EnergyPerRun(5.0, 15.0, 1000.0)
    assert energy_per_run(1500.0, 100, 1.0, None) == EnergyPerRun(15.0, 15.0, None)
    assert energy_per_run(1500.0, 100, 2.0, 1000.0) == EnergyPerRun(0.0, 15.0, 1000.0)
    assert energy_per_run(None, 100, 1.0, 1000.0) is None
    assert energy_per_run(1500.0, 0, 1.0, 1000.0) is None


def test_idle_power_is_the_counters_energy_over_the_sleep():
    slept = []
    meter = EnergyMeter([ScriptedCounter([1000.0, 3000.0])])
    idle = meter.idle_power_mw(0.5, sleep=slept.append, clock=iter([10.0, 12.0]).__next__)
    assert idle == pytest.approx(1000.0)  # 2000 mJ in 2 s
    assert slept == [0.5]
    assert EnergyMeter([]).idle_power_mw(0.5, sleep=slept.append) is None
    assert EnergyMeter([ScriptedCounter([0.0])]).idle_power_mw(0.0) is None
    assert slept == [0.5]  # no counter or no time: no sleep
    backwards = EnergyMeter([ScriptedCounter([3000.0, 1000.0])])
    assert backwards.idle_power_mw(0.5, sleep=lambda s: None) is None


def _eval_set():
    import numpy as np

    from device_agents import EvalSet

    return EvalSet(inputs=np.eye(4, dtype=np.float32), labels=np.arange(4) % 3)


def test_a_measurements_energy_is_its_timing_energy_less_the_idle_power(
        make_bundle, cascade, fast_protocol):
    from device_agents.measure import BundleTiming, load_and_evaluate, time_until_converged
    from device_agents.profiles import as_providers

    directory, digest = make_bundle(cascade.TWO_STAGE)
    bundle = load_and_evaluate(directory, _eval_set(), fast_protocol, expected_digest=digest,
                               providers=as_providers(["CPUExecutionProvider"]))
    # readings: idle start, idle end, timing start, timing end
    meter = EnergyMeter([ScriptedCounter([0.0, 2000.0, 5000.0, 8000.0])])
    idle_mw = meter.idle_power_mw(0.5, sleep=lambda s: None, clock=iter([0.0, 2.0]).__next__)
    timing = BundleTiming(bundle, meter)
    time_until_converged(timing, fast_protocol)
    m = timing.measurement(fast_protocol, converged=True, idle_mw=idle_mw, fingerprint={},
                           agent_id="a", duration_s=1.0)
    runs = m.latency.n
    assert m.energy_idle_mw == 1000.0
    assert m.energy_package_mj == pytest.approx(3000.0 / runs)
    assert m.energy_mj == pytest.approx((3000.0 - 1000.0 * timing.wall_s) / runs)
    metrics = m.metrics()
    assert (metrics["energy_mj"], metrics["energy_package_mj"], metrics["energy_idle_mw"]) == (
        m.energy_mj, m.energy_package_mj, 1000.0)


def test_measure_bundle_reads_the_idle_power_before_timing_and_subtracts_it(
        make_bundle, cascade, fast_protocol, monkeypatch):
    # A package that draws 100 mW all the time and 50 mJ more for every inference.
    import dataclasses
    import time

    from device_agents.cascade import CascadeRunner
    from device_agents.measure import measure_bundle

    runs = [0]
    original = CascadeRunner.run

    def counted(self, raw):
        runs[0] += 1
        return original(self, raw)

    class PackageCounter(ScriptedCounter):
        def read(self):
            self.reads += 1
            return (100.0 * time.perf_counter() + 50.0 * runs[0],)

    monkeypatch.setattr(CascadeRunner, "run", counted)
    counter = PackageCounter([])
    directory, digest = make_bundle(cascade.TWO_STAGE)
    protocol = dataclasses.replace(fast_protocol, idle_seconds=0.05)
    m = measure_bundle(directory, _eval_set(), protocol, expected_digest=digest,
                       energy_counters=[counter])
    assert counter.reads == 4  # around the idle sleep, around the timing
    assert m.energy_idle_mw == pytest.approx(100.0, rel=0.25)
    assert m.energy_mj == pytest.approx(50.0, rel=1e-3)
    assert m.energy_package_mj > m.energy_mj
    assert m.fingerprint["energy_counters"] == ["scripted"]


@pytest.mark.parametrize("readings", [
    [0.0, 10.0, 500.0, 400.0],   # backwards while timing
    [100.0, 50.0],               # backwards while idle: the counter is not trusted
])
def test_a_counter_that_goes_backwards_gives_no_energy(make_bundle, cascade, fast_protocol,
                                                       readings):
    import dataclasses

    from device_agents.measure import measure_bundle

    directory, digest = make_bundle(cascade.TWO_STAGE)
    protocol = dataclasses.replace(fast_protocol, idle_seconds=0.01)
    m = measure_bundle(directory, _eval_set(), protocol, expected_digest=digest,
                       energy_counters=[ScriptedCounter(readings)])
    assert (m.energy_mj, m.energy_package_mj, m.energy_idle_mw) == (None, None, None)
    assert not {"energy_mj", "energy_package_mj", "energy_idle_mw"} & set(m.metrics())
    assert m.fingerprint["energy_counters"] == []


def test_no_counter_means_no_energy_metrics_and_no_idle_sleep(make_bundle, cascade,
                                                              fast_protocol, monkeypatch):
    import dataclasses

    from device_agents.measure import measure_bundle

    slept = []
    monkeypatch.setattr(EnergyMeter, "idle_power_mw",
                        lambda self, seconds, **kw: slept.append(seconds))
    directory, digest = make_bundle(cascade.TWO_STAGE)
    protocol = dataclasses.replace(fast_protocol, idle_seconds=5.0)
    m = measure_bundle(directory, _eval_set(), protocol, expected_digest=digest,
                       energy_counters=[])
    assert slept == []
    assert not {n for n in m.metrics() if n.startswith("energy")}


def test_without_the_idle_power_the_energy_is_the_packages(make_bundle, cascade, fast_protocol):
    import dataclasses

    from device_agents.measure import measure_bundle

    directory, digest = make_bundle(cascade.TWO_STAGE)
    protocol = dataclasses.replace(fast_protocol, idle_seconds=0.0)
    counter = ScriptedCounter([1000.0, 1600.0])
    m = measure_bundle(directory, _eval_set(), protocol, expected_digest=digest,
                       energy_counters=[counter])
    assert counter.reads == 2
    assert m.energy_mj == m.energy_package_mj == pytest.approx(600.0 / m.latency.n)
    assert m.energy_idle_mw is None and "energy_idle_mw" not in m.metrics()
