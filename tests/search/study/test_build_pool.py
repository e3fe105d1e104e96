"""Builds as Ray tasks on builder nodes (``RayBuildPool``): the study loop with builds on a
real Ray cluster carrying the ``builder`` resource, and a builder process killed mid-build."""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from pathlib import Path

import optuna
import pytest

from search.config import parse_config
from search.fleet.build_pool import InlineBuildPool, RayBuildPool
from search.fleet.dispatch import InlineDispatcher
from search.study.runner import RunOptions, StudyRunner
from search.tracking.tracker import NullTracker
from search.workspace import Workspace, open_storage
from spaces import Candidate
from tests.search.conftest import tiny_config_dict
from tests.search.study import shared_study_driver
from tests.search.study.shared_study_driver import (
    MatMulBuilder,
    agent_measuring,
    make_picky_builder,
    make_slow_builder,
    prepare_fake,
)


@pytest.fixture
def builder_cluster(ray_cluster):
    """The session's Ray cluster (two ``builder`` slots); the tests' builders travel by value,
    so that its workers need not import this test tree."""
    ray_cluster.cloudpickle.register_pickle_by_value(shared_study_driver)
    return ray_cluster


def kill_first_build(markers: Path, killed: list[dict], stop: threading.Event) -> None:
    """SIGKILL the process of the first build announced under ``markers`` (once)."""
    while not stop.is_set():
        found = sorted(markers.glob("*.json"))
        if found:
            pid = int(found[0].name.split("-")[0])
            killed.append({"pid": pid, "candidate": json.loads(found[0].read_text())})
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.02)


def test_the_inline_pool_builds_at_once_and_turns_a_build_error_into_its_reason(
        tmp_path) -> None:
    from spaces import BuildError

    class Refusing(MatMulBuilder):
        def build(self, candidate, directory):
            raise BuildError("channels do not divide")

    pool = InlineBuildPool(Refusing())
    pool.submit(4, Candidate(quantization=("fp32",) * 3), tmp_path / "b")
    (done,) = pool.poll(timeout=0.0)
    assert done.key == 4 and done.built is None and done.error == "channels do not divide"
    pool.submit(5, Candidate(quantization=("fp32",) * 3), tmp_path / "b")
    assert pool.poll(0.0)[0].error == "channels do not divide" and pool.poll(0.0) == []


@pytest.mark.slow
@pytest.mark.ray
def test_a_builder_killed_mid_build_loses_no_trial(builder_cluster, tmp_path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    config = parse_config(tiny_config_dict("built", search={"trials": 6, "seed": 0},
                                           tracking={"mlflow": False},
                                           confirm={"enabled": False}), "c.yaml", tmp_path)
    measured: list[dict] = []
    agent = agent_measuring(measured, 0.0)
    pools: list[RayBuildPool] = []

    def pool_factory(c, w, p):
        pools.append(RayBuildPool(make_builder=functools.partial(make_slow_builder, markers,
                                                                 0.5),
                                  builder_key="slow", slots=2, num_cpus=0, retries=2))
        return pools[0]

    runner = StudyRunner(config, Workspace(tmp_path / "runs", "built"),
                         dispatcher_factory=lambda c, w: InlineDispatcher(agent),
                         tracker=NullTracker(), live=False, preparer=prepare_fake,
                         build_pool_factory=pool_factory)
    killed: list[dict] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_first_build, args=(markers, killed, stop))
    killer.start()
    try:
        summary = runner.run(RunOptions(trials=6, confirm=False))
    finally:
        stop.set()
        killer.join()
    assert len(killed) == 1 and pools[0].slots == 2
    # without a fixed count, the slots are the cluster's builder resources
    assert RayBuildPool(make_builder=make_picky_builder, builder_key="any").slots == 2
    records = summary.records
    assert all(r.complete for r in records), [(r.number, r.state, r.fail_reason)
                                              for r in records]
    assert sum(not r.reused for r in records) == 6 == len(measured)
    # the killed build was built again by another builder process, and measured
    (victim,) = [r for r in records if dict(r.candidate) == killed[0]["candidate"]
                 and not r.reused]
    assert victim.complete and victim.bundle
    study = optuna.load_study(study_name="built", storage=open_storage(
        Workspace(tmp_path / "runs", "built").journal))
    builders = {t.number: t.user_attrs.get("builder", "") for t in study.trials}
    assert not builders[victim.number].endswith(f":{killed[0]['pid']}")
    assert all(builders[r.number] for r in records if not r.reused and not r.baseline)
    # every bundle was written into the study's workdir by the driver
    for r in records:
        assert (tmp_path / "runs" / r.bundle / "manifest.json").is_file()


class _PairedRefusals:
    """Two build slots whose builds all fail, reported two at a time (or the last one on a
    waiting poll): the moment when every build in flight has failed and none is measuring."""

    slots = 2

    def __init__(self) -> None:
        self.held: list[int] = []
        self.looks = 0

    def free_slots(self) -> int:
        return self.slots - len(self.held)

    def in_flight(self) -> int:
        return len(self.held)

    def submit(self, key: int, candidate: Candidate, directory: Path) -> None:
        self.held.append(key)

    def poll(self, timeout: float) -> list:
        from search.fleet.build_pool import BuildDone

        if len(self.held) == 2:  # the pair fails on the second look, not at its submission
            self.looks += 1
        if (len(self.held) < 2 or self.looks < 2) and timeout == 0:
            return []
        done = [BuildDone(key, None, "channels do not divide") for key in self.held]
        self.held, self.looks = [], 0
        return done

    def close(self) -> None:
        pass


def test_builds_that_all_fail_at_once_do_not_end_the_study_early(tmp_path) -> None:
    config = parse_config(tiny_config_dict("refused", search={"trials": 7, "seed": 0},
                                           tracking={"mlflow": False},
                                           confirm={"enabled": False}), "c.yaml", tmp_path)
    measured: list[dict] = []
    runner = StudyRunner(config, Workspace(tmp_path / "runs", "refused"),
                         dispatcher_factory=lambda c, w: InlineDispatcher(
                             agent_measuring(measured, 0.0)),
                         tracker=NullTracker(), live=False, preparer=prepare_fake,
                         build_pool_factory=lambda c, w, p: _PairedRefusals())
    records = runner.run(RunOptions(trials=7, confirm=False)).records
    assert sum(r.finished for r in records) == 7, [(r.number, r.state) for r in records]
    failed = [r for r in records if r.state == "FAIL"]
    assert failed and all(r.fail_reason == "build failed: channels do not divide"
                          for r in failed)
    assert len(measured) == 7 - len(failed)  # the baseline (built on the driver) and reuses


def test_cluster_builds_need_the_address_of_a_cluster(tmp_path) -> None:
    from search.errors import ConfigError

    with pytest.raises(ConfigError, match=r"device: builds: cluster needs device.address"):
        parse_config(tiny_config_dict("b", device={"builds": "cluster"}), "c.yaml", tmp_path)
    config = parse_config(tiny_config_dict("b", device={"builds": "cluster",
                                                        "address": "10.0.0.5:6379"}),
                          "c.yaml", tmp_path)
    assert config.device.builds == "cluster"
    assert parse_config(tiny_config_dict("b"), "c.yaml", tmp_path).device.builds == "local"


def test_builder_start_on_an_unreachable_head_is_one_line_exit_2(tmp_path) -> None:
    from typer.testing import CliRunner

    from search.cli.app import app
    from tests.postgres_server import free_port

    address = f"127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["builder", "start", "--address", address,
                                      "--cache", str(tmp_path / "cache"),
                                      "--log", str(tmp_path / "builder.log")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"the Ray head at {address} is not reachable" in errors[0]


@pytest.mark.slow
@pytest.mark.ray
def test_a_candidate_a_builder_node_cannot_build_fails_with_its_reason(builder_cluster,
                                                                       tmp_path) -> None:
    config = parse_config(tiny_config_dict("picky", search={"trials": 8, "seed": 1},
                                           tracking={"mlflow": False},
                                           confirm={"enabled": False}), "c.yaml", tmp_path)
    measured: list[dict] = []
    agent = agent_measuring(measured, 0.0)
    runner = StudyRunner(config, Workspace(tmp_path / "runs", "picky"),
                         dispatcher_factory=lambda c, w: InlineDispatcher(agent),
                         tracker=NullTracker(), live=False, preparer=prepare_fake,
                         build_pool_factory=lambda c, w, p: RayBuildPool(
                             make_builder=make_picky_builder, builder_key="picky", slots=2,
                             num_cpus=0))
    records = runner.run(RunOptions(trials=8, confirm=False)).records
    failed = [r for r in records if r.state == "FAIL"]
    assert failed, [(r.number, r.state, dict(r.candidate)) for r in records]
    for r in failed:
        assert r.candidate["prune_ratio"] > 0
        assert r.fail_reason == "build failed: pruning leaves a stage without channels"
    assert all(r.complete for r in records if r.candidate["prune_ratio"] == 0)
    assert sum(r.finished for r in records) == 8  # failed builds count, as on the driver
