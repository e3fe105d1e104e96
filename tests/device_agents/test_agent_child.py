"""The measuring child process: it never outlives the agent that started it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from device_agents import EvalSet, EvalSetPayload

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

AGENT = textwrap.dedent('''
    import sys
    from pathlib import Path
    from device_agents import (BundlePayload, EvalSetPayload, EvalSet, LocalDeviceAgent,
                               MeasurementProtocol, MeasureRequest)

    bundle, digest, eval_path, cache = sys.argv[1:5]
    payload = EvalSetPayload.from_eval_set(EvalSet.from_bytes(Path(eval_path).read_bytes()))
    agent = LocalDeviceAgent(device_class="test", cache_dir=Path(cache))
    print("measuring", flush=True)
    agent.measure(MeasureRequest(  # warm-up by time: about 60 s
        bundle_digest=digest, bundle=BundlePayload.from_directory(bundle),
        eval_set_digest=payload.digest, eval_set=payload,
        protocol=MeasurementProtocol(warmup_runs=1, warmup_seconds=60.0, min_runs=10,
                                     max_runs=10, round_runs=10)))
''')


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_agent_takes_its_measuring_child_with_it(tmp_path, make_bundle, cascade):
    directory, digest = make_bundle(cascade.TWO_STAGE)
    eval_path = tmp_path / "eval.npz"
    EvalSet(inputs=np.eye(4, dtype=np.float32), labels=np.arange(4) % 3).save(eval_path)
    agent = subprocess.Popen([sys.executable, "-c", AGENT, str(directory), digest,
                              str(eval_path), str(tmp_path / "cache")], env=ENV,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout.readline().strip() == "measuring"
        deadline = time.monotonic() + 60
        while not (kids := children(agent.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        (child,) = kids
        agent.send_signal(signal.SIGKILL)
        agent.wait(30)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            state = (Path(f"/proc/{child}") / "stat").read_text().rsplit(")", 1)[1].split()[0] \
                if Path(f"/proc/{child}").exists() else "X"
            if state == "Z":  # a zombie waiting for init: dead already
                break
            time.sleep(0.2)
        assert not Path(f"/proc/{child}").exists() or state == "Z"
    finally:
        if agent.poll() is None:
            agent.kill()


def test_a_child_whose_agent_is_already_gone_exits_at_once(tmp_path):
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"parent_pid": 1, "directory": "x", "eval_set": "y",
                               "protocol": {}, "digest": "", "providers": [], "agent_id": ""}))
    done = subprocess.run([sys.executable, "-m", "device_agents.measure_child", str(job),
                           str(tmp_path / "out.pkl")], env=ENV, capture_output=True,
                          timeout=60)
    assert done.returncode == 3 and not (tmp_path / "out.pkl").exists()


def test_the_agent_fetches_each_payload_once_and_then_reads_its_cache(
        tmp_path, make_bundle, cascade, fast_protocol):
    import dataclasses

    from device_agents import BundlePayload, LocalDeviceAgent, MeasureRequest

    payload = EvalSetPayload.from_eval_set(EvalSet(inputs=np.eye(4, dtype=np.float32),
                                                   labels=np.arange(4) % 3))
    directory, digest = make_bundle(cascade.TWO_STAGE)
    request = MeasureRequest(bundle_digest=digest, bundle=BundlePayload.from_directory(directory),
                             eval_set_digest=payload.digest, eval_set=payload,
                             protocol=fast_protocol)
    agent = LocalDeviceAgent(device_class="test", cache_dir=tmp_path / "cache", isolate=False)
    for _ in range(3):
        measurement = agent.measure(request)
        # the agent's whole time for the request includes the measurement itself
        assert measurement.agent_s >= measurement.duration_s > 0
    other, other_digest = make_bundle(cascade.THREE_STAGE)
    agent.measure(dataclasses.replace(request, bundle_digest=other_digest,
                                      bundle=BundlePayload.from_directory(other)))
    info = agent.info()
    assert (info["eval_set_fetches"], info["bundle_fetches"], info["measurements"]) == (1, 2, 4)
    assert info["busy"] is False and info["last_heartbeat"] >= info["started"]


def _request(make_bundle, cascade, protocol):
    from device_agents import BundlePayload, MeasureRequest

    payload = EvalSetPayload.from_eval_set(EvalSet(inputs=np.eye(4, dtype=np.float32),
                                                   labels=np.arange(4) % 3))
    directory, digest = make_bundle(cascade.TWO_STAGE)
    return MeasureRequest(bundle_digest=digest, bundle=BundlePayload.from_directory(directory),
                          eval_set_digest=payload.digest, eval_set=payload, protocol=protocol)


def test_each_measurement_runs_in_the_spare_started_after_the_last_one(
        tmp_path, make_bundle, cascade, fast_protocol):
    from device_agents import LocalDeviceAgent

    request = _request(make_bundle, cascade, fast_protocol)
    agent = LocalDeviceAgent(device_class="test", cache_dir=tmp_path / "cache")
    first = agent.measure(request)
    spare = agent._spare
    assert spare is not None and spare.poll() is None  # waiting, imports done, for the next job
    second = agent.measure(request)
    assert spare.wait(timeout=10) == 0  # it ran the second measurement and exited
    assert agent._spare is not None and agent._spare.pid != spare.pid  # a new one waits
    assert second.accuracy == first.accuracy
    waiting = agent._spare
    agent.close()  # the waiting spare reads the end of its input and exits cleanly
    assert waiting.poll() == 0 and agent._spare is None


def test_a_dead_spare_is_replaced_and_the_measurement_still_runs(
        tmp_path, make_bundle, cascade, fast_protocol):
    from device_agents import LocalDeviceAgent

    request = _request(make_bundle, cascade, fast_protocol)
    agent = LocalDeviceAgent(device_class="test", cache_dir=tmp_path / "cache")
    agent.measure(request)
    assert agent._spare is not None
    agent._spare.kill()
    agent._spare.wait(timeout=10)
    assert agent.measure(request).n_eval == 4
    agent.close()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two cores and CPU affinity")
def test_the_next_spare_starts_up_on_the_other_cores_while_one_is_timed(
        tmp_path, make_bundle, cascade, fast_protocol):
    from device_agents import LocalDeviceAgent

    request = _request(make_bundle, cascade, fast_protocol)
    original = os.sched_getaffinity(0)
    measured = max(original)
    try:
        agent = LocalDeviceAgent(device_class="test", cache_dir=tmp_path / "cache",
                                 cores=(measured,))
        agent.measure(request)
        spare = agent._spare
        assert spare is not None and spare.poll() is None
        deadline = time.monotonic() + 10
        while measured in os.sched_getaffinity(spare.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.sched_getaffinity(spare.pid) == original - {measured}
        assert agent.measure(request).n_eval == 4  # and it measures on the agent's core
        agent.close()
    finally:
        os.sched_setaffinity(0, original)
