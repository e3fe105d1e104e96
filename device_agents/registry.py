"""Where agents are found in a Ray cluster: actor names, nodes that carry a device class.

Every agent actor is named ``agent:<class>:<node id>:<suffix>`` in the namespace
``paretoedge``, so that a study (or ``paretoedge agents``) finds the agents of a class by name,
whoever started them: ``paretoedge agent start`` on a board (detached actors that outlive the
command's Ray connection), or a study on a node that advertises the class's resource.
A node carries a class through the custom resource ``device:<class>`` (one unit per agent
slot) and the label ``device-class=<class>``.

All functions need a connected Ray driver (``ray.init``) and import ray lazily.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

if TYPE_CHECKING:
    from ray import ObjectRef
    from ray.actor import ActorHandle

    from device_agents.operator_profile import OperatorProfile
    from device_agents.protocol import (
        AgentActivity,
        Confirmation,
        ConfirmRequest,
        Measurement,
        MeasureRequest,
        ProfileRequest,
    )

#: Ray namespace of every agent actor.
AGENT_NAMESPACE = "paretoedge"
#: Ray node label that names a node's device class (``ray start --labels=device-class=rpi4``).
DEVICE_LABEL = "device-class"
#: Ray node label that ``paretoedge agent start`` gives the node it starts (a fresh uuid), so
#: that its agents are placed on exactly that node.
NODE_LABEL = "paretoedge-node"
#: Ray's own label holding a node's id.
NODE_ID_LABEL = "ray.io/node-id"
AGENT_PREFIX = "agent:"

R = TypeVar("R")


class RemoteCall(Protocol[R]):
    """An actor method without arguments, called through Ray."""

    def remote(self) -> ObjectRef[R]: ...


class RemoteMeasure(Protocol):
    """:meth:`DeviceAgentActor.measure <device_agents.ray_actor.DeviceAgentActor.measure>`,
    called through Ray."""

    def remote(self, request: MeasureRequest) -> ObjectRef[Measurement]: ...


class RemoteConfirm(Protocol):
    """:meth:`DeviceAgentActor.confirm <device_agents.ray_actor.DeviceAgentActor.confirm>`,
    called through Ray."""

    def remote(self, request: ConfirmRequest) -> ObjectRef[Confirmation]: ...


class RemoteProfile(Protocol):
    """:meth:`DeviceAgentActor.profile <device_agents.ray_actor.DeviceAgentActor.profile>`,
    called through Ray."""

    def remote(self, request: ProfileRequest) -> ObjectRef[OperatorProfile]: ...


class AgentHandle(Protocol):
    """The Ray actor handle of an agent (a :class:`ray.actor.ActorHandle` of
    :class:`~device_agents.ray_actor.DeviceAgentActor`), as its callers use it: each method's
    ``remote`` returns an object reference to what the method returns.

    Ray types an actor handle's methods as ``Never``, so the handles
    :func:`~device_agents.ray_actor.create_agent` and :func:`agent_handle` return are declared
    with this protocol instead; :func:`kill_agent` passes one back to ``ray.kill``.
    """

    @property
    def measure(self) -> RemoteMeasure: ...

    @property
    def confirm(self) -> RemoteConfirm: ...

    @property
    def profile(self) -> RemoteProfile: ...

    @property
    def info(self) -> RemoteCall[dict[str, Any]]: ...

    @property
    def ping(self) -> RemoteCall[str]: ...

    @property
    def activity(self) -> RemoteCall[AgentActivity | None]: ...


def device_resource(device_class: str) -> str:
    """The custom resource a node of ``device_class`` advertises, one unit per agent slot."""
    return f"device:{device_class}"


@dataclass(frozen=True)
class AgentName:
    """The parts of an agent actor's name."""

    device_class: str
    node_id: str
    suffix: str

    def __str__(self) -> str:
        return f"{AGENT_PREFIX}{self.device_class}:{self.node_id}:{self.suffix}"

    @classmethod
    def parse(cls, name: str) -> AgentName | None:
        """The parts of ``name``, or ``None`` when it is not an agent's name."""
        if not name.startswith(AGENT_PREFIX):
            return None
        parts = name[len(AGENT_PREFIX):].split(":")
        if len(parts) != 3 or not all(parts):
            return None
        return cls(*parts)


@dataclass(frozen=True)
class ClassNode:
    """A live Ray node that carries a device class."""

    node_id: str
    host: str
    address: str
    slots: int
    labels: Mapping[str, str]


def named_agents(device_class: str | None = None) -> list[AgentName]:
    """The agent actors alive in the cluster (of one class, or all), sorted by name."""
    import ray.util

    # With all_namespaces, Ray lists {"name", "namespace"} dicts (its annotation says str).
    entries = cast("list[dict[str, str]]", ray.util.list_named_actors(all_namespaces=True))
    found = []
    for entry in entries:
        if entry.get("namespace") != AGENT_NAMESPACE:
            continue
        name = AgentName.parse(entry.get("name", ""))
        if name is not None and (device_class is None or name.device_class == device_class):
            found.append(name)
    return sorted(found, key=str)


def agent_handle(name: AgentName | str) -> AgentHandle | None:
    """The actor handle of an agent, or ``None`` when it no longer exists."""
    import ray

    try:
        return cast(AgentHandle, ray.get_actor(str(name), namespace=AGENT_NAMESPACE))
    except ValueError:
        return None


def kill_agent(handle: AgentHandle) -> None:
    """``ray.kill`` the agent, without a restart."""
    import ray

    ray.kill(cast("ActorHandle[Any]", handle), no_restart=True)


def _live_nodes() -> list[dict[str, Any]]:
    """``ray.nodes()`` of the nodes alive now."""
    import ray

    nodes: Callable[[], list[dict[str, Any]]] = ray.nodes  # untyped in Ray
    return [node for node in nodes() if node.get("Alive")]


def class_nodes(device_class: str) -> list[ClassNode]:
    """Live nodes that carry ``device_class`` (by its resource or its label)."""
    nodes = []
    for node in _live_nodes():
        resources = node.get("Resources") or {}
        labels = node.get("Labels") or {}
        slots = int(resources.get(device_resource(device_class), 0))
        if slots or labels.get(DEVICE_LABEL) == device_class:
            nodes.append(ClassNode(node_id=node["NodeID"],
                                   host=node.get("NodeManagerHostname", "?"),
                                   address=node.get("NodeManagerAddress", "?"), slots=slots,
                                   labels=dict(labels)))
    return nodes


def node_with_label(key: str, value: str) -> ClassNode | None:
    """The live node whose label ``key`` is ``value`` (any class), or ``None``."""
    for node in _live_nodes():
        labels = node.get("Labels") or {}
        if labels.get(key) == value:
            resources = node.get("Resources") or {}
            return ClassNode(node_id=node["NodeID"], host=node.get("NodeManagerHostname", "?"),
                             address=node.get("NodeManagerAddress", "?"),
                             slots=int(sum(v for k, v in resources.items()
                                           if k.startswith("device:"))),
                             labels=dict(labels))
    return None


def gather_infos(handles: Mapping[str, AgentHandle],
                 timeout: float) -> dict[str, dict[str, Any] | str]:
    """``info()`` of each agent within ``timeout`` seconds in all; a string says why not."""
    import ray

    refs = {name: handle.info.remote() for name, handle in handles.items()}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout) \
        if refs else ([], [])
    done = {ref.hex() for ref in ready}
    out: dict[str, dict[str, Any] | str] = {}
    for name, ref in refs.items():
        if ref.hex() not in done:
            out[name] = f"no answer within {timeout:g} s"
            continue
        try:
            out[name] = ray.get(ref)
        except Exception as exc:
            out[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return out


def describe_age(timestamp: float | None, now: float | None = None) -> str:
    """``"3 s ago"``-style text for a heartbeat time."""
    if not timestamp:
        return "never"
    seconds = max((now or time.time()) - timestamp, 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def agent_rows(device_class: str | None = None, *, timeout: float = 10.0,
               now: float | None = None) -> list[dict[str, Any]]:
    """One row per agent actor in the cluster, for ``paretoedge agents``."""
    names = named_agents(device_class)
    handles = {str(n): h for n in names if (h := agent_handle(n)) is not None}
    infos = gather_infos(handles, timeout)
    rows = []
    for name in names:
        info = infos.get(str(name), "gone")
        row: dict[str, Any] = {"name": str(name), "device_class": name.device_class,
                               "node_id": name.node_id}
        if isinstance(info, dict):
            row.update(info)
            row["status"] = "busy" if info.get("busy") else "idle"
            row["heartbeat"] = describe_age(info.get("last_heartbeat"), now)
        else:
            row["status"] = f"not answering ({info})"
        rows.append(row)
    return rows


def free_class_slots(device_class: str, known: Iterable[AgentName], *,
                     skip_managed: bool = False) -> dict[str, int]:
    """Per node of the class: resource units not held by a named agent of the class.

    ``skip_managed`` leaves out nodes started by ``paretoedge agent start`` (they carry
    :data:`NODE_LABEL`): their command creates and restarts their agents itself.
    """
    used: dict[str, int] = {}
    for name in known:
        if name.device_class == device_class:
            used[name.node_id] = used.get(name.node_id, 0) + 1
    return {node.node_id: node.slots - used.get(node.node_id, 0)
            for node in class_nodes(device_class)
            if node.slots > used.get(node.node_id, 0)
            and not (skip_managed and NODE_LABEL in node.labels)}
