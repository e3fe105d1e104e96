"""From an ONNX file to a builder: what is checked against the data, each a one-line error
naming the file, and the copy the bundles are made of."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from spaces import BuildSettings, ModelError, QuantSettings
from spaces.onnx_graph.preparation import OnnxModelSpec, prepare_onnx_builder

SETTINGS = BuildSettings(quant=QuantSettings(calibration_samples=8))


def _prepare(path: Path, data, tmp_path: Path, groups="auto"):
    return prepare_onnx_builder(OnnxModelSpec(path, groups), data, SETTINGS, tmp_path / "cache")


def _error(path: Path, data, tmp_path: Path) -> str:
    with pytest.raises(ModelError) as raised:
        _prepare(path, data, tmp_path)
    message = str(raised.value)
    assert "\n" not in message and str(path) in message
    return message


def test_a_file_onnxruntime_cannot_load_is_refused(tmp_path, graphs) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"this is not a protobuf")
    assert "onnxruntime can" in _error(path, graphs.random_digits(), tmp_path)
    assert "file not found" in _error(tmp_path / "missing.onnx", graphs.random_digits(),
                                      tmp_path)


def test_an_input_shaped_unlike_the_samples_is_refused(tmp_path, graphs, save_graph) -> None:
    path = save_graph(graphs.plain_cnn(input_shape=("batch", 1, 28, 28)))
    message = _error(path, graphs.random_digits(), tmp_path)
    assert "input 'x' expects float [?, 1, 28, 28]" in message
    assert "the data loader's samples are float [1, 1, 8, 8]" in message


def test_an_input_of_another_dtype_is_refused(tmp_path, graphs, save_graph) -> None:
    model = graphs.plain_cnn()
    cast = onnx.helper.make_node("Cast", ["ids"], ["x"], name="cast", to=TensorProto.FLOAT)
    model.graph.node.insert(0, cast)
    model.graph.input[0].CopyFrom(onnx.helper.make_tensor_value_info(
        "ids", TensorProto.INT64, ["batch", 1, 8, 8]))
    message = _error(save_graph(model), graphs.random_digits(), tmp_path)
    assert "input 'ids' expects int64 [?, 1, 8, 8]" in message


def test_an_output_with_other_classes_is_refused(tmp_path, graphs, save_graph) -> None:
    data = graphs.random_digits()
    few = type(data)(data.train_x, data.train_y % 5, data.val_x, data.val_y % 5, data.test_x,
                     data.test_y % 5, num_classes=5)
    message = _error(save_graph(graphs.plain_cnn()), few, tmp_path)
    assert "output 'fc_out' is [1, 10] for one sample, expected [1, 5]" in message


def test_the_bundle_copy_names_nodes_and_the_output(tmp_path, graphs, save_graph) -> None:
    model = graphs.plain_cnn(convs=3)
    model.graph.node[1].name = ""  # conv0's Relu (onnxruntime refuses duplicates itself)
    path = save_graph(model)
    data = graphs.random_digits()
    builder = _prepare(path, data, tmp_path)
    copy = onnx.load(str(builder.graph))
    names = [n.name for n in copy.graph.node]
    assert len(set(names)) == len(names) and names[1] == "Relu_1"
    assert [o.name for o in copy.graph.output] == ["logits"]
    assert builder.input_name == "x" and builder.num_stages == 1
    assert builder.groups == ("first", "body0", "body1", "last")
    # what it computes is the user's graph, unchanged
    x = data.preprocess(data.train_x[:3])
    ours = ort.InferenceSession(str(builder.graph)).run(None, {"x": x})[0]
    theirs = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    np.testing.assert_array_equal(ours, theirs)
    assert builder.model_key == _prepare(path, data, tmp_path).model_key


def test_prefix_groups_and_precision_checks_run_before_anything_is_built(
        tmp_path, graphs, save_graph) -> None:
    path = save_graph(graphs.residual_cnn())
    seen = {}
    builder = prepare_onnx_builder(
        OnnxModelSpec(path, {"stem": ["stem"], "blocks": ["block"], "head": ["fc"]}),
        graphs.random_digits(), SETTINGS, tmp_path / "cache",
        check_operators=lambda ops: seen.update(ops))
    assert seen == {"stem": ("Conv",), "blocks": ("Conv",) * 4, "head": ("Gemm",)}
    assert builder.operators() == seen
