"""The bundle runtime: run the stages of a cascade until an exit is confident enough.

A deployed bundle's fallback (``device_agents/fallback.py``) and an optional monitor
(``device_agents/monitor.py``) apply to :meth:`CascadeRunner.predict` only; ``run`` (the timed
path) and ``evaluate`` are the cascade's own decisions, for every bundle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device_agents.bound_stage import BoundStage, Stage
from device_agents.bundle import BundleManifest, bundle_digest, verify_bundle
from device_agents.calibration import expected_calibration_error
from device_agents.deployment_spec import FALLBACK_BUNDLE_DIR
from device_agents.errors import BundleError
from device_agents.fallback import FallbackRule, Predictor
from device_agents.monitor import Monitor
from device_agents.openvino_stage import OpenVinoStage
from device_agents.prediction import ABSTAINED_LABEL, Prediction
from device_agents.profiles import ProviderLike, session_providers
from device_agents.runtime_options import ort_level

__all__ = ["ABSTAINED_LABEL", "CascadeEvaluation", "CascadeRunner", "Prediction", "confidence",
           "softmax"]


def confidence(probabilities: np.ndarray, measure: str) -> float:
    """Confidence of one softmax vector under a measure; higher means more confident, in [0,1]."""
    if measure == "max_softmax":
        return float(probabilities.max())
    if measure == "margin":
        top2 = np.partition(probabilities, -2)[-2:]
        return float(top2[1] - top2[0])
    if measure == "entropy":
        p = np.clip(probabilities, 1e-12, 1.0)
        return float(1.0 + (p * np.log(p)).sum() / np.log(len(p)))
    raise BundleError(f"unknown confidence measure {measure!r}")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    exp = np.exp(shifted)
    probabilities: np.ndarray = exp / exp.sum()
    return probabilities


@dataclass(frozen=True, eq=False)
class CascadeEvaluation:
    """A cascade's decisions on a labelled set, and what every exit alone would have said.

    ``exit_labels[k]`` and ``exit_confidences[k]`` (max temperature-scaled probability) are
    exit ``k``'s own answers for every sample, whether or not the cascade stopped there.
    """

    labels: np.ndarray
    exits: np.ndarray
    confidences: np.ndarray
    targets: np.ndarray
    exit_labels: np.ndarray
    exit_confidences: np.ndarray

    @property
    def correct(self) -> np.ndarray:
        correct: np.ndarray = self.labels == self.targets
        return correct

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def ece(self) -> float:
        """ECE of the cascade: each sample's confidence is that of the exit that answered."""
        return expected_calibration_error(self.confidences, self.correct)

    @property
    def exit_rates(self) -> tuple[float, ...]:
        return tuple(float((self.exits == k).mean()) for k in range(len(self.exit_labels)))

    @property
    def exit_accuracies(self) -> tuple[float, ...]:
        return tuple(float((labels == self.targets).mean()) for labels in self.exit_labels)

    @property
    def exit_eces(self) -> tuple[float, ...]:
        """ECE of each exit on every sample (its calibration, independent of thresholds)."""
        return tuple(expected_calibration_error(conf, labels == self.targets)
                     for conf, labels in zip(self.exit_confidences, self.exit_labels,
                                             strict=True))


class CascadeRunner:
    """Runs a bundle on onnxruntime, one sample at a time, end to end.

    Each stage but the last returns ``(features, logits)``; after stage ``k`` the sample leaves
    when the temperature-scaled confidence of ``logits`` reaches ``thresholds[k]`` (a threshold
    of 1.0 turns that exit off). When no exit is confident the last stage answers, or, with the
    ``most_confident`` fallback, whichever exit was most confident. With no thresholds the
    stages simply run in sequence.

    The sessions open with the manifest's ``runtime`` section (graph optimization level,
    ``intra_op_threads``, ``providers``; docs/RUNTIME.md): explicit ``threads`` / ``providers``
    override the bundle's; without either, 1 thread on ``CPUExecutionProvider``.

    The sessions run on input and output buffers bound once (``device_agents/bound_stage.py``:
    no allocation per inference, nothing copied between stages), so a runner serves one thread
    at a time: open one per thread, or one with ``bind_buffers=False`` (``InferenceSession.run``
    on new arrays every call, slower by its per-call cost) to share between threads.

    A deployed bundle's ``deployment.fallback`` applies in :meth:`predict`: below its
    confidence, an abstention, the default label, or the bundle at ``fallback_bundle/`` (opened
    on first use) answers. A ``monitor`` (:class:`~device_agents.monitor.Monitor`) is told every
    :meth:`predict`: its latency (``perf_counter`` around the cascade and the fallback), the
    exit, the answering exit's calibrated confidence and the fallback that answered.

    Example:
        >>> runner = CascadeRunner.load("runs/digits/bundles/trial_0003")  # doctest: +SKIP
        >>> runner.predict(raw_sample).label  # doctest: +SKIP
        7
    """

    def __init__(self, directory: Path | str, manifest: BundleManifest, *,
                 threads: int | None = None, providers: Sequence[ProviderLike] | None = None,
                 profile_prefix: str | None = None, monitor: Monitor | None = None,
                 bind_buffers: bool = True) -> None:
        import onnxruntime as ort

        self.directory = Path(directory)
        self.manifest = manifest
        runtime = manifest.runtime_options
        #: which runtime runs the stages (the manifest's ``runtime.engine``; docs/RUNTIME.md)
        self.engine = runtime.engine
        runtime.check_engine()
        openvino = self.engine == "openvino"
        if openvino and profile_prefix is not None:
            raise BundleError(f"{self.directory}: the bundle runs on OpenVINO; profiles are "
                              f"onnxruntime's profiler's")
        if providers is None and not openvino:  # the bundle's own providers must exist here
            runtime.check_available(ort.get_available_providers())
        #: what the sessions run with: an explicit argument, else the manifest's runtime
        #: section, else 1 thread on the CPU provider
        self.threads, self.providers = runtime.session_settings(threads=threads,
                                                                providers=providers)
        level = ort_level(runtime.graph_optimization)

        def options(k: int) -> ort.SessionOptions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = level
            if profile_prefix is not None:  # onnxruntime's profiler (operator_profile.py)
                options.enable_profiling = True
                options.profile_file_prefix = f"{profile_prefix}_stage{k}"
            return options

        files = [self.directory / stage.file for stage in manifest.stages]
        #: onnxruntime's sessions (none on OpenVINO)
        self._sessions = [] if openvino else [
            ort.InferenceSession(str(file), options(k),
                                 providers=session_providers(self.providers),
                                 disabled_optimizers=list(manifest.disabled_optimizers))
            for k, file in enumerate(files)
        ]
        self._input_names = [s.get_inputs()[0].name for s in self._sessions]
        #: the stages as the cascade calls them: onnxruntime's on buffers bound once
        #: (bound_stage.py: one runner per thread), or OpenVINO's (openvino_stage.py)
        stages: list[Stage] = []
        if openvino:
            stages.extend(OpenVinoStage.chain(files, manifest.input.shape, threads=self.threads))
        else:
            stages.extend(BoundStage.chain(self._sessions, manifest.input.shape,
                                           bind=bind_buffers))
        self._stages: Sequence[Stage] = stages
        for k, stage_ in enumerate(self._stages):
            names = stage_.output_names
            expected = ["logits"] if k == len(self._stages) - 1 else ["features", "logits"]
            if names != expected:
                raise BundleError(f"{self.directory / manifest.stages[k].file}: outputs {names}, "
                                  f"expected {expected}")
        pre = manifest.preprocessing
        channels = manifest.input.shape[1] if len(manifest.input.shape) > 1 else 1
        mean = np.asarray(pre.mean, dtype=np.float32)
        std = np.asarray(pre.std, dtype=np.float32)
        if mean.size not in (1, channels) or std.size not in (1, channels):
            raise BundleError(f"{self.directory}: preprocessing mean/std must have 1 or "
                              f"{channels} values")
        broadcast = (1, -1) + (1,) * max(len(manifest.input.shape) - 2, 0)
        self._gain = (np.float32(pre.scale) / std).reshape(broadcast).astype(np.float32)
        self._offset = (-mean / std).reshape(broadcast).astype(np.float32)
        self._thresholds = manifest.exits.thresholds
        self._inv_temperatures = tuple(1.0 / t for t in manifest.exits.temperatures)
        self._measure = manifest.exits.confidence
        self._most_confident = manifest.exits.fallback == "most_confident"
        deployment = manifest.deployment
        self.fallback: FallbackRule | None = None
        if deployment is not None and deployment.fallback is not None:
            self.fallback = FallbackRule(deployment.fallback, open_escalation=self._escalation(
                threads, providers) if deployment.fallback.action == "escalate" else None)
        self.monitor = monitor
        if monitor is not None:
            monitor.bind(bundle_digest=bundle_digest(self.directory),
                         num_exits=len(manifest.stages),
                         reference=deployment.reference if deployment is not None else None,
                         source_digest=deployment.source_digest if deployment else None)
        self._watched = self.fallback is not None or monitor is not None

    def _escalation(self, threads: int | None, providers: Sequence[ProviderLike] | None
                    ) -> Callable[[], Predictor]:
        """Opens the escalation bundle (verified with the deployed one) on first use."""
        directory, manifest = self.directory / FALLBACK_BUNDLE_DIR, self.manifest

        def open_escalation() -> Predictor:
            digest = manifest.deployment.fallback_digest if manifest.deployment else None
            return CascadeRunner.load(directory, threads=threads, expected_digest=digest,
                                      providers=providers).predict

        return open_escalation

    @classmethod
    def load(cls, directory: Path | str, *, threads: int | None = None,
             expected_digest: str | None = None,
             providers: Sequence[ProviderLike] | None = None,
             monitor: Monitor | None = None, bind_buffers: bool = True) -> CascadeRunner:
        """Verify a bundle directory (sha256 of every file) and open its stages.

        ``threads`` and ``providers`` default to the manifest's ``runtime`` section (its
        ``intra_op_threads`` and ``providers``), else 1 thread on ``CPUExecutionProvider``;
        given, they override the bundle's (docs/RUNTIME.md).
        ``providers``: onnxruntime execution providers in order of preference, each a plain
        name, a :class:`~device_agents.profiles.Provider` or its text (``NAME:key=value;...``).
        ``monitor``: told every :meth:`predict` (see :class:`~device_agents.monitor.Monitor`).
        ``bind_buffers``: False for a runner that threads share (see the class).
        """
        manifest = verify_bundle(Path(directory), expected_digest)
        return cls(directory, manifest, threads=threads, providers=providers, monitor=monitor,
                   bind_buffers=bind_buffers)

    @property
    def num_stages(self) -> int:
        return len(self._stages)

    def profiling_start_ns(self) -> list[int]:
        """When each stage's profiler started (epoch ns), opened with ``profile_prefix``."""
        return [int(s.get_profiling_start_time_ns()) for s in self._sessions]

    def end_profiling(self) -> list[str]:
        """Stop the profilers; return each stage's trace file (onnxruntime's JSON)."""
        return [str(s.end_profiling()) for s in self._sessions]

    def preprocess(self, raw: np.ndarray) -> np.ndarray:
        """One raw sample as the first stage takes it (a new array)."""
        batch = raw.reshape(self.manifest.input.shape)
        return batch.astype(np.float32) * self._gain + self._offset

    def _preprocess_into_first_stage(self, raw: np.ndarray) -> None:
        """:meth:`preprocess`, written into the first stage's input buffer (no allocation)."""
        x = self._stages[0].input
        np.multiply(raw.reshape(x.shape), self._gain, out=x, dtype=np.float32)
        np.add(x, self._offset, out=x)

    def _confidence(self, k: int, logits: np.ndarray) -> float:
        """Exit ``k``'s calibrated confidence; max softmax is ``1 / sum(exp(z - max z))``,
        which skips the division of every probability (a few microseconds per exit)."""
        if self._measure == "max_softmax":
            z = logits * np.float32(self._inv_temperatures[k])
            return 1.0 / float(np.exp(z - z.max()).sum())
        return confidence(softmax(logits * self._inv_temperatures[k]), self._measure)

    def _cascade(self, raw: np.ndarray, *, every_exit: bool) -> tuple[int, list[np.ndarray]]:
        """The exit that answers, and the logits of the stages run (all with ``every_exit``).
        The logits are views of the stages' output buffers: valid until the next call."""
        x: np.ndarray | None = None
        if self._stages[0].bound:
            self._preprocess_into_first_stage(raw)
        else:
            x = self.preprocess(raw)
        last = len(self._stages) - 1
        outputs: list[np.ndarray] = []
        answer: int | None = None
        best, best_confidence = last, -1.0
        for k, stage in enumerate(self._stages):
            if k == last:
                outputs.append(stage.run(x)[0][0])
                if answer is None and self._most_confident and self._thresholds:
                    answer = k if self._confidence(k, outputs[k]) >= best_confidence else best
                return (last if answer is None else answer), outputs
            features, logits = stage.run(x)
            outputs.append(logits[0])
            if answer is None and self._thresholds:
                value = self._confidence(k, logits[0])
                threshold = self._thresholds[k]
                if threshold < 1.0:  # 1.0 turns the exit off
                    if value >= threshold:
                        answer = k
                        if not every_exit:
                            return k, outputs
                    elif value > best_confidence:
                        best, best_confidence = k, value
            x = features
        raise AssertionError("unreachable")

    def run(self, raw: np.ndarray) -> tuple[np.ndarray, int]:
        """Preprocess one raw sample and run the cascade; return (logits, exit index)."""
        exit_index, outputs = self._cascade(raw, every_exit=False)
        return outputs[exit_index].copy(), exit_index

    def predict(self, raw: np.ndarray) -> Prediction:
        """The answer for one raw sample: the cascade's, or the deployed fallback's (see the
        class), recorded by the monitor when there is one."""
        if not self._watched:
            return self._cascade_prediction(raw)
        start = time.perf_counter()
        prediction = self._cascade_prediction(raw)
        confidence_ = float(prediction.probabilities.max())
        if self.fallback is not None:
            prediction = self.fallback.decide(raw, prediction, confidence_)
        elapsed_ms = (time.perf_counter() - start) * 1e3
        if self.monitor is not None:
            self.monitor.record(elapsed_ms, prediction.exit_index, confidence_,
                                prediction.fallback)
        return prediction

    def _cascade_prediction(self, raw: np.ndarray) -> Prediction:
        logits, exit_index = self.run(raw)
        probabilities = softmax(logits * self._inv_temperatures[exit_index])
        return Prediction(label=int(np.argmax(logits)), exit_index=exit_index,
                          probabilities=probabilities)

    def evaluate(self, inputs: Sequence[np.ndarray] | np.ndarray,
                 targets: np.ndarray) -> CascadeEvaluation:
        """Run every sample through every stage, one at a time; decide as :meth:`run` does.

        The cascade's answer for a sample is the one :meth:`predict` gives (the same stages on
        the same input, the same rule); running the remaining stages too gives each exit's own
        accuracy and calibration in the same pass.
        """
        n, stages = len(inputs), self.num_stages
        labels = np.empty(n, dtype=np.int64)
        exits = np.empty(n, dtype=np.int64)
        confidences = np.empty(n, dtype=np.float64)
        exit_labels = np.empty((stages, n), dtype=np.int64)
        exit_confidences = np.empty((stages, n), dtype=np.float64)
        for i in range(n):
            exit_index, outputs = self._cascade(inputs[i], every_exit=True)
            for k, logits in enumerate(outputs):
                exit_labels[k, i] = int(np.argmax(logits))
                exit_confidences[k, i] = float(
                    softmax(logits * self._inv_temperatures[k]).max())
            exits[i] = exit_index
            labels[i] = exit_labels[exit_index, i]
            confidences[i] = exit_confidences[exit_index, i]
        return CascadeEvaluation(labels=labels, exits=exits, confidences=confidences,
                                 targets=np.asarray(targets, dtype=np.int64),
                                 exit_labels=exit_labels, exit_confidences=exit_confidences)
