"""A device joining a study's Ray cluster: the Ray node, the cores plan and the token check.

``paretoedge agent start`` runs ``ray start --address HEAD --block`` as a child process, with
the class's custom resource (``device:<class>``, one unit per agent), the labels
``device-class=<class>`` and ``paretoedge-node=<uuid>`` and no CPU for Ray tasks, so that
nothing but the agents runs there. Stopping the command stops the node; a killed command takes
its node with it (Linux: the child gets SIGTERM when its parent dies).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from device_agents.errors import AgentStartError
from device_agents.registry import DEVICE_LABEL, NODE_LABEL, device_resource

TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_FILE = Path.home() / ".ray" / "auth_token"


def parse_cores(text: str | None) -> tuple[int, ...] | None:
    """``"2,3"`` or ``"0-3"`` or ``"1,4-5"`` to sorted core numbers; ``None`` for no value."""
    if text is None or not text.strip():
        return None
    cores: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                cores.update(range(lo, hi + 1))
            else:
                cores.add(int(part))
        except ValueError:
            raise AgentStartError(f"--cores: {text!r} is not a list of cores like 2,3 or "
                                  f"0-3") from None
    if any(c < 0 for c in cores):
        raise AgentStartError(f"--cores: {text!r} has a negative core number")
    return tuple(sorted(cores))


def plan_cores(cpu_count: int, agents: int, threads: int, cores: Sequence[int] | None = None,
               taken: Iterable[int] = ()) -> list[tuple[int, ...]]:
    """The cores of each of ``agents`` agents on this machine, none shared.

    With ``cores`` given, they are split evenly between the agents. Otherwise each agent gets
    ``threads`` cores counted down from the last, skipping the cores ``taken`` by agents
    already running on this host, and keeping core 0 for the Ray node's own processes when
    there are enough cores.
    """
    if agents < 1 or threads < 1:
        raise AgentStartError("--agents and --threads must be at least 1")
    if cores:
        bad = [c for c in cores if c >= cpu_count]
        if bad:
            raise AgentStartError(f"--cores: this machine has cores 0-{cpu_count - 1}, not "
                                  f"{', '.join(map(str, bad))}")
        if len(cores) < agents:
            raise AgentStartError(f"--cores: {len(cores)} core(s) cannot give {agents} agents "
                                  f"a core each")
        per = len(cores) // agents
        return [tuple(cores[i * per:(i + 1) * per]) for i in range(agents)]
    busy = set(taken)
    free = [c for c in range(cpu_count - 1, -1, -1) if c not in busy]
    need = agents * threads
    if len([c for c in free if c != 0]) >= need:
        free = [c for c in free if c != 0]
    if len(free) < need:
        raise AgentStartError(
            f"this machine has {cpu_count} cores and {len(busy)} are used by other agents: "
            f"{agents} agent(s) x {threads} thread(s) need {need} free; pass --cores")
    return [tuple(sorted(free[i * threads:(i + 1) * threads])) for i in range(agents)]


def token_source(token_file: Path | None = None) -> str | None:
    """Where Ray will read the cluster's auth token from, or ``None`` when it has none.

    ``token_file`` is exported as ``RAY_AUTH_TOKEN_PATH`` for this process and its children.
    """
    if token_file is not None:
        if not Path(token_file).is_file():
            raise AgentStartError(f"--token-file: {token_file} not found")
        os.environ[TOKEN_PATH_ENV] = str(Path(token_file).resolve())
        return str(token_file)
    if os.environ.get(TOKEN_ENV):
        return TOKEN_ENV
    path = os.environ.get(TOKEN_PATH_ENV)
    if path and Path(path).is_file():
        return path
    return str(DEFAULT_TOKEN_FILE) if DEFAULT_TOKEN_FILE.is_file() else None


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Raise :class:`AgentStartError` unless a TCP connection to ``HOST:PORT`` opens.

    Ray itself retries an unreachable head for minutes without a word; this says it at once.
    """
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as exc:
        raise AgentStartError(f"the Ray head at {address} is not reachable ({exc}); is `ray "
                              f"start --head --port {port or 'PORT'}` running there, and is "
                              f"the port open?") from None


def enable_token_auth(token_file: Path | None = None) -> str | None:
    """Turn Ray's token mode on for this process and its children when a token is available.

    Ray 2.60 sends the token only in token mode, and turns that mode on by itself only for
    ``ray start --head`` and a driver that finds a local cluster: a node joining with
    ``ray start --address`` and a driver given ``address=`` need ``RAY_AUTH_MODE=token``.
    An explicit ``RAY_AUTH_MODE`` is respected. Returns where the token comes from, or None.
    """
    source = token_source(token_file)
    if source is not None and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        try:  # a process that already loaded Ray's config must read it again (as Ray does)
            from ray._raylet import Config  # type: ignore[attr-defined]  # not in Ray's stub

            Config.initialize("")
        except Exception:
            pass
    return source


def ray_start_command(address: str, device_class: str, slots: int, node_key: str, *,
                      object_store_mb: int = 200, extra: Sequence[str] = ()) -> list[str]:
    """The ``ray start`` command line that joins this machine to the cluster at ``address``."""
    return [sys.executable, "-m", "ray.scripts.scripts", "start", "--address", address,
            "--num-cpus", "0", "--resources", json.dumps({device_resource(device_class): slots}),
            "--labels", f"{DEVICE_LABEL}={device_class},{NODE_LABEL}={node_key}",
            "--object-store-memory", str(object_store_mb * 1024 * 1024),
            # random ports: several nodes may share a host (and a firewall rule names them)
            "--dashboard-agent-listen-port", "0", "--metrics-export-port", "0",
            "--disable-usage-stats", "--block", *extra]


def _die_with_parent() -> None:  # runs in the child between fork and exec (no threads yet)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


class RayNodeProcess:
    """``ray start ... --block`` as a child process; its output goes to ``log_path``."""

    STARTED = "Ray runtime started"

    def __init__(self, command: Sequence[str], log_path: Path) -> None:
        self.command = list(command)
        self.log_path = log_path
        self._process: subprocess.Popen[str] | None = None
        self._started = threading.Event()
        self._tail: list[str] = []

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # its own session: a Ctrl-C reaches this command, which stops the node in order
        self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True,
                                         start_new_session=True,
                                         preexec_fn=_die_with_parent)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        with self.log_path.open("a") as log:
            for line in self._process.stdout:
                log.write(line)
                log.flush()
                self._tail = ([*self._tail, line.rstrip()])[-20:]
                if self.STARTED in line:
                    self._started.set()

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def last_error(self) -> str:
        """The most telling line of the node's output (errors first)."""
        lines = [_plain(line) for line in self._tail if line.strip()]
        for line in reversed(lines):
            if any(word in line.lower() for word in ("error", "failed", "unable", "refused")):
                return line
        return lines[-1] if lines else "no output"

    def wait_started(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._started.wait(0.2):
            if not self.alive():
                time.sleep(0.2)  # let the pump read the last lines
                raise AgentStartError(f"ray start failed (exit status "
                                      f"{self._process.returncode if self._process else '?'}): "
                                      f"{self.last_error()}; log: {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise AgentStartError(f"ray start did not finish within {timeout:.0f} s: "
                                      f"{self.last_error()}; log: {self.log_path}")

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (Ray drains the node and stops its processes), SIGKILL after ``timeout``."""
        if not self.alive():
            return
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)


def _plain(line: str) -> str:
    """A log line without terminal colour codes."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
