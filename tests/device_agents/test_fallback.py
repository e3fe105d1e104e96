"""The safe fallback of a deployed bundle: abstain, default label, escalate; each counted."""

from __future__ import annotations

import numpy as np
import pytest

from device_agents import CascadeRunner
from device_agents.deployment import FallbackPolicy, deployed_copy
from device_agents.fallback import FallbackRule
from device_agents.prediction import ABSTAINED_LABEL, Prediction

#: x0 = 5: exit 0 answers class 0 with confidence e^5 / (e^5 + 2) = 0.987
CONFIDENT = np.array([5.0, 0.0, 0.0, 0.0], dtype=np.float32)
#: exit 0 not confident; the last stage's logits (0, 0, 0): confidence 1/3
UNSURE = np.array([0.0, 0.0, 0.0, 0.0], dtype=np.float32)
W_ZERO = np.zeros((4, 3), dtype=np.float32)


def _deployed(make_bundle, cascade, tmp_path, policy, escalate_to=None):
    source, _ = make_bundle(cascade.TWO_STAGE, thresholds=(0.8,), name="source")
    target = tmp_path / "deployed"
    deployed_copy(source, target, fallback=policy, reference=None, escalate_to=escalate_to)
    return CascadeRunner.load(target)


def test_abstain_below_the_threshold_and_answer_above(make_bundle, cascade, tmp_path):
    runner = _deployed(make_bundle, cascade, tmp_path, FallbackPolicy(0.6, "abstain"))

    unsure, confident = runner.predict(UNSURE), runner.predict(CONFIDENT)

    assert unsure.abstained and unsure.label == ABSTAINED_LABEL
    assert unsure.fallback == "abstain" and unsure.exit_index == 1
    assert not confident.abstained and confident.fallback is None
    assert (confident.label, confident.exit_index) == (0, 0)
    assert runner.fallback is not None
    assert runner.fallback.counts == {"abstain": 1, "default_label": 0, "escalate": 0}


def test_default_label_answers_the_configured_class(make_bundle, cascade, tmp_path):
    runner = _deployed(make_bundle, cascade, tmp_path, FallbackPolicy(0.6, "default_label", 2))

    answers = [runner.predict(UNSURE) for _ in range(3)]

    assert [(p.label, p.fallback, p.abstained) for p in answers] == [(2, "default_label",
                                                                       False)] * 3
    assert runner.fallback is not None and runner.fallback.counts["default_label"] == 3


def test_escalate_runs_the_second_bundle_for_that_input_only(make_bundle, cascade, tmp_path):
    second, _ = make_bundle([cascade.W_LAST], name="second")  # logits (x1, x2, x3), one stage
    runner = _deployed(make_bundle, cascade, tmp_path, FallbackPolicy(0.6, "escalate"),
                       escalate_to=second)
    assert runner.fallback is not None and not runner.fallback.escalation_opened

    confident = runner.predict(CONFIDENT)
    assert confident.fallback is None and not runner.fallback.escalation_opened

    # the deployed cascade is unsure of (0, 0.1, 0.2, 0.3) (logits of the last stage: 0.1,
    # 0.2, 0.3); the second bundle answers class 2 with ITS probabilities
    x = np.array([0.0, 0.1, 0.2, 0.3], dtype=np.float32)
    escalated = runner.predict(x)
    expected = CascadeRunner.load(second).predict(x)

    assert escalated.fallback == "escalate" and escalated.label == expected.label == 2
    np.testing.assert_allclose(escalated.probabilities, expected.probabilities)
    assert escalated.exit_index == 1  # the deployed cascade's exit
    assert runner.fallback.escalation_opened
    assert runner.fallback.counts == {"abstain": 0, "default_label": 0, "escalate": 1}


def test_run_and_evaluate_stay_the_cascades_own_decisions(make_bundle, cascade, tmp_path):
    source, _ = make_bundle(cascade.TWO_STAGE, thresholds=(0.8,), name="plain")
    plain = CascadeRunner.load(source)
    runner = _deployed(make_bundle, cascade, tmp_path, FallbackPolicy(0.99, "abstain"))
    inputs = np.random.default_rng(0).uniform(-3, 3, size=(30, 4)).astype(np.float32)
    targets = np.zeros(30, dtype=np.int64)

    deployed_eval, plain_eval = runner.evaluate(inputs, targets), plain.evaluate(inputs, targets)

    np.testing.assert_array_equal(deployed_eval.labels, plain_eval.labels)
    assert ABSTAINED_LABEL not in deployed_eval.labels
    for x in inputs:
        np.testing.assert_array_equal(runner.run(x)[0], plain.run(x)[0])
    assert runner.fallback is not None and sum(runner.fallback.counts.values()) == 0


def test_a_bundle_without_deployment_has_no_fallback(make_bundle, cascade):
    directory, _ = make_bundle(cascade.TWO_STAGE, thresholds=(0.8,))
    runner = CascadeRunner.load(directory)

    prediction = runner.predict(UNSURE)

    assert runner.fallback is None and runner.monitor is None
    assert prediction.fallback is None and not prediction.abstained and prediction.label >= 0


def test_the_threshold_is_strict():
    rule = FallbackRule(FallbackPolicy(below=0.5, action="abstain"))
    p = Prediction(label=1, exit_index=0, probabilities=np.array([0.5, 0.5]))

    assert rule.decide(np.zeros(2), p, confidence=0.5) is p
    assert rule.decide(np.zeros(2), p, confidence=0.4999).abstained


@pytest.mark.parametrize("action", ["abstain", "default_label"])
def test_a_deployment_that_always_falls_back(make_bundle, tmp_path, action):
    source, _ = make_bundle([W_ZERO], name="zero")  # logits 0: confidence 1/3 always
    target = tmp_path / "deployed"
    deployed_copy(source, target, reference=None,
                  fallback=FallbackPolicy(0.34, action, 1 if action == "default_label" else None))
    runner = CascadeRunner.load(target)

    answers = [runner.predict(np.full(4, v, dtype=np.float32)) for v in (-1.0, 0.0, 2.0)]

    assert all(p.fallback == action for p in answers)
    assert runner.fallback is not None and runner.fallback.counts[action] == 3
