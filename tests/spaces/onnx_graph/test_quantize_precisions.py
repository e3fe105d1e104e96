"""Each precision choice puts the expected operator types into the bundle, and the runtime
executes the groups the way the candidate says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from device_agents import CascadeRunner, verify_bundle
from spaces import BuildError, Candidate, DataSplits, TorchBuilder
from spaces.onnx_graph.quantize import RUNTIME_DISABLED_OPTIMIZERS, optimized_graph
from spaces.torch_model.module_groups import auto_groups

from ..conftest import BUILD_SETTINGS

N = 64


@pytest.fixture(scope="module")
def grouped(trained, digits: DataSplits, build_cache: Path, example) -> TorchBuilder:
    """The tiny model with automatic groups: first, stage1, stage2, last."""
    return TorchBuilder(trained=trained, data=digits, cache_dir=build_cache,
                            settings=BUILD_SETTINGS, groups=auto_groups(trained.fresh(), example))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return tmp_path_factory.mktemp("precision-bundles")


def _build(builder: TorchBuilder, root: Path, *precisions: str,
           exits: tuple[float, ...] = ()):
    candidate = Candidate(quantization=precisions, exit_thresholds=exits)
    return builder.build(candidate, root / ("-".join(precisions) + f"-{len(exits)}"))


def _graph(built, name: str = "model.onnx"):
    return onnx.load(str(built.directory / name)).graph


def _ops(graph, scope: str | None = None) -> list[str]:
    return [n.op_type for n in graph.node if scope is None or n.name.startswith(scope)]


def _logits(built, data: DataSplits, n: int = N) -> np.ndarray:
    runner = CascadeRunner.load(built.directory)
    return np.stack([runner.run(data.test_x[i])[0] for i in range(n)])


@pytest.fixture(scope="module")
def fp32(grouped, bundles):
    return _build(grouped, bundles, "fp32", "fp32", "fp32", "fp32")


def test_groups_and_their_choices(grouped: TorchBuilder) -> None:
    assert grouped.groups == ("first", "stage1", "stage2", "last")
    assert grouped.operators() == {"first": ("Conv", "Gemm"), "stage1": ("Conv", "Gemm"),
                                   "stage2": ("Conv",), "last": ("Gemm",)}


def test_fp32_is_the_float_graph(fp32) -> None:
    graph = _graph(fp32)
    assert not {"QuantizeLinear", "DequantizeLinear", "MatMulNBits", "Cast"} & set(_ops(graph))
    assert _ops(graph).count("Conv") == 3 and _ops(graph).count("Gemm") == 1
    assert verify_bundle(fp32.directory).disabled_optimizers == ()
    assert fp32.info["integer_ops"] == 0


def test_int8_everywhere_fuses_every_op(grouped, bundles, fp32, digits) -> None:
    built = _build(grouped, bundles, "int8", "int8", "int8", "int8")
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(_ops(_graph(built)))
    optimized = optimized_graph(built.directory / "model.onnx")
    assert _ops(optimized).count("QLinearConv") == 3
    assert "QGemm" in _ops(optimized)
    assert built.info["fused_int_ops_ratio"] == 1.0
    assert verify_bundle(built.directory).disabled_optimizers == ()  # nothing left in float
    agree = (_logits(built, digits).argmax(1) == _logits(fp32, digits).argmax(1)).mean()
    assert agree >= 0.9


@pytest.mark.parametrize(("precision", "bits"), [("int4_wo", 4), ("int8_wo", 8)])
def test_weight_only_is_matmulnbits(grouped, bundles, fp32, digits, precision: str,
                                    bits: int) -> None:
    built = _build(grouped, bundles, "fp32", "fp32", "fp32", precision)
    graph = _graph(built)
    head = [n for n in graph.node if n.name.startswith("/head/")]
    assert [n.op_type for n in head] == ["GlobalAveragePool", "Flatten", "MatMulNBits", "Add"]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in head[2].attribute}
    assert attributes["bits"] == bits and attributes["K"] == 16 and attributes["N"] == 10
    assert _ops(graph).count("Conv") == 3  # the conv groups stay float
    assert "head.2.weight" not in [i.name for i in graph.initializer]  # no dead float copy
    assert "MatMulNBits" in _ops(optimized_graph(built.directory / "model.onnx"))
    assert built.info["integer_ops"] == 1
    np.testing.assert_allclose(_logits(built, digits), _logits(fp32, digits),
                               atol=0.5 if bits == 4 else 0.05)


def test_fp16_stores_half_weights_and_computes_in_float(grouped, bundles, fp32, digits) -> None:
    built = _build(grouped, bundles, "fp32", "fp16", "fp16", "fp32")
    graph = _graph(built)
    half = [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert len(half) == 4  # weight and bias of the stage1 and stage2 convs
    assert _ops(graph).count("Cast") == 4
    float_weights = [i for i in _graph(fp32).initializer if i.name.startswith("onnx::Conv")]
    assert len(float_weights) == 6
    assert (built.directory / "model.onnx").stat().st_size < \
        (fp32.directory / "model.onnx").stat().st_size
    np.testing.assert_allclose(_logits(built, digits), _logits(fp32, digits), atol=2e-2)
    assert built.info["integer_ops"] == 0


def test_interior_fp32_group_runs_as_float_in_the_bundle(grouped, bundles, digits) -> None:
    """int8 / fp32 / int8 / int8 in one graph: the bundle tells its runtime to disable the
    optimizer that would quantize stage1's float conv, and the runtime does."""
    built = _build(grouped, bundles, "int8", "fp32", "int8", "int8")
    manifest = verify_bundle(built.directory)
    assert manifest.disabled_optimizers == RUNTIME_DISABLED_OPTIMIZERS
    optimized = optimized_graph(built.directory / "model.onnx", manifest.disabled_optimizers)
    assert "Conv" in _ops(optimized, "/stages.1/")
    assert "QLinearConv" not in _ops(optimized, "/stages.1/")
    assert _ops(optimized).count("QLinearConv") == 2
    assert built.info["fused_int_ops_ratio"] == 1.0

    runner = CascadeRunner.load(built.directory)
    session = ort.InferenceSession(str(built.directory / "model.onnx"),
                                   providers=["CPUExecutionProvider"],
                                   disabled_optimizers=list(RUNTIME_DISABLED_OPTIMIZERS))
    for i in range(8):
        x = runner.preprocess(digits.test_x[i])
        np.testing.assert_array_equal(runner.run(digits.test_x[i])[0],
                                      session.run(None, {"input": x})[0][0])


def test_int8_and_weight_only_in_one_graph(grouped, bundles) -> None:
    built = _build(grouped, bundles, "int8", "int8", "int8", "int4_wo")
    optimized = optimized_graph(built.directory / "model.onnx",
                                verify_bundle(built.directory).disabled_optimizers)
    assert _ops(optimized).count("QLinearConv") == 3
    assert "MatMulNBits" in _ops(optimized)
    assert "QGemm" not in _ops(optimized)
    assert built.info["fused_int_ops_ratio"] == 1.0


def test_cascade_quantizes_groups_inside_each_stage(grouped, bundles) -> None:
    """With exits, ``first`` (stage 0's conv and exit head) is int8 in stage0.onnx, and the
    final head (``last``) is int4 in stage2.onnx, while stage2's conv stays float."""
    built = _build(grouped, bundles, "int8", "fp32", "fp32", "int4_wo", exits=(0.9, 0.9))
    manifest = verify_bundle(built.directory)
    assert [s.file for s in manifest.stages] == ["stage0.onnx", "stage1.onnx", "stage2.onnx"]
    stage0 = optimized_graph(built.directory / "stage0.onnx", manifest.disabled_optimizers)
    assert {"QLinearConv", "QGemm"} <= set(_ops(stage0))
    stage1 = _graph(built, "stage1.onnx")
    assert not {"QuantizeLinear", "MatMulNBits"} & set(_ops(stage1))
    stage2 = _graph(built, "stage2.onnx")
    assert "MatMulNBits" in _ops(stage2) and "Conv" in _ops(stage2)
    assert "QuantizeLinear" not in _ops(stage2)


def test_a_precision_the_group_cannot_run_is_a_build_error(grouped, bundles) -> None:
    with pytest.raises(BuildError, match=r"layer group 'stage2' \(operators: Conv x1\) cannot "
                                         r"run int4_wo"):
        _build(grouped, bundles, "fp32", "fp32", "int4_wo", "fp32")
