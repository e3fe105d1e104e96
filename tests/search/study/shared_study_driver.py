"""One driver of a study stored in PostgreSQL, run as a process of its own by
``test_shared_storage.py``: the real study loop (``StudyRunner``) with a builder that writes a
one-MatMul bundle per candidate (no torch: a second or two to start) and an in-process fake
agent that takes ``--measure-s`` a measurement.

    python shared_study_driver.py CONFIG WORKDIR TRIALS OUT.json [--measure-s S]

``OUT.json`` gets the candidates this driver's agent measured, in order, and the summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from device_agents import (
    BundleManifest,
    FakeAgent,
    InputSpec,
    LatencyStats,
    Measurement,
    MeasureRequest,
    Preprocessing,
    StageSpec,
    write_bundle,
)
from search.config import StudyConfig, load_config
from search.fleet.dispatch import InlineDispatcher
from search.study.preparation import Prepared
from search.study.runner import RunOptions, StudyRunner
from search.tracking.tracker import NullTracker
from search.workspace import Workspace
from spaces import BuildSettings, BuiltBundle, Candidate, DataSplits, PruningSpace, SearchSpace
from spaces.layer_groups import LayerGroup, LayerGroups
from spaces.quantization_space import QuantizationSpace

GROUPS = ("first", "body", "last")
FEATURES = 8


class MatMulBuilder:
    """Builds every candidate into a one-MatMul bundle whose manifest names the candidate."""

    settings = BuildSettings()
    layer_groups = LayerGroups(tuple(LayerGroup(g, (g,)) for g in GROUPS))
    num_stages = 1

    @property
    def model_key(self) -> str:
        return "matmul"

    @property
    def groups(self) -> tuple[str, ...]:
        return GROUPS

    def operators(self) -> dict[str, tuple[str, ...]]:
        return {g: ("MatMul",) for g in GROUPS}

    def build(self, candidate: Candidate, directory: Path) -> BuiltBundle:
        from onnx import TensorProto, helper

        started = time.perf_counter()
        weights = np.eye(FEATURES, 10, dtype=np.float32) * (1 + candidate.prune_ratio)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["input", "W"], ["logits"])], "g",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, FEATURES])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
            [helper.make_tensor("W", TensorProto.FLOAT, weights.shape, weights.flatten())])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 9
        manifest = BundleManifest(input=InputSpec("input", (1, FEATURES)),
                                  stages=(StageSpec("model", "model.onnx", ""),), num_classes=10,
                                  provenance={"candidate": candidate.to_dict()})
        digest = write_bundle(directory, manifest, {"model.onnx": model.SerializeToString()})
        return BuiltBundle(directory, digest, time.perf_counter() - started,
                           {"macs_m": 0.001})


class SlowMatMulBuilder(MatMulBuilder):
    """A :class:`MatMulBuilder` whose builds take ``build_s``, each announced first by a file
    ``<markers>/<pid>-<n>.json`` naming the candidate (so that a test can kill the builder's
    process mid-build)."""

    def __init__(self, markers: Path, build_s: float) -> None:
        self.markers = markers
        self.build_s = build_s
        self.builds = 0

    def build(self, candidate: Candidate, directory: Path) -> BuiltBundle:
        import os

        self.builds += 1
        marker = self.markers / f"{os.getpid()}-{self.builds}.json"
        marker.write_text(json.dumps(candidate.to_dict()))
        time.sleep(self.build_s)
        return super().build(candidate, directory)


def make_slow_builder(markers: Path, build_s: float) -> SlowMatMulBuilder:
    return SlowMatMulBuilder(markers, build_s)


class PickyMatMulBuilder(MatMulBuilder):
    """A :class:`MatMulBuilder` that cannot build pruned candidates."""

    def build(self, candidate: Candidate, directory: Path) -> BuiltBundle:
        from spaces import BuildError

        if candidate.prune_ratio > 0:
            raise BuildError("pruning leaves a stage without channels")
        return super().build(candidate, directory)


def make_picky_builder() -> PickyMatMulBuilder:
    return PickyMatMulBuilder()


def prepare_fake(config: StudyConfig, cache: Path) -> Prepared:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, FEATURES)).astype(np.float32)
    y = (np.arange(40) % 10).astype(np.int64)
    data = DataSplits(train_x=x, train_y=y, val_x=x, val_y=y, test_x=x, test_y=y,
                      num_classes=10, preprocessing=Preprocessing())
    space = SearchSpace(quantization=QuantizationSpace(groups=GROUPS, precisions=("fp32", "int8")),
                        pruning=PruningSpace(ratio_max=0.5, ratio_step=0.25))
    return Prepared(data=data, builder=MatMulBuilder(), space=space)


def agent_measuring(measured: list[dict[str, Any]], measure_s: float) -> FakeAgent:
    def handler(request: MeasureRequest) -> Measurement:
        manifest = json.loads(request.bundle.files["manifest.json"])
        candidate = manifest["provenance"]["candidate"]
        measured.append({"trial": request.trial_number, "candidate": candidate})
        time.sleep(measure_s)
        ratio = candidate["prune_ratio"]
        int8 = sum(q == "int8" for q in candidate["quantization"])
        p95 = (1 - ratio) * (1 - 0.2 * int8)
        latency = LatencyStats(mean_ms=p95, std_ms=0.01, p50_ms=p95, p90_ms=p95, p95_ms=p95,
                               p99_ms=p95, n=100, median_ci_low_ms=p95 * 0.99,
                               median_ci_high_ms=p95 * 1.01, converged=True)
        return Measurement(bundle_digest=request.bundle_digest, accuracy=0.95 - 0.04 * ratio,
                           n_eval=40, ece=0.02, exit_rates=(1.0,), latency=latency,
                           size_kb=10.0 - int8, peak_mem_mb=10.0, agent_id="fake")

    return FakeAgent(handler)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("trials", type=int)
    parser.add_argument("out", type=Path)
    parser.add_argument("--measure-s", type=float, default=0.2)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    measured: list[dict[str, Any]] = []
    agent = agent_measuring(measured, args.measure_s)
    runner = StudyRunner(config, Workspace(args.workdir, config.study),
                         dispatcher_factory=lambda c, w: InlineDispatcher(agent),
                         tracker=NullTracker(), live=False, preparer=prepare_fake)
    summary = runner.run(RunOptions(trials=args.trials, confirm=False))
    args.out.write_text(json.dumps({"measured": measured, "stop_reason": summary.stop_reason,
                                    "records": len(summary.records)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
