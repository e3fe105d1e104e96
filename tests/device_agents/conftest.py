"""Fixtures for the device-side tests: tiny ONNX cascades built with ``onnx.helper`` (no torch).

The standard cascade has inputs of 4 features and 3 classes. Every stage passes its input on
unchanged as ``features`` and computes ``logits = input @ W``, so each stage's logits are a known
linear function of the raw sample (preprocessing is the identity unless a test sets it):

- stage 0 of :data:`TWO_STAGE`: ``[x0, 0, 0]``: confident for class 0 when ``x0`` is large;
- the last stage of :data:`TWO_STAGE`: ``[x1, x2, x3]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from device_agents import (
    BundleManifest,
    ExitPolicy,
    InputSpec,
    MeasurementProtocol,
    Preprocessing,
    StageSpec,
    write_bundle,
)

OPSET = 17
IR_VERSION = 9
NUM_FEATURES = 4
NUM_CLASSES = 3

#: Stage 0: class 0 gets x0, the others 0.
W_EXIT0 = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]], dtype=np.float32)
#: Stage 1 of a three-stage cascade: class 1 gets x1, the others 0.
W_EXIT1 = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=np.float32)
#: Last stage: logits are (x1, x2, x3).
W_LAST = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)

TWO_STAGE = (W_EXIT0, W_LAST)
THREE_STAGE = (W_EXIT0, W_EXIT1, W_LAST)

#: A protocol small enough for unit tests.
FAST_PROTOCOL = MeasurementProtocol(threads=1, warmup_runs=5, warmup_seconds=0.0, min_runs=20,
                                    max_runs=200, round_runs=10)


def stage_onnx(weights: np.ndarray | None, *, last: bool,
               input_shape: Sequence[int] = (1, NUM_FEATURES),
               output_names: Sequence[str] | None = None) -> bytes:
    """One cascade stage as ONNX bytes.

    ``weights`` of shape ``(C, K)`` gives ``logits = input @ weights``; ``None`` gives
    ``logits = input`` (to observe the preprocessed input). Non-last stages also return
    ``features = input``. ``output_names`` renames the outputs (to build a malformed stage).
    """
    shape = list(input_shape)
    nodes = []
    initializers = []
    if weights is None:
        nodes.append(helper.make_node("Identity", ["input"], ["logits_out"]))
        logits_shape = shape
    else:
        initializers.append(numpy_helper.from_array(np.asarray(weights, np.float32), "W"))
        nodes.append(helper.make_node("MatMul", ["input", "W"], ["logits_out"]))
        logits_shape = [shape[0], int(np.asarray(weights).shape[1])]
    names = list(output_names) if output_names is not None else (
        ["logits"] if last else ["features", "logits"])
    outputs = []
    for name in names:
        source, out_shape = (("input", shape) if name == "features"
                             else ("logits_out", logits_shape))
        nodes.append(helper.make_node("Identity", [source], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, out_shape))
    graph = helper.make_graph(
        nodes, "stage", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="paretoedge-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_cascade(directory: Path, weights: Sequence[np.ndarray | None], *,
                  thresholds: Sequence[float] = (),
                  temperatures: Sequence[float] | None = None,
                  confidence: str = "max_softmax",
                  preprocessing: Preprocessing = Preprocessing(),
                  input_shape: Sequence[int] = (1, NUM_FEATURES),
                  num_classes: int = NUM_CLASSES,
                  stage_bytes: Sequence[bytes] | None = None,
                  provenance: dict | None = None) -> str:
    """Write a bundle of ``len(weights)`` stages to ``directory``; return its digest."""
    count = len(stage_bytes) if stage_bytes is not None else len(weights)
    blobs = list(stage_bytes) if stage_bytes is not None else [
        stage_onnx(w, last=k == count - 1, input_shape=input_shape)
        for k, w in enumerate(weights)]
    stages = tuple(StageSpec(name=f"stage{k}", file=f"stage{k}.onnx", sha256="")
                   for k in range(count))
    manifest = BundleManifest(
        input=InputSpec(name="x", shape=tuple(input_shape)),
        stages=stages,
        num_classes=num_classes,
        preprocessing=preprocessing,
        exits=ExitPolicy(thresholds=tuple(thresholds),
                         temperatures=tuple(temperatures or (1.0,) * count),
                         confidence=confidence),
        provenance=provenance or {"test": True},
    )
    return write_bundle(directory, manifest,
                        {s.file: blob for s, blob in zip(stages, blobs, strict=True)})


@pytest.fixture
def make_bundle(tmp_path: Path) -> Callable[..., tuple[Path, str]]:
    """``make_bundle(weights, name=..., **options) -> (directory, digest)`` under ``tmp_path``."""
    counter = iter(range(1_000_000))

    def make(weights: Sequence[np.ndarray | None] = TWO_STAGE, *, name: str | None = None,
             **options) -> tuple[Path, str]:
        directory = tmp_path / (name or f"bundle{next(counter)}")
        return directory, write_cascade(directory, weights, **options)

    return make


@pytest.fixture
def cascade() -> SimpleNamespace:
    """The builders and constants of this module (a conftest is not importable by name)."""
    return SimpleNamespace(
        stage_onnx=stage_onnx, write_cascade=write_cascade, W_EXIT0=W_EXIT0, W_EXIT1=W_EXIT1,
        W_LAST=W_LAST, TWO_STAGE=TWO_STAGE, THREE_STAGE=THREE_STAGE,
        NUM_FEATURES=NUM_FEATURES, NUM_CLASSES=NUM_CLASSES, FAST_PROTOCOL=FAST_PROTOCOL)


@pytest.fixture
def fast_protocol() -> MeasurementProtocol:
    return FAST_PROTOCOL
