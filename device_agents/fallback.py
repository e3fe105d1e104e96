"""The safe fallback: what answers when the cascade is not confident enough.

The rule is the manifest's ``deployment.fallback`` (:class:`FallbackPolicy`): when the
answering exit's calibrated confidence (its highest temperature-scaled probability) is below
``below``, ``abstain`` answers an explicit abstention, ``default_label`` the configured label,
``escalate`` the second bundle kept at ``fallback_bundle/``, opened once, on first use. Each
action is counted. See docs/MONITORING.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from device_agents.deployment_spec import FALLBACK_ACTIONS, FallbackPolicy
from device_agents.errors import BundleError
from device_agents.prediction import ABSTAINED_LABEL, Prediction

#: answers one raw sample (a second bundle's ``CascadeRunner.predict``)
Predictor = Callable[[np.ndarray], Prediction]


class FallbackRule:
    """Applies a :class:`FallbackPolicy` to the cascade's predictions and counts each action.

    ``open_escalation`` opens the second bundle's predictor; it is called once, on the first
    escalation (so a deployment that never escalates never opens it).

    Example:
        >>> rule = FallbackRule(FallbackPolicy(below=0.6, action="abstain"))
        >>> p = Prediction(label=2, exit_index=0, probabilities=np.array([0.3, 0.3, 0.4]))
        >>> rule.decide(np.zeros(4), p, confidence=0.4).abstained, rule.counts["abstain"]
        (True, 1)
    """

    def __init__(self, policy: FallbackPolicy, *,
                 open_escalation: Callable[[], Predictor] | None = None) -> None:
        self.policy = policy
        self.below = policy.below
        self._open_escalation = open_escalation
        self._escalation: Predictor | None = None
        self.counts: dict[str, int] = dict.fromkeys(FALLBACK_ACTIONS, 0)

    @property
    def escalation_opened(self) -> bool:
        """Whether the second bundle has been opened (on the first escalation)."""
        return self._escalation is not None

    def applies(self, confidence: float) -> bool:
        return confidence < self.below

    def decide(self, raw: np.ndarray, prediction: Prediction, confidence: float) -> Prediction:
        """The answer for ``raw``: the cascade's ``prediction``, or the fallback's when
        ``confidence`` (the answering exit's) is below the policy's ``below``."""
        if not self.applies(confidence):
            return prediction
        action = self.policy.action
        self.counts[action] += 1
        if action == "abstain":
            return replace(prediction, label=ABSTAINED_LABEL, abstained=True, fallback=action)
        if action == "default_label":
            assert self.policy.default_label is not None  # checked with the manifest
            return replace(prediction, label=self.policy.default_label, fallback=action)
        if self._escalation is None:
            if self._open_escalation is None:
                raise BundleError("fallback: escalate without a bundle to escalate to")
            self._escalation = self._open_escalation()
        second = self._escalation(raw)
        return replace(prediction, label=second.label, probabilities=second.probabilities,
                       fallback=action)
