"""A builder node lost mid-build (its raylet and workers gone, as when a build host powers off):
the study's build is retried on the other builder node and no trial is lost."""

from __future__ import annotations

import functools
import os
import threading
import time
from pathlib import Path

import pytest

from search.config import parse_config
from search.fleet.build_pool import BUILDER_RESOURCE, RayBuildPool
from search.fleet.dispatch import InlineDispatcher
from search.study.runner import RunOptions, StudyRunner
from search.tracking.tracker import NullTracker
from search.workspace import Workspace
from tests.search.conftest import tiny_config_dict
from tests.search.study import shared_study_driver
from tests.search.study.shared_study_driver import agent_measuring, make_slow_builder, prepare_fake

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _raylet_pid(node) -> int:
    import ray._private.ray_constants as constants

    return node.all_processes[constants.PROCESS_TYPE_RAYLET][0].process.pid


@pytest.fixture
def builder_nodes(tmp_path):
    """A head without builds and two builder nodes of one build slot each; the session's
    local cluster (tests/conftest.py) is put back afterwards."""
    import ray
    from ray.cluster_utils import Cluster

    from search.fleet.agent_pool import start_ray
    from tests.conftest import session_resources

    had_local = ray.is_initialized()
    if had_local:
        ray.shutdown()
    address_file = Path("/tmp/ray/ray_current_cluster")
    previous = address_file.read_text() if address_file.is_file() else None
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                            "include_dashboard": False})
    if previous is None:  # no other Ray user on this machine should join the test's cluster
        address_file.unlink(missing_ok=True)
    else:
        address_file.write_text(previous)
    nodes = [cluster.add_node(num_cpus=0, resources={BUILDER_RESOURCE: 1}) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(shared_study_driver)
    try:
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()
        if had_local:
            start_ray(None, num_cpus=os.cpu_count() or 2, resources=session_resources())


def remove_node_of_first_build(cluster, nodes, markers: Path, lost: list, stop) -> None:
    """Remove, without a graceful stop, the builder node running the first announced build."""
    while not stop.is_set():
        found = sorted(markers.glob("*.json"))
        if found:
            worker = int(found[0].name.split("-")[0])
            (node,) = [n for n in nodes if _raylet_pid(n) == _parent_pid(worker)]
            lost.append({"worker": worker, "node": node.node_id,
                         "candidate": found[0].read_text()})
            cluster.remove_node(node, allow_graceful=False)
            return
        time.sleep(0.02)


def test_a_builder_node_lost_mid_build_loses_no_trial(builder_nodes, tmp_path) -> None:
    cluster, nodes = builder_nodes
    markers = tmp_path / "markers"
    markers.mkdir()
    config = parse_config(tiny_config_dict("lost", search={"trials": 5, "seed": 0},
                                           tracking={"mlflow": False},
                                           confirm={"enabled": False}), "c.yaml", tmp_path)
    measured: list[dict] = []
    runner = StudyRunner(
        config, Workspace(tmp_path / "runs", "lost"),
        dispatcher_factory=lambda c, w: InlineDispatcher(agent_measuring(measured, 0.0)),
        tracker=NullTracker(), live=False, preparer=prepare_fake,
        build_pool_factory=lambda c, w, p: RayBuildPool(
            make_builder=functools.partial(make_slow_builder, markers, 1.0),
            builder_key="slow", num_cpus=0, retries=2, recount_every_s=1.0))
    lost: list[dict] = []
    stop = threading.Event()
    remover = threading.Thread(target=remove_node_of_first_build,
                               args=(cluster, nodes, markers, lost, stop))
    remover.start()
    try:
        records = runner.run(RunOptions(trials=5, confirm=False)).records
    finally:
        stop.set()
        remover.join()
    assert len(lost) == 1
    assert all(r.complete for r in records), [(r.number, r.state, r.fail_reason)
                                              for r in records]
    assert sum(not r.reused for r in records) == 5 == len(measured)
    # every build after the loss ran on the surviving node's workers
    survivor = next(n for n in nodes if n.node_id != lost[0]["node"])
    late = [int(m.name.split("-")[0]) for m in markers.glob("*.json")
            if int(m.name.split("-")[0]) != lost[0]["worker"]]
    # the build that was running there was built again, by another process
    assert any(m.read_text() == lost[0]["candidate"] for m in markers.glob("*.json")
               if int(m.name.split("-")[0]) != lost[0]["worker"])
    assert late and {_parent_pid(pid) for pid in late if Path(f"/proc/{pid}").exists()} <= {
        _raylet_pid(survivor)}
