"""The Ray agent pool: device agents as actors, dispatch by device class, retries on failure."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from device_agents import MeasureRequest
from device_agents.ray_actor import AGENT_NAMESPACE, device_resource, remote_agent_class
from search.dispatch import Completed
from search.errors import AgentUnavailableError

log = logging.getLogger(__name__)


@dataclass
class _Job:
    key: Hashable
    request: MeasureRequest
    agent: Any
    ref: Any
    started: float
    attempts: int = 1
    tried: set[str] = field(default_factory=set)


def local_core_plan(cpu_count: int, agents: int) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
    """Cores for each local agent (the last cores, one each) and for the builder (the rest).

    A measuring agent must not share its core with model building or another measurement
    (FACTS.md); when there are too few cores the builder keeps core 0 and agents double up.
    """
    if cpu_count <= 1:
        return [(0,)] * agents, (0,)
    usable = list(range(cpu_count - 1, 0, -1))
    plan = [(usable[i % len(usable)],) for i in range(agents)]
    taken = {core for cores in plan for core in cores}
    builder = tuple(c for c in range(cpu_count) if c not in taken) or (0,)
    return plan, builder


def start_ray(address: str | None, *, num_cpus: int | None = None,
              resources: dict[str, float] | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, namespace=AGENT_NAMESPACE, log_to_driver=False)
    else:
        # "local": always a new cluster; a plain ray.init() would join the cluster named in
        # /tmp/ray/ray_current_cluster, which may be someone else's or dead (then it hangs).
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), resources=resources or {},
                 include_dashboard=False, namespace=AGENT_NAMESPACE, log_to_driver=False,
                 object_store_memory=256 * 1024 * 1024, logging_level=logging.WARNING)


class RayAgentPool:
    """Agents of one device class, each measuring one bundle at a time.

    A request whose agent dies or exceeds ``timeout_s`` is handed to another agent of the class
    (at most ``retries`` more times); a hung agent is killed. The eval set is put into the
    object store once (:meth:`share`) and cached by every agent.
    """

    def __init__(self, device_class: str, agents: list[Any], *, timeout_s: float = 300.0,
                 retries: int = 2, wait_for_agents_s: float = 120.0,
                 local_factory: Any = None) -> None:
        self.device_class = device_class
        self.timeout_s = timeout_s
        self.retries = retries
        self.wait_for_agents_s = wait_for_agents_s
        self._agents = list(agents)
        self._busy: dict[str, _Job] = {}
        self._ids: dict[int, str] = {}
        self._local_factory = local_factory
        for agent in self._agents:
            self._register(agent)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def start_local(cls, device_class: str, count: int, *, threads: int = 1,
                    cache_dir: str | None = None, **kwargs: Any) -> RayAgentPool:
        """Start a local Ray cluster and ``count`` agents pinned to their own cores."""
        cpus = os.cpu_count() or 1
        plan, builder_cores = local_core_plan(cpus, count)
        start_ray(None, num_cpus=cpus, resources={device_resource(device_class): count})
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(builder_cores))

        def factory(index: int) -> Any:
            actor = remote_agent_class().options(
                num_cpus=0, resources={device_resource(device_class): 1},
                name=f"agent-{device_class}-{index}-{os.getpid()}-{time.time_ns()}",
                lifetime=None)
            return actor.remote(device_class, threads, plan[index % len(plan)], cache_dir)

        agents = [factory(i) for i in range(count)]
        pool = cls(device_class, agents, local_factory=factory, **kwargs)
        pool.wait_ready()
        return pool

    def wait_ready(self) -> None:
        import ray

        refs = [agent.ping.remote() for agent in self._agents]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.wait_for_agents_s)
        if len(ready) < len(refs):
            raise AgentUnavailableError(
                f"only {len(ready)} of {len(refs)} agents of device class "
                f"{self.device_class!r} started within {self.wait_for_agents_s:.0f} s")
        for agent, ref in zip(self._agents, refs, strict=True):
            self._ids[id(agent)] = ray.get(ref)

    def _register(self, agent: Any) -> None:
        self._ids.setdefault(id(agent), f"agent@{id(agent):x}")

    # -- dispatch -----------------------------------------------------------------------------
    def share(self, payload: object) -> object:
        import ray

        return ray.put(payload)

    def _agent_id(self, agent: Any) -> str:
        return self._ids.get(id(agent), "?")

    def _free_agents(self) -> list[Any]:
        busy = {id(job.agent) for job in self._busy.values()}
        return [a for a in self._agents if id(a) not in busy]

    def free_slots(self) -> int:
        return len(self._free_agents())

    def in_flight(self) -> int:
        return len(self._busy)

    def submit(self, key: Hashable, request: MeasureRequest, *, attempts: int = 1,
               tried: set[str] | None = None) -> None:
        free = self._free_agents()
        if not free:
            raise AgentUnavailableError(f"no free agent of device class {self.device_class!r}")
        untried = [a for a in free if self._agent_id(a) not in (tried or set())]
        agent = (untried or free)[0]
        ref = agent.measure.remote(request)
        self._busy[ref.hex()] = _Job(key, request, agent, ref, time.monotonic(), attempts,
                                     set(tried or ()) | {self._agent_id(agent)})

    def poll(self, timeout: float) -> list[Completed]:
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        if not self._busy:
            return []
        refs = [job.ref for job in self._busy.values()]
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        done: list[Completed] = []
        for ref in ready:
            job = self._busy.pop(ref.hex())
            try:
                measurement = ray.get(ref)
                done.append(Completed(job.key, measurement, agent_id=self._agent_id(job.agent),
                                      attempts=job.attempts))
            except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
                self._drop_agent(job.agent, f"died: {type(exc).__name__}")
                done.extend(self._retry(job, f"agent {self._agent_id(job.agent)} died"))
            except Exception as exc:  # the measurement itself failed: a fact about the bundle
                cause = getattr(exc, "cause", None) or exc
                done.append(Completed(job.key, None, f"{type(cause).__name__}: {cause}",
                                      agent_id=self._agent_id(job.agent), attempts=job.attempts))
        now = time.monotonic()
        for ref_hex, job in list(self._busy.items()):
            if now - job.started > self.timeout_s:
                self._busy.pop(ref_hex)
                ray.kill(job.agent, no_restart=True)
                self._drop_agent(job.agent, f"hung for more than {self.timeout_s:.0f} s")
                done.extend(self._retry(job, f"agent {self._agent_id(job.agent)} timed out"))
        return done

    def _drop_agent(self, agent: Any, why: str) -> None:
        log.warning("agent %s of %s %s; removing it", self._agent_id(agent), self.device_class,
                    why)
        self._agents = [a for a in self._agents if a is not agent]
        if self._local_factory is not None:  # a local pool replaces its dead agent
            replacement = self._local_factory(len(self._agents) + 1)
            self._agents.append(replacement)
            import ray

            try:
                self._ids[id(replacement)] = ray.get(replacement.ping.remote(),
                                                     timeout=self.wait_for_agents_s)
            except Exception:
                self._agents.remove(replacement)

    def _retry(self, job: _Job, reason: str) -> list[Completed]:
        if job.attempts > self.retries or not self._free_agents():
            return [Completed(job.key, None, f"{reason}; gave up after {job.attempts} "
                                             f"attempt(s)", attempts=job.attempts)]
        log.warning("%s; re-running trial %s on another agent", reason, job.key)
        self.submit(job.key, job.request, attempts=job.attempts + 1, tried=job.tried)
        return []

    def close(self) -> None:
        import ray

        for agent in self._agents:
            with contextlib.suppress(Exception):
                ray.kill(agent, no_restart=True)
        self._agents = []
