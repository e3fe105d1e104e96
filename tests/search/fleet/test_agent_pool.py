"""The Ray agent pool on a real local cluster: dispatch, results, and a killed agent's retry."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from device_agents import (
    BundlePayload,
    EvalSet,
    EvalSetPayload,
    MeasurementProtocol,
    MeasureRequest,
)
from search.fleet.agent_pool import RayAgentPool, local_core_plan

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def request(payload: BundlePayload, eval_payload: EvalSetPayload, ref: object,
            protocol: MeasurementProtocol, number: int) -> MeasureRequest:
    return MeasureRequest(bundle_digest=payload.digest, bundle=payload,
                          eval_set_digest=eval_payload.digest, eval_set=ref, protocol=protocol,
                          trial_number=number)


@pytest.fixture
def eval_payload() -> EvalSetPayload:
    rng = np.random.default_rng(1)
    return EvalSetPayload.from_eval_set(EvalSet(
        inputs=rng.normal(size=(50, 64)).astype(np.float32),
        labels=rng.integers(0, 10, size=50)))


def test_core_plan_keeps_a_core_for_building() -> None:
    assert local_core_plan(2, 1) == ([(1,)], (0,))
    assert local_core_plan(8, 3) == ([(7,), (6,), (5,)], (0, 1, 2, 3, 4))
    plan, builder = local_core_plan(2, 2)
    assert builder == (0,) and plan == [(1,), (1,)]


def test_two_agents_measure_in_parallel(ray_cluster, tmp_path, eval_payload,
                                       matmul_bundle, collect) -> None:
    payload = matmul_bundle(tmp_path / "b")
    pool = RayAgentPool.start_local("local", 2, cache_dir=str(tmp_path / "agents"))
    try:
        assert pool.free_slots() == 2
        ref = pool.share(eval_payload)
        protocol = MeasurementProtocol(warmup_runs=5, warmup_seconds=0, min_runs=20,
                                       max_runs=100, round_runs=10)
        pool.submit(1, request(payload, eval_payload, ref, protocol, 1))
        pool.submit(2, request(payload, eval_payload, ref, protocol, 2))
        assert pool.free_slots() == 0 and pool.in_flight() == 2
        done = collect(pool, 2)
        assert sorted(c.key for c in done) == [1, 2]
        assert all(c.measurement is not None and c.error is None for c in done)
        assert len({c.agent_id for c in done}) == 2
        for c in done:
            assert c.measurement.n_eval == 50
            assert c.measurement.latency.p50_ms > 0
    finally:
        pool.close()


def test_a_killed_agent_hands_its_trial_to_another(ray_cluster, tmp_path, eval_payload,
                                                   matmul_bundle, collect) -> None:
    import ray

    payload = matmul_bundle(tmp_path / "b")
    pool = RayAgentPool.start_local("local", 2, cache_dir=str(tmp_path / "agents"), retries=2)
    try:
        ref = pool.share(eval_payload)
        # Long enough to be killed mid-way: a CI that can never be met, many runs.
        protocol = MeasurementProtocol(warmup_runs=5, warmup_seconds=1.0, min_runs=20,
                                       max_runs=200_000, round_runs=1000, ci_rel_width=1e-9)
        pool.submit(7, request(payload, eval_payload, ref, protocol, 7))
        (job,) = pool._busy.values()
        victim = job.agent.agent_id
        time.sleep(1.0)
        ray.kill(job.agent.handle, no_restart=True)
        done = collect(pool, 1, limit_s=300)
        assert len(done) == 1
        (result,) = done
        assert result.key == 7 and result.measurement is not None, result.error
        assert result.attempts == 2
        assert result.agent_id != victim
        assert pool.free_slots() == 2  # the local pool replaced its dead agent
    finally:
        pool.close()


def test_a_hung_agent_times_out_and_the_trial_fails_after_its_retries(ray_cluster, tmp_path,
                                                                      eval_payload, matmul_bundle,
                                                                      collect) -> None:
    payload = matmul_bundle(tmp_path / "b")
    pool = RayAgentPool.start_local("local", 1, cache_dir=str(tmp_path / "agents"),
                                    retries=0, timeout_s=2.0)
    try:
        ref = pool.share(eval_payload)
        protocol = MeasurementProtocol(warmup_runs=5, warmup_seconds=30.0, min_runs=20,
                                       max_runs=100, round_runs=10)
        pool.submit(3, request(payload, eval_payload, ref, protocol, 3))
        done = collect(pool, 1)
        assert len(done) == 1 and done[0].measurement is None
        assert "timed out" in done[0].error and "gave up after 1 attempt" in done[0].error
    finally:
        pool.close()


def test_an_unreachable_device_address_fails_at_once_naming_the_field() -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    code = ("from search.fleet.agent_pool import start_ray\n"
            "from search.errors import AgentUnavailableError\n"
            "try:\n    start_ray('127.0.0.1:1')\n"
            "except AgentUnavailableError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.stdout.startswith("device.address: the Ray head at 127.0.0.1:1 is not "
                                  "reachable"), done.stdout + done.stderr


def test_a_local_pool_stops_the_cluster_it_started_so_the_next_study_gets_its_agents(
        tmp_path) -> None:
    """Two studies in one process with 1, then 2 local agents: the cluster's agent resources
    are fixed when it starts, so the first pool must not leave its cluster behind."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f'''
        import ray
        from search.fleet.agent_pool import RayAgentPool
        for count in (1, 2):
            pool = RayAgentPool.start_local("local", count, cache_dir={str(tmp_path)!r},
                                            wait_for_agents_s=60)
            print("agents", len(pool.agents))
            pool.close()
            print("cluster up", ray.is_initialized())
    ''')
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["agents", "1", "cluster", "up", "False",
                                   "agents", "2", "cluster", "up", "False"]


def test_results_that_finished_during_a_long_build_are_all_kept(
        ray_cluster, tmp_path, eval_payload, matmul_bundle) -> None:
    """Two agents finish while the driver is busy for longer than the timeout (a long build):
    both measurements are collected, and neither agent is judged hung."""
    payload = matmul_bundle(tmp_path / "b")
    pool = RayAgentPool.start_local("local", 2, cache_dir=str(tmp_path / "agents"),
                                    timeout_s=4.0)
    try:
        ref = pool.share(eval_payload)
        protocol = MeasurementProtocol(warmup_runs=5, warmup_seconds=0, min_runs=20,
                                       max_runs=100, round_runs=10)
        agents = {a["agent_id"] for a in pool.agents}
        pool.submit(1, request(payload, eval_payload, ref, protocol, 1))
        pool.submit(2, request(payload, eval_payload, ref, protocol, 2))
        time.sleep(8.0)  # the driver builds the next candidate; both measurements finish
        done = pool.poll(timeout=1.0)
        assert sorted(c.key for c in done) == [1, 2]
        assert all(c.measurement is not None and c.error is None for c in done)
        assert all(c.attempts == 1 for c in done)
        assert {a["agent_id"] for a in pool.agents} == agents  # nobody was removed
    finally:
        pool.close()


def test_a_job_waiting_behind_another_measurement_is_not_judged_hung(
        ray_cluster, tmp_path, eval_payload, matmul_bundle) -> None:
    """The agent is busy with a measurement that is not the pool's (another study sharing it)
    for longer than the pool's timeout: the pool's job waits its turn, its clock starts when
    the agent says it started measuring it, and the agent is kept."""
    import ray

    payload = matmul_bundle(tmp_path / "b")
    pool = RayAgentPool.start_local("local", 1, cache_dir=str(tmp_path / "agents"),
                                    timeout_s=2.0, retries=0)
    try:
        ref = pool.share(eval_payload)
        quick = MeasurementProtocol(warmup_runs=5, warmup_seconds=0, min_runs=20, max_runs=100,
                                    round_runs=10)
        slow = MeasurementProtocol(warmup_runs=5, warmup_seconds=0, min_runs=20,
                                   max_runs=10_000_000, round_runs=10, min_seconds=5.0,
                                   max_seconds=5.0)
        agent = pool._roster.agents[0]  # the other study's request goes straight to the actor
        other = agent.handle.measure.remote(request(payload, eval_payload, ref, slow, 99))
        deadline = time.monotonic() + 60
        while ray.get(agent.handle.activity.remote()) is None:
            assert time.monotonic() < deadline, "the other measurement never started"
            time.sleep(0.1)
        pool.submit(1, request(payload, eval_payload, ref, quick, 1))
        done: list = []
        deadline = time.monotonic() + 120
        while not done and time.monotonic() < deadline:
            done = pool.poll(timeout=0.5)
        assert [c.key for c in done] == [1]
        assert done[0].measurement is not None and done[0].error is None
        assert [a["agent_id"] for a in pool.agents] == [agent.agent_id]  # not removed
        assert ray.get(other).latency.n > 0
    finally:
        pool.close()


def test_a_job_its_agent_measures_past_the_timeout_is_judged_hung_by_the_agents_clock(
        ray_cluster, tmp_path, eval_payload, matmul_bundle) -> None:
    payload = matmul_bundle(tmp_path / "b")
    pool = RayAgentPool.start_local("local", 1, cache_dir=str(tmp_path / "agents"),
                                    timeout_s=2.0, retries=0)
    try:
        ref = pool.share(eval_payload)
        slow = MeasurementProtocol(warmup_runs=5, warmup_seconds=0, min_runs=20,
                                   max_runs=10_000_000, round_runs=10, min_seconds=30.0,
                                   max_seconds=30.0)
        pool.submit(1, request(payload, eval_payload, ref, slow, 1))
        done: list = []
        deadline = time.monotonic() + 60
        while not done and time.monotonic() < deadline:
            done = pool.poll(timeout=0.5)
        assert len(done) == 1 and done[0].measurement is None
        assert "measuring one bundle for more than 2 s" in done[0].error
    finally:
        pool.close()
