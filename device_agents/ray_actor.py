"""The device agent as a Ray actor, placed on a device by label or custom resource."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from device_agents.agent import LocalDeviceAgent
from device_agents.protocol import Measurement, MeasureRequest

#: Ray node label that names a node's device class (``ray start --labels=device-class=rpi4``).
DEVICE_LABEL = "device-class"
#: Namespace of the named agent actors, so that ``paretoedge agents`` can find them.
AGENT_NAMESPACE = "paretoedge"


def device_resource(device_class: str) -> str:
    """The custom resource a node of ``device_class`` advertises, one unit per agent slot."""
    return f"device:{device_class}"


class DeviceAgentActor:
    """Ray actor wrapper around :class:`LocalDeviceAgent` (created with ``ray.remote``)."""

    def __init__(self, device_class: str, threads: int = 1, cores: tuple[int, ...] | None = None,
                 cache_dir: str | None = None, agent_id: str | None = None) -> None:
        self._agent = LocalDeviceAgent(device_class=device_class, threads=threads, cores=cores,
                                       cache_dir=Path(cache_dir) if cache_dir else None,
                                       agent_id=agent_id)

    def measure(self, request: MeasureRequest) -> Measurement:
        return self._agent.measure(request)

    def info(self) -> dict[str, Any]:
        return self._agent.info()

    def ping(self) -> str:
        return self._agent.agent_id


def remote_agent_class() -> Any:
    """The Ray actor class (imports ray lazily)."""
    import ray

    return ray.remote(max_restarts=0, max_task_retries=0)(DeviceAgentActor)
