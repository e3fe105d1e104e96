"""``paretoedge ui``: the real MLflow server for a workdir's store, with lean settings.

One worker and no job runner (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``): about 0.5 GB and
ready in seconds, against 2.6 GB and 14 s for the defaults (docs/STACK.md). It listens on the
loopback interface only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from search.errors import ConfigError, SearchError
from search.tracking.mlflow_store import artifact_root, tracking_uri


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def server_command(workdir: Path, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", tracking_uri(workdir),
            "--artifacts-destination", str(artifact_root(workdir)),
            "--host", host, "--port", str(port), "--workers", "1"]


@dataclass
class UiServer:
    """A running ``mlflow server`` (its own process group: stopping it stops its workers)."""

    process: subprocess.Popen
    url: str

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace_s: float = 10.0) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def start_ui(workdir: Path, *, host: str = "127.0.0.1", port: int = 5000,
             ready_timeout_s: float = 120.0) -> UiServer:
    """Start the server for ``<workdir>/mlflow.db`` and wait until it answers ``/health``.

    Raises:
        ConfigError: no store in the workdir, or the port is taken (exit code 2).
        SearchError: the server exited or did not answer in time.
    """
    workdir = Path(workdir).resolve()
    if not (workdir / "mlflow.db").is_file():
        raise ConfigError(f"--workdir: {workdir / 'mlflow.db'} does not exist; run a study "
                          f"first (paretoedge run CONFIG --workdir {workdir})")
    if port == 0:
        port = free_port(host)
    elif port_taken(host, port):
        raise ConfigError(f"--port: {host}:{port} is already in use; pick another port "
                          f"(--port 0 picks a free one)")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log_path = workdir / "mlflow-server.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(server_command(workdir, host, port), env=env,
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    server = UiServer(process, f"http://{host}:{port}")
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
            raise SearchError(f"mlflow server exited with code {process.returncode}: "
                              f"{tail[0][:300]} (see {log_path})")
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=2) as answer:
                if answer.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    server.stop()
    raise SearchError(f"mlflow server did not answer on {server.url} within "
                      f"{ready_timeout_s:.0f} s (see {log_path})")


#: MLflow 3.17's UI decides the page an experiment opens on by its global workflow toggle
#: (``GenAI`` by default: the traces overview) before the experiment's
#: ``mlflow.experimentKind`` tag; this query parameter selects the runs table
ML_WORKFLOW = "workflowType=machine_learning"


def experiment_links(workdir: Path, url: str) -> list[tuple[str, str]]:
    """``(experiment name, link)`` for each paretoedge experiment of the workdir's store, the
    link opening the experiment on its runs table (see :data:`ML_WORKFLOW`)."""
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=tracking_uri(workdir))
    return [(e.name, f"{url}/#/experiments/{e.experiment_id}?{ML_WORKFLOW}")
            for e in client.search_experiments() if e.name.startswith("paretoedge/")]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve_until_stopped(server: UiServer, announce: Callable[[], None] = lambda: None) -> None:
    """``announce()`` (e.g. print the URL), then block until the server exits, Ctrl-C or
    SIGTERM; then stop it. SIGTERM is handled from before the announcement: whoever reads the
    URL and then stops this process stops the server with it."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        announce()
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()
