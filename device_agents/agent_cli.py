"""Joining a device to a study's cluster, and listing the agents there: the agent command line.

The commands are defined here, once (typer, in the base install): a board that has only the
agent's dependencies (numpy, onnxruntime, ray, typer, rich) runs them without the
``paretoedge`` command, and ``paretoedge agent start|list`` and ``paretoedge agents`` mount the
same commands (:mod:`search.cli.agent_commands`)::

    python -m device_agents.agent_cli start --address HEAD:6379 --device rpi4
    python -m device_agents.agent_cli list

What ``start`` does: check the auth token, start a Ray node joined to ``HEAD`` with the
class's resource and labels (:mod:`device_agents.agent_node`), connect to the cluster as a
driver, create the agents as detached named actors on that node (each pinned to its own cores),
then watch them: a dead agent is recreated, Ctrl-C (or SIGTERM) removes the agents and the
node. The study finds the agents by name (:mod:`device_agents.registry`).
"""

from __future__ import annotations

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
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.main

from device_agents.agent_node import (
    RayNodeProcess,
    check_reachable,
    enable_token_auth,
    parse_cores,
    plan_cores,
    ray_start_command,
)
from device_agents.errors import AgentStartError, DeviceAgentError
from device_agents.profiles import CPU_PROVIDER, Provider, parse_providers
from device_agents.registry import (
    AGENT_NAMESPACE,
    NODE_LABEL,
    AgentHandle,
    AgentName,
    agent_rows,
    kill_agent,
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
    providers: tuple[Provider, ...] = (Provider(CPU_PROVIDER),)
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
        missing = [p.name for p in self.providers if p.name not in available]
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
    handle: AgentHandle | None = None
    generation: int = 0

    @property
    def agent(self) -> AgentHandle:
        """The handle of the slot's agent (created by :meth:`AgentSupervisor._create`)."""
        if self.handle is None:
            raise AgentStartError(f"agent {self.name} was not created")
        return self.handle


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

        refs = [slot.agent.ping.remote() for slot in slots]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if len(ready) < len(refs):
            raise AgentStartError(f"{len(refs) - len(ready)} agent(s) did not start on this "
                                  f"node within {timeout:.0f} s (a head without token "
                                  f"authentication needs RAY_AUTH_MODE=disabled here too)")
        ray.get(ready)

    def _describe(self, slot: _Slot) -> str:
        import ray

        info = ray.get(slot.agent.info.remote(), timeout=30)
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
                    ray.get(slot.agent.ping.remote(), timeout=60)
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
                        kill_agent(slot.handle)
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


#: Columns of the agents table: (heading, function of the row).
COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("class", lambda r: str(r["device_class"])),
    ("agent", lambda r: str(r.get("agent_id", r["name"]))),
    ("host", lambda r: str(r.get("host", "?"))),
    ("cores", lambda r: ",".join(map(str, r.get("cores", []))) +
     ("" if r.get("pinned") else " (not pinned)") if "cores" in r else "?"),
    ("threads", lambda r: str(r.get("threads", "?"))),
    ("onnxruntime", lambda r: str(r.get("onnxruntime", "?"))),
    ("providers", lambda r: ",".join(str(p).replace("ExecutionProvider", "", 1)
                                     for p in r.get("providers", []))),
    ("status", lambda r: str(r["status"])),
    ("measured", lambda r: str(r.get("measurements", "?"))),
    ("last heartbeat", lambda r: str(r.get("heartbeat", "?"))),
]


def options_from(address: str, device: str, threads: int = 1, cores: str | None = None,
                 agents: int = 1, cache_dir: Path | None = None,
                 providers: str = CPU_PROVIDER, token_file: Path | None = None,
                 ray_args: Sequence[str] = ()) -> AgentStartOptions:
    """:class:`AgentStartOptions` from command-line values (checked on start)."""
    try:
        parsed = parse_providers(providers)
    except ValueError as exc:
        raise AgentStartError(f"--providers: {exc}") from None
    return AgentStartOptions(address=address, device_class=device, threads=threads,
                             cores=parse_cores(cores), agents=agents, cache_dir=cache_dir,
                             providers=parsed, token_file=token_file, ray_args=tuple(ray_args))


# -- the command line: `python -m device_agents.agent_cli start|list`, mounted in `paretoedge` as
# `paretoedge agent start|list` and `paretoedge agents` (search/cli/agent_commands.py) -----------
PROG = "python -m device_agents.agent_cli"
APP_HELP = "Run device agents on this machine for a study's Ray cluster."


class ListFormat(StrEnum):
    table = "table"
    json = "json"


def start_command(
        address: Annotated[str, typer.Option("--address", help="HOST:PORT of the Ray head "
                                                               "the study uses.")],
        device: Annotated[str, typer.Option("--device", help="Device class of this machine, "
                                                             "as in the config's device.class.")],
        threads: Annotated[int, typer.Option(help="onnxruntime threads per agent.", min=1)] = 1,
        cores: Annotated[str | None, typer.Option(help="Cores to pin the agents to (2,3 or "
                                                       "2-3); default: the last free ones.")
                         ] = None,
        agents: Annotated[int, typer.Option(help="Agents on this machine, measuring in "
                                                 "parallel on cores of their own.", min=1)] = 1,
        cache_dir: Annotated[Path | None, typer.Option(help="Bundle and eval-set cache.")
                             ] = None,
        providers: Annotated[str, typer.Option(
            help="onnxruntime execution providers in order of preference, comma-separated; "
                 "each NAME or NAME:key=value;key=value (e.g. "
                 "CUDAExecutionProvider:device_id=0).")] = CPU_PROVIDER,
        token_file: Annotated[Path | None, typer.Option(help="The cluster's Ray auth token "
                                                             "(default: RAY_AUTH_TOKEN or "
                                                             "~/.ray/auth_token).")] = None,
        ray_arg: Annotated[list[str] | None, typer.Option(help="Extra argument for `ray "
                                                               "start` (repeatable).")] = None,
) -> None:
    """Join this machine to a study's Ray cluster as agents of a device class.

    Starts a Ray node with the class's resource and label, creates the agents on it, keeps
    them alive, and removes them and the node on Ctrl-C.
    """
    code = run_agent(options_from(address, device, threads, cores, agents, cache_dir, providers,
                                  token_file, ray_arg or ()),
                     say=lambda line: print(line, flush=True))
    raise typer.Exit(code)


def list_command(
        address: Annotated[str | None, typer.Option(
            "--address", help="HOST:PORT of the Ray head (default: RAY_ADDRESS, or the cluster "
                              "running on this machine).")] = None,
        device: Annotated[str | None, typer.Option("--device", help="Only this class.")] = None,
        output: Annotated[ListFormat, typer.Option("--format", help="A table, or JSON.")
                          ] = ListFormat.table,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON (as --format "
                                                             "json).")] = False,
) -> None:
    """List the agents connected to the cluster: class, host, cores, onnxruntime, heartbeat."""
    rows = list_agents(address, device)
    if as_json or output is ListFormat.json:
        sys.stdout.write(json.dumps(rows, indent=2, sort_keys=True, default=str) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=200)
    if not rows:
        console.print("no agents in the cluster" + (f" of class {device!r}" if device else ""))
        return
    table = Table(title=f"{len(rows)} agent(s)")
    for heading, _ in COLUMNS:
        table.add_column(heading)
    for row in rows:
        table.add_row(*[cell(row) for _, cell in COLUMNS])
    console.print(table)


Command = Callable[..., None]


def build_app(wrap: Callable[[Command], Command] | None = None) -> typer.Typer:
    """The ``start`` and ``list`` commands as a typer app; ``wrap`` decorates each command
    (``paretoedge`` passes its error handler)."""
    app = typer.Typer(no_args_is_help=True, add_completion=False, help=APP_HELP)
    for name, command in (("start", start_command), ("list", list_command)):
        app.command(name)(wrap(command) if wrap is not None else command)
    return app


agent_app = build_app()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m device_agents.agent_cli``: the exit status. A bad option, or a start that
    fails, is one line ``error: ...`` on stderr (naming the option) and status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(agent_app)
    try:
        if not args:  # the help, as for a missing command
            command.main(args=["--help"], prog_name=PROG, standalone_mode=False)
            return 2
        result = command.main(args=args, prog_name=PROG, standalone_mode=False)
    except DeviceAgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except typer.TyperException as exc:  # a usage error: a missing, unknown or bad option
        print(f"error: {' '.join(exc.format_message().split())}", file=sys.stderr)
        return exc.exit_code
    except typer.Abort:
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
