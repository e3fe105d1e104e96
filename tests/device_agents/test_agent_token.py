"""`agent start` against a real `ray start --head` with token authentication (Ray's default).

The head runs in its own temp dir with a token of the test's own (``RAY_AUTH_TOKEN_PATH``), so
that nothing here touches ``~/.ray`` or another Ray user on this machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from device_agents.agent_node import RayNodeProcess

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
ADDRESS_FILE = Path("/tmp/ray/ray_current_cluster")  # `ray start` writes it; put it back


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A head with token authentication on, and its token file."""
    tmp = tmp_path_factory.mktemp("head")
    token = tmp / "token"
    token.write_text(secrets.token_hex(32))
    previous = ADDRESS_FILE.read_text() if ADDRESS_FILE.is_file() else None
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="pe-", dir="/tmp")  # short: Unix socket paths
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token)))
    try:
        node = RayNodeProcess([sys.executable, "-m", "ray.scripts.scripts", "start", "--head",
                               "--port", str(port), "--num-cpus", "1", "--include-dashboard",
                               "false", "--temp-dir", temp_dir, "--ray-client-server-port",
                               str(free_port()), "--dashboard-agent-listen-port", "0",
                               "--metrics-export-port", "0", "--disable-usage-stats",
                               "--block"], tmp / "head.log")
        node.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        node.wait_started(240)
        yield f"127.0.0.1:{port}", token, tmp
    finally:
        node.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
        if previous is None:
            ADDRESS_FILE.unlink(missing_ok=True)
        else:
            ADDRESS_FILE.write_text(previous)


def agent_start(address: str, log: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "device_agents.agent_cli", "start",
                             "--address", address, "--device", "tok", *args],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, text=True,
                            env=clean_env(), start_new_session=True)


def test_an_agent_joins_a_head_with_token_authentication_given_its_token(head) -> None:
    address, token, tmp = head
    log = tmp / "agent.log"
    command = agent_start(address, log, "--token-file", str(token), "--cores", "0",
                          "--cache-dir", str(tmp / "cache"))
    try:
        deadline = time.monotonic() + 300
        while "ready on node" not in log.read_text() and time.monotonic() < deadline:
            assert command.poll() is None, log.read_text()
            time.sleep(1.0)
        assert "1 agent(s) of class 'tok' ready on node" in log.read_text(), log.read_text()
        listed = subprocess.run([sys.executable, "-m", "device_agents.agent_cli", "list",
                                 "--address", address, "--json"], capture_output=True,
                                text=True, timeout=180,
                                env=clean_env(RAY_AUTH_TOKEN=token.read_text()))
        assert listed.returncode == 0, listed.stderr
        assert '"device_class": "tok"' in listed.stdout and '"pinned": true' in listed.stdout
        command.send_signal(signal.SIGINT)
        assert command.wait(120) == 0, log.read_text()
        assert "removing the agents and leaving the cluster" in log.read_text()
    finally:
        if command.poll() is None:
            os.killpg(command.pid, signal.SIGKILL)


def test_a_wrong_token_is_refused_with_a_clear_error(head) -> None:
    address, _, tmp = head
    wrong = tmp / "wrong-token"
    wrong.write_text(secrets.token_hex(32))
    log = tmp / "refused.log"
    command = agent_start(address, log, "--token-file", str(wrong))
    try:
        assert command.wait(300) == 2, log.read_text()
    finally:
        if command.poll() is None:
            os.killpg(command.pid, signal.SIGKILL)
    error = log.read_text().strip().splitlines()[-1]
    assert error.startswith("error: ray start failed"), error
    assert "InvalidAuthToken" in error and "ray get-auth-token" in error
