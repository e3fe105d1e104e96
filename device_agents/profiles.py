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
from collections.abc import Iterable, Mapping, Sequence
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

    Written ``NAME`` or ``NAME:key=value;key=value`` on a command line (:meth:`parse`, and
    :attr:`spec` back).

    Example:
        >>> Provider.parse("CUDAExecutionProvider:device_id=0").options
        {'device_id': '0'}
    """

    name: str
    options: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Provider:
        """``NAME`` or ``NAME:key=value;key=value``; :class:`ValueError` when malformed."""
        name, colon, rest = text.strip().partition(":")
        name = name.strip()
        if not name:
            raise ValueError(f"{text!r} names no provider")
        options: dict[str, str] = {}
        for item in (rest.split(";") if colon else ()):
            if not item.strip():
                continue
            key, equals, value = item.partition("=")
            if not equals or not key.strip():
                raise ValueError(f"{text!r}: provider option {item.strip()!r} is not key=value")
            options[key.strip()] = value.strip()
        return cls(name=name, options=options)

    @property
    def spec(self) -> str:
        """The text :meth:`parse` reads back (``NAME`` alone when there are no options)."""
        if not self.options:
            return self.name
        return f"{self.name}:" + ";".join(f"{k}={v}" for k, v in self.options.items())

    @property
    def on_gpu(self) -> bool:
        return self.name in GPU_PROVIDERS


#: A provider as callers may give one: a :class:`Provider`, or its text (``NAME[:k=v;...]``).
ProviderLike = Provider | str


def parse_providers(text: str) -> tuple[Provider, ...]:
    """A comma-separated provider list (:class:`ValueError` on a malformed entry), e.g.
    ``CUDAExecutionProvider:device_id=0,CPUExecutionProvider``."""
    return tuple(Provider.parse(part) for part in text.split(",") if part.strip())


def as_providers(providers: Iterable[ProviderLike]) -> tuple[Provider, ...]:
    """``providers`` as :class:`Provider` objects (a string is parsed: a plain name, or a name
    with options)."""
    return tuple(p if isinstance(p, Provider) else Provider.parse(p) for p in providers)


def provider_names(providers: Iterable[ProviderLike]) -> tuple[str, ...]:
    """The names alone, without options."""
    return tuple(p.name for p in as_providers(providers))


def session_providers(providers: Iterable[ProviderLike]
                      ) -> list[str | tuple[str, dict[str, str]]]:
    """``providers`` as ``onnxruntime.InferenceSession(providers=...)`` takes them: a plain name,
    or ``(name, options)`` for a provider with options."""
    return [(p.name, dict(p.options)) if p.options else p.name for p in as_providers(providers)]


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
