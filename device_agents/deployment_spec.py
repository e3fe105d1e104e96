"""The manifest's ``deployment`` section: the safe fallback and the monitor's reference.

A deployed bundle (:func:`device_agents.deployment.deployed_copy`) carries what the device needs
after the search: what to do when the cascade is not confident enough (:class:`FallbackPolicy`)
and what the study measured, for the monitor to compare against (:class:`MonitorReference`).
These dataclasses (and the reference's confidence bins) import nothing of the bundle module,
so that ``bundle.py`` can hold them. See docs/BUNDLE_FORMAT.md (the deployment section) and
docs/MONITORING.md.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np

from device_agents.errors import BundleError

FallbackAction = Literal["abstain", "default_label", "escalate"]
FALLBACK_ACTIONS: tuple[FallbackAction, ...] = ("abstain", "default_label", "escalate")
#: where an escalating deployment keeps its second bundle, inside the deployed bundle
FALLBACK_BUNDLE_DIR = "fallback_bundle"


@dataclass(frozen=True)
class FallbackPolicy:
    """What answers when the answering exit's calibrated confidence is below ``below``.

    ``abstain`` returns an explicit abstention, ``default_label`` returns ``default_label``,
    ``escalate`` runs the second bundle kept at ``fallback_bundle/`` for that input.

    Example:
        >>> FallbackPolicy(below=0.6, action="abstain").to_dict()
        {'below': 0.6, 'action': 'abstain', 'default_label': None}
    """

    below: float
    action: FallbackAction
    default_label: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"below": self.below, "action": self.action, "default_label": self.default_label}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FallbackPolicy:
        label = data.get("default_label")
        return cls(below=float(data["below"]), action=cast(FallbackAction, str(data["action"])),
                   default_label=None if label is None else int(label))

    def check(self, num_classes: int) -> None:
        """Raise :class:`BundleError` naming the field when the policy cannot be applied."""
        if self.action not in FALLBACK_ACTIONS:
            raise BundleError(f"manifest: deployment.fallback.action {self.action!r} is not one "
                              f"of {', '.join(FALLBACK_ACTIONS)}")
        if not 0.0 < self.below <= 1.0:
            raise BundleError(f"manifest: deployment.fallback.below {self.below} must lie in "
                              f"(0, 1]")
        if self.action == "default_label":
            if self.default_label is None or not 0 <= self.default_label < num_classes:
                raise BundleError(f"manifest: deployment.fallback.default_label must be a class "
                                  f"in [0, {num_classes}) for action default_label, got "
                                  f"{self.default_label!r}")
        elif self.default_label is not None:
            raise BundleError(f"manifest: deployment.fallback.default_label is only for action "
                              f"default_label (action is {self.action})")


@dataclass(frozen=True)
class MonitorReference:
    """What the study measured, for the device's monitor to compare against.

    ``exit_rates[k]``: the share of samples exit ``k`` answered on a labelled set (the
    selection split); ``confidence_hist``: the share of samples whose answering exit's
    calibrated confidence falls in each bin of ``confidence_edges`` (``len(edges) - 1`` bins,
    the last one closed); the latency percentiles as the agent measured them; ``accuracy`` on
    that set, when known.

    Example:
        >>> ref = MonitorReference(exit_rates=(1.0,), confidence_edges=(0.0, 0.5, 1.0),
        ...                        confidence_hist=(0.25, 0.75), latency_p50_ms=0.1,
        ...                        latency_p95_ms=0.2, accuracy=0.9)
        >>> MonitorReference.from_dict(ref.to_dict()) == ref
        True
    """

    exit_rates: tuple[float, ...]
    confidence_edges: tuple[float, ...]
    confidence_hist: tuple[float, ...]
    latency_p50_ms: float
    latency_p95_ms: float
    accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"exit_rates": list(self.exit_rates),
                "confidence_edges": list(self.confidence_edges),
                "confidence_hist": list(self.confidence_hist),
                "latency_p50_ms": self.latency_p50_ms, "latency_p95_ms": self.latency_p95_ms,
                "accuracy": self.accuracy}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MonitorReference:
        accuracy = data.get("accuracy")
        return cls(exit_rates=tuple(float(v) for v in data["exit_rates"]),
                   confidence_edges=tuple(float(v) for v in data["confidence_edges"]),
                   confidence_hist=tuple(float(v) for v in data["confidence_hist"]),
                   latency_p50_ms=float(data["latency_p50_ms"]),
                   latency_p95_ms=float(data["latency_p95_ms"]),
                   accuracy=None if accuracy is None else float(accuracy))

    def check(self, num_stages: int | None = None) -> None:
        """Raise :class:`BundleError` naming the field when the reference contradicts itself."""
        edges = self.confidence_edges
        if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
            raise BundleError("manifest: deployment.reference.confidence_edges must be at least "
                              "2 increasing values")
        if len(self.confidence_hist) != len(edges) - 1:
            raise BundleError(f"manifest: deployment.reference.confidence_hist has "
                              f"{len(self.confidence_hist)} bins for {len(edges)} edges "
                              f"(expected {len(edges) - 1})")
        if num_stages is not None and len(self.exit_rates) != num_stages:
            raise BundleError(f"manifest: deployment.reference.exit_rates has "
                              f"{len(self.exit_rates)} values for {num_stages} stages")
        values = (*self.exit_rates, *self.confidence_hist, self.latency_p50_ms,
                  self.latency_p95_ms)
        if any(not math.isfinite(v) or v < 0.0 for v in values):
            raise BundleError("manifest: deployment.reference holds a negative or non-finite "
                              "value")


@dataclass(frozen=True)
class DeploymentSpec:
    """The manifest's optional ``deployment`` section.

    ``source_digest`` is the digest of the bundle this one was deployed from (the study's);
    ``fallback_digest`` the digest of the escalation bundle at ``fallback_bundle/`` (set when
    the fallback escalates), which pins every file of that bundle.
    """

    fallback: FallbackPolicy | None
    reference: MonitorReference | None
    source_digest: str
    fallback_digest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"fallback": None if self.fallback is None else self.fallback.to_dict(),
                "reference": None if self.reference is None else self.reference.to_dict(),
                "source_digest": self.source_digest, "fallback_digest": self.fallback_digest}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeploymentSpec:
        fallback, reference = data.get("fallback"), data.get("reference")
        digest = data.get("fallback_digest")
        return cls(fallback=None if fallback is None else FallbackPolicy.from_dict(fallback),
                   reference=None if reference is None else MonitorReference.from_dict(reference),
                   source_digest=str(data["source_digest"]),
                   fallback_digest=None if digest is None else str(digest))

    def check(self, num_classes: int, num_stages: int) -> None:
        if self.fallback is not None:
            self.fallback.check(num_classes)
        if self.reference is not None:
            self.reference.check(num_stages)
        escalates = self.fallback is not None and self.fallback.action == "escalate"
        if escalates != (self.fallback_digest is not None):
            raise BundleError("manifest: deployment.fallback_digest is required exactly when "
                              "deployment.fallback.action is escalate")


def confidence_edges(confidences: Sequence[float] | np.ndarray,
                     bins: int = 10) -> tuple[float, ...]:
    """Bin edges over [0, 1] holding about equal shares of ``confidences`` (their quantiles).

    Equal-mass bins are what the population stability index reads best: a confident model puts
    most samples above 0.9, where equal-width bins would be one bin. Tied quantiles (many
    samples at the same confidence) are merged, so there may be fewer than ``bins`` bins.
    """
    if bins < 1:
        raise BundleError(f"confidence histogram: bins must be >= 1, got {bins}")
    values = np.clip(np.asarray(confidences, dtype=np.float64), 0.0, 1.0)
    inner = (np.quantile(values, np.arange(1, bins) / bins) if values.size and bins > 1
             else np.empty(0))
    kept = sorted({round(float(v), 12) for v in inner if 0.0 < v < 1.0})
    return (0.0, *kept, 1.0)


def confidence_histogram(confidences: Sequence[float] | np.ndarray,
                         edges: Sequence[float]) -> tuple[float, ...]:
    """The share of ``confidences`` in each bin ``[edges[i], edges[i+1])`` (the last closed)."""
    values = np.asarray(confidences, dtype=np.float64)
    if values.size == 0:
        return (0.0,) * (len(edges) - 1)
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=np.asarray(edges))
    return tuple(float(c) / values.size for c in counts)
