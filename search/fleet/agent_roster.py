"""The agents a pool knows: heartbeats, and discovery of agents that join a running cluster.

Every ``discover_every_s`` seconds each known agent is pinged (answered while it measures: the
actor is threaded) and, when discovering, the cluster is searched for named agents of the
class that are not known yet (``paretoedge agent start`` on a device) and for nodes that
advertise free units of ``device:<class>`` without that command, where agents are created.
Nothing blocks: replies are collected on the next refresh.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from device_agents.registry import AgentName, agent_handle, free_class_slots, named_agents

log = logging.getLogger("search.fleet.agent_pool")


@dataclass
class KnownAgent:
    """An agent the pool may dispatch to, with what it said about itself."""

    handle: Any
    name: str
    agent_id: str
    owned: bool
    info: dict[str, Any] = field(default_factory=dict)
    ping_ref: Any = None
    ping_sent: float = 0.0
    last_seen: float = field(default_factory=time.monotonic)


@dataclass
class _Probe:
    name: str
    handle: Any
    ref: Any
    owned: bool
    since: float = field(default_factory=time.monotonic)


class AgentRoster:
    """The live agents of one device class, kept current by :meth:`refresh`.

    ``on_lost(agent, why, kill)`` is called for an agent that died or sent no heartbeat for
    ``heartbeat_timeout_s``; the owner hands its trial elsewhere and calls :meth:`drop`.
    """

    def __init__(self, device_class: str, *, on_lost: Callable[[KnownAgent, str, bool], None],
                 discover: bool = False, threads: int = 1, cache_dir: str | None = None,
                 discover_every_s: float = 5.0, heartbeat_timeout_s: float = 60.0) -> None:
        self.device_class = device_class
        self.on_lost = on_lost
        self.discover = discover
        self.threads = threads
        self.cache_dir = cache_dir
        self.discover_every_s = discover_every_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.agents: list[KnownAgent] = []
        self._probes: dict[str, _Probe] = {}
        self._ignored: dict[str, float] = {}  # name or node id -> monotonic time to retry
        self._created = 0
        self.last_refresh = 0.0

    def add(self, handle: Any, info: dict[str, Any], *, owned: bool) -> KnownAgent:
        agent = KnownAgent(handle, info.get("actor_name", ""), info["agent_id"], owned, info)
        self.agents.append(agent)
        return agent

    def drop(self, agent: KnownAgent, *, kill: bool = False) -> bool:
        """Forget an agent (killing its actor with ``kill``); False if it was not known."""
        if agent not in self.agents:
            return False
        self.agents.remove(agent)
        if kill:
            import ray

            with contextlib.suppress(Exception):
                ray.kill(agent.handle, no_restart=True)
        self._ignored[agent.name] = time.monotonic() + 30.0
        return True

    def refresh(self, *, force: bool = False) -> None:
        """Heartbeats, and (when discovering) new agents: at most every ``discover_every_s``."""
        now = time.monotonic()
        self._check_probes(now)
        self._check_heartbeats(now)
        if not force and now - self.last_refresh < self.discover_every_s:
            return
        self.last_refresh = now
        for agent in self.agents:
            if agent.ping_ref is None:
                agent.ping_ref, agent.ping_sent = agent.handle.ping.remote(), now
        if self.discover:
            self._discover(now)

    def _discover(self, now: float) -> None:
        known = {a.name for a in self.agents} | set(self._probes)
        names = named_agents(self.device_class)
        for name in names:
            text = str(name)
            if text in known or self._ignored.get(text, 0.0) > now:
                continue
            handle = agent_handle(text)
            if handle is not None:
                self._probes[text] = _Probe(text, handle, handle.info.remote(), owned=False)
        if any(p.owned for p in self._probes.values()):
            return  # one creation at a time: its unit of the resource is not yet visible
        for node_id, free in free_class_slots(self.device_class, names,
                                              skip_managed=True).items():
            if self._ignored.get(node_id, 0.0) > now:
                continue
            for _ in range(free):
                self._create_on(node_id)

    def _create_on(self, node_id: str) -> None:
        from device_agents.ray_actor import create_agent

        self._created += 1
        used = sum(1 for n in named_agents(self.device_class) if n.node_id == node_id)
        name = AgentName(self.device_class, node_id, f"s{os.getpid()}-{self._created}")
        # pinned from the last core down, one per agent on the node (the device's own count)
        handle = create_agent(name, threads=self.threads, cores=(-1 - used,),
                              cache_dir=self.cache_dir)
        self._probes[str(name)] = _Probe(str(name), handle, handle.info.remote(), owned=True)
        log.info("created agent %s on node %s", name, node_id[:12])

    def _check_probes(self, now: float) -> None:
        import ray

        if not self._probes:
            return
        ready, _ = ray.wait([p.ref for p in self._probes.values()],
                            num_returns=len(self._probes), timeout=0)
        done = {ref.hex() for ref in ready}
        for name, probe in list(self._probes.items()):
            if probe.ref.hex() in done:
                del self._probes[name]
                try:
                    info = ray.get(probe.ref)
                except Exception as exc:
                    log.warning("agent %s did not answer: %s", name, type(exc).__name__)
                    self._ignored[name] = now + 30.0
                    continue
                agent = KnownAgent(probe.handle, name, info["agent_id"], probe.owned, info)
                self.agents.append(agent)
                log.warning("agent %s of device class %r joined: host %s, cores %s",
                            agent.agent_id, self.device_class, info.get("host"),
                            info.get("cores"))
                self._protect_builder()
            elif now - probe.since > self.heartbeat_timeout_s:
                del self._probes[name]
                log.warning("agent %s did not start within %.0f s", name,
                            self.heartbeat_timeout_s)
                if probe.owned:  # pending: no node can host it now; try that node later
                    with contextlib.suppress(Exception):
                        ray.kill(probe.handle, no_restart=True)
                    self._ignored[AgentName.parse(name).node_id] = now + 60.0  # type: ignore
                self._ignored[name] = now + 60.0

    def _check_heartbeats(self, now: float) -> None:
        import ray

        pinging = [a for a in self.agents if a.ping_ref is not None]
        if not pinging:
            return
        ready, _ = ray.wait([a.ping_ref for a in pinging], num_returns=len(pinging), timeout=0)
        done = {ref.hex() for ref in ready}
        for agent in pinging:
            if agent.ping_ref.hex() in done:
                ref, agent.ping_ref = agent.ping_ref, None
                try:
                    ray.get(ref)
                    agent.last_seen = now
                except Exception as exc:
                    self.on_lost(agent, f"died ({type(exc).__name__})", False)
            elif now - agent.ping_sent > self.heartbeat_timeout_s:
                self.on_lost(agent, f"sent no heartbeat for {self.heartbeat_timeout_s:.0f} s",
                             True)

    def _protect_builder(self) -> None:
        """Keep this process (the builder) off the cores of pinned agents on this host."""
        if not self.discover or not hasattr(os, "sched_setaffinity"):
            return
        host = socket.gethostname()
        taken = {c for a in self.agents if a.info.get("host") == host and a.info.get("pinned")
                 for c in a.info.get("cores", ())}
        rest = set(range(os.cpu_count() or 1)) - taken
        if taken and rest:
            os.sched_setaffinity(0, rest)

    def close(self) -> None:
        """Stop the agents this roster created (and local ones); device agents keep running."""
        import ray

        for actor in [a.handle for a in self.agents if a.owned] + \
                [p.handle for p in self._probes.values() if p.owned]:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self.agents, self._probes = [], {}
