"""Stages on bound buffers: the same answers as ``InferenceSession.run``, without per-call
allocation, and the plain path wherever a shape is not known at batch 1."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from device_agents import CascadeRunner
from device_agents.bound_stage import BoundStage


def _session(blob: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(blob, providers=["CPUExecutionProvider"])


def _samples(n: int = 30, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2.0, 2.0, size=(n, 4)).astype(np.float32)


@pytest.mark.parametrize("shape", [(1, 4), ("batch", 4)])
def test_a_static_or_batch_symbolic_stage_is_bound_and_answers_as_session_run(cascade, shape):
    session = _session(cascade.stage_onnx(cascade.W_EXIT0, last=False, input_shape=shape))
    stage = BoundStage(session, (1, 4))

    assert stage.bound
    for x in _samples():
        features, logits = stage.run(x.reshape(1, 4))
        expected = session.run(None, {"input": x.reshape(1, 4)})
        np.testing.assert_array_equal(features, expected[0])
        np.testing.assert_array_equal(logits, expected[1])


def test_bound_outputs_are_the_same_buffers_run_after_run(cascade):
    stage = BoundStage(_session(cascade.stage_onnx(cascade.W_LAST, last=True)), (1, 4))
    first = stage.run(np.ones((1, 4), np.float32))[0]
    second = stage.run(np.full((1, 4), 2.0, np.float32))[0]

    assert first is second
    np.testing.assert_array_equal(second, [[2.0, 2.0, 2.0]])


def test_a_stage_with_a_symbolic_non_batch_dimension_runs_unbound(cascade):
    session = _session(cascade.stage_onnx(None, last=True, input_shape=(1, "width")))
    stage = BoundStage(session, (1, 4))

    assert not stage.bound
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    np.testing.assert_array_equal(stage.run(x)[0], x)
    stage.input[...] = 3.0
    np.testing.assert_array_equal(stage.run()[0], np.full((1, 4), 3.0))


def test_a_chain_feeds_each_stage_the_previous_features_buffer(cascade):
    sessions = [_session(cascade.stage_onnx(w, last=k == 2))
                for k, w in enumerate(cascade.THREE_STAGE)]
    stages = BoundStage.chain(sessions, (1, 4))

    assert all(s.bound for s in stages)
    assert stages[1].input is stages[0].outputs[0]
    assert stages[2].input is stages[1].outputs[0]


def test_a_chain_after_an_unbound_stage_copies_its_features_in(cascade):
    first = _session(cascade.stage_onnx(cascade.W_EXIT0, last=False, input_shape=(1, "n")))
    last = _session(cascade.stage_onnx(cascade.W_LAST, last=True))
    stages = BoundStage.chain([first, last], (1, 4))
    x = np.array([[0.5, 1.0, 2.0, 3.0]], np.float32)

    assert [s.bound for s in stages] == [False, True]
    features, _ = stages[0].run(x)
    np.testing.assert_array_equal(stages[1].run(features)[0], [[1.0, 2.0, 3.0]])


@pytest.mark.parametrize("shape", [(1, 4), (1, "n")])
def test_the_runner_answers_alike_bound_or_not(make_bundle, cascade, shape):
    blobs = [cascade.stage_onnx(w, last=k == 2, input_shape=shape)
             for k, w in enumerate(cascade.THREE_STAGE)]
    directory, _ = make_bundle(cascade.THREE_STAGE, thresholds=(0.9, 0.8), stage_bytes=blobs)
    runner = CascadeRunner.load(directory)
    assert [s.bound for s in runner._stages] == [shape == (1, 4)] * 3
    samples = _samples(60) * 3
    reference = [
        _session(cascade.stage_onnx(w, last=k == 2)) for k, w in enumerate(cascade.THREE_STAGE)]

    evaluation = runner.evaluate(samples, np.zeros(len(samples), dtype=np.int64))
    for i, x in enumerate(samples):
        logits, exit_index = runner.run(x)
        expected = reference[exit_index].run(None, {"input": x.reshape(1, 4)})[-1][0]
        np.testing.assert_allclose(logits, expected, rtol=1e-6)
        assert exit_index == evaluation.exits[i]
    assert set(evaluation.exits.tolist()) == {0, 1, 2}


def test_the_logits_run_returns_survive_the_next_run(make_bundle, cascade):
    directory, _ = make_bundle(cascade.TWO_STAGE)
    runner = CascadeRunner.load(directory)
    first, _ = runner.run(np.array([0.0, 1.0, 2.0, 3.0], np.float32))
    runner.run(np.array([0.0, 7.0, 7.0, 7.0], np.float32))

    np.testing.assert_array_equal(first, [1.0, 2.0, 3.0])


def test_a_runner_without_bound_buffers_answers_alike_and_binds_nothing(make_bundle, cascade):
    directory, _ = make_bundle(cascade.THREE_STAGE, thresholds=(0.9, 0.8))
    bound, plain = CascadeRunner.load(directory), CascadeRunner.load(directory,
                                                                      bind_buffers=False)
    samples = _samples(40) * 3

    assert [s.bound for s in plain._stages] == [False] * 3
    for x in samples:
        a, b = bound.run(x), plain.run(x)
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1] == b[1]
