"""Confirmation: several bundles timed by one agent, interleaved in rounds in one process."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from device_agents import (
    BundlePayload,
    BundleRef,
    Confirmation,
    ConfirmingAgent,
    ConfirmRequest,
    DeviceAgentError,
    EvalSet,
    EvalSetPayload,
    FakeAgent,
    LatencyStats,
    LocalDeviceAgent,
    Measurement,
    MeasurementError,
    MeasurementProtocol,
    MeasureRequest,
)
from device_agents.measure import BundleTiming, confirm_bundles, measure_bundle, rotated
from device_agents.measure_child import run_job

#: the standard two-stage cascade with threshold 0.9 gets 5 of these 6 right, 2 exit early
ROWS = [([50, 0, 0, 1], 0), ([50, 0, 1, 0], 1), ([0, 1, 0, 0], 0), ([0, 0, 1, 0], 1),
        ([0, 0, 0, 1], 2), ([0, 0.5, 2, -1], 1)]
PROTOCOL = MeasurementProtocol(warmup_runs=3, warmup_seconds=0.0, min_runs=20, max_runs=200,
                               round_runs=10, ranked_percentiles=(50.0, 95.0), idle_seconds=0.0)


@pytest.fixture
def eval_set() -> EvalSet:
    return EvalSet(inputs=np.array([r[0] for r in ROWS], dtype=np.float32),
                   labels=np.array([r[1] for r in ROWS], dtype=np.int64))


@pytest.fixture
def bundles(make_bundle, cascade):
    """Two different bundles: an early-exit cascade, and the same stages without exits."""
    return [make_bundle(cascade.TWO_STAGE, thresholds=(0.9,)),
            make_bundle(cascade.THREE_STAGE)]


def confirm_request(bundles, eval_set, *, keys=(3, 8), rounds=3, runs=20,
                    protocol=PROTOCOL) -> ConfirmRequest:
    payload = EvalSetPayload.from_eval_set(eval_set)
    return ConfirmRequest(
        bundles=tuple(BundleRef(key=k, bundle_digest=digest,
                                bundle=BundlePayload.from_directory(directory))
                      for k, (directory, digest) in zip(keys, bundles, strict=True)),
        eval_set_digest=payload.digest, eval_set=payload, protocol=protocol, rounds=rounds,
        runs_per_round=runs)


def test_each_round_starts_one_bundle_later():
    assert [rotated(3, r) for r in range(4)] == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]


def test_confirm_bundles_times_them_interleaved_in_rotated_rounds(bundles, eval_set,
                                                                  monkeypatch):
    turns = []
    original = BundleTiming.run

    def recorded(self, runs, **kw):
        turns.append((self.bundle.digest, runs))
        return original(self, runs, **kw)

    monkeypatch.setattr(BundleTiming, "run", recorded)
    (d0, g0), (d1, g1) = bundles
    c = confirm_bundles([d0, d1], eval_set, PROTOCOL, rounds=3, runs_per_round=20,
                        expected_digests=[g0, g1], keys=[3, 8], agent_id="agent-1")

    assert turns == [(g0, 20), (g1, 20), (g1, 20), (g0, 20), (g0, 20), (g1, 20)]
    assert isinstance(c, Confirmation)
    assert c.rounds == 3 and c.keys == (3, 8) and c.agent_id == "agent-1"
    assert [m.bundle_digest for m in c.measurements] == [g0, g1]
    assert [len(r) for r in c.round_p50_ms] == [3, 3]
    assert [len(r) for r in c.round_p95_ms] == [3, 3]
    for m, p50s, p95s in zip(c.measurements, c.round_p50_ms, c.round_p95_ms, strict=True):
        assert m.latency.n == 60  # every round's samples, pooled
        assert all(0.0 < a <= b for a, b in zip(p50s, p95s, strict=True))
        assert min(p50s) <= m.latency.p95_ms
        assert [ci.label for ci in m.latency.ranked_cis] == ["p50", "p95"]
        assert m.agent_id == "agent-1" and m.fingerprint == c.fingerprint
        assert 0.0 < m.latency.cpu_share <= 1.0
    for (directory, digest), m in zip(bundles, c.measurements, strict=True):
        alone = measure_bundle(directory, eval_set, PROTOCOL, expected_digest=digest)
        assert (m.accuracy, m.exit_rates, m.ece, m.size_kb) == (
            alone.accuracy, alone.exit_rates, alone.ece, alone.size_kb)
    assert c.measurements[0].accuracy == pytest.approx(5 / 6)
    assert c.by_key()[8] is c.measurements[1]
    assert pickle.loads(pickle.dumps(c)) == c  # as it travels back from the child and Ray


def test_confirm_bundles_checks_every_digest(bundles, eval_set):
    (d0, g0), (d1, _) = bundles
    with pytest.raises(DeviceAgentError):
        confirm_bundles([d0, d1], eval_set, PROTOCOL, rounds=1, runs_per_round=5,
                        expected_digests=[g0, "f" * 64])


def test_a_confirmation_request_is_checked():
    ref = BundleRef(key=1, bundle_digest="d", bundle=BundlePayload(digest="d", files={}))
    payload = EvalSetPayload(digest="e", data=b"")
    with pytest.raises(ValueError, match="at least one"):
        ConfirmRequest(bundles=(), eval_set_digest="e", eval_set=payload)
    with pytest.raises(ValueError, match="distinct"):
        ConfirmRequest(bundles=(ref, ref), eval_set_digest="e", eval_set=payload)
    with pytest.raises(ValueError, match="rounds"):
        ConfirmRequest(bundles=(ref,), eval_set_digest="e", eval_set=payload, rounds=0)
    request = ConfirmRequest(bundles=(ref,), eval_set_digest="e", eval_set=payload)
    assert (request.rounds, request.runs_per_round) == (5, 1000)


def test_an_unknown_job_kind_is_refused():
    with pytest.raises(ValueError, match="kind"):
        run_job({"kind": "dance"})


# --- the agents ------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_agent_confirms_in_its_measuring_process_with_the_accuracy_measure_reports(
        tmp_path, bundles, eval_set):
    agent = LocalDeviceAgent(device_class="test", cache_dir=tmp_path / "cache",
                             agent_id="confirmer")
    try:
        request = confirm_request(bundles, eval_set, rounds=4, runs=15)
        c = agent.confirm(request)
        measured = [agent.measure(MeasureRequest(
            bundle_digest=ref.bundle_digest, bundle=ref.bundle,
            eval_set_digest=request.eval_set_digest, eval_set=request.eval_set,
            protocol=PROTOCOL)) for ref in request.bundles]
    finally:
        agent.close()
    assert isinstance(agent, ConfirmingAgent)
    assert [m.bundle_digest for m in c.measurements] == [d for _, d in bundles]
    assert c.keys == (3, 8) and c.rounds == 4 and c.agent_id == "confirmer"
    assert [len(r) for r in c.round_p50_ms] == [4, 4]
    assert [m.latency.n for m in c.measurements] == [60, 60]
    for confirmed, alone in zip(c.measurements, measured, strict=True):
        assert (confirmed.accuracy, confirmed.exit_rates, confirmed.n_eval) == (
            alone.accuracy, alone.exit_rates, alone.n_eval)
    assert c.agent_s >= c.duration_s > 0.0
    assert c.fingerprint["threads"] == PROTOCOL.threads
    assert agent.info()["confirmations"] == 1


@pytest.mark.parametrize("isolate", [True, False])
def test_a_tampered_bundle_is_refused_and_not_cached(tmp_path, bundles, eval_set, isolate):
    agent = LocalDeviceAgent(device_class="test", cache_dir=tmp_path / "cache", isolate=isolate)
    try:
        good = confirm_request(bundles, eval_set, rounds=1, runs=5)
        files = dict(good.bundles[1].bundle.files)
        files["stage0.onnx"] = files["stage0.onnx"] + b"\0"
        tampered_ref = dataclasses.replace(good.bundles[1], bundle=BundlePayload(
            digest=good.bundles[1].bundle_digest, files=files))
        tampered = dataclasses.replace(good, bundles=(good.bundles[0], tampered_ref))
        with pytest.raises(DeviceAgentError):
            agent.confirm(tampered)
        assert not (agent.cache_dir / "bundles" / tampered_ref.bundle_digest).exists()
        wrong_digest = dataclasses.replace(good, bundles=(dataclasses.replace(
            good.bundles[0], bundle_digest="0" * 64),))
        with pytest.raises(MeasurementError, match="digest"):
            agent.confirm(wrong_digest)
        assert len(agent.confirm(good).measurements) == 2  # the agent is still usable
    finally:
        agent.close()


@pytest.mark.slow
def test_the_ray_actor_class_confirms(tmp_path, bundles, eval_set):
    from device_agents.ray_actor import DeviceAgentActor

    actor = DeviceAgentActor(device_class="test", cache_dir=str(tmp_path / "cache"))
    try:
        c = actor.confirm(confirm_request(bundles, eval_set, rounds=2, runs=5))
    finally:
        actor._agent.close()
    assert [len(r) for r in c.round_p95_ms] == [2, 2]


def _canned(request: MeasureRequest) -> Measurement:
    p = 1.0 + (request.trial_number or 0)
    latency = LatencyStats(mean_ms=p, std_ms=0.1, p50_ms=p, p90_ms=p, p95_ms=p + 0.5,
                           p99_ms=p + 1, n=300, median_ci_low_ms=p, median_ci_high_ms=p,
                           converged=True)
    return Measurement(bundle_digest=request.bundle_digest, accuracy=0.9, n_eval=6, ece=0.0,
                       exit_rates=(1.0,), latency=latency, size_kb=1.0, peak_mem_mb=1.0,
                       agent_id="fake", fingerprint={"host": "fake"})


def test_the_fake_agent_confirms_with_its_measure_handler_by_default(bundles, eval_set):
    agent = FakeAgent(_canned)
    request = confirm_request(bundles, eval_set, keys=(0, 4), rounds=2)
    c = agent.confirm(request)
    assert isinstance(agent, ConfirmingAgent)
    assert agent.confirm_requests == [request] and agent.requests == []
    assert [m.bundle_digest for m in c.measurements] == [d for _, d in bundles]
    assert c.keys == (0, 4) and c.rounds == 2
    assert c.round_p50_ms == ((1.0, 1.0), (5.0, 5.0))
    assert c.round_p95_ms == ((1.5, 1.5), (5.5, 5.5))
    assert c.agent_id == "fake" and c.fingerprint == {"host": "fake"}


def test_the_fake_agent_uses_its_confirm_handler_when_given(bundles, eval_set):
    canned = Confirmation(measurements=(), round_p50_ms=(), round_p95_ms=(), rounds=0)
    agent = FakeAgent(_canned, confirm_handler=lambda request: canned)
    assert agent.confirm(confirm_request(bundles, eval_set)) is canned
