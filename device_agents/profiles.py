"""What paretoedge knows about a device class: the int8 layout its CPU fuses, the channel
rounding its kernels like, the onnxruntime providers (with options) an agent runs, and the
energy counters that can measure it. One place for every device-specific default.

Example:
    >>> profile = profile_for("rpi4")
    >>> profile.int8_target, profile.round_to, profile.provider_names
    ('arm', 8, ('CPUExecutionProvider',))
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Int8Target = Literal["x86", "arm"]
#: Substrings of a device class (or the host's machine name) that mean an ARM CPU.
ARM_HINTS = ("arm", "aarch64", "rpi", "raspberry", "jetson", "cortex", "android", "phone")
#: Providers that run on a GPU (energy then comes from NVML, not the CPU package).
GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})
CPU_PROVIDER = "CPUExecutionProvider"
#: Channel counts of pruned layers stay multiples of this unless the config says otherwise.
DEFAULT_ROUND_TO = 8
#: ``rapl``: the CPU package counters (Linux powercap); ``nvml``: a GPU's total energy.
EnergyCounterName = Literal["rapl", "nvml"]


@dataclass(frozen=True)
class Provider:
    """An onnxruntime execution provider and its options (as ``InferenceSession`` takes them).

    Example:
        >>> Provider.parse("CUDAExecutionProvider:device_id=0").options
        {'device_id': '0'}
    """

    name: str
    options: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Provider:
        """``NAME`` or ``NAME:key=value;key=value``."""
        name, _, rest = text.strip().partition(":")
        options = dict(item.split("=", 1) for item in rest.split(";") if "=" in item)
        return cls(name=name, options=options)

    @property
    def on_gpu(self) -> bool:
        return self.name in GPU_PROVIDERS


def parse_providers(text: str) -> tuple[Provider, ...]:
    """A comma-separated provider list, e.g. ``CUDAExecutionProvider,CPUExecutionProvider``."""
    return tuple(Provider.parse(part) for part in text.split(",") if part.strip())


def session_providers(providers: Sequence[Provider]) -> list[str | tuple[str, dict[str, str]]]:
    """``providers`` as ``onnxruntime.InferenceSession(providers=...)`` takes them."""
    return [(p.name, dict(p.options)) if p.options else p.name for p in providers]


def int8_target_of(device_class: str, host_machine: str | None = None) -> Int8Target:
    """``arm`` or ``x86``: the host's architecture for device class ``local``, otherwise guessed
    from the class name (``rpi4``, ``jetson-nano``, ``arm64-phone`` are ARM)."""
    name = (host_machine or platform.machine()) if device_class == "local" else device_class
    return "arm" if any(hint in name.lower() for hint in ARM_HINTS) else "x86"


def int8_activation_type(target: str) -> str:
    """The activation type that fuses into integer kernels on ``target``: onnxruntime fuses
    int8-activation QDQ only on ARM, and uint8 activations with int8 weights on x86."""
    return "int8" if target == "arm" else "uint8"


def energy_counters_for(providers: Sequence[str]) -> tuple[EnergyCounterName, ...]:
    """The energy counters that can measure a run on ``providers`` (where the machine has them)."""
    return ("rapl", "nvml") if GPU_PROVIDERS & set(providers) else ("rapl",)


@dataclass(frozen=True)
class DeviceProfile:
    """The defaults of one device class."""

    device_class: str
    int8_target: Int8Target
    round_to: int = DEFAULT_ROUND_TO
    providers: tuple[Provider, ...] = (Provider(CPU_PROVIDER),)

    @property
    def provider_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.providers)

    @property
    def int8_activation_type(self) -> str:
        return int8_activation_type(self.int8_target)

    @property
    def energy_counters(self) -> tuple[EnergyCounterName, ...]:
        return energy_counters_for(self.provider_names)


def profile_for(device_class: str, *, round_to_by_device: Mapping[str, int] | None = None,
                host_machine: str | None = None) -> DeviceProfile:
    """The profile of ``device_class``; ``round_to_by_device`` overrides the channel rounding
    per class (the config's ``pruning.round_to_by_device``)."""
    return DeviceProfile(
        device_class=device_class,
        int8_target=int8_target_of(device_class, host_machine),
        round_to=(round_to_by_device or {}).get(device_class, DEFAULT_ROUND_TO))
