"""The bundle runtime: run the stages of a cascade until an exit is confident enough."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device_agents.bundle import BundleManifest, verify_bundle
from device_agents.errors import BundleError


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
    return exp / exp.sum()


@dataclass(frozen=True)
class Prediction:
    """What the cascade decided for one sample."""

    label: int
    exit_index: int
    probabilities: np.ndarray


class CascadeRunner:
    """Runs a bundle on onnxruntime, one sample at a time, end to end.

    Each stage but the last returns ``(features, logits)``; after stage ``k`` the sample leaves
    when the temperature-scaled confidence of ``logits`` reaches ``thresholds[k]``. With no
    thresholds the stages simply run in sequence.

    Example:
        >>> runner = CascadeRunner.load("runs/digits/bundles/trial_0003")  # doctest: +SKIP
        >>> runner.predict(raw_sample).label  # doctest: +SKIP
        7
    """

    def __init__(self, directory: Path | str, manifest: BundleManifest, *, threads: int = 1,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> None:
        import onnxruntime as ort

        self.directory = Path(directory)
        self.manifest = manifest
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._sessions = [
            ort.InferenceSession(str(self.directory / stage.file), options,
                                 providers=list(providers),
                                 disabled_optimizers=list(manifest.disabled_optimizers))
            for stage in manifest.stages
        ]
        self._input_names = [s.get_inputs()[0].name for s in self._sessions]
        self._output_names = [[o.name for o in s.get_outputs()] for s in self._sessions]
        for k, names in enumerate(self._output_names):
            expected = ["logits"] if k == len(self._sessions) - 1 else ["features", "logits"]
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

    @classmethod
    def load(cls, directory: Path | str, *, threads: int = 1, expected_digest: str | None = None,
             providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> CascadeRunner:
        """Verify a bundle directory (sha256 of every file) and open its stages."""
        manifest = verify_bundle(Path(directory), expected_digest)
        return cls(directory, manifest, threads=threads, providers=providers)

    @property
    def num_stages(self) -> int:
        return len(self._sessions)

    def preprocess(self, raw: np.ndarray) -> np.ndarray:
        batch = raw.reshape(self.manifest.input.shape)
        return batch.astype(np.float32) * self._gain + self._offset

    def run(self, raw: np.ndarray) -> tuple[np.ndarray, int]:
        """Preprocess one raw sample and run the cascade; return (logits, exit index)."""
        x = self.preprocess(raw)
        last = len(self._sessions) - 1
        for k, session in enumerate(self._sessions):
            if k == last:
                return session.run(None, {self._input_names[k]: x})[0][0], k
            features, logits = session.run(None, {self._input_names[k]: x})
            if self._thresholds:
                p = softmax(logits[0] * self._inv_temperatures[k])
                if confidence(p, self._measure) >= self._thresholds[k]:
                    return logits[0], k
            x = features
        raise AssertionError("unreachable")

    def predict(self, raw: np.ndarray) -> Prediction:
        logits, exit_index = self.run(raw)
        probabilities = softmax(logits * self._inv_temperatures[exit_index])
        return Prediction(label=int(np.argmax(logits)), exit_index=exit_index,
                          probabilities=probabilities)
