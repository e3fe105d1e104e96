"""The agents: the local one (in a child process or in process) and the fake one."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from device_agents import (
    BundlePayload,
    DeviceAgent,
    DeviceAgentError,
    EvalSet,
    EvalSetError,
    EvalSetPayload,
    FakeAgent,
    LatencyStats,
    LocalDeviceAgent,
    Measurement,
    MeasurementError,
    MeasureRequest,
)

#: 6 samples for the standard two-stage cascade with threshold 0.9: 5 correct, 2 exit early.
ROWS = [([50, 0, 0, 1], 0), ([50, 0, 1, 0], 1), ([0, 1, 0, 0], 0), ([0, 0, 1, 0], 1),
        ([0, 0, 0, 1], 2), ([0, 0.5, 2, -1], 1)]
ACCURACY = 5 / 6
EXIT_RATES = (2 / 6, 4 / 6)


@pytest.fixture
def eval_payload() -> EvalSetPayload:
    return EvalSetPayload.from_eval_set(EvalSet(
        inputs=np.array([r[0] for r in ROWS], dtype=np.float32),
        labels=np.array([r[1] for r in ROWS], dtype=np.int64)))


@pytest.fixture
def request_for(make_bundle, cascade, eval_payload, fast_protocol):
    """``request_for(**bundle_options) -> MeasureRequest`` for a new two-stage bundle."""

    def make(**options) -> MeasureRequest:
        options.setdefault("thresholds", (0.9,))
        directory, digest = make_bundle(cascade.TWO_STAGE, **options)
        return MeasureRequest(bundle_digest=digest, bundle=BundlePayload.from_directory(directory),
                              eval_set_digest=eval_payload.digest, eval_set=eval_payload,
                              protocol=fast_protocol, trial_number=3)

    return make


def _agent(tmp_path, *, isolate: bool) -> LocalDeviceAgent:
    return LocalDeviceAgent(device_class="test", cache_dir=tmp_path / "cache", isolate=isolate,
                            agent_id=f"test-{'child' if isolate else 'inproc'}")


def _check(measurement: Measurement, request: MeasureRequest, agent: LocalDeviceAgent) -> None:
    assert measurement.bundle_digest == request.bundle_digest
    assert measurement.agent_id == agent.agent_id
    assert measurement.accuracy == pytest.approx(ACCURACY)
    assert measurement.exit_rates == pytest.approx(EXIT_RATES)
    assert measurement.n_eval == len(ROWS)
    assert request.protocol.min_runs <= measurement.latency.n <= request.protocol.max_runs
    assert measurement.latency.p50_ms > 0.0


@pytest.mark.parametrize("isolate", [True, False])
def test_local_agent_measures_a_request(tmp_path, request_for, isolate):
    agent = _agent(tmp_path, isolate=isolate)
    request = request_for()

    measurement = agent.measure(request)

    _check(measurement, request, agent)
    assert agent.measurements == 1
    assert (agent.cache_dir / "bundles" / request.bundle_digest / "manifest.json").is_file()
    if isolate:
        assert measurement.peak_mem_mb > 0.0
        assert (agent.cache_dir / "eval_sets" / f"{request.eval_set_digest}.npz").is_file()
    info = agent.info()
    assert info["agent_id"] == agent.agent_id
    assert info["device_class"] == "test"
    assert info["measurements"] == 1


def test_local_agent_is_a_device_agent(tmp_path):
    assert isinstance(_agent(tmp_path, isolate=True), DeviceAgent)
    assert isinstance(_agent(tmp_path, isolate=False), DeviceAgent)
    assert isinstance(FakeAgent(lambda request: None), DeviceAgent)


@pytest.mark.parametrize("isolate", [True, False])
def test_request_whose_digest_does_not_match_its_payload_raises(tmp_path, request_for, isolate):
    agent = _agent(tmp_path, isolate=isolate)
    request = request_for()
    wrong = dataclasses.replace(request, bundle_digest="0" * 64)
    with pytest.raises(MeasurementError, match="digest"):
        agent.measure(wrong)
    assert agent.measurements == 0
    # The same payload under its own digest is fine.
    _check(agent.measure(request), request, agent)


@pytest.mark.parametrize("isolate", [True, False])
def test_eval_set_whose_digest_does_not_match_the_request_raises(tmp_path, request_for,
                                                                 isolate):
    agent = _agent(tmp_path, isolate=isolate)
    request = dataclasses.replace(request_for(), eval_set_digest="0" * 64)
    with pytest.raises(EvalSetError):
        agent.measure(request)


@pytest.mark.parametrize("isolate", [True, False])
def test_cached_eval_set_and_bundle_need_no_payload(tmp_path, request_for, isolate):
    agent = _agent(tmp_path, isolate=isolate)
    first = request_for()
    _check(agent.measure(first), first, agent)

    # A new bundle, with the eval set known only by its digest: the cache must hit.
    second = dataclasses.replace(request_for(), eval_set=None)
    _check(agent.measure(second), second, agent)
    # The first bundle again, with neither payload.
    third = dataclasses.replace(first, bundle=None, eval_set=None)
    _check(agent.measure(third), third, agent)
    assert agent.measurements == 3


def test_eval_set_cache_on_disk_is_shared_between_agents(tmp_path, request_for):
    request = request_for()
    _agent(tmp_path, isolate=False).measure(request)
    fresh = _agent(tmp_path, isolate=False)  # same cache directory, empty memory
    again = dataclasses.replace(request, eval_set=None, bundle=None)
    _check(fresh.measure(again), again, fresh)


def test_child_failure_becomes_a_measurement_error(tmp_path, make_bundle, cascade,
                                                   request_for):
    agent = _agent(tmp_path, isolate=True)
    good = request_for()
    # Garbage bytes that write_bundle records faithfully: the digests match, onnxruntime fails.
    directory, digest = make_bundle(cascade.TWO_STAGE,
                                    stage_bytes=[b"not an onnx model", b"neither"])
    broken = dataclasses.replace(good, bundle_digest=digest,
                                 bundle=BundlePayload.from_directory(directory))

    with pytest.raises(MeasurementError, match="measuring process failed"):
        agent.measure(broken)

    # The agent survives and measures the next good request.
    _check(agent.measure(good), good, agent)
    assert agent.measurements == 1


def test_in_process_failure_leaves_the_agent_usable(tmp_path, make_bundle, cascade,
                                                    request_for):
    agent = _agent(tmp_path, isolate=False)
    good = request_for()
    directory, digest = make_bundle(cascade.TWO_STAGE,
                                    stage_bytes=[b"not an onnx model", b"neither"])
    broken = dataclasses.replace(good, bundle_digest=digest,
                                 bundle=BundlePayload.from_directory(directory))
    with pytest.raises(Exception, match=r"(?i)protobuf"):  # onnxruntime's own error
        agent.measure(broken)
    _check(agent.measure(good), good, agent)


def test_tampered_bundle_payload_raises_and_is_not_cached(tmp_path, request_for):
    agent = _agent(tmp_path, isolate=False)
    good = request_for()
    files = dict(good.bundle.files)
    files["stage0.onnx"] = files["stage0.onnx"] + b"\0"
    tampered = dataclasses.replace(good, bundle=BundlePayload(digest=good.bundle_digest,
                                                              files=files))
    with pytest.raises(DeviceAgentError):
        agent.measure(tampered)
    _check(agent.measure(good), good, agent)


def _canned(request: MeasureRequest) -> Measurement:
    latency = LatencyStats(mean_ms=1.0, std_ms=0.1, p50_ms=1.0, p90_ms=1.2, p95_ms=1.3,
                           p99_ms=1.5, n=300, median_ci_low_ms=0.99, median_ci_high_ms=1.01,
                           converged=True)
    return Measurement(bundle_digest=request.bundle_digest, accuracy=0.9, n_eval=100,
                       ece=0.02, exit_rates=(0.25, 0.75), latency=latency, size_kb=12.0,
                       peak_mem_mb=3.0, agent_id="fake")


def test_fake_agent_records_requests_and_returns_the_handlers_result(request_for):
    agent = FakeAgent(_canned)
    first, second = request_for(), request_for(thresholds=(0.5,))

    m1, m2 = agent.measure(first), agent.measure(second)

    assert agent.requests == [first, second]
    assert (m1.bundle_digest, m2.bundle_digest) == (first.bundle_digest, second.bundle_digest)
    assert m1.metrics()["exit_rate_1"] == 0.75
    assert math.isclose(m1.metrics()["latency_ci_rel_width"], 0.02)
    assert "energy_mj" not in m1.metrics()


def test_fake_agent_propagates_the_handlers_error(request_for):
    def fail(request: MeasureRequest) -> Measurement:
        raise MeasurementError("device on fire")

    agent = FakeAgent(fail)
    request = request_for()
    with pytest.raises(MeasurementError, match="on fire"):
        agent.measure(request)
    assert agent.requests == [request]
