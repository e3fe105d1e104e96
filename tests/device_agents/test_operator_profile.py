"""Per-operator profiles: onnxruntime's profiler over a cascade, by operator, part and stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from device_agents import (
    BundlePayload,
    EvalSet,
    EvalSetPayload,
    LocalDeviceAgent,
    OperatorProfile,
    ProfileRequest,
    profile_bundle,
)
from device_agents.errors import BundleIntegrityError, MeasurementError
from device_agents.operator_profile import operator_part


def _named_heads(cascade, weights: np.ndarray, *, last: bool) -> bytes:
    """A stage whose MatMul is named as the exporter names a head's (``/head/...``)."""
    model = onnx.load_from_string(cascade.stage_onnx(weights, last=last))
    for node in model.graph.node:
        if node.op_type == "MatMul":
            node.name = "/head/fc/MatMul"
    return model.SerializeToString()


@pytest.fixture
def cascade_bundle(tmp_path: Path, cascade) -> tuple[Path, str]:
    directory = tmp_path / "cascade"
    weights = cascade.THREE_STAGE
    blobs = [_named_heads(cascade, w, last=k == len(weights) - 1) for k, w in enumerate(weights)]
    digest = cascade.write_cascade(directory, weights, thresholds=(0.9, 0.9), stage_bytes=blobs)
    return directory, digest


def _inputs() -> np.ndarray:
    """Half the samples leave at exit 0 (x0 large), the others go through every stage."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32) * 0.1
    x[::2, 0] = 10.0
    return x


def test_operator_parts_follow_the_exporters_scopes() -> None:
    assert operator_part("/head/fc/Gemm", "Gemm", last_stage=False) == "exit head"
    assert operator_part("/head/fc/Gemm", "Gemm", last_stage=True) == "classifier"
    assert operator_part("input_QuantizeLinear", "QuantizeLinear", last_stage=False) == \
        "(de)quantize"
    assert operator_part("Transpose_token_3", "Transpose", last_stage=False) == "layout"
    assert operator_part("/stage/x/ReorderInput", "ReorderInput", last_stage=True) == "layout"
    assert operator_part("/stage/block1/Conv", "Conv", last_stage=False) == "backbone"


def test_a_profile_adds_up_to_the_wall_time_and_counts_each_stages_runs(cascade_bundle) -> None:
    directory, digest = cascade_bundle
    runs = 200
    profile = profile_bundle(directory, _inputs(), runs=runs, warmup_runs=10,
                             expected_digest=digest)
    assert profile.bundle_digest == digest and profile.inferences == runs
    # warm-up left out: stage 0 runs for every timed inference, later stages only for those
    # that did not leave at exit 0 (every other sample)
    assert profile.stage_runs == (runs, runs // 2, runs // 2)
    assert profile.exit_rates == pytest.approx((0.5, 0.0, 0.5))
    assert sum(profile.by_part().values()) == pytest.approx(profile.wall_us, rel=1e-6)
    assert profile.plain_wall_us > 0 and profile.preprocessing_us > 0
    parts = {(op.stage, op.part, op.op_type) for op in profile.operators}
    assert (0, "exit head", "MatMul") in parts and (1, "exit head", "MatMul") in parts
    assert (2, "classifier", "MatMul") in parts
    assert all(op.us > 0 and op.nodes >= 1 for op in profile.operators)
    assert OperatorProfile.from_dict(profile.to_dict()) == profile


def test_preprocessing_timed_above_the_time_outside_the_sessions_still_adds_up() -> None:
    from device_agents.operator_profile import OperatorTime

    # a busy machine: the separate preprocessing loop took 30 us a sample, but the profiled
    # inferences spent only 20 us outside their sessions
    profile = OperatorProfile(bundle_digest="d", inferences=10, wall_us=220.0,
                              plain_wall_us=200.0, preprocessing_us=30.0,
                              stage_session_us=(200.0,), stage_runs=(10,),
                              operators=(OperatorTime(stage=0, part="backbone", op_type="Conv",
                                                      nodes=2, us=150.0),),
                              exit_rates=(1.0,))
    parts = profile.by_part()
    assert parts["preprocessing"] == 20.0 and parts["outside sessions"] == 0.0
    assert parts["gaps"] == 50.0
    assert sum(parts.values()) == pytest.approx(profile.wall_us)


def test_the_profilers_cost_is_spread_over_the_nodes_each_inference_ran() -> None:
    from device_agents.operator_profile import OperatorTime

    # stage 0 (3 nodes) runs every inference, stage 1 (4 nodes) half of them: 5 nodes each
    profile = OperatorProfile(bundle_digest="d", inferences=10, wall_us=150.0,
                              plain_wall_us=100.0, preprocessing_us=1.0,
                              stage_session_us=(60.0, 40.0), stage_runs=(10, 5),
                              operators=(OperatorTime(0, "backbone", "Conv", 3, 30.0),
                                         OperatorTime(1, "classifier", "Gemm", 4, 20.0)),
                              exit_rates=(0.5, 0.5))
    assert profile.nodes_per_inference == 5.0
    assert profile.profiler_us_per_node == pytest.approx(10.0)
    unknown = OperatorProfile.from_dict({**profile.to_dict(), "plain_wall_us": 0.0})
    assert unknown.profiler_us_per_node is None


def test_a_profile_refuses_a_tampered_bundle_and_no_runs(cascade_bundle) -> None:
    directory, digest = cascade_bundle
    with pytest.raises(MeasurementError, match="at least one run"):
        profile_bundle(directory, _inputs(), runs=0)
    (directory / "stage1.onnx").write_bytes(b"tampered")
    with pytest.raises(BundleIntegrityError):
        profile_bundle(directory, _inputs(), runs=10, expected_digest=digest)


def test_the_agent_profiles_in_its_measuring_process(cascade_bundle, tmp_path) -> None:
    directory, digest = cascade_bundle
    x = _inputs()
    payload = EvalSetPayload.from_eval_set(EvalSet(inputs=x, labels=np.zeros(len(x), np.int64)))
    agent = LocalDeviceAgent(device_class="test", cache_dir=tmp_path / "agent")
    try:
        profile = agent.profile(ProfileRequest(
            bundle_digest=digest, bundle=BundlePayload.from_directory(directory),
            eval_set_digest=payload.digest, eval_set=payload, runs=50, warmup_runs=5))
    finally:
        agent.close()
    assert profile.agent_id == agent.agent_id and profile.inferences == 50
    assert profile.stage_runs[0] == 50 and profile.fingerprint["threads"] == 1
