"""The device agent as a Ray actor, placed on a device by label or custom resource."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from device_agents.agent import LocalDeviceAgent
from device_agents.operator_profile import OperatorProfile
from device_agents.profiles import CPU_PROVIDER, ProviderLike, as_providers
from device_agents.protocol import (
    AgentActivity,
    Confirmation,
    ConfirmRequest,
    Measurement,
    MeasureRequest,
    ProfileRequest,
)
from device_agents.registry import (
    AGENT_NAMESPACE,
    DEVICE_LABEL,
    NODE_ID_LABEL,
    AgentHandle,
    AgentName,
    device_resource,
)

if TYPE_CHECKING:
    from ray.actor import ActorClass

__all__ = ["AGENT_NAMESPACE", "DEVICE_LABEL", "AgentHandle", "DeviceAgentActor", "create_agent",
           "device_resource", "remote_agent_class", "resolve_cores"]

#: Concurrent calls an agent actor accepts: ``measure`` and ``confirm`` hold a lock (one
#: measurement at a time), so the others are ``ping``, ``info`` and ``activity``, answered
#: while a measurement runs.
MAX_CONCURRENCY = 4
#: The actor class's options: no restarts by Ray (the study or ``agent start`` recreates a dead
#: agent under a new name), and ``MAX_CONCURRENCY`` calls at a time.
ACTOR_OPTIONS: Mapping[str, Any] = {"max_restarts": 0, "max_task_retries": 0,
                                    "max_concurrency": MAX_CONCURRENCY}


def resolve_cores(cores: Sequence[int] | None, cpu_count: int | None = None) -> tuple[int, ...]:
    """Core numbers, where a negative one counts from the last core (-1 is the last)."""
    count = cpu_count or os.cpu_count() or 1
    return tuple(sorted({c % count if c < 0 else c for c in cores or ()}))


class DeviceAgentActor:
    """Ray actor wrapper around :class:`LocalDeviceAgent` (created with ``ray.remote``).

    ``cores`` may count from the end (``(-1,)``: the last core of the machine it lands on),
    for agents created from another machine that does not know the device's core count.
    ``providers``: onnxruntime providers, plain names or with options
    (``CUDAExecutionProvider:device_id=0``, or :class:`~device_agents.profiles.Provider`).
    """

    def __init__(self, device_class: str, threads: int = 1, cores: tuple[int, ...] | None = None,
                 cache_dir: str | None = None, agent_id: str | None = None,
                 providers: Sequence[ProviderLike] = (CPU_PROVIDER,)) -> None:
        self._pinned = bool(cores)
        self._agent = LocalDeviceAgent(device_class=device_class, threads=threads,
                                       cores=resolve_cores(cores) or None,
                                       cache_dir=Path(cache_dir) if cache_dir else None,
                                       agent_id=agent_id, providers=providers)

    def measure(self, request: MeasureRequest) -> Measurement:
        return self._agent.measure(request)

    def confirm(self, request: ConfirmRequest) -> Confirmation:
        """Several bundles timed interleaved in one measuring process (holds the same lock as
        ``measure``: one at a time)."""
        return self._agent.confirm(request)

    def profile(self, request: ProfileRequest) -> OperatorProfile:
        """Where the bundle's time goes, by onnxruntime's profiler (same lock as ``measure``)."""
        return self._agent.profile(request)

    def info(self) -> dict[str, Any]:
        import ray

        context = ray.get_runtime_context()
        return {**self._agent.info(), "node_id": context.get_node_id(),
                "pinned": self._pinned, "actor_name": context.get_actor_name() or ""}

    def activity(self) -> AgentActivity | None:
        """What it is measuring now and for how long (the pool's timeout counts from here)."""
        return self._agent.activity()

    def ping(self) -> str:
        self._agent.heartbeat()
        return self._agent.agent_id


def remote_agent_class() -> ActorClass[DeviceAgentActor]:
    """The Ray actor class, with :data:`ACTOR_OPTIONS` (imports ray lazily)."""
    import ray

    return ray.remote(**ACTOR_OPTIONS)(DeviceAgentActor)


def create_agent(name: AgentName, *, threads: int = 1, cores: Sequence[int] | None = None,
                 cache_dir: str | None = None, detached: bool = False,
                 node_labels: Mapping[str, str] | None = None,
                 resources: Mapping[str, float] | None = None,
                 providers: Sequence[ProviderLike] = (CPU_PROVIDER,)) -> AgentHandle:
    """Start an agent actor called ``name`` and return its handle (it may still be pending).

    It holds one unit of its class's resource and no CPU (it is pinned to its own cores), on
    the node whose labels match ``node_labels`` (by default: the node named in ``name``).
    A placement no node can satisfy leaves the actor pending: wait on ``ping`` with a timeout.
    """
    selector = dict(node_labels) if node_labels is not None else {NODE_ID_LABEL: name.node_id}
    options: dict[str, Any] = {
        "name": str(name), "namespace": AGENT_NAMESPACE, "num_cpus": 0,
        "resources": dict(resources) if resources is not None else
        {device_resource(name.device_class): 1},
        "lifetime": "detached" if detached else None,
    }
    if selector:
        options["label_selector"] = selector
    handle = remote_agent_class().options(**options).remote(
        device_class=name.device_class, threads=threads,
        cores=tuple(cores) if cores else None, cache_dir=cache_dir,
        providers=as_providers(providers))
    return cast(AgentHandle, handle)  # an ActorHandle[DeviceAgentActor]: see AgentHandle
