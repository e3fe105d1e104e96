"""The graph-only builder: the fp32 bundle is the user's graph, candidates vary precisions only."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from device_agents import CascadeRunner, verify_bundle
from spaces import BuildError, BuildSettings, Candidate, QuantSettings
from spaces.onnx_graph.preparation import OnnxModelSpec, prepare_onnx_builder


@pytest.fixture
def builder(tmp_path, graphs, save_graph):
    path = save_graph(graphs.residual_cnn(), "residual.onnx")
    return prepare_onnx_builder(OnnxModelSpec(path), graphs.random_digits(),
                                BuildSettings(quant=QuantSettings(calibration_samples=8)),
                                tmp_path / "cache")


def _ops(directory) -> list[str]:
    return [n.op_type for n in onnx.load(str(directory / "model.onnx")).graph.node]


def test_the_fp32_bundle_is_the_graph_with_the_loaders_preprocessing(builder, tmp_path) -> None:
    built = builder.build(Candidate(quantization=("fp32",) * 4), tmp_path / "fp32")
    manifest = verify_bundle(built.directory, built.digest)
    assert manifest.input.name == "x" and manifest.input.shape == (1, 1, 8, 8)
    assert manifest.preprocessing == builder.data.preprocessing
    assert [s.file for s in manifest.stages] == ["model.onnx"]
    assert manifest.exits.thresholds == () and manifest.disabled_optimizers == ()
    assert (built.directory / "model.onnx").read_bytes() == builder.graph.read_bytes()
    provenance = manifest.provenance
    assert provenance["source"]["onnx"].endswith("residual.onnx")
    assert provenance["groups"] == ["first", "body0", "body1", "last"]
    assert built.info["integer_ops"] == 0 and built.info["params_k"] > 0
    assert built.info["macs_m"] > 0
    runner = CascadeRunner.load(built.directory)
    assert runner.predict(builder.data.test_x[0]).probabilities.shape == (10,)


def test_int8_groups_are_quantized_and_the_others_left_in_float(builder, tmp_path) -> None:
    everything = builder.build(Candidate(quantization=("int8",) * 4), tmp_path / "int8")
    assert "QuantizeLinear" in _ops(everything.directory)
    assert everything.info["integer_ops"] > 0 and everything.info["fused_int_ops_ratio"] == 1.0
    mixed = builder.build(Candidate(quantization=("fp32", "int8", "fp32", "fp32")),
                          tmp_path / "mixed")
    graph = onnx.load(str(mixed.directory / "model.onnx")).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    quantized = {n.name for n in graph.node if n.op_type == "Conv"
                 and producers.get(n.input[1]) == "DequantizeLinear"}
    assert quantized == {"block0.conv_a", "block0.conv_b"}
    manifest = json.loads((mixed.directory / "manifest.json").read_text())
    assert manifest["runtime"]["disabled_optimizers"] == ["WeightBiasQuantization"]
    data = builder.data
    x = data.test_x[:8]
    fp32 = CascadeRunner.load(builder.build(Candidate(quantization=("fp32",) * 4),
                                            tmp_path / "fp32").directory)
    int8 = CascadeRunner.load(mixed.directory)
    close = [np.allclose(fp32.run(s)[0], int8.run(s)[0], atol=0.5) for s in x]
    assert sum(close) >= 6  # quantized, not broken


def test_weight_only_precisions_run_on_the_matmul_group(builder, tmp_path) -> None:
    assert builder.operators()["last"] == ("Gemm",)
    built = builder.build(Candidate(quantization=("fp32", "fp32", "fp32", "int8_wo")),
                          tmp_path / "wo")
    assert "MatMulNBits" in _ops(built.directory)


def test_candidates_with_pruning_or_exits_or_the_wrong_groups_are_refused(builder,
                                                                          tmp_path) -> None:
    with pytest.raises(BuildError, match="quantization only"):
        builder.build(Candidate(quantization=("fp32",) * 4, prune_ratio=0.25), tmp_path / "p")
    with pytest.raises(BuildError, match="quantization only"):
        builder.build(Candidate(quantization=("fp32",) * 4, exit_thresholds=(0.9,)),
                      tmp_path / "e")
    with pytest.raises(BuildError, match="no quantization-aware finetune"):
        builder.build(Candidate(quantization=("int8",) * 4, qat=True), tmp_path / "q")
    with pytest.raises(BuildError, match="2 precisions for 4 layer groups"):
        builder.build(Candidate(quantization=("fp32", "int8")), tmp_path / "g")
    with pytest.raises(BuildError, match="cannot run int4_wo"):
        builder.build(Candidate(quantization=("int4_wo", "fp32", "fp32", "fp32")),
                      tmp_path / "w")


def test_static_shape_fixes_a_free_batch_axis_and_false_keeps_it(builder, tmp_path) -> None:
    """The runtime knob static_shape (docs/RUNTIME.md) on a graph whose batch is free; the
    runtime knobs of the candidate land in the manifest's runtime section."""
    assert builder.dynamic_input
    fixed = builder.build(Candidate(quantization=("fp32",) * 4, static_shape=True,
                                    graph_optimization="basic"), tmp_path / "static")
    kept = builder.build(Candidate(quantization=("fp32",) * 4, static_shape=False),
                         tmp_path / "dynamic")
    dims = [d.dim_value for d in onnx.load(str(fixed.directory / "model.onnx"))
            .graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, 8, 8]
    assert (kept.directory / "model.onnx").read_bytes() == builder.graph.read_bytes()
    manifest = verify_bundle(fixed.directory, fixed.digest)
    assert manifest.runtime_options.graph_optimization == "basic"
    assert manifest.provenance["candidate"]["static_shape"] is True
    x = builder.data.test_x[:4]
    a, b = CascadeRunner.load(fixed.directory), CascadeRunner.load(kept.directory)
    for sample in x:
        np.testing.assert_allclose(a.run(sample)[0], b.run(sample)[0], rtol=1e-5, atol=1e-6)


def test_static_shape_false_on_a_static_graph_is_refused(tmp_path, graphs, save_graph) -> None:
    path = save_graph(graphs.plain_cnn(input_shape=(1, 1, 8, 8)), "static.onnx")
    builder = prepare_onnx_builder(OnnxModelSpec(path), graphs.random_digits(),
                                   BuildSettings(quant=QuantSettings(calibration_samples=8)),
                                   tmp_path / "cache")
    assert not builder.dynamic_input
    with pytest.raises(BuildError, match=r"static\.onnx's input is static"):
        builder.build(Candidate(quantization=("fp32",) * len(builder.groups),
                                static_shape=False), tmp_path / "dynamic")
