"""ONNX export: one graph per stage (features, logits) or one graph with module-path names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from spaces import StagedModel
from spaces.onnx_graph.quantize import node_names
from spaces.torch_model.export import INPUT_NAME, export_model
from spaces.torch_model.pruning import prune_model


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture
def model(trained) -> StagedModel:
    return trained.fresh()


def _samples(digits, n: int = 8) -> list[np.ndarray]:
    x = digits.preprocess(digits.test_x[:n])
    return [x[i:i + 1] for i in range(n)]


def test_cascade_writes_one_graph_per_stage(model: StagedModel, example: torch.Tensor,
                                            tmp_path: Path, digits) -> None:
    paths = export_model(model, example, tmp_path, cascade=True)
    assert [p.name for p in paths] == ["stage0.onnx", "stage1.onnx", "stage2.onnx"]
    for k, path in enumerate(paths):
        graph = onnx.load(str(path)).graph
        assert [i.name for i in graph.input] == [INPUT_NAME]
        expected = ["logits"] if k == 2 else ["features", "logits"]
        assert [o.name for o in graph.output] == expected
        onnx.checker.check_model(str(path))

    sessions = [_session(p) for p in paths]
    for x in _samples(digits):
        with torch.no_grad():
            torch_logits = [t.numpy() for t in model(torch.from_numpy(x))]
            torch_inputs = [t.numpy() for t in model.stage_inputs(torch.from_numpy(x))]
        features = x
        for k, session in enumerate(sessions):
            outputs = session.run(None, {INPUT_NAME: features})
            np.testing.assert_allclose(outputs[-1], torch_logits[k], atol=1e-4, rtol=1e-4)
            if k < 2:
                np.testing.assert_allclose(outputs[0], torch_inputs[k + 1], atol=1e-4, rtol=1e-4)
                features = outputs[0]


def test_single_graph_names_nodes_by_module_path(model: StagedModel, example: torch.Tensor,
                                                 tmp_path: Path, digits) -> None:
    paths = export_model(model, example, tmp_path, cascade=False)
    assert [p.name for p in paths] == ["model.onnx"]
    graph = onnx.load(str(paths[0])).graph
    assert [o.name for o in graph.output] == ["logits"]
    names = node_names(paths[0])
    for k in range(3):
        assert any(n.startswith(f"/stages.{k}/") and n.endswith("/Conv") for n in names)
    assert any(n.startswith("/head/") for n in names)
    # only the last head is in the deployed graph
    assert sum(n.endswith("Gemm") for n in names) == 1

    session = _session(paths[0])
    for x in _samples(digits):
        with torch.no_grad():
            expected = model(torch.from_numpy(x))[-1].numpy()
        np.testing.assert_allclose(session.run(None, {INPUT_NAME: x})[0], expected, atol=1e-4,
                                   rtol=1e-4)


def test_pruned_model_exports_and_matches(model: StagedModel, example: torch.Tensor,
                                          tmp_path: Path, digits) -> None:
    prune_model(model, 0.5, example)
    path = export_model(model, example, tmp_path, cascade=False)[0]
    x = _samples(digits, 1)[0]
    with torch.no_grad():
        expected = model(torch.from_numpy(x))[-1].numpy()
    np.testing.assert_allclose(_session(path).run(None, {INPUT_NAME: x})[0], expected, atol=1e-4)


@pytest.mark.parametrize("cascade", [True, False])
def test_export_leaves_the_model_in_eval_mode(model: StagedModel, example: torch.Tensor,
                                              tmp_path: Path, digits, cascade: bool) -> None:
    """The exporter restores the training flag of what it exported; the model (BatchNorm) must
    stay in eval mode, or the next forward pass changes its outputs and running statistics."""
    x = torch.from_numpy(digits.preprocess(digits.test_x[:16]))
    with torch.no_grad():
        before = [t.clone() for t in model(x)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    export_model(model, example, tmp_path / "nested" / "dir", cascade=cascade)
    assert (tmp_path / "nested" / "dir" / ("stage0.onnx" if cascade else "model.onnx")).is_file()
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        for a, b in zip(model(x), before, strict=True):
            torch.testing.assert_close(a, b)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, state[name], rtol=0, atol=0)


def test_a_dynamic_batch_axis_is_exported_only_when_asked(model: StagedModel,
                                                          example: torch.Tensor,
                                                          tmp_path: Path, digits) -> None:
    """The runtime knob static_shape: false (docs/RUNTIME.md); batch 1, static, otherwise."""
    static = export_model(model, example, tmp_path / "static", cascade=False)[0]
    dynamic = export_model(model, example, tmp_path / "dynamic", cascade=False,
                           dynamic_batch=True)[0]

    def batch_dim(path: Path):
        return onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]

    assert batch_dim(static).dim_value == 1 and not batch_dim(static).dim_param
    assert batch_dim(dynamic).dim_param == "batch"
    samples = _samples(digits, 3)
    single = [_session(static).run(None, {INPUT_NAME: s})[0] for s in samples]
    batched = _session(dynamic).run(None, {INPUT_NAME: np.concatenate(samples)})[0]
    np.testing.assert_allclose(batched, np.concatenate(single), rtol=1e-4, atol=1e-5)
