"""Whether the study's agents can measure every metric its objectives and limits name.

Most metrics are measured everywhere; ``energy_mj`` needs a hardware energy counter
(:mod:`device_agents.energy`: RAPL, or NVML on a GPU provider). Local agents (no
``device.address``) run on this machine, so its counters are opened to see; agents of a running
cluster are judged by their device class's profile (:func:`device_agents.profiles.profile_for`).
Checked before anything is trained or started, so that ``paretoedge run`` fails at once (exit 2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from search.config import StudyConfig
from search.errors import ConfigError

#: Metrics that only a hardware energy counter measures.
ENERGY_METRICS = frozenset({"energy_mj", "energy_package_mj", "energy_idle_mw"})
#: Opens the counters that can measure a run on the providers, on this machine.
CounterProbe = Callable[[Sequence[str]], Sequence[object]]


def _host_counters(providers: Sequence[str]) -> Sequence[object]:
    from device_agents import energy

    return energy.open_counters(providers)


def unmeasurable_problem(config: StudyConfig, *,
                         host_counters: CounterProbe = _host_counters) -> str | None:
    """Why the study's agents cannot measure one of its objectives or limits, or give its
    runtime knobs (local agents: :mod:`search.fleet.runtime_offer`), or None."""
    from device_agents.profiles import profile_for
    from search.fleet.runtime_offer import local_runtime_problem

    runtime = local_runtime_problem(config)
    if runtime is not None:
        return runtime

    wanted = [*config.objectives, *config.constraints.limits()]
    energy = [name for name in dict.fromkeys(wanted) if name in ENERGY_METRICS]
    if not energy:
        return None
    device = config.device
    profile = profile_for(device.class_)
    field = "objectives" if energy[0] in config.objectives else f"constraints.{energy[0]}"
    if device.address is None:  # local agents: this machine's counters
        if not host_counters(profile.provider_names):
            return (f"{field}: {energy[0]} needs an energy counter and this machine has no "
                    f"readable one for the local agents ({'/'.join(profile.energy_counters)}: "
                    f"RAPL under /sys/class/powercap is often root-only); drop {energy[0]} or "
                    f"measure on a device that has one")
    elif not profile.energy_counters:
        return (f"{field}: {energy[0]} needs an energy counter and device class "
                f"{device.class_!r} has none")
    return None


def check_measurable(config: StudyConfig, source: str | None = None, *,
                     host_counters: CounterProbe = _host_counters) -> None:
    """Raise :class:`ConfigError` (one line, prefixed with ``source``, the config file, when
    given) when :func:`unmeasurable_problem` finds a problem."""
    problem = unmeasurable_problem(config, host_counters=host_counters)
    if problem is not None:
        line = f"{source}: {problem}" if source else problem
        raise ConfigError(line, [line])
