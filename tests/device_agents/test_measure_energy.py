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
