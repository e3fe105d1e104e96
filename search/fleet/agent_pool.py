"""The Ray agent pool: device agents as actors, dispatch by device class, retries on failure.

Two ways to get agents:

- :meth:`RayAgentPool.start_local` starts a local Ray cluster and agents pinned to the last
  cores of this machine (the study builds on the others); a dead local agent is replaced.
- :meth:`RayAgentPool.connect` joins a running cluster (``device.address``) and uses the agents
  of the class found there: named actors started by ``paretoedge agent start`` on the devices,
  and agents it creates itself on nodes that advertise free units of ``device:<class>``. It
  looks again every ``discover_every_s`` seconds, so an agent that joins later is used.

Every agent is pinged every ``discover_every_s`` seconds; one that died, or did not answer for
``heartbeat_timeout_s``, is dropped and its trial handed to another agent of the class (at most
``retries`` more times). When no agent is left, trials wait up to ``wait_for_agents_s`` for one
to join, with a message that says how to start one, then fail; nothing waits silently.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from device_agents import (
    Confirmation,
    ConfirmRequest,
    MeasureRequest,
    OperatorProfile,
    ProfileRequest,
)
from device_agents.registry import (
    AGENT_NAMESPACE,
    AgentName,
    device_resource,
)
from search.errors import AgentUnavailableError
from search.fleet.agent_roster import AgentRoster, KnownAgent
from search.fleet.dispatch import Completed

log = logging.getLogger(__name__)
#: Agent errors (the agent is gone), as opposed to a failed measurement (a fact of the bundle).
AGENT_LOST = ("ActorDiedError", "ActorUnavailableError", "RayActorError", "NodeDiedError",
              "OwnerDiedError")


#: How long the pool waits for an agent to say what it is measuring before it judges a job
#: that is past its timeout hung.
ACTIVITY_TIMEOUT_S = 5.0


@dataclass
class _Job:
    """A measurement in flight. ``started``: when it was submitted, then (once past the
    timeout) when its agent says it started measuring it."""

    key: int
    request: MeasureRequest
    agent: KnownAgent | None
    ref: Any
    started: float
    attempts: int = 1
    tried: set[str] = field(default_factory=set)


def local_core_plan(cpu_count: int, agents: int, per_agent: int = 1
                    ) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
    """Cores for each local agent (the last cores, ``per_agent`` each) and for the builder
    (the rest).

    A measuring agent must not share its core with model building or another measurement
    (docs/STACK.md); when there are too few cores the builder keeps core 0 and agents
    double up. An agent of several cores (the runtime knob ``threads``, docs/RUNTIME.md) that
    does not fit beside the builder's core 0 takes the last ``per_agent`` cores, core 0
    included (the builder then shares it: builds do not overlap local measurements unless
    ``device.overlap_builds``).
    """
    if cpu_count <= 1:
        return [(0,)] * agents, (0,)
    usable = list(range(cpu_count - 1, 0, -1))
    if per_agent > 1:
        pool = usable if per_agent <= len(usable) else list(range(cpu_count - 1, -1, -1))
        width = min(per_agent, len(pool))
        plan: list[tuple[int, ...]] = [
            tuple(sorted(pool[(i * width + j) % len(pool)] for j in range(width)))
            for i in range(agents)]
        taken = {core for cores in plan for core in cores}
        return plan, tuple(c for c in range(cpu_count) if c not in taken) or (0,)
    plan = [(usable[i % len(usable)],) for i in range(agents)]
    taken = {core for cores in plan for core in cores}
    builder = tuple(c for c in range(cpu_count) if c not in taken) or (0,)
    return plan, builder


def start_ray(address: str | None, *, num_cpus: int | None = None,
              resources: dict[str, float] | None = None) -> None:
    """Start a local cluster, or connect to the one at ``address`` (no-op when connected)."""
    import ray

    if ray.is_initialized():
        return
    if address:
        from device_agents.agent_node import check_reachable, enable_token_auth
        from device_agents.errors import AgentStartError

        try:
            check_reachable(address)  # Ray would retry an unreachable head for minutes
        except AgentStartError as exc:
            raise AgentUnavailableError(f"device.address: {exc}") from None
        enable_token_auth()  # an explicit address never turns Ray's token mode on by itself
        try:
            ray.init(address=address, namespace=AGENT_NAMESPACE, log_to_driver=False,
                     logging_level=logging.WARNING)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise AgentUnavailableError(
                f"device.address: cannot connect to the Ray cluster at {address}: {first} (is "
                f"`ray start --head` running there, and is its auth token in ~/.ray/auth_token "
                f"or RAY_AUTH_TOKEN here?)") from exc
    else:
        # "local": always a new cluster; a plain ray.init() would join the cluster named in
        # /tmp/ray/ray_current_cluster, which may be someone else's or dead (then it hangs).
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), resources=resources or {},
                 include_dashboard=False, namespace=AGENT_NAMESPACE, log_to_driver=False,
                 object_store_memory=256 * 1024 * 1024, logging_level=logging.WARNING)


class RayAgentPool:
    """Agents of one device class, each measuring one bundle at a time."""

    def __init__(self, device_class: str, agents: list[Any] | None = None, *,
                 timeout_s: float = 300.0, retries: int = 2, wait_for_agents_s: float = 120.0,
                 local_factory: Any = None, discover: bool = False, address: str | None = None,
                 threads: int = 1, cache_dir: str | None = None, discover_every_s: float = 5.0,
                 heartbeat_timeout_s: float = 60.0) -> None:
        self.device_class = device_class
        self.timeout_s = timeout_s
        self.retries = retries
        self.wait_for_agents_s = wait_for_agents_s
        self.address = address
        self._roster = AgentRoster(device_class, on_lost=self._lost, discover=discover,
                                   threads=threads, cache_dir=cache_dir,
                                   discover_every_s=discover_every_s,
                                   heartbeat_timeout_s=heartbeat_timeout_s)
        self._busy: dict[str, _Job] = {}
        self._queue: list[_Job] = []
        self._local_factory = local_factory
        self._orphans: list[Completed] = []  # trials that failed outside poll (heartbeats)
        self._pending_local = [(h, False) for h in agents or []]
        self._owns_cluster = False  # set by start_local when it started the Ray cluster

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def start_local(cls, device_class: str, count: int, *, threads: int = 1,
                    cache_dir: str | None = None, cores_per_agent: int = 1,
                    **kwargs: Any) -> RayAgentPool:
        """Start a local Ray cluster and ``count`` agents pinned to their own cores
        (``cores_per_agent`` each)."""
        import ray

        from device_agents.ray_actor import create_agent

        cpus = os.cpu_count() or 1
        plan, builder_cores = local_core_plan(cpus, count, cores_per_agent)
        owns_cluster = not ray.is_initialized()
        if hasattr(os, "sched_setaffinity"):
            # before Ray starts: its processes (GCS, raylet, workers) inherit the builder's
            # cores, so only the agents (which pin themselves) run on the agents' cores
            os.sched_setaffinity(0, set(builder_cores))
        start_ray(None, num_cpus=cpus, resources={device_resource(device_class): count})
        node_id = ray.get_runtime_context().get_node_id()

        def factory(index: int) -> Any:
            name = AgentName(device_class, node_id, f"local{os.getpid()}-{time.time_ns()}")
            return create_agent(name, threads=threads, cores=plan[index % len(plan)],
                                cache_dir=cache_dir, node_labels={})

        pool = cls(device_class, [factory(i) for i in range(count)], local_factory=factory,
                   threads=threads, cache_dir=cache_dir, **kwargs)
        # the cluster's agent resources are fixed at its start: a later study in this process
        # (another agent count) needs a cluster of its own
        pool._owns_cluster = owns_cluster
        try:
            pool.wait_ready()
        except BaseException:
            pool.close()
            raise
        return pool

    @classmethod
    def connect(cls, address: str, device_class: str, *, threads: int = 1,
                cache_dir: str | None = None, **kwargs: Any) -> RayAgentPool:
        """Join the cluster at ``address`` and wait (up to ``wait_for_agents_s``) for an agent
        of ``device_class``; raise :class:`AgentUnavailableError` when none comes."""
        start_ray(address)
        pool = cls(device_class, discover=True, address=address, threads=threads,
                   cache_dir=cache_dir, **kwargs)
        pool.wait_for_agents()
        return pool

    def wait_ready(self) -> None:
        """Wait for the agents given to the constructor (a local pool's) to answer."""
        import ray

        handles = [h for h, _ in self._pending_local]
        refs = [h.info.remote() for h in handles]
        self._pending_local = []
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.wait_for_agents_s)
        if len(ready) < len(refs):
            raise AgentUnavailableError(
                f"only {len(ready)} of {len(refs)} agents of device class "
                f"{self.device_class!r} started within {self.wait_for_agents_s:.0f} s")
        for handle, ref in zip(handles, refs, strict=True):
            self._roster.add(handle, ray.get(ref), owned=True)

    def wait_for_agents(self) -> None:
        """Raise :class:`AgentUnavailableError` unless an agent is free within the timeout."""
        if not self.wait_for_free_slot():
            raise AgentUnavailableError(
                f"no agent of device class {self.device_class!r} joined the Ray cluster at "
                f"{self.address} within {self.wait_for_agents_s:.0f} s "
                f"(device.wait_for_agents_s); start one on the device: {self._start_hint()}")

    def _start_hint(self) -> str:
        return (f"paretoedge agent start --address {self.address or 'HEAD:6379'} "
                f"--device {self.device_class}")

    # -- the agents ---------------------------------------------------------------------------
    @property
    def agents(self) -> list[dict[str, Any]]:
        """What each connected agent said about itself when it was found."""
        return [dict(a.info, agent_id=a.agent_id, name=a.name) for a in self._roster.agents]

    def refresh(self, *, force: bool = False) -> None:
        """Heartbeats and discovery (at most every ``discover_every_s`` unless ``force``)."""
        self._roster.refresh(force=force)

    def _lost(self, agent: KnownAgent, why: str, kill: bool = False) -> None:
        """Drop an agent; its trial (if any) goes to another agent, or fails after its
        retries (collected by the next :meth:`poll`)."""
        import ray

        if not self._roster.drop(agent, kill=kill):
            return
        log.warning("agent %s of %s %s; removing it", agent.agent_id, self.device_class, why)
        if agent.owned and self._local_factory is not None:  # a local pool replaces it
            replacement = self._local_factory(len(self._roster.agents) + 1)
            try:
                info = ray.get(replacement.info.remote(), timeout=self.wait_for_agents_s)
                self._roster.add(replacement, info, owned=True)
            except Exception:
                with contextlib.suppress(Exception):
                    ray.kill(replacement, no_restart=True)
        for ref_hex, job in list(self._busy.items()):
            if job.agent is agent:
                del self._busy[ref_hex]
                self._orphans.extend(self._retry(job, f"agent {agent.agent_id} {why}"))

    # -- dispatch -----------------------------------------------------------------------------

    def share(self, payload: object) -> object:
        import ray

        return ray.put(payload)

    def _free_agents(self) -> list[KnownAgent]:
        busy = {id(job.agent) for job in self._busy.values()}
        return [a for a in self._roster.agents if id(a) not in busy]

    def free_slots(self) -> int:
        return max(len(self._free_agents()) - len(self._queue), 0)

    def in_flight(self) -> int:
        return len(self._busy) + len(self._queue)

    def submit(self, key: int, request: MeasureRequest, *, attempts: int = 1,
               tried: set[str] | None = None) -> None:
        free = self._free_agents()
        if not free:
            raise AgentUnavailableError(f"no free agent of device class {self.device_class!r}")
        self._start(_Job(key, request, None, None, 0.0, attempts, set(tried or ())), free)

    def _start(self, job: _Job, free: list[KnownAgent]) -> None:
        untried = [a for a in free if a.agent_id not in job.tried]
        agent = (untried or free)[0]
        job.agent, job.started = agent, time.monotonic()
        job.ref = agent.handle.measure.remote(job.request)
        job.tried.add(agent.agent_id)
        self._busy[job.ref.hex()] = job

    def confirm(self, request: ConfirmRequest) -> Confirmation:
        """Run a confirmation on one free agent and wait for it (``timeout_s`` per bundle)."""
        confirmation: Confirmation = self._on_one_agent(
            "confirm", lambda agent: agent.handle.confirm.remote(request),
            self.timeout_s * max(1, len(request.bundles)))
        return confirmation

    def profile(self, request: ProfileRequest) -> OperatorProfile:
        """Profile one bundle on one free agent (onnxruntime's profiler) and wait for it."""
        profile: OperatorProfile = self._on_one_agent(
            "profile", lambda agent: agent.handle.profile.remote(request), self.timeout_s)
        return profile

    def _on_one_agent(self, doing: str, call: Callable[[KnownAgent], Any],
                      timeout_s: float) -> Any:
        """``call`` on one free agent (its object reference), waited for up to ``timeout_s``;
        an agent that does not answer in time is dropped."""
        import ray

        if not self.wait_for_free_slot():
            raise AgentUnavailableError(f"no free agent of device class {self.device_class!r} "
                                        f"to {doing} on")
        agent = self._free_agents()[0]
        ref = call(agent)
        ready, _ = ray.wait([ref], timeout=timeout_s)
        if not ready:
            self._lost(agent, f"timed out ({doing})", True)
            raise AgentUnavailableError(f"agent {agent.agent_id} did not {doing} within "
                                        f"{timeout_s:.0f} s")
        return ray.get(ref)

    def wait_for_free_slot(self, timeout: float | None = None) -> bool:
        """Wait (up to ``timeout``, default ``wait_for_agents_s``) until an agent is free,
        saying what it waits for; ``False`` when none came."""
        limit = self.wait_for_agents_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        self.refresh(force=True)
        told = 0.0
        while self.free_slots() == 0:
            now = time.monotonic()
            if now >= deadline:
                return False
            if not self._busy and now - told >= 30.0:
                told = now
                where = f"the Ray cluster at {self.address}" if self.address else "this machine"
                log.warning("waiting up to %.0f s for an agent of device class %r in %s "
                            "(device.wait_for_agents_s); start one on the device: %s",
                            deadline - now, self.device_class, where, self._start_hint())
            time.sleep(min(0.5, max(deadline - now, 0.0)))
            self.refresh(force=now - self._roster.last_refresh >= min(self._roster.discover_every_s,
                                                                       1.0))
        return True

    def poll(self, timeout: float) -> list[Completed]:
        import ray

        self.refresh()
        done: list[Completed] = self._take_orphans()
        self._dispatch_queue(done)
        if not self._busy:
            if self._queue:
                time.sleep(min(timeout, 0.5))
            return done
        refs = [job.ref for job in self._busy.values()]
        ready, waiting = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready and waiting:  # every result that is ready now, before any job is judged hung
            more, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0)
            ready = [*ready, *more]
        for ref in ready:
            job = self._busy.pop(ref.hex(), None)
            if job is None:
                continue
            assert job.agent is not None
            try:
                measurement = ray.get(ref)
                done.append(Completed(job.key, measurement, agent_id=job.agent.agent_id,
                                      attempts=job.attempts))
            except Exception as exc:
                if type(exc).__name__ in AGENT_LOST or _is_agent_loss(exc):
                    self._busy[ref.hex()] = job  # _lost hands it to another agent
                    self._lost(job.agent, f"died ({type(exc).__name__})")
                else:  # the measurement itself failed: a fact about the bundle
                    cause = getattr(exc, "cause", None) or exc
                    done.append(Completed(job.key, None, f"{type(cause).__name__}: {cause}",
                                          agent_id=job.agent.agent_id, attempts=job.attempts))
        for job in list(self._busy.values()):
            if job.agent is not None and time.monotonic() - job.started > self.timeout_s:
                job.started = self._measuring_since(job)
                if time.monotonic() - job.started > self.timeout_s:
                    self._lost(job.agent, f"timed out (measuring one bundle for more than "
                                          f"{self.timeout_s:.0f} s)", True)
        done.extend(self._take_orphans())
        return done

    def _measuring_since(self, job: _Job) -> float:
        """When ``job``'s agent started measuring it, as the agent says: now when it is busy
        with another job (this one waits behind it: a shared agent) or already done with it
        (its result is on the way); the submission time when the agent does not answer."""
        import ray

        assert job.agent is not None
        try:
            activity = ray.get(job.agent.handle.activity.remote(), timeout=ACTIVITY_TIMEOUT_S)
        except Exception:  # silent, or an agent too old to say: judge by the submission
            return job.started
        now = time.monotonic()
        if activity is not None and activity.is_measuring(job.request):
            return now - float(activity.seconds)
        return now

    def _take_orphans(self) -> list[Completed]:
        done, self._orphans = self._orphans, []
        return done

    def _dispatch_queue(self, done: list[Completed]) -> None:
        now = time.monotonic()
        for job in list(self._queue):
            free = self._free_agents()
            if self._roster.agents and not free:
                job.started = now  # agents exist, all busy: it waits its turn, no expiry
            elif free:
                self._queue.remove(job)
                self._start(job, free)
            elif now - job.started > self.wait_for_agents_s:
                self._queue.remove(job)
                done.append(Completed(job.key, None, f"no agent of device class "
                                                     f"{self.device_class!r} for "
                                                     f"{self.wait_for_agents_s:.0f} s; gave up "
                                                     f"after {job.attempts} attempt(s)",
                                      attempts=job.attempts))

    def _retry(self, job: _Job, reason: str) -> list[Completed]:
        if job.attempts > self.retries:
            return [Completed(job.key, None, f"{reason}; gave up after {job.attempts} "
                                             f"attempt(s)", attempts=job.attempts)]
        job.attempts += 1
        free = self._free_agents()
        if free:
            log.warning("%s; re-running trial %s on another agent", reason, job.key)
            self._start(job, free)
        else:
            log.warning("%s; trial %s waits up to %.0f s for a free agent of device class %r"
                        "%s", reason, job.key, self.wait_for_agents_s, self.device_class,
                        "" if self._roster.agents else f" (start one: {self._start_hint()})")
            job.agent, job.ref, job.started = None, None, time.monotonic()
            self._queue.append(job)
        return []

    def close(self) -> None:
        """Stop the agents this pool created (and the local cluster, when it started it);
        agents started on devices keep running."""
        self._roster.close()
        if self._owns_cluster:
            import ray

            self._owns_cluster = False
            ray.shutdown()


def _is_agent_loss(exc: BaseException) -> bool:
    from ray.exceptions import RayActorError

    return isinstance(exc, RayActorError)
