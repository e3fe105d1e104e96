"""Joining a device: cores, the `ray start` command, the auth token, options, the node process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from device_agents import agent_cli, agent_node
from device_agents.agent_cli import AgentStartOptions, options_from
from device_agents.agent_node import (
    RayNodeProcess,
    parse_cores,
    plan_cores,
    ray_start_command,
    token_source,
)
from device_agents.errors import AgentStartError, DeviceAgentError
from device_agents.profiles import Provider
from device_agents.registry import AgentName, describe_age

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("text", "cores"), [("2,3", (2, 3)), ("0-3", (0, 1, 2, 3)),
                                             ("1, 4-5", (1, 4, 5)), ("3,3", (3,)),
                                             (None, None), ("", None)])
def test_parse_cores(text, cores):
    assert parse_cores(text) == cores


@pytest.mark.parametrize("text", ["a", "3-1", "1,,2", "-1", "1-x"])
def test_parse_cores_rejects_bad_lists_naming_the_option(text):
    with pytest.raises(AgentStartError, match="--cores"):
        parse_cores(text)


def test_plan_cores_counts_down_from_the_last_core_and_keeps_core_0_when_it_can():
    assert plan_cores(4, 1, 1) == [(3,)]
    assert plan_cores(4, 2, 1) == [(3,), (2,)]
    assert plan_cores(4, 1, 2) == [(2, 3)]
    assert plan_cores(4, 3, 1) == [(3,), (2,), (1,)]
    assert plan_cores(2, 1, 1) == [(1,)]
    assert plan_cores(2, 2, 1) == [(1,), (0,)]  # no core left over: core 0 too


def test_plan_cores_skips_cores_of_agents_already_on_the_host():
    assert plan_cores(4, 1, 1, taken={3}) == [(2,)]
    assert plan_cores(4, 2, 1, taken={3, 1}) == [(2,), (0,)]
    with pytest.raises(AgentStartError, match="need 2 free; pass --cores"):
        plan_cores(2, 2, 1, taken={1})


def test_plan_cores_splits_given_cores_between_the_agents():
    assert plan_cores(8, 2, 1, cores=(4, 5, 6, 7)) == [(4, 5), (6, 7)]
    assert plan_cores(8, 1, 1, cores=(0,)) == [(0,)]
    with pytest.raises(AgentStartError, match="cannot give 3 agents"):
        plan_cores(8, 3, 1, cores=(1, 2))
    with pytest.raises(AgentStartError, match="not 9"):
        plan_cores(8, 1, 1, cores=(9,))


def test_ray_start_command_joins_with_the_class_resource_and_labels():
    command = ray_start_command("10.0.0.1:6379", "rpi4", 2, "abc", extra=["--node-ip-address",
                                                                         "10.0.0.7"])
    assert command[:4] == [sys.executable, "-m", "ray.scripts.scripts", "start"]
    after = {flag: command[i + 1] for i, flag in enumerate(command[:-1]) if flag.startswith("--")}
    assert after["--address"] == "10.0.0.1:6379"
    assert json.loads(after["--resources"]) == {"device:rpi4": 2}
    assert after["--labels"] == "device-class=rpi4,paretoedge-node=abc"
    assert after["--num-cpus"] == "0"  # nothing but the agents runs on a device
    assert "--block" in command and command[-2:] == ["--node-ip-address", "10.0.0.7"]


def test_token_source_prefers_the_given_file_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setattr(agent_node, "DEFAULT_TOKEN_FILE", tmp_path / "none")
    assert token_source() is None
    token = tmp_path / "token"
    token.write_text("secret")
    assert token_source(token) == str(token)
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(token.resolve())  # for ray start too
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    assert token_source() == "RAY_AUTH_TOKEN"
    with pytest.raises(AgentStartError, match="--token-file"):
        token_source(tmp_path / "missing")


@pytest.mark.parametrize(("options", "field"), [
    ({"address": "head"}, "--address"), ({"address": "head:port"}, "--address"),
    ({"device_class": "rpi 4"}, "--device"), ({"agents": 0}, "--agents"),
    ({"providers": (Provider("NoSuchExecutionProvider"),)}, "--providers")])
def test_bad_options_are_named(options, field):
    values = {"address": "head:6379", "device_class": "rpi4", **options}
    with pytest.raises(AgentStartError, match=field):
        AgentStartOptions(**values).check()


def test_options_from_command_line_values():
    options = options_from("h:1", "jetson", threads=2, cores="2-3", providers="A, B")
    assert options.cores == (2, 3) and options.providers == (Provider("A"), Provider("B"))
    assert options.threads == 2 and options.device_class == "jetson"
    assert options_from("h:1", "rpi4").providers == (Provider("CPUExecutionProvider"),)


def test_providers_may_carry_options():
    options = options_from("h:1", "jetson", providers="CUDAExecutionProvider:device_id=0;"
                                                      "gpu_mem_limit=1024,CPUExecutionProvider")
    assert options.providers == (
        Provider("CUDAExecutionProvider", {"device_id": "0", "gpu_mem_limit": "1024"}),
        Provider("CPUExecutionProvider"))
    with pytest.raises(AgentStartError, match=r"--providers: .*'device_id' is not key=value"):
        options_from("h:1", "jetson", providers="CUDAExecutionProvider:device_id")
    with pytest.raises(AgentStartError, match=r"--providers: .*not available"):
        AgentStartOptions("h:1", "jetson", providers=(
            Provider("NoSuchExecutionProvider", {"device_id": "0"}),)).check()
    AgentStartOptions("h:1", "jetson", providers=(  # options do not change the name checked
        Provider("CPUExecutionProvider", {"use_arena": "0"}),)).check()


@pytest.mark.parametrize(("args", "message"), [
    (["start", "--device", "rpi4"], "error: Missing option '--address'"),
    (["start", "--address", "h:1"], "error: Missing option '--device'"),
    (["start", "--address", "h:1", "--device", "rpi4", "--threads", "0"],
     "error: Invalid value for '--threads'"),
    (["start", "--address", "h:1", "--device", "rpi4", "--agents", "x"],
     "error: Invalid value for '--agents'"),
    (["start", "--address", "h:1", "--device", "rpi4", "--no-such", "1"],
     "error: No such option: --no-such"),
    (["start", "--address", "h:1", "--device", "rpi4", "--providers", "CPU:x"],
     "error: --providers: 'CPU:x': provider option 'x' is not key=value"),
    (["list", "--format", "xml"], "error: Invalid value for '--format'"),
    (["stop"], "error: No such command 'stop'")])
def test_the_device_side_command_names_a_bad_option_in_one_line_with_exit_2(args, message,
                                                                            capsys):
    assert agent_cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1, err


def test_paretoedge_mounts_the_same_agent_commands():
    """One definition: ``paretoedge agent start|list`` and ``agents`` are the device side's."""
    from typer.main import get_command

    from search.cli.app import app

    def options(command) -> list[tuple]:
        return [(p.name, tuple(p.opts), p.default, p.required, getattr(p, "help", None))
                for p in command.params]

    device = get_command(agent_cli.agent_app).commands
    paretoedge = get_command(app).commands
    for name in ("start", "list"):
        assert options(paretoedge["agent"].commands[name]) == options(device[name])
    assert options(paretoedge["agents"]) == options(device["list"])
    assert {"--address", "--device", "--threads", "--cores", "--agents", "--cache-dir",
            "--providers", "--token-file", "--ray-arg"} <= {
        o for p in device["start"].params for o in p.opts}
    assert {"--address", "--device", "--format", "--json"} <= {
        o for p in device["list"].params for o in p.opts}


def test_a_failing_ray_start_is_reported_with_its_error(tmp_path):
    script = "print('starting'); print('ConnectionError: connection refused'); raise " \
             "SystemExit(3)"
    node = RayNodeProcess([sys.executable, "-c", script], tmp_path / "logs" / "ray.log")
    node.start()
    with pytest.raises(AgentStartError, match=r"exit status 3\): ConnectionError: connection "
                                              r"refused; log: "):
        node.wait_started(timeout=60)
    assert "connection refused" in (tmp_path / "logs" / "ray.log").read_text()


def test_a_started_node_process_is_stopped_with_sigterm(tmp_path):
    script = ("import signal, sys, time; print('Ray runtime started.', flush=True); "
              "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); time.sleep(120)")
    node = RayNodeProcess([sys.executable, "-c", script], tmp_path / "ray.log")
    node.start()
    node.wait_started(timeout=60)
    assert node.alive()
    node.stop(timeout=30)
    assert not node.alive()


def test_agent_names_round_trip_and_other_names_are_not_agents():
    name = AgentName("rpi4", "0123abcd", "0-1")
    assert str(name) == "agent:rpi4:0123abcd:0-1"
    assert AgentName.parse(str(name)) == name
    for other in ("agent:rpi4:node", "worker:rpi4:n:0", "agent::n:0", "agent:a:b:c:d"):
        assert AgentName.parse(other) is None


def test_describe_age():
    assert describe_age(None) == "never"
    assert describe_age(100.0, now=103.0) == "3 s ago"
    assert describe_age(100.0, now=100.0 + 600) == "10 min ago"
    assert describe_age(100.0, now=100.0 + 7200) == "2.0 h ago"


def paretoedge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize(("args", "message"), [
    (["--address", "nohost", "--device", "rpi4"], "error: --address: 'nohost' is not HOST:PORT"),
    (["--address", "h:1", "--device", "rpi4", "--cores", "x"], "error: --cores: 'x'"),
    (["--address", "h:1", "--device", "a/b"], "error: --device: 'a/b'")])
def test_agent_start_rejects_bad_input_with_one_line_and_exit_2(args, message):
    done = paretoedge("agent", "start", *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().startswith(message) and len(done.stderr.strip().splitlines()) == 1


def test_the_device_side_command_reports_bad_input_the_same_way():
    done = subprocess.run([sys.executable, "-m", "device_agents.agent_cli", "start",
                           "--address", "h:1", "--device", "rpi4", "--cores", "5-2"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and done.stderr.startswith("error: --cores"), done.stderr
    assert issubclass(AgentStartError, DeviceAgentError)


def test_an_unreachable_head_is_reported_at_once_not_retried_for_minutes():
    closed = socket_port_closed()
    for args in (["agent", "start", "--address", closed, "--device", "rpi4"],
                 ["agents", "--address", closed]):
        done = paretoedge(*args)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"error: the Ray head at {closed} is not reachable")


def socket_port_closed() -> str:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"
