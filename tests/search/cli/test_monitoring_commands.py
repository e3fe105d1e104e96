"""``paretoedge replay`` and ``paretoedge monitor`` on a real small bundle and real data.

The bundle is a two-stage cascade on sklearn digits: stage 0 a weakly trained softmax
regression (an exit at 0.9), stage 1 a well trained one, fitted with numpy on the loader's
train split and written with ``write_bundle``; it is deployed with ``deployed_copy`` and the
reference of its decisions on the selection split. No torch anywhere.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner, Result

from search.cli.app import app
from tests.search.cli.test_cli import assert_one_line_error, paretoedge


def cli(*args: str) -> Result:
    """The command in this process (the subprocess costs seconds of imports each)."""
    return CliRunner().invoke(app, list(args))


def assert_one_line(result: Result, code: int, *words: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]

DATA_MODULE = textwrap.dedent('''
    """sklearn digits as raw 8x8 images (values 0..16), no torch."""
    import numpy as np

    from device_agents import Preprocessing
    from spaces import DataSplits


    def load_data(seed=0):
        from sklearn.datasets import load_digits

        d = load_digits()
        x = d.images.astype(np.float32)[:, None]
        y = d.target.astype(np.int64)
        order = np.random.default_rng(seed).permutation(len(x))
        tr, va, te = order[:800], order[800:1300], order[1300:1797]
        return DataSplits(train_x=x[tr], train_y=y[tr], val_x=x[va], val_y=y[va],
                          test_x=x[te], test_y=y[te], num_classes=10,
                          preprocessing=Preprocessing(scale=1 / 16, mean=(0.3,), std=(0.4,)))
''')


def _softmax_regression(x: np.ndarray, y: np.ndarray, steps: int) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    w, b = np.zeros((x.shape[1], 10), np.float32), np.zeros(10, np.float32)
    onehot = np.eye(10, dtype=np.float32)[y]
    for _ in range(steps):
        z = x @ w + b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        w -= 0.5 * x.T @ (p - onehot) / len(x)
        b -= 0.5 * (p - onehot).mean(axis=0)
    return w, b


def _stage(weights: np.ndarray, bias: np.ndarray, *, first: bool, last: bool) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")]
    source = "input"
    if first:
        inits.append(numpy_helper.from_array(np.array([1, 64], np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["input", "shape"], ["flat"]))
        source = "flat"
    nodes += [helper.make_node("MatMul", [source, "W"], ["mm"]),
              helper.make_node("Add", ["mm", "B"], ["logits"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])]
    if not last:
        nodes.append(helper.make_node("Identity", [source], ["features"]))
        outputs.insert(0, helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 64]))
    shape = [1, 1, 8, 8] if first else [1, 64]
    graph = helper.make_graph(nodes, "stage", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, shape)], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """(project dir, config, plain cascade bundle, deployed bundle with its reference)."""
    from device_agents import (
        BundleManifest,
        CascadeRunner,
        ExitPolicy,
        FallbackPolicy,
        InputSpec,
        StageSpec,
        deployed_copy,
        reference_from_evaluation,
        write_bundle,
    )
    from search.config import load_config
    from search.study.preparation import load_data
    from tests.search.conftest import tiny_config_dict

    root = tmp_path_factory.mktemp("digits")
    (root / "digits_data.py").write_text(DATA_MODULE)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(
        "digits", data={"loader": "digits_data.py:load_data"})))
    data = load_data(load_config(config))
    x = data.preprocess(data.train_x).reshape(len(data.train_x), 64)
    weak, strong = (_softmax_regression(x, data.train_y, steps) for steps in (60, 300))
    stages = (StageSpec("stage0", "stage0.onnx", ""), StageSpec("stage1", "stage1.onnx", ""))
    manifest = BundleManifest(input=InputSpec("input", (1, 1, 8, 8)), stages=stages,
                              num_classes=10, preprocessing=data.preprocessing,
                              exits=ExitPolicy(thresholds=(0.9,), temperatures=(1.0, 1.0)))
    plain = root / "cascade"
    write_bundle(plain, manifest, {"stage0.onnx": _stage(*weak, first=True, last=False),
                                   "stage1.onnx": _stage(*strong, first=False, last=True)})
    selection = data.selection_set()
    evaluation = CascadeRunner.load(plain).evaluate(selection.inputs, selection.labels)
    assert evaluation.accuracy > 0.9 and 0.2 < evaluation.exit_rates[0] < 0.9
    # latency is the device's business, not this test's: a p95 no replay reaches
    reference = reference_from_evaluation(evaluation, 50.0, 100.0, bins=10)
    deployed = root / "deployed"
    deployed_copy(plain, deployed, fallback=FallbackPolicy(0.5, "abstain"), reference=reference)
    return root, config, plain, deployed


def _telemetry(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_replay_of_the_test_split_raises_no_drift_and_a_noise_shift_does(digits, monkeypatch):
    root, config, _, deployed = digits
    monkeypatch.chdir(root)
    calm, noisy = Path("calm.jsonl"), Path("noisy.jsonl")

    done = cli("replay", str(deployed), "--config", str(config), "--telemetry",
                      str(calm), "--window", "200")
    assert done.exit_code == 0, done.output
    assert "accuracy" in done.stdout and "exit 0 rate" in done.stdout
    lines = _telemetry(calm)
    assert lines[0]["type"] == "header" and lines[0]["reference"] is not None
    assert sum(line["type"] == "inference" for line in lines) == 497
    assert [line["partial"] for line in lines if line["type"] == "window"] == [False, False,
                                                                              True]
    assert not [line for line in lines if line["type"] == "event"
                and line["kind"] == "confidence_drift"]

    done = cli("replay", str(deployed), "--config", str(config), "--telemetry",
                      str(noisy), "--window", "200", "--shift", "noise:0.5")
    assert done.exit_code == 0, done.output
    drift = [line for line in _telemetry(noisy) if line["type"] == "event"
             and line["kind"] == "confidence_drift"]
    assert [d["window"] for d in drift] == [0, 1]
    assert all(d["observed"] > d["threshold"] == 0.25 for d in drift)
    assert "confidence_drift 2" in done.stdout
    assert "abstentions" in done.stdout

    html = root / "report.html"
    done = cli("monitor", str(calm), str(noisy), "--html", str(html))
    assert done.exit_code == 0, done.output
    out = done.stdout
    assert "calm.jsonl" in out and "noisy.jsonl" in out
    assert "confidence_drift 2" in out and "confidence PSI" in out  # the events table
    page = html.read_text()
    assert "plotly" in page and "confidence drift (PSI) per window" in page


def test_a_brightness_shift_is_applied_before_preprocessing_and_clipped():
    from search.cli.replay_command import parse_shift

    raw = np.array([[0.0, 8.0, 16.0]], dtype=np.float32)
    assert parse_shift("brightness:0.25").apply(raw).tolist() == [[4.0, 12.0, 16.0]]
    assert parse_shift("brightness:-0.5").apply(raw).tolist() == [[0.0, 0.0, 8.0]]
    noisy = parse_shift("noise:1").apply(np.tile(raw, (100, 1)), seed=1)
    assert noisy.min() >= 0.0 and noisy.max() <= 16.0 and noisy.std() > 3.0


def test_monitor_against_a_bundle_recomputes_windows(digits):
    from device_agents import Monitor, MonitorSettings, TelemetryWriter

    root, _, plain, deployed = digits
    # telemetry of the plain bundle: no reference in its header, so no events ...
    path = root / "plain.jsonl"
    monitor = Monitor(settings=MonitorSettings(window=50), telemetry=TelemetryWriter(path))
    monitor.bind(bundle_digest="p" * 64, num_exits=2)
    for i in range(100):
        monitor.record(0.2, 1, 0.35 + (i % 10) / 100)  # unsure, all at the last stage
    monitor.close()
    assert not monitor.events

    done = cli("monitor", str(path))
    assert done.exit_code == 0, done.output
    assert "note: a file without a reference" in done.stdout

    # ... until compared against the deployed bundle's reference
    done = cli("monitor", str(path), "--against", str(deployed))
    assert done.exit_code == 0, done.output
    assert f"against: {deployed}" in done.stdout
    assert "(recomputed)" in done.stdout
    assert "confidence_drift 2" in done.stdout and "exit_rate_drift" in done.stdout

    done = cli("monitor", str(path), "--against", str(plain))
    assert_one_line(done, 2, "no deployment reference")


def test_bad_inputs_are_one_line_and_exit_2(digits, tmp_path):
    _root, config, _, deployed = digits
    missing = tmp_path / "missing.jsonl"
    # the real command line, once: stderr is one line, exit 2
    assert_one_line_error(paretoedge("monitor", str(missing), cwd=tmp_path), 2, str(missing),
                          "no such telemetry file")
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("{not json\n{}\n")
    assert_one_line(cli("monitor", str(garbage)), 2,
                          f"{garbage}:1")
    assert_one_line(cli("replay", str(deployed), "--config", str(config),
                                     "--telemetry", str(tmp_path / "t.jsonl"), "--shift",
                                     "blur:3"), 2, "--shift 'blur:3'")
    assert_one_line(cli("replay", str(tmp_path / "nobundle"), "--config",
                                     str(config), "--telemetry", str(tmp_path / "t.jsonl")),
                    2, "no manifest.json")
    assert_one_line(cli("monitor", str(garbage), "--against",
                                     str(tmp_path / "nothing")), 2, f"{garbage}:1")


def test_replay_refuses_a_bundle_of_another_input_shape(digits, tmp_path):
    from tests.search.conftest import _matmul_bundle

    _root, config, _, _ = digits
    other = tmp_path / "other"
    _matmul_bundle(other, features=16)

    done = cli("replay", str(other), "--config", str(config), "--telemetry",
                      str(tmp_path / "t.jsonl"))
    assert_one_line(done, 2, "takes inputs of shape [1, 16]", "[1, 8, 8]")


@pytest.mark.slow
def test_monitor_against_a_registered_alias(digits, tmp_path):
    from device_agents import Monitor, MonitorSettings, TelemetryWriter
    from search.registry.model_registry import ModelRegistry

    _root, _, _, deployed = digits
    workdir = tmp_path / "runs"
    registry = ModelRegistry.open(workdir=workdir)
    version = registry.register("digits-model", deployed, tags={})
    registry.point("digits-model", "production", version.version)
    path = tmp_path / "device.jsonl"
    monitor = Monitor(settings=MonitorSettings(window=50), telemetry=TelemetryWriter(path))
    monitor.bind(bundle_digest="p" * 64, num_exits=2)
    for _ in range(50):
        monitor.record(0.2, 1, 0.4)  # unsure, all at the last stage
    monitor.close()

    done = cli("monitor", str(path), "--against", "digits-model@production",
                      "--workdir", str(workdir))
    assert done.exit_code == 0, done.output
    assert f"against: digits-model@production (version {version.version})" in done.stdout
    assert "confidence_drift 1" in done.stdout and "(recomputed)" in done.stdout
    done = cli("monitor", str(path), "--against", "digits-model@staging",
                      "--workdir", str(workdir))
    assert_one_line(done, 2, "staging")
