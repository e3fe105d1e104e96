"""Static int8 (QDQ) quantization and the check of what ORT really runs as integer kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from device_agents.profiles import int8_activation_type, int8_target_of
from spaces import BuildError, QuantSettings
from spaces.onnx_graph.quantize import (
    RUNTIME_DISABLED_OPTIMIZERS,
    FusionReport,
    fusion_report,
    inline_constant_identities,
    node_names,
    optimized_graph,
    quantize_int8,
)
from spaces.torch_model.export import INPUT_NAME, export_model


@pytest.fixture(scope="module")
def float_graph(trained, example, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("float-graph")
    return export_model(trained.fresh(), example, directory, cascade=False)[0]


@pytest.fixture(scope="module")
def calibration(digits) -> np.ndarray:
    return digits.preprocess(digits.train_x[:32])


def _weights_quantized(path: Path) -> dict[str, bool]:
    """For each Conv/Gemm of a QDQ graph: whether its weight comes through DequantizeLinear."""
    graph = onnx.load(str(path)).graph
    producers = {out: node.op_type for node in graph.node for out in node.output}
    return {n.name: producers.get(n.input[1]) == "DequantizeLinear"
            for n in graph.node if n.op_type in ("Conv", "Gemm")}


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {INPUT_NAME: x[i:i + 1]})[0]
                           for i in range(len(x))])


def test_fusion_report_ratio() -> None:
    assert FusionReport(integer_ops=3, float_after_dequantize=1).fused_ratio == 0.75
    assert FusionReport(integer_ops=0, float_after_dequantize=0).fused_ratio == 0.0


def test_float_graph_has_no_integer_kernels(float_graph: Path) -> None:
    report = fusion_report(float_graph)
    assert report == FusionReport(integer_ops=0, float_after_dequantize=0)


def test_u8s8_per_channel_fuses_every_op(float_graph: Path, calibration: np.ndarray,
                                         tmp_path: Path, digits) -> None:
    target = tmp_path / "int8.onnx"
    quantize_int8(float_graph, target, calibration, settings=QuantSettings())
    assert all(_weights_quantized(target).values())
    report = fusion_report(target)
    assert report.integer_ops > 0
    assert report.fused_ratio == 1.0

    # int8 stays close to fp32 on the same inputs
    x = digits.preprocess(digits.test_x[:64])
    agree = (_run(target, x).argmax(1) == _run(float_graph, x).argmax(1)).mean()
    assert agree >= 0.9


def _excluding(float_graph: Path, calibration: np.ndarray, target: Path,
               prefixes: tuple[str, ...]) -> list[str]:
    excluded = [n for n in node_names(float_graph) if n.startswith(prefixes)]
    assert excluded
    quantize_int8(float_graph, target, calibration, settings=QuantSettings(),
                  nodes_to_exclude=excluded)
    return excluded


def test_nodes_to_exclude_stay_float(float_graph: Path, calibration: np.ndarray,
                                     tmp_path: Path) -> None:
    """The first layer group left fp32 (docs/STACK.md: first/last layer fp32 is what makes
    int8 win on small models): its nodes keep float weights and ORT runs them as float ops."""
    full = tmp_path / "full.onnx"
    quantize_int8(float_graph, full, calibration, settings=QuantSettings())
    target = tmp_path / "mixed.onnx"
    _excluding(float_graph, calibration, target, ("/stages.0/",))
    for name, quantized in _weights_quantized(target).items():
        assert quantized == (not name.startswith("/stages.0/")), name
    report = fusion_report(target)
    assert 0 < report.integer_ops < fusion_report(full).integer_ops
    assert report.float_after_dequantize == 0  # left fp32 on purpose: not an unfused op


def test_excluded_classifier_is_not_reported_as_unfused(float_graph: Path,
                                                        calibration: np.ndarray,
                                                        tmp_path: Path) -> None:
    """The last Gemm left fp32 reads a dequantized activation but has float weights: it is a
    float op by choice, so the fusion report must not count it as an unfused int8 op."""
    target = tmp_path / "float_gemm.onnx"
    _excluding(float_graph, calibration, target, ("/head/head.2/",))
    assert _weights_quantized(target)["/head/head.2/Gemm"] is False
    report = fusion_report(target)
    assert report.integer_ops > 0
    assert report.float_after_dequantize == 0
    assert report.fused_ratio == 1.0


def _interior_fp32(float_graph: Path, calibration: np.ndarray, tmp_path: Path) -> tuple[Path,
                                                                                     Path]:
    full = tmp_path / "full.onnx"
    quantize_int8(float_graph, full, calibration, settings=QuantSettings())
    target = tmp_path / "mixed.onnx"
    _excluding(float_graph, calibration, target, ("/stages.1/",))
    # what quantize_int8 wrote is right: the excluded conv keeps float weights
    assert _weights_quantized(target)["/stages.1/stages.1.0/Conv"] is False
    return full, target


def _ops_of(graph, prefix: str) -> list[str]:
    return [n.op_type for n in graph.node if n.name.startswith(prefix)]


def test_interior_group_left_fp32_runs_as_float(float_graph: Path, calibration: np.ndarray,
                                                tmp_path: Path, digits) -> None:
    """An fp32 group between two int8 groups of one graph: with the optimizers the bundle's
    runtime disables, ORT runs its conv as a float Conv and the int8 groups as integer kernels;
    the cascade runtime computes exactly what such a session computes."""
    full, target = _interior_fp32(float_graph, calibration, tmp_path)
    graph = optimized_graph(target, RUNTIME_DISABLED_OPTIMIZERS)
    assert "Conv" in _ops_of(graph, "/stages.1/")
    assert "QLinearConv" not in _ops_of(graph, "/stages.1/")
    assert "QLinearConv" in _ops_of(graph, "/stages.0/") + _ops_of(graph, "/stages.2/")
    mixed = fusion_report(target, RUNTIME_DISABLED_OPTIMIZERS)
    assert 0 < mixed.integer_ops < fusion_report(full).integer_ops
    assert mixed.float_after_dequantize == 0

    x = digits.preprocess(digits.test_x[:16])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    runtime = ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=list(RUNTIME_DISABLED_OPTIMIZERS))
    default = ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
    floats = [runtime.run(None, {INPUT_NAME: x[i:i + 1]})[0] for i in range(len(x))]
    requantized = [default.run(None, {INPUT_NAME: x[i:i + 1]})[0] for i in range(len(x))]
    assert any(not np.array_equal(a, b) for a, b in zip(floats, requantized, strict=True))


def test_onnxruntime_requantizes_an_interior_float_conv_by_default(
        float_graph: Path, calibration: np.ndarray, tmp_path: Path) -> None:
    """Why bundles record disabled optimizers: with ORT's defaults (1.32) the same float conv
    becomes an integer kernel. If this starts failing, ORT changed and the workaround in
    spaces.onnx_graph.quantize.RUNTIME_DISABLED_OPTIMIZERS may no longer be needed."""
    _, target = _interior_fp32(float_graph, calibration, tmp_path)
    assert "QLinearConv" in _ops_of(optimized_graph(target), "/stages.1/")


def test_s8s8_quantizes_the_same_ops(float_graph: Path, calibration: np.ndarray,
                                     tmp_path: Path) -> None:
    """docs/STACK.md says x86 leaves int8-activation QDQ as Dequantize -> float op. On the
    machine these tests were written on (AMD EPYC, AVX-512 VNNI, onnxruntime 1.32) it fused every
    op, so only what holds on both is asserted: the same ops are quantized, never better fused."""
    u8 = tmp_path / "u8s8.onnx"
    s8 = tmp_path / "s8s8.onnx"
    quantize_int8(float_graph, u8, calibration, settings=QuantSettings())
    quantize_int8(float_graph, s8, calibration, settings=QuantSettings(activation_type="int8"))
    u8_report, s8_report = fusion_report(u8), fusion_report(s8)
    s8_total = s8_report.integer_ops + s8_report.float_after_dequantize
    assert s8_total == u8_report.integer_ops + u8_report.float_after_dequantize
    assert s8_report.fused_ratio <= u8_report.fused_ratio
    graph = onnx.load(str(s8)).graph
    activation_zero_points = [i for i in graph.initializer
                              if i.name.startswith("input_zero_point")]
    assert activation_zero_points
    assert all(i.data_type == onnx.TensorProto.INT8 for i in activation_zero_points)


def test_per_tensor_still_quantizes(float_graph: Path, calibration: np.ndarray,
                                    tmp_path: Path) -> None:
    target = tmp_path / "per_tensor.onnx"
    quantize_int8(float_graph, target, calibration, settings=QuantSettings(per_channel=False))
    assert fusion_report(target).integer_ops > 0


def test_failure_is_a_build_error(calibration: np.ndarray, tmp_path: Path) -> None:
    bad = tmp_path / "not_a_model.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(BuildError, match=r"int8 quantization of not_a_model\.onnx failed"):
        quantize_int8(bad, tmp_path / "out.onnx", calibration, settings=QuantSettings())


def test_quant_settings_to_dict() -> None:
    assert QuantSettings().to_dict() == {"activation_type": "uint8", "weight_type": "int8",
                                         "per_channel": True, "method": "minmax",
                                         "calibration_samples": 256,
                                         "weight_only_block_size": 32,
                                         "weight_only_accuracy_level": 4,
                                         "weight_only_symmetric": True}


@pytest.mark.parametrize(("device_class", "machine", "target"), [
    ("local", "x86_64", "x86"), ("local", "aarch64", "arm"), ("rpi4", "x86_64", "arm"),
    ("jetson-nano", "x86_64", "arm"), ("x86-edge", "aarch64", "x86"),
])
def test_target_and_its_int8_defaults(device_class: str, machine: str, target: str) -> None:
    assert int8_target_of(device_class, machine) == target
    assert int8_activation_type(target) == ("int8" if target == "arm" else "uint8")


def test_constant_identities_are_inlined(float_graph: Path) -> None:
    """The exporter shares equal constants through Identity nodes; quantize_static cannot
    quantize a bias that is not an initializer, so they become initializers first."""
    model = onnx.load(str(float_graph))
    name = model.graph.initializer[0].name
    model.graph.node.insert(0, onnx.helper.make_node("Identity", [name], ["shared"],
                                                     name="Identity_x"))
    assert inline_constant_identities(model) == 1
    assert "Identity_x" not in [n.name for n in model.graph.node]
    assert "shared" in [i.name for i in model.graph.initializer]
