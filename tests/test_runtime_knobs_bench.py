"""A tiny run of experiments/benchmarks/runtime_knobs_bench.py on a bundle directory: every
variant is timed in every round, its ratio to the default is taken per round, and the JSON says
so (OpenVINO's runtime too, where the bench extra is installed), and a null graph's bundle,
the runner's own cost, is timed beside them."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from device_agents import BundleManifest, InputSpec, StageSpec, write_bundle

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "benchmarks" / "runtime_knobs_bench.py"


def _bundle(directory: Path, features: int = 16, classes: int = 4) -> np.ndarray:
    weights = np.random.default_rng(0).normal(size=(features, classes)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["logits"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        [helper.make_tensor("W", TensorProto.FLOAT, weights.shape, weights.flatten())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    manifest = BundleManifest(input=InputSpec("input", (1, features)),
                              stages=(StageSpec("model", "model.onnx", ""),), num_classes=classes)
    write_bundle(directory, manifest, {"model.onnx": model.SerializeToString()})
    return weights


def test_a_tiny_run_times_every_variant_in_every_round(tmp_path: Path) -> None:
    weights = _bundle(tmp_path / "bundle")
    inputs = np.random.default_rng(1).normal(size=(12, 1, 16)).astype(np.float32)
    labels = np.argmax(inputs[:, 0] @ weights, axis=1)
    np.savez(tmp_path / "eval.npz", inputs=inputs, labels=labels)
    openvino = importlib.util.find_spec("openvino") is not None
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--bundle", str(tmp_path / "bundle"), "--eval-npz",
         str(tmp_path / "eval.npz"), "--out", str(tmp_path / "out"), "--levels", "basic,all",
         "--threads", "1", "--providers", "CPU", "--rounds", "3", "--runs", "20",
         "--warmup", "2", "--unbound", "--null-graph", *(["--openvino"] if openvino else [])],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "runtime knobs" in done.stdout
    result = json.loads((tmp_path / "out" / "runtime_knobs.json").read_text())
    null = [row for row in result["rows"] if row["bundle"] == "null graph"]
    assert {row["variant"] for row in null} >= {"default", "unbound"}
    assert all(row["p50_ms"] > 0 for row in null)
    rows = {row["variant"]: row for row in result["rows"] if row["bundle"] != "null graph"}
    expected = {"default", "opt=basic", "threads=1", "ep=CPUExecutionProvider", "unbound"}
    own_runtime = {"openvino", "openvino infer()"} if openvino else set()
    assert set(rows) == expected | own_runtime  # "all" is the bundle's own level
    for row in rows.values():
        assert len(row["round_p50_ms"]) == 3 and row["p95_ms"] >= row["p50_ms"] > 0
        assert row["accuracy"] == 1.0  # no knob changes the answers
    assert rows["default"]["ratio_p50"] == rows["default"]["ratio_p95"] == 1.0
    assert rows["default"]["speedup_p95_vs_first"] == 1.0  # the first bundle's own
    assert all(row["speedup_p95_vs_first"] > 0 for row in null)
