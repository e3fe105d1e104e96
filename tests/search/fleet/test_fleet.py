"""A fleet of agents on a real multi-node Ray cluster (``ray.cluster_utils.Cluster``).

The cluster: a head (which also advertises one unit of ``device:edge`` and has no agent), two
nodes of class ``rpi4`` and one of class ``jetson``, each with one detached named agent created
the way ``paretoedge agent start`` creates them. Later tests add a node through the real
``paretoedge agent start`` command and remove a node in the middle of a measurement.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from device_agents import (
    EvalSet,
    EvalSetPayload,
    MeasurementProtocol,
    MeasureRequest,
)
from device_agents.ray_actor import create_agent
from device_agents.registry import (
    AGENT_NAMESPACE,
    DEVICE_LABEL,
    NODE_LABEL,
    AgentName,
    device_resource,
    named_agents,
)
from search.errors import AgentUnavailableError
from search.fleet.agent_pool import RayAgentPool, start_ray

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[3]
FAST = MeasurementProtocol(warmup_runs=5, warmup_seconds=0.0, min_runs=20, max_runs=100,
                           round_runs=10)
#: A measurement that runs for about 20 seconds (warm-up by time).
LONG = MeasurementProtocol(warmup_runs=5, warmup_seconds=20.0, min_runs=20, max_runs=100,
                           round_runs=10)


def eval_payload(seed: int) -> EvalSetPayload:
    rng = np.random.default_rng(seed)
    return EvalSetPayload.from_eval_set(EvalSet(inputs=rng.normal(size=(40, 64)).astype(
        np.float32), labels=rng.integers(0, 10, size=40)))


def settle(pool: RayAgentPool, count: int, limit_s: float = 120) -> None:
    """Let the pool find ``count`` agents (it returns from ``connect`` with the first)."""
    deadline = time.monotonic() + limit_s
    while len(pool.agents) < count and time.monotonic() < deadline:
        pool.poll(timeout=0.5)
        pool.refresh(force=True)
    assert len(pool.agents) >= count, pool.agents


def token_mode() -> None:
    """Token authentication on, as Ray 2.60 has it by default (a local ``ray.init`` does the
    same): every node and the CLI's own node then use the token in ~/.ray/auth_token. A node
    in token mode cannot serve a head without it, so the whole fleet must agree."""
    from ray._private.authentication.authentication_token_setup import (
        ensure_token_if_auth_enabled,
    )
    from ray._raylet import Config

    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")
    ensure_token_if_auth_enabled(None, create_token_if_missing=True)


def _restart_session_cluster() -> None:
    """Bring back the local cluster of tests/conftest.py's session fixture."""
    from tests.conftest import session_resources

    start_ray(None, num_cpus=os.cpu_count() or 2, resources=session_resources())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, matmul_bundle):
    import ray
    from ray.cluster_utils import Cluster

    had_local = ray.is_initialized()
    if had_local:
        ray.shutdown()
    token_mode()
    tmp = tmp_path_factory.mktemp("fleet")
    address_file = Path("/tmp/ray/ray_current_cluster")  # where a plain ray.init() looks
    previous = address_file.read_text() if address_file.is_file() else None
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "resources": {device_resource("edge"): 1}})
    # Cluster writes its address there: put back what was, so that no other Ray user on this
    # machine joins our test cluster by accident
    if previous is None:
        address_file.unlink(missing_ok=True)
    else:
        address_file.write_text(previous)
    nodes: dict[str, object] = {}
    keys: dict[str, str] = {}
    for label, device_class in (("rpi4-a", "rpi4"), ("rpi4-b", "rpi4"), ("jetson", "jetson")):
        keys[label] = uuid.uuid4().hex[:12]
        nodes[label] = cluster.add_node(
            num_cpus=0, resources={device_resource(device_class): 1},
            labels={DEVICE_LABEL: device_class, NODE_LABEL: keys[label]})
    ray.init(address=cluster.address, namespace=AGENT_NAMESPACE, log_to_driver=False)
    handles = {}
    for label, node in nodes.items():
        device_class = label.split("-")[0]
        handles[label] = create_agent(AgentName(device_class, node.node_id, "0"), detached=True,
                                      node_labels={NODE_LABEL: keys[label]},
                                      cache_dir=str(tmp / f"cache-{label}"))
    ray.get([h.ping.remote() for h in handles.values()], timeout=180)
    bundle = matmul_bundle(tmp / "bundle")
    try:
        yield SimpleNamespace(cluster=cluster, address=cluster.address, nodes=nodes,
                              handles=handles, tmp=tmp, bundle=bundle)
    finally:
        for handle in handles.values():
            with contextlib.suppress(Exception):  # some died with their node
                ray.kill(handle, no_restart=True)
        ray.shutdown()
        cluster.shutdown()
        if had_local:
            _restart_session_cluster()


def request(fleet, payload: EvalSetPayload, ref: object, number: int,
            protocol: MeasurementProtocol = FAST) -> MeasureRequest:
    return MeasureRequest(bundle_digest=fleet.bundle.digest, bundle=fleet.bundle,
                          eval_set_digest=payload.digest, eval_set=ref, protocol=protocol,
                          trial_number=number)


def test_each_pool_dispatches_to_the_agents_of_its_class_only(fleet, collect) -> None:
    rpi4 = RayAgentPool.connect(fleet.address, "rpi4", wait_for_agents_s=60)
    jetson = RayAgentPool.connect(fleet.address, "jetson", wait_for_agents_s=60)
    try:
        settle(rpi4, 2)
        assert sorted(a["device_class"] for a in rpi4.agents) == ["rpi4", "rpi4"]
        assert [a["device_class"] for a in jetson.agents] == ["jetson"]
        nodes = {label: node.node_id for label, node in fleet.nodes.items()}
        assert {a["node_id"] for a in rpi4.agents} == {nodes["rpi4-a"], nodes["rpi4-b"]}
        assert {a["node_id"] for a in jetson.agents} == {nodes["jetson"]}

        payload = eval_payload(1)
        ref = rpi4.share(payload)
        rpi4.submit(1, request(fleet, payload, ref, 1))
        rpi4.submit(2, request(fleet, payload, ref, 2))
        jetson.submit(3, request(fleet, payload, ref, 3))
        assert rpi4.free_slots() == 0 and jetson.free_slots() == 0
        done = collect(rpi4, 2, limit_s=240) + collect(jetson, 1, limit_s=240)
        assert sorted(c.key for c in done) == [1, 2, 3]
        assert all(c.measurement is not None and c.attempts == 1 for c in done), done
        by_key = {c.key: c for c in done}
        assert {by_key[1].agent_id, by_key[2].agent_id} == {a["agent_id"] for a in rpi4.agents}
        assert by_key[3].agent_id == jetson.agents[0]["agent_id"]
        assert by_key[3].agent_id.startswith("jetson-")
        assert all(c.measurement.n_eval == 40 for c in done)
    finally:
        rpi4.close()
        jetson.close()
    assert len(named_agents("rpi4")) == 2  # agents started on devices outlive a study's pool


def test_the_eval_set_crosses_to_each_agent_once_and_is_cached_by_hash(fleet, collect) -> None:
    import ray

    pool = RayAgentPool.connect(fleet.address, "rpi4", wait_for_agents_s=60)
    try:
        settle(pool, 2)
        before = {label: ray.get(h.info.remote(), timeout=30)
                  for label, h in fleet.handles.items() if label.startswith("rpi4")}
        payload = eval_payload(2)  # new to every agent
        ref = pool.share(payload)
        for round_ in range(3):  # 6 measurements, 3 per agent
            pool.submit(10 + 2 * round_, request(fleet, payload, ref, 1))
            pool.submit(11 + 2 * round_, request(fleet, payload, ref, 2))
            assert all(c.measurement is not None for c in collect(pool, 2, limit_s=240))
        for label, old in before.items():
            info = ray.get(fleet.handles[label].info.remote(), timeout=30)
            assert info["measurements"] - old["measurements"] == 3
            assert info["eval_set_fetches"] - old["eval_set_fetches"] == 1
            cached = fleet.tmp / f"cache-{label}" / "eval_sets" / f"{payload.digest}.npz"
            assert cached.is_file()
    finally:
        pool.close()


def test_a_class_without_agents_fails_clearly_after_its_wait(fleet) -> None:
    started = time.monotonic()
    with pytest.raises(AgentUnavailableError) as caught:
        RayAgentPool.connect(fleet.address, "nothing", wait_for_agents_s=2)
    message = str(caught.value)
    assert "no agent of device class 'nothing'" in message
    assert f"paretoedge agent start --address {fleet.address} --device nothing" in message
    assert time.monotonic() - started < 60  # it gave up instead of hanging


def test_a_waiting_study_takes_an_agent_that_joins(fleet) -> None:
    import ray

    head = fleet.cluster.head_node.node_id
    name = AgentName("waiter", head, "0")
    late = threading.Timer(3.0, lambda: create_agent(name, detached=True, resources={},
                                                     node_labels={}))
    late.start()
    pool = RayAgentPool.connect(fleet.address, "waiter", wait_for_agents_s=120)
    try:
        assert [a["name"] for a in pool.agents] == [str(name)]
    finally:
        pool.close()
        late.join()
        ray.kill(ray.get_actor(str(name), namespace=AGENT_NAMESPACE), no_restart=True)


def test_the_pool_creates_agents_on_nodes_that_advertise_the_class(fleet, collect) -> None:
    pool = RayAgentPool.connect(fleet.address, "edge", wait_for_agents_s=120)
    try:
        (agent,) = pool.agents
        assert agent["node_id"] == fleet.cluster.head_node.node_id
        assert agent["pinned"] and len(agent["cores"]) == 1
        payload = eval_payload(3)
        pool.submit(1, request(fleet, payload, pool.share(payload), 1))
        (done,) = collect(pool, 1, limit_s=240)
        assert done.measurement is not None and done.agent_id == agent["agent_id"]
    finally:
        pool.close()
    deadline = time.monotonic() + 30
    while named_agents("edge") and time.monotonic() < deadline:  # the pool's own: removed
        time.sleep(0.5)
    assert named_agents("edge") == []


def test_a_study_with_device_address_uses_the_agents_of_its_class(fleet, write_config,
                                                                  tmp_path) -> None:
    from search.config import load_config
    from search.study.runner import RunOptions, StudyRunner
    from search.tracking.tracker import NullTracker
    from search.workspace import Workspace

    config = load_config(write_config(device={"class": "rpi4", "address": fleet.address,
                                              "wait_for_agents_s": 60}))
    runner = StudyRunner(config, Workspace(tmp_path / "runs", config.study),
                         tracker=NullTracker())
    summary = runner.run(RunOptions(trials=3))
    assert [r.state for r in summary.records] == ["COMPLETE"] * 3, \
        [r.fail_reason for r in summary.records]
    assert all(r.agent_id.startswith("rpi4-") for r in summary.records)
    assert all(r.fingerprint["threads"] == 1 for r in summary.records)


def _agent_start(fleet, device_class: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "search.cli", "agent", "start", "--address", fleet.address,
         "--device", device_class, "--cache-dir", str(fleet.tmp / "cli-cache")],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_an_agent_that_joins_through_the_cli_during_a_study_is_used(fleet, collect) -> None:
    log = fleet.tmp / "agent-start.log"
    command = _agent_start(fleet, "rpi4", log)
    pool = RayAgentPool.connect(fleet.address, "rpi4", wait_for_agents_s=60,
                                discover_every_s=1.0)
    try:
        deadline = time.monotonic() + 240
        while len(pool.agents) < 3 and time.monotonic() < deadline:
            assert command.poll() is None, log.read_text()
            pool.poll(timeout=1.0)
        assert len(pool.agents) == 3, log.read_text()
        joined = [a for a in pool.agents if a["node_id"] not in
                  {n.node_id for n in fleet.nodes.values()}]
        assert len(joined) == 1 and joined[0]["pinned"]
        payload = eval_payload(4)
        ref = pool.share(payload)
        for key in (1, 2, 3):
            pool.submit(key, request(fleet, payload, ref, key))
        done = collect(pool, 3, limit_s=240)
        assert sorted(c.key for c in done) == [1, 2, 3]
        assert all(c.measurement is not None for c in done)
        assert joined[0]["agent_id"] in {c.agent_id for c in done}
        assert "ready on node" in log.read_text()

        command.send_signal(signal.SIGINT)  # Ctrl-C: the agents and the node leave
        assert command.wait(120) == 0, log.read_text()
        deadline = time.monotonic() + 60
        while len(pool.agents) > 2 and time.monotonic() < deadline:
            pool.poll(timeout=1.0)
        assert len(pool.agents) == 2
    finally:
        pool.close()
        if command.poll() is None:
            os.killpg(command.pid, signal.SIGKILL)


def test_a_killed_node_hands_its_trial_to_another_agent_and_loses_no_result(fleet, collect) -> None:
    pool = RayAgentPool.connect(fleet.address, "rpi4", wait_for_agents_s=60)
    try:
        settle(pool, 2)
        payload = eval_payload(5)
        ref = pool.share(payload)
        pool.submit(1, request(fleet, payload, ref, 1, LONG))
        pool.submit(2, request(fleet, payload, ref, 2))
        (long_job,) = [job for job in pool._busy.values() if job.key == 1]
        victim = long_job.agent
        done = collect(pool, 1, limit_s=240)
        assert [c.key for c in done] == [2] and done[0].measurement is not None
        assert pool.in_flight() == 1  # the long one is still measuring on the victim

        label = next(k for k, n in fleet.nodes.items() if n.node_id == victim.info["node_id"])
        fleet.cluster.remove_node(fleet.nodes.pop(label))
        done += collect(pool, 1, limit_s=400)
        assert sorted(c.key for c in done) == [1, 2]  # each trial once: none lost, none twice
        rerun = next(c for c in done if c.key == 1)
        assert rerun.measurement is not None, rerun.error
        assert rerun.attempts == 2 and rerun.agent_id != victim.agent_id
        assert [a["agent_id"] for a in pool.agents] == [rerun.agent_id]
    finally:
        pool.close()


def test_a_trial_whose_class_has_no_agent_left_waits_then_fails_clearly(fleet, collect) -> None:
    pool = RayAgentPool.connect(fleet.address, "jetson", wait_for_agents_s=5, retries=2)
    try:
        payload = eval_payload(6)
        pool.submit(1, request(fleet, payload, pool.share(payload), 1, LONG))
        time.sleep(2.0)
        fleet.cluster.remove_node(fleet.nodes.pop("jetson"))
        (done,) = collect(pool, 1, limit_s=120)
        assert done.key == 1 and done.measurement is None
        assert "no agent of device class 'jetson' for 5 s" in done.error
        assert pool.agents == [] and pool.free_slots() == 0
        assert pool.wait_for_free_slot(1.0) is False  # the study then fails its next trials
    finally:
        pool.close()
