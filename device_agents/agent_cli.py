"""Joining a device to a study's cluster, and listing the agents there.

``paretoedge agent start`` and ``paretoedge agents`` call :class:`AgentSupervisor` and
:func:`list_agents`. A board that has only the agent's dependencies (numpy, onnxruntime, ray)
runs the same code without the ``paretoedge`` command::

    python -m device_agents.agent_cli start --address HEAD:6379 --device rpi4
    python -m device_agents.agent_cli list

What ``start`` does: check the auth token, start a Ray node joined to ``HEAD`` with the
class's resource and labels (:mod:`device_agents.agent_node`), connect to the cluster as a
driver, create the agents as detached named actors on that node (each pinned to its own cores),
then watch them: a dead agent is recreated, Ctrl-C (or SIGTERM) removes the agents and the
node. The study finds the agents by name (:mod:`device_agents.registry`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_agents.agent_node import (
    RayNodeProcess,
    check_reachable,
    enable_token_auth,
    parse_cores,
    plan_cores,
    ray_start_command,
)
from device_agents.errors import AgentStartError, DeviceAgentError
from device_agents.registry import (
    AGENT_NAMESPACE,
    NODE_LABEL,
    AgentName,
    agent_rows,
    node_with_label,
)

CLASS_PATTERN = r"^[A-Za-z0-9_.-]+$"
TOKEN_HINT = ("copy the head's token to this machine (on the head: `ray get-auth-token`; here: "
              "~/.ray/auth_token, or set RAY_AUTH_TOKEN)")


@dataclass(frozen=True)
class AgentStartOptions:
    """What ``paretoedge agent start`` was asked for."""

    address: str
    device_class: str
    threads: int = 1
    cores: tuple[int, ...] | None = None
    agents: int = 1
    cache_dir: Path | None = None
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    token_file: Path | None = None
    ray_args: tuple[str, ...] = ()
    object_store_mb: int = 200
    ready_timeout_s: float = 180.0
    heartbeat_s: float = 5.0

    def check(self) -> None:
        """Raise :class:`AgentStartError` naming the first bad option."""
        if not re.match(r"^[^\s:/]+:\d+$", self.address):
            raise AgentStartError(f"--address: {self.address!r} is not HOST:PORT of the head")
        if not re.match(CLASS_PATTERN, self.device_class):
            raise AgentStartError(f"--device: {self.device_class!r} may only use letters, "
                                  f"digits and ._-")
        if self.agents < 1 or self.threads < 1:
            raise AgentStartError("--agents and --threads must be at least 1")
        import onnxruntime as ort

        available = ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise AgentStartError(f"--providers: {', '.join(missing)} not available in this "
                                  f"onnxruntime (it has {', '.join(available)})")


def connect(address: str | None) -> None:
    """Connect this process to the cluster as a driver (once), with a clear error if not."""
    import ray

    if ray.is_initialized():
        return
    enable_token_auth()
    target = address or os.environ.get("RAY_ADDRESS") or "auto"
    if target != "auto":
        check_reachable(target)
    try:
        ray.init(address=target, namespace=AGENT_NAMESPACE, log_to_driver=False,
                 logging_level=logging.WARNING, configure_logging=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = f"; {TOKEN_HINT}" if "auth" in first.lower() or "token" in first.lower() else ""
        raise AgentStartError(f"cannot connect to the Ray cluster at {target}: {first}{hint}") \
            from exc


def taken_cores(host: str) -> set[int]:
    """Cores of the pinned agents already running on ``host``."""
    taken: set[int] = set()
    for row in agent_rows(timeout=10.0):
        if row.get("host") == host and row.get("pinned"):
            taken.update(row.get("cores") or ())
    return taken


@dataclass
class _Slot:
    index: int
    cores: tuple[int, ...]
    name: AgentName
    handle: Any = None
    generation: int = 0


@dataclass
class AgentSupervisor:
    """Joins this machine to the cluster and keeps its agents alive until stopped."""

    options: AgentStartOptions
    say: Callable[[str], None] = print
    node_key: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        self.node: RayNodeProcess | None = None
        self.node_id = ""
        self.slots: list[_Slot] = []
        self.cache_dir = Path(self.options.cache_dir or Path(tempfile.gettempdir()) /
                              "paretoedge-agent")

    # -- start --------------------------------------------------------------------------------
    def start(self) -> None:
        o = self.options
        o.check()
        if o.cores is None:  # fail on a bad plan before starting anything
            plan_cores(os.cpu_count() or 1, o.agents, o.threads)
        source = enable_token_auth(o.token_file)
        if source is None and os.environ.get("RAY_AUTH_MODE", "").lower() != "disabled":
            self.say(f"warning: no Ray auth token here; a head with token authentication "
                     f"(Ray's default) will refuse this node: {TOKEN_HINT}")
        check_reachable(o.address)
        command = ray_start_command(o.address, o.device_class, o.agents, self.node_key,
                                    object_store_mb=o.object_store_mb, extra=o.ray_args)
        self.node = RayNodeProcess(command, self.cache_dir / "logs" /
                                   f"ray-start-{self.node_key}.log")
        self.say(f"joining the Ray cluster at {o.address} as a node of device class "
                 f"{o.device_class!r} ...")
        self.node.start()
        try:
            self.node.wait_started(o.ready_timeout_s)
        except AgentStartError as exc:
            if "auth" in str(exc).lower():
                raise AgentStartError(f"{exc}; {TOKEN_HINT}") from None
            raise
        connect(o.address)
        deadline = time.monotonic() + o.ready_timeout_s
        while (node := node_with_label(NODE_LABEL, self.node_key)) is None:
            if time.monotonic() > deadline:
                raise AgentStartError(f"this node did not appear in the cluster at {o.address} "
                                      f"within {o.ready_timeout_s:.0f} s")
            time.sleep(0.5)
        self.node_id = node.node_id
        plan = plan_cores(os.cpu_count() or 1, o.agents, o.threads, o.cores,
                          () if o.cores else taken_cores(socket.gethostname()))
        self.slots = [_Slot(i, cores, AgentName(o.device_class, self.node_id, str(i)))
                      for i, cores in enumerate(plan)]
        for slot in self.slots:
            self._create(slot)
        self._wait_ready(self.slots, o.ready_timeout_s)
        for slot in self.slots:
            self.say(self._describe(slot))
        self.say(f"{len(self.slots)} agent(s) of class {o.device_class!r} ready on node "
                 f"{self.node_id[:12]}; Ctrl-C removes them and leaves the cluster")

    def _create(self, slot: _Slot) -> None:
        from device_agents.ray_actor import create_agent

        o = self.options
        slot.name = AgentName(o.device_class, self.node_id,
                              f"{slot.index}" + (f"-{slot.generation}" if slot.generation else ""))
        slot.handle = create_agent(slot.name, threads=o.threads, cores=slot.cores,
                                   cache_dir=str(self.cache_dir), detached=True,
                                   node_labels={NODE_LABEL: self.node_key},
                                   providers=o.providers)

    def _wait_ready(self, slots: Sequence[_Slot], timeout: float) -> None:
        import ray

        refs = [slot.handle.ping.remote() for slot in slots]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if len(ready) < len(refs):
            raise AgentStartError(f"{len(refs) - len(ready)} agent(s) did not start on this "
                                  f"node within {timeout:.0f} s (a head without token "
                                  f"authentication needs RAY_AUTH_MODE=disabled here too)")
        ray.get(ready)

    def _describe(self, slot: _Slot) -> str:
        import ray

        info = ray.get(slot.handle.info.remote(), timeout=30)
        return (f"agent {slot.name}: host {info['host']}, cores {info['cores']}, threads "
                f"{info['threads']}, onnxruntime {info['onnxruntime']} "
                f"{info['providers']}, cpu {info['cpu']}")

    # -- watch --------------------------------------------------------------------------------
    def watch(self, stop: threading.Event) -> int:
        """Ping the agents every ``heartbeat_s``; recreate a dead one; return on ``stop``."""
        import ray
        from ray.exceptions import GetTimeoutError

        while not stop.wait(self.options.heartbeat_s):
            if self.node is not None and not self.node.alive():
                self.say(f"the Ray node stopped: {self.node.last_error()}")
                return 1
            for slot in self.slots:
                try:
                    ray.get(slot.handle.ping.remote(), timeout=60)
                except GetTimeoutError:
                    self.say(f"agent {slot.name} is not answering")
                except Exception as exc:
                    self.say(f"agent {slot.name} died ({type(exc).__name__}); starting it again")
                    slot.generation += 1
                    self._create(slot)
                    try:
                        self._wait_ready([slot], self.options.ready_timeout_s)
                        self.say(self._describe(slot))
                    except AgentStartError as err:
                        self.say(str(err))
        return 0

    def stop(self) -> None:
        """Remove the agents, then the node."""
        import contextlib

        try:
            import ray

            for slot in self.slots:
                if slot.handle is not None:
                    with contextlib.suppress(Exception):
                        ray.kill(slot.handle, no_restart=True)
            if ray.is_initialized():
                ray.shutdown()
        finally:
            if self.node is not None:
                self.node.stop()


def run_agent(options: AgentStartOptions, say: Callable[[str], None] = print) -> int:
    """``paretoedge agent start``: join, serve until Ctrl-C or SIGTERM, leave. Exit status."""
    stop = threading.Event()
    supervisor = AgentSupervisor(options, say)
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        supervisor.start()
        status = supervisor.watch(stop)
        say("stopping: removing the agents and leaving the cluster")
        return status
    finally:
        supervisor.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def list_agents(address: str | None = None, device_class: str | None = None,
                timeout: float = 10.0) -> list[dict[str, Any]]:
    """``paretoedge agents``: every agent actor in the cluster with what it says about itself."""
    connect(address)
    return agent_rows(device_class, timeout=timeout)


#: Columns of the agents table: (heading, row key or function of the row).
COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("class", lambda r: r["device_class"]),
    ("agent", lambda r: str(r.get("agent_id", r["name"]))),
    ("host", lambda r: str(r.get("host", "?"))),
    ("cores", lambda r: ",".join(map(str, r.get("cores", []))) +
     ("" if r.get("pinned") else " (not pinned)") if "cores" in r else "?"),
    ("threads", lambda r: str(r.get("threads", "?"))),
    ("onnxruntime", lambda r: str(r.get("onnxruntime", "?"))),
    ("providers", lambda r: ",".join(p.removesuffix("ExecutionProvider")
                                     for p in r.get("providers", []))),
    ("status", lambda r: r["status"]),
    ("measured", lambda r: str(r.get("measurements", "?"))),
    ("last heartbeat", lambda r: str(r.get("heartbeat", "?"))),
]


def _print_rows(rows: list[dict[str, Any]]) -> None:
    table = [[h for h, _ in COLUMNS]] + [[f(r) for _, f in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m device_agents.agent_cli",
                                     description="Join this device to a paretoedge study's Ray "
                                                 "cluster, or list the agents there.")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="join the cluster and serve measurements")
    start.add_argument("--address", required=True, help="HOST:PORT of the Ray head")
    start.add_argument("--device", required=True, help="device class, e.g. rpi4")
    start.add_argument("--threads", type=int, default=1, help="onnxruntime threads per agent")
    start.add_argument("--cores", help="cores to pin the agents to, e.g. 2,3 or 2-3")
    start.add_argument("--agents", type=int, default=1, help="agents on this machine")
    start.add_argument("--cache-dir", type=Path, help="bundle and eval-set cache")
    start.add_argument("--providers", default="CPUExecutionProvider",
                       help="onnxruntime providers, comma-separated")
    start.add_argument("--token-file", type=Path, help="the cluster's Ray auth token file")
    start.add_argument("--ray-arg", action="append", default=[],
                       help="extra argument for `ray start` (repeatable)")
    listing = sub.add_parser("list", help="list the agents in the cluster")
    listing.add_argument("--address", help="HOST:PORT of the Ray head (default: this machine's)")
    listing.add_argument("--device", help="only this device class")
    listing.add_argument("--json", action="store_true", help="print JSON")
    return parser


def options_from(address: str, device: str, threads: int = 1, cores: str | None = None,
                 agents: int = 1, cache_dir: Path | None = None,
                 providers: str = "CPUExecutionProvider", token_file: Path | None = None,
                 ray_args: Sequence[str] = ()) -> AgentStartOptions:
    """:class:`AgentStartOptions` from command-line values (checked on start)."""
    return AgentStartOptions(address=address, device_class=device, threads=threads,
                             cores=parse_cores(cores), agents=agents, cache_dir=cache_dir,
                             providers=tuple(p.strip() for p in providers.split(",")
                                             if p.strip()),
                             token_file=token_file, ray_args=tuple(ray_args))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "start":
            return run_agent(options_from(args.address, args.device, args.threads, args.cores,
                                          args.agents, args.cache_dir, args.providers,
                                          args.token_file, args.ray_arg),
                             say=lambda line: print(line, flush=True))
        rows = list_agents(args.address, args.device)
        if args.json:
            print(json.dumps(rows, indent=2, sort_keys=True, default=str))
        elif rows:
            _print_rows(rows)
        else:
            print("no agents in the cluster")
        return 0
    except DeviceAgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
