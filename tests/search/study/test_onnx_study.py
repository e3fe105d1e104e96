"""A study of a model given as an ONNX file (``model.onnx``): the digits CNN trained briefly
here and exported, searched in quantization only, and a whole run in a Python where torch
cannot be imported."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from device_agents import CascadeRunner, FakeAgent, LatencyStats, Measurement, MeasureRequest
from search.config import load_config
from search.errors import ConfigError
from search.fleet.dispatch import InlineDispatcher
from search.study.preparation import prepare
from search.study.runner import RunOptions, StudyRunner
from search.tracking.tracker import NullTracker
from search.workspace import Workspace
from spaces import ModelError, load_reference

ROOT = Path(__file__).resolve().parents[3]
EXPERIMENTS = ROOT / "experiments"
#: Runs ``paretoedge`` with the arguments given, then says whether torch got imported.
CLI = textwrap.dedent('''
    import json, sys
    try:
        import torch  # noqa: F401
        blocked = False
    except ImportError:
        blocked = True
    from search.cli.app import main
    try:
        main()
    finally:
        print("NO_TORCH_REPORT " + json.dumps({
            "blocked": blocked,
            "torch_modules": sorted(m for m in sys.modules if m.split(".")[0] == "torch")}))
''')


@pytest.fixture(scope="session")
def digits_onnx(tmp_path_factory) -> Path:
    """The digits CNN (16 channels) trained for 3 epochs, exported as ``digits.onnx``."""
    path = tmp_path_factory.getbasetemp() / "digits-onnx" / "digits.onnx"
    if not path.is_file():
        export = load_reference("digits_onnx.py:export_digits_onnx", EXPERIMENTS)
        export(path, width=16, epochs=3)
    return path


def onnx_config(directory: Path, onnx_path: Path, study: str = "digits-onnx",
                **overrides: Any) -> Path:
    """A copy of experiments/digits_onnx.yaml pointing at ``onnx_path``, made short."""
    config = yaml.safe_load((EXPERIMENTS / "digits_onnx.yaml").read_text())
    config.update(study=study, model={"onnx": str(onnx_path)},
                  data={"loader": f"{EXPERIMENTS / 'digits_model.py'}:load_data"})
    config["quantization"]["calibration_samples"] = 32
    config["measurement"] = {"warmup_runs": 5, "warmup_seconds": 0.0, "min_runs": 20,
                             "max_runs": 60, "round_runs": 20, "min_seconds": 0.0,
                             "timeout_s": 120, "contention_retries": 0}
    config["confirm"] = {"rounds": 1, "runs_per_round": 10}
    config["tracking"] = {"plots": False}
    config["search"]["trials"] = 5
    config.update(overrides)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{study}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_example_config_validates() -> None:
    config = load_config(EXPERIMENTS / "digits_onnx.yaml")
    assert config.model.onnx == "digits.onnx" and config.model.factory is None
    assert not config.searches_pruning and not config.searches_exits


@pytest.mark.slow  # trains the digits CNN once (digits_onnx)
def test_prepare_picks_the_graph_builder_and_a_quantization_only_space(
        tmp_path, digits_onnx) -> None:
    from spaces.onnx_graph.builder import OnnxBuilder

    prepared = prepare(load_config(onnx_config(tmp_path, digits_onnx)), tmp_path / "cache")
    assert isinstance(prepared.builder, OnnxBuilder)
    assert prepared.builder.groups == ("first", "body0", "body1", "body2", "last")
    space = prepared.space
    assert not space.pruning.enabled and not space.exits.possible
    assert space.baseline_params() == {f"quant_{g}": "fp32" for g in prepared.builder.groups}
    assert space.quantization.choices_for("first") == ("fp32", "int8")


@pytest.mark.slow  # trains the digits CNN once (digits_onnx)
def test_node_prefix_groups_and_their_errors_come_from_the_config(tmp_path, digits_onnx) -> None:
    groups = {"stem": ["/stages.0/"], "body": ["/stages.1/", "/stages.2/"], "head": ["/head/"]}
    quantization = {"precisions": ["fp32", "int8"], "groups": groups}
    config = load_config(onnx_config(tmp_path, digits_onnx, quantization=quantization))
    assert prepare(config, tmp_path / "cache").builder.groups == ("stem", "body", "head")
    groups["body"] = ["/stages.1/", "/stage9/"]
    config = load_config(onnx_config(tmp_path, digits_onnx, quantization=quantization))
    with pytest.raises(ConfigError, match=re.escape("quantization.groups.body: no node name of "
                                                    "the graph starts with '/stage9/'")):
        prepare(config, tmp_path / "cache")


def test_a_graph_that_does_not_fit_the_data_is_refused_at_preparation(tmp_path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ModelError, match=re.escape(f"model.onnx: {broken}: ")):
        prepare(load_config(onnx_config(tmp_path, broken)), tmp_path / "cache")


def fake_device(request: MeasureRequest) -> Measurement:
    """Latency falls with every int8 group; accuracy is the fp32 model's."""
    candidate = json.loads(request.bundle.files["manifest.json"])["provenance"]["candidate"]
    p95 = 1.0 - 0.1 * sum(q == "int8" for q in candidate["quantization"])
    latency = LatencyStats(mean_ms=p95, std_ms=0.01, p50_ms=p95, p90_ms=p95, p95_ms=p95,
                           p99_ms=p95, n=100, median_ci_low_ms=p95, median_ci_high_ms=p95,
                           converged=True)
    return Measurement(bundle_digest=request.bundle_digest, accuracy=0.95, n_eval=100,
                       ece=0.02, exit_rates=(1.0,), latency=latency, size_kb=10.0,
                       peak_mem_mb=10.0, agent_id="fake-0")


@pytest.mark.slow  # trains the digits CNN once (digits_onnx)
def test_a_study_searches_precisions_only(tmp_path, digits_onnx) -> None:
    config = load_config(onnx_config(tmp_path, digits_onnx))
    agent = FakeAgent(fake_device)
    runner = StudyRunner(config, Workspace(tmp_path / "runs", config.study),
                         dispatcher_factory=lambda c, w: InlineDispatcher(agent),
                         tracker=NullTracker())
    summary = runner.run(RunOptions(trials=5, confirm=False))
    records = summary.records
    assert records[0].baseline and records[0].candidate["quantization"] == ["fp32"] * 5
    assert all(r.complete for r in records)
    assert all(r.candidate["prune_ratio"] == 0.0 and r.candidate["exit_thresholds"] == []
               for r in records)
    assert all(set(r.params) <= {f"quant_{g}" for g in ("first", "body0", "body1", "body2",
                                                        "last")} for r in records)
    assert any(r.metrics["int8_groups"] > 0 for r in records)
    assert summary.front.members


def _run_without_torch(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in (str(site), str(ROOT), os.environ.get("PYTHONPATH"))
                           if p)
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True,
                          cwd=site.parent, timeout=540, check=False,
                          env={**os.environ, "PYTHONPATH": path})


def _no_torch_report(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [line for line in done.stdout.splitlines() if line.startswith("NO_TORCH_REPORT ")]
    assert lines, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(lines[-1].removeprefix("NO_TORCH_REPORT "))
    return report


def test_a_file_onnxruntime_cannot_load_exits_2_with_one_line(tmp_path, no_torch_site) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    config = onnx_config(tmp_path, broken)
    done = _run_without_torch(no_torch_site, "run", str(config), "--workdir",
                              str(tmp_path / "runs"))
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and f"model.onnx: {broken}: " in errors[0]
    assert _no_torch_report(done) == {"blocked": True, "torch_modules": []}


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.e2e
def test_a_quantization_study_of_an_onnx_file_runs_without_torch(tmp_path, digits_onnx,
                                                                no_torch_site) -> None:
    config = onnx_config(tmp_path, digits_onnx)
    runs = tmp_path / "runs"
    done = _run_without_torch(no_torch_site, "run", str(config), "--workdir", str(runs))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _no_torch_report(done) == {"blocked": True, "torch_modules": []}
    assert "Feasible Pareto front of digits-onnx" in done.stdout

    from search.workspace import load_records

    records = load_records(Workspace(runs, "digits-onnx"))[0]
    assert len(records) == 5 and all(r.complete for r in records)
    baseline = records[0]
    assert baseline.baseline and baseline.candidate["quantization"] == ["fp32"] * 5
    # trial 0 is the user's graph: its accuracy is the file's own on the selection split
    data = load_reference("digits_model.py:load_data", EXPERIMENTS)(0)
    selection = data.selection_set()
    session = ort.InferenceSession(str(digits_onnx), providers=["CPUExecutionProvider"])
    scores = session.run(None, {"pixels": data.preprocess(selection.inputs)})[0]
    own = float((scores.argmax(1) == selection.labels).mean())
    assert abs(baseline.metrics["accuracy"] - own) <= 1 / len(selection.labels) + 1e-9
    assert own > 0.8
    runner = CascadeRunner.load(runs / baseline.bundle)
    assert baseline.metrics["accuracy"] == pytest.approx(
        runner.evaluate(selection.inputs, selection.labels).accuracy)
    int8 = [r for r in records if r.metrics["int8_groups"] > 0]
    assert int8 and all(r.metrics["integer_ops"] > 0 for r in int8)
    assert all(r.metrics["prune_ratio"] == 0.0 and r.metrics["early_exit"] == 0.0
               for r in records)
    assert "test_accuracy" in baseline.metrics  # the confirmation ran

    shown = _run_without_torch(no_torch_site, "front", "digits-onnx", "--workdir", str(runs),
                               "--format", "json")
    assert shown.returncode == 0, shown.stderr
    assert _no_torch_report(shown)["torch_modules"] == []
    best = _run_without_torch(no_torch_site, "best", "digits-onnx", "--workdir", str(runs),
                              "--maximize", "accuracy", "--format", "json")
    assert best.returncode == 0, best.stderr
    assert np.isfinite(baseline.metrics["latency_p95_ms"])


@pytest.mark.slow  # trains the digits CNN once (digits_onnx); a real agent measures
def test_runtime_knobs_are_searched_built_and_measured_as_written(tmp_path, digits_onnx) -> None:
    """docs/RUNTIME.md end to end, without Ray: the knobs are params, the builder writes them
    (a fixed input for static_shape: true), the agent measures each bundle as its manifest
    says, and the metrics carry them."""
    import onnx

    from device_agents import LocalDeviceAgent, read_manifest

    runtime = {"graph_optimization": ["all", "basic"], "static_shape": [False, True]}
    config = load_config(onnx_config(tmp_path, digits_onnx, runtime=runtime))
    agent = LocalDeviceAgent(device_class="local", cache_dir=tmp_path / "agent")
    runner = StudyRunner(config, Workspace(tmp_path / "runs", config.study),
                         dispatcher_factory=lambda c, w: InlineDispatcher(agent),
                         tracker=NullTracker())
    try:
        records = runner.run(RunOptions(trials=6, confirm=False)).records
    finally:
        agent.close()
    assert all(r.complete for r in records)
    baseline = records[0]
    assert baseline.params["runtime_graph_optimization"] == "all"
    assert baseline.candidate["static_shape"] is False  # each list's first value
    assert {r.candidate.get("graph_optimization", "all") for r in records} == {"all", "basic"}
    assert {r.candidate["static_shape"] for r in records} == {False, True}
    for r in records:
        directory = r.bundle_path(tmp_path / "runs")
        manifest = read_manifest(directory)
        level = r.candidate.get("graph_optimization", "all")
        assert manifest.runtime_options.graph_optimization == level
        assert r.metrics["graph_optimization_level"] == (4.0 if level == "all" else 1.0)
        dims = onnx.load(str(directory / "model.onnx")).graph.input[0].type.tensor_type
        fixed = all(d.HasField("dim_value") for d in dims.shape.dim)
        assert fixed == r.candidate["static_shape"] and r.metrics["static_shape"] == fixed
        assert CascadeRunner.load(directory).num_stages == 1
    # an ONNX file whose input is already static has no dynamic axis to keep
    static = tmp_path / "static.onnx"
    model = onnx.load(str(digits_onnx))
    from onnxruntime.tools.onnx_model_utils import make_input_shape_fixed

    make_input_shape_fixed(model.graph, model.graph.input[0].name, [1, 1, 8, 8])
    onnx.save(model, str(static))
    static_config = load_config(onnx_config(tmp_path, static, study="static", runtime=runtime))
    with pytest.raises(ConfigError, match=r"^runtime\.static_shape: .*static\.onnx's input is "
                                          r"static"):
        prepare(static_config, tmp_path / "cache")
    from search.study.checks import source_problems  # what paretoedge validate reports

    assert [p.split(":")[0] for p in source_problems(static_config)] == ["runtime.static_shape"]
    assert source_problems(load_config(onnx_config(tmp_path, digits_onnx, runtime=runtime))) == []
