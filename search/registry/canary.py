"""Two registered versions measured side by side before one replaces the other: both bundles
timed by one agent of the device class, interleaved in rotated rounds in one process (the
study's confirmation protocol, :func:`device_agents.measure.confirm_bundles`), and evaluated
on the study's held-out test split; the verdict under the study's accuracy band.

The newcomer passes when its test accuracy is at least the holder's minus
``constraints.max_accuracy_drop`` and it is not slower at p95 than the holder by more than
``p95_tolerance`` (the median over the rounds of newcomer p95 / holder p95, each round's two
figures timed seconds apart). See docs/DEPLOYMENT.md.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from search.errors import RegistryError
from search.registry.model_ref import ModelRef
from search.registry.model_registry import ModelRegistry, RegisteredVersion
from search.registry.study_source import StoredStudy

if TYPE_CHECKING:
    from device_agents import Confirmation, EvalSetPayload, Measurement
    from search.config import StudyConfig
    from search.fleet.dispatch import Dispatcher
    from search.workspace import Workspace

    DispatcherFactory = Callable[[StudyConfig, Workspace], Dispatcher]

#: default: a newcomer up to 5 % slower at p95 (timing noise between two equal bundles) passes
P95_TOLERANCE = 0.05


@dataclass(frozen=True)
class VersionFigures:
    """What the comparison measured of one version."""

    ref: str
    version: str
    test_accuracy: float
    p50_ms: float
    p95_ms: float
    mean_ms: float
    energy_mj: float | None
    round_p95_ms: tuple[float, ...]

    @classmethod
    def of(cls, ref: str, version: str, m: Measurement, rounds: tuple[float, ...]
           ) -> VersionFigures:
        return cls(ref=ref, version=version, test_accuracy=m.accuracy, p50_ms=m.latency.p50_ms,
                   p95_ms=m.latency.p95_ms, mean_ms=m.latency.mean_ms, energy_mj=m.energy_mj,
                   round_p95_ms=rounds)


@dataclass(frozen=True)
class Comparison:
    """The holder and the newcomer measured in one run, and the verdict.

    Example:
        >>> comparison = compare_versions(registry, ModelRef.parse("digits@production"),
        ...                               ModelRef.parse("digits@4"), workdir=Path("runs"),
        ...                               device_class="local")  # doctest: +SKIP
        >>> comparison.accepted, comparison.reasons()  # doctest: +SKIP
        (False, ['test accuracy 0.912 is below 0.950 - 0.01 (the band)'])
    """

    holder: VersionFigures
    newcomer: VersionFigures
    band: float
    p95_tolerance: float
    rounds: int
    runs_per_round: int
    n_test: int
    agent_id: str
    device_class: str

    @property
    def p95_ratio(self) -> float:
        """Newcomer p95 over holder p95: the median over the rounds (pooled without rounds)."""
        pairs = [n / h for h, n in zip(self.holder.round_p95_ms, self.newcomer.round_p95_ms,
                                       strict=False) if h > 0]
        if pairs:
            return statistics.median(pairs)
        return self.newcomer.p95_ms / self.holder.p95_ms if self.holder.p95_ms > 0 else 1.0

    @property
    def accuracy_ok(self) -> bool:
        return self.newcomer.test_accuracy >= self.holder.test_accuracy - self.band - 1e-12

    @property
    def latency_ok(self) -> bool:
        return self.p95_ratio <= 1.0 + self.p95_tolerance

    @property
    def accepted(self) -> bool:
        return self.accuracy_ok and self.latency_ok

    def reasons(self) -> list[str]:
        """Why the newcomer is refused (empty when accepted)."""
        out = []
        if not self.accuracy_ok:
            out.append(f"test accuracy {self.newcomer.test_accuracy:.4f} is below the holder's "
                       f"{self.holder.test_accuracy:.4f} minus the band {self.band:g}")
        if not self.latency_ok:
            out.append(f"p95 latency {self.p95_ratio:.2f}x the holder's (more than "
                       f"{1 + self.p95_tolerance:.2f}x: slower)")
        return out

    def verdict(self) -> str:
        head = f"{self.newcomer.ref} (version {self.newcomer.version}) against " \
               f"{self.holder.ref} (version {self.holder.version})"
        if self.accepted:
            return (f"accepted: {head}: within the band {self.band:g} and p95 "
                    f"{self.p95_ratio:.2f}x the holder's")
        return f"refused: {head}: " + "; ".join(self.reasons())

    def to_dict(self) -> dict[str, object]:
        from dataclasses import asdict

        return {"holder": asdict(self.holder), "newcomer": asdict(self.newcomer),
                "band": self.band, "p95_tolerance": self.p95_tolerance,
                "p95_ratio": self.p95_ratio, "accuracy_ok": self.accuracy_ok,
                "latency_ok": self.latency_ok, "accepted": self.accepted,
                "reasons": self.reasons(), "rounds": self.rounds,
                "runs_per_round": self.runs_per_round, "n_test": self.n_test,
                "agent_id": self.agent_id, "device_class": self.device_class}


def _study_of(version: RegisteredVersion) -> str:
    study = version.tags.get("study")
    if not study:
        raise RegistryError(f"{version.name}@{version.version}: no 'study' tag (not registered "
                            f"by paretoedge deploy)")
    return study


def compare_versions(registry: ModelRegistry, holder: ModelRef, newcomer: ModelRef, *,
                     workdir: Path, device_class: str | None = None,
                     p95_tolerance: float = P95_TOLERANCE, rounds: int | None = None,
                     runs_per_round: int | None = None,
                     dispatcher_factory: DispatcherFactory | None = None) -> Comparison:
    """Pull both versions, time them interleaved on one agent of ``device_class`` (default:
    the study's) and evaluate them on the test split of the newcomer's study (in ``workdir``),
    under that study's band."""
    from device_agents import (
        BundlePayload,
        BundleRef,
        ConfirmRequest,
        EvalSetPayload,
        MeasurementProtocol,
    )
    from search.errors import ConfigError
    from search.fleet.study_pool import default_dispatcher
    from search.study.confirmation import Confirmer, ConfirmSettings, covering_runs
    from search.study.preparation import load_data

    versions = (registry.resolve(holder), registry.resolve(newcomer))
    study = StoredStudy.load(workdir, _study_of(versions[1]))
    config = study.config()
    if device_class is not None and device_class != config.device.class_:
        config = config.model_copy(update={"device": config.device.model_copy(
            update={"class_": device_class})})
    eval_payload = EvalSetPayload.from_eval_set(load_data(config).test_set())
    settings = ConfirmSettings(rounds=rounds or config.confirm.rounds,
                               runs_per_round=runs_per_round or config.confirm.runs_per_round,
                               threads=config.device.threads)
    runs = covering_runs(settings, len(eval_payload.load()))
    protocol = MeasurementProtocol(threads=settings.threads, warmup_runs=settings.warmup_runs,
                                   warmup_seconds=settings.warmup_seconds)
    with tempfile.TemporaryDirectory(prefix="paretoedge-compare-") as tmp:
        refs = []
        for key, (ref, version) in enumerate(zip((holder, newcomer), versions, strict=True)):
            directory = Path(tmp) / f"v{key}"
            registry.pull(ModelRef(name=ref.name, version=version.version), directory)
            payload = BundlePayload.from_directory(directory)
            refs.append(BundleRef(key=key, bundle_digest=payload.digest, bundle=payload))
        dispatcher = (dispatcher_factory or default_dispatcher)(config, study.workspace)
        try:
            if not isinstance(dispatcher, Confirmer):
                raise ConfigError(f"{type(dispatcher).__name__} cannot confirm")
            eval_ref = dispatcher.share(eval_payload)
            confirmation: Confirmation = dispatcher.confirm(ConfirmRequest(
                bundles=tuple(refs), eval_set_digest=eval_payload.digest,
                eval_set=cast("EvalSetPayload", eval_ref), protocol=protocol,
                rounds=settings.rounds,
                runs_per_round=runs))
        finally:
            dispatcher.close()
    figures = [VersionFigures.of(str(ref), v.version, m, tuple(r95)) for ref, v, m, r95 in zip(
        (holder, newcomer), versions, confirmation.measurements,
        confirmation.round_p95_ms or ((), ()), strict=True)]
    return Comparison(holder=figures[0], newcomer=figures[1],
                      band=config.constraints.max_accuracy_drop, p95_tolerance=p95_tolerance,
                      rounds=confirmation.rounds, runs_per_round=runs,
                      n_test=confirmation.measurements[0].n_eval,
                      agent_id=confirmation.agent_id, device_class=config.device.class_)
