"""Static int8 quantization with onnxruntime (QDQ), and a check of what ORT really fused.

On x86 only uint8 activations with int8 weights (U8S8) run as fused integer kernels; int8
activations stay ``DequantizeLinear -> float op`` (see docs/STACK.md). U8S8 per-channel is the
default on x86, S8S8 per-channel on ARM (:func:`device_agents.profiles.int8_activation_type`).

A layer group left in float between two int8 groups of one graph reads a ``DequantizeLinear`` and
feeds a ``QuantizeLinear``; onnxruntime's ``WeightBiasQuantization`` optimizer then quantizes its
float weights itself and runs it as an integer kernel. Bundles that mix int8 with other
precisions therefore record :data:`RUNTIME_DISABLED_OPTIMIZERS` in their manifest, and the
cascade runtime (and :func:`fusion_report`) open their sessions without it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spaces.errors import BuildError
from spaces.settings import QuantSettings

INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul",
               "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat",
               "QLinearSigmoid", "QLinearLeakyRelu", "MatMulInteger", "ConvInteger",
               "MatMulNBits", "MatMulIntegerToFloat", "DynamicQuantizeMatMul")
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm",
               "FusedMatMul")
#: What a session must not run on a graph that leaves some layers in float between int8 ones.
RUNTIME_DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)


@dataclass(frozen=True)
class FusionReport:
    """Quantized compute ops ORT runs as integer kernels vs. left as Dequantize + float op."""

    integer_ops: int
    float_after_dequantize: int

    @property
    def fused_ratio(self) -> float:
        total = self.integer_ops + self.float_after_dequantize
        return self.integer_ops / total if total else 0.0


class _PreprocessAdviceFilter(logging.Filter):
    """onnxruntime logs "Please consider pre-processing" on the root logger at every call;
    paretoedge's graphs come straight from the exporter with constant folding, so it is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "consider to run pre-processing" not in record.getMessage() and \
            "consider pre-processing" not in record.getMessage()


logging.getLogger().addFilter(_PreprocessAdviceFilter())


def _quant_type(name: str):
    from onnxruntime.quantization import QuantType

    return {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[name]


def _calibration_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


def quantize_int8(source: Path, target: Path, calibration: np.ndarray, *,
                  settings: QuantSettings, input_name: str = "input",
                  nodes_to_exclude: Sequence[str] = (),
                  tensor_ranges: Mapping[str, tuple[float, float]] | None = None) -> None:
    """Static QDQ quantization of ``source`` calibrated on ``calibration`` (one row a sample).

    ``tensor_ranges`` replaces the calibrated range of those tensors (by name) with the given
    ``(min, max)``, e.g. the ranges a quantization-aware finetune learned (onnxruntime's
    ``TensorQuantOverrides``); every other tensor keeps its calibrated range."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._rows = iter(range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            i = next(self._rows, None)
            return None if i is None else {input_name: calibration[i:i + 1]}

    overrides = {name: [{"rmin": np.float32(low), "rmax": np.float32(high)}]
                 for name, (low, high) in (tensor_ranges or {}).items()}
    try:
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=_quant_type(settings.activation_type),
                        weight_type=_quant_type(settings.weight_type),
                        per_channel=settings.per_channel,
                        calibrate_method=_calibration_method(settings.method),
                        nodes_to_exclude=list(nodes_to_exclude) or None,
                        extra_options={"TensorQuantOverrides": overrides} if overrides
                        else None)
    except Exception as exc:  # onnxruntime raises bare Exceptions on unsupported graphs
        raise BuildError(f"int8 quantization of {source.name} failed: "
                         f"{type(exc).__name__}: {exc}") from exc


def node_names(path: Path) -> list[str]:
    import onnx

    return [node.name for node in onnx.load(str(path), load_external_data=False).graph.node]


def inline_constant_identities(model) -> int:
    """Replace ``Identity(initializer)`` nodes by initializers of their own (in place).

    The TorchScript exporter shares equal constants through Identity nodes (e.g. two folded
    BatchNorm biases that are equal); ``quantize_static`` then cannot quantize such a bias
    ("Expected bias to be an initializer") and ORT leaves the conv unfused. Returns the count.
    """
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    keep, inlined = [], 0
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in initializers:
            array = numpy_helper.to_array(initializers[node.input[0]])
            model.graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
            inlined += 1
        else:
            keep.append(node)
    if inlined:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return inlined


def optimized_graph(path: Path, disabled_optimizers: Sequence[str] = ()):
    """The graph ORT's CPU provider will run (saved with ``optimized_model_filepath``)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized)
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                             disabled_optimizers=list(disabled_optimizers))
        return onnx.load(str(optimized)).graph


def fusion_report(path: Path, disabled_optimizers: Sequence[str] = ()) -> FusionReport:
    """Count integer kernels in the graph ORT will run, with the session options of the bundle
    (``disabled_optimizers`` as recorded in its manifest)."""
    graph = optimized_graph(path, disabled_optimizers)
    producers = {out: node.op_type for node in graph.node for out in node.output}
    integer = sum(1 for n in graph.node if n.op_type in INTEGER_OPS)
    # Quantized but not fused: the weight (input 1) is dequantized in front of a float op. A float
    # op that only reads a dequantized activation is a group left in fp32 on purpose.
    unfused = sum(1 for n in graph.node if n.op_type in COMPUTE_OPS and len(n.input) > 1
                  and producers.get(n.input[1]) == "DequantizeLinear")
    return FusionReport(integer_ops=integer, float_after_dequantize=unfused)
