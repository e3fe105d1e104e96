"""Exceptions raised by the device side of paretoedge."""

from __future__ import annotations


class DeviceAgentError(Exception):
    """Base class of every error raised by ``device_agents``."""


class BundleError(DeviceAgentError):
    """A bundle directory or manifest is missing, malformed or of an unknown format."""


class BundleIntegrityError(BundleError):
    """A bundle's files do not match the sha256 recorded in its manifest or request."""


class EvalSetError(DeviceAgentError):
    """An evaluation set is malformed or does not match its digest."""


class MeasurementError(DeviceAgentError):
    """A measurement could not be completed on this device."""


class AgentStartError(DeviceAgentError):
    """An agent could not join the cluster (bad option, unreachable head, refused token)."""


class MonitorError(DeviceAgentError):
    """The device monitor's settings are invalid, or it was used wrongly."""


class TelemetryError(MonitorError):
    """A telemetry file is missing, unreadable or malformed (the message names it)."""
