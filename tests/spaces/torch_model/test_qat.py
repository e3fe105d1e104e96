"""Quantization-aware finetuning: fake quantization on the int8 groups, removed before export;
the bundle's int8 weights are exactly the trained ones and its input ranges the learned ones."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn.utils import parametrize

from device_agents.bundle import verify_bundle
from device_agents.cascade import CascadeRunner
from spaces import BuildError, Candidate, DataSplits, TorchBuilder
from spaces.candidate import stable_key
from spaces.torch_model.export import export_model
from spaces.torch_model.fake_quant import FakeQuantSpec, attach_fake_quant, qparams

INT8 = ("int8", "int8", "int8")
PTQ = Candidate(quantization=INT8, prune_ratio=0.5)
QAT = Candidate(quantization=INT8, prune_ratio=0.5, qat=True)


@pytest.fixture(scope="module")
def bundles(builder: TorchBuilder, tmp_path_factory):
    root = tmp_path_factory.mktemp("qat-bundles")
    return {"ptq": builder.build(PTQ, root / "ptq"), "qat": builder.build(QAT, root / "qat")}


def _initializers(graph) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def _dequantized_weights(path: Path) -> dict[str, np.ndarray]:
    """Each quantized compute node's weight as onnxruntime will compute with it, by node."""
    graph = onnx.load(str(path)).graph
    values = _initializers(graph)
    dequantize = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    out = {}
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm") and node.input[1] in dequantize:
            dq = dequantize[node.input[1]]
            q, scale = values[dq.input[0]].astype(np.float64), values[dq.input[1]]
            zero = values[dq.input[2]].astype(np.float64) if len(dq.input) > 2 else 0.0
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            if np.ndim(scale):
                shape[axis] = -1
            out[node.name] = (q - np.reshape(zero, shape)) * np.reshape(scale, shape)
    return out


def _float_weights(model, example: torch.Tensor, directory: Path) -> dict[str, np.ndarray]:
    """The exported float graph's compute weights (BatchNorm folded in), by node."""
    path = export_model(model, example, directory, cascade=False)[0]
    graph = onnx.load(str(path)).graph
    values = _initializers(graph)
    return {n.name: values[n.input[1]] for n in graph.node
            if n.op_type in ("Conv", "Gemm") and n.input[1] in values}


def _weight_error(builder: TorchBuilder, candidate: Candidate, bundle, tmp_path: Path) -> float:
    """The largest relative gap between the exported float weights and the bundle's int8."""
    pruned = builder.pruned(candidate.prune_ratio, (), "", builder.qat_groups(candidate))
    floats = _float_weights(pruned.model, builder.example, tmp_path)
    quantized = _dequantized_weights(bundle.directory / "model.onnx")
    assert set(quantized) == set(floats) and len(floats) == 4  # 3 convs + the head's Gemm
    return max(float(np.abs(quantized[n] - floats[n]).max() / np.abs(floats[n]).max())
               for n in floats)


def test_qat_bundle_fuses_like_the_post_training_one(bundles) -> None:
    ptq, qat = bundles["ptq"].info, bundles["qat"].info
    assert qat["integer_ops"] == ptq["integer_ops"] > 0
    assert qat["fused_int_ops_ratio"] == ptq["fused_int_ops_ratio"] == 1.0


def test_int8_weights_are_exactly_the_trained_ones(builder: TorchBuilder, bundles,
                                                   tmp_path: Path) -> None:
    # QAT baked the fake-quantized, BatchNorm-folded weights: onnxruntime's per-channel int8
    # reproduces them; post-training int8 rounds float weights (errors up to half a step)
    assert _weight_error(builder, QAT, bundles["qat"], tmp_path / "qat") < 1e-5
    assert _weight_error(builder, PTQ, bundles["ptq"], tmp_path / "ptq") > 1e-3


def test_the_export_takes_the_learned_input_ranges(builder: TorchBuilder, bundles) -> None:
    pruned = builder.pruned(0.5, (), "", builder.qat_groups(QAT))
    ranges = {m: (lo, hi) for m, lo, hi in pruned.activation_ranges}
    assert set(ranges) == {"stages.0.0", "stages.1.0", "stages.2.0", "heads.0.2",
                           "heads.1.2", "heads.2.2"}
    graph = onnx.load(str(bundles["qat"].directory / "model.onnx")).graph
    values = _initializers(graph)
    quantize_input = next(n for n in graph.node
                          if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    low, high = ranges["stages.0.0"]  # the model's input feeds the first conv
    scale, zero, _, _ = qparams(torch.tensor(low), torch.tensor(high), "uint8", False)
    assert float(values[quantize_input.input[1]]) == pytest.approx(float(scale), rel=1e-5)
    assert int(values[quantize_input.input[2]]) == int(zero)
    pooled = next(n for n in graph.node if n.op_type == "GlobalAveragePool")
    quantize_pooled = next(n for n in graph.node if n.op_type == "QuantizeLinear"
                           and n.input[0] == pooled.output[0])
    low, high = ranges["heads.2.2"]  # the head's Linear reads the pooled features (Flatten)
    scale, _, _, _ = qparams(torch.tensor(low), torch.tensor(high), "uint8", False)
    assert float(values[quantize_pooled.input[1]]) == pytest.approx(float(scale), rel=1e-5)
    manifest = verify_bundle(bundles["qat"].directory, bundles["qat"].digest)
    assert manifest.provenance["candidate"]["qat"] is True
    assert manifest.provenance["qat"]["int8_groups"] == ["stage0", "stage1", "stage2"]
    assert "qat" not in verify_bundle(bundles["ptq"].directory,
                                      bundles["ptq"].digest).provenance


def test_qat_bundle_runs_and_classifies(bundles, digits: DataSplits) -> None:
    runner = CascadeRunner.load(bundles["qat"].directory)
    n = 60
    accuracy = np.mean([runner.predict(digits.test_x[i]).label == digits.test_y[i]
                        for i in range(n)])
    assert accuracy > 0.3  # 1-epoch QAT finetune of a 50 % pruned model: far above chance


def test_cache_keys(builder: TorchBuilder) -> None:
    s = builder.settings
    before_qat = stable_key("pruned", builder.trained.key, 0.5, s.pruning.to_dict(),
                            s.finetune.to_dict())
    assert builder.pruned_key(0.5) == before_qat  # qat=false: the key of before QAT
    assert builder.pruned_key(0.0) == stable_key("pruned", builder.trained.key, 0.0, None, None)
    qat = builder.pruned_key(0.5, qat_groups=("stage0", "stage1", "stage2"))
    assert qat != before_qat
    assert builder.pruned_key(0.5, qat_groups=("stage0",)) not in (qat, before_qat)
    assert builder.pruned_key(0.0, qat_groups=("stage0",)) != builder.pruned_key(0.0)
    assert builder.qat_groups(Candidate(quantization=("int8", "fp32", "int8"), qat=True)) == (
        "stage0", "stage2")
    assert builder.qat_groups(PTQ) == ()
    with pytest.raises(BuildError, match="needs at least one int8 group"):
        builder.qat_groups(Candidate(quantization=("fp32",) * 3, qat=True))


def test_unpruned_int8_candidate_is_finetuned_with_qat(builder: TorchBuilder,
                                                       tmp_path: Path) -> None:
    candidate = Candidate(quantization=("fp32", "int8", "int8"), qat=True)
    built = builder.build(candidate, tmp_path / "unpruned-qat")
    entry = builder.pruned(0.0, (), "", builder.qat_groups(candidate))
    assert not entry.history and {m for m, _, _ in entry.activation_ranges} == {
        "stages.1.0", "stages.2.0", "heads.1.2", "heads.2.2"}
    plain = builder.pruned(0.0).model  # not finetuned; the QAT one is (its fp32 group too)
    assert not torch.equal(entry.model.stages[0][0].weight, plain.stages[0][0].weight)
    assert built.info["fused_int_ops_ratio"] == 1.0


def test_fake_quant_is_removed_before_export(trained, example: torch.Tensor) -> None:
    model = trained.fresh()
    plain_keys = set(model.state_dict())
    fq = attach_fake_quant(model, [p for p, _ in model.named_modules()], FakeQuantSpec(),
                           example)
    assert fq.modules == ("stages.0.0", "stages.1.0", "stages.2.0", "heads.0.2", "heads.1.2",
                          "heads.2.2")
    assert fq.folded == ("stages.0.0", "stages.1.0", "stages.2.0")  # conv -> BatchNorm
    model.train()
    for module in model.modules():  # as train_model(freeze_batchnorm_at=...) once frozen
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    model(example)  # the observers see a batch
    model.eval()
    with torch.no_grad():
        fake = [o.clone() for o in model(example)]
    fq.remove()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert set(model.state_dict()) == plain_keys
    assert not any(m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():  # the baked weights are kept; only the input rounding is gone
        baked = model(example)
    assert not all(torch.equal(a, b) for a, b in zip(fake, baked, strict=True))
    assert all(torch.allclose(a, b, atol=0.1 * float(b.abs().max()))
               for a, b in zip(fake, baked, strict=True))


@pytest.mark.parametrize("spec", [FakeQuantSpec(activation_type="int8"),
                                  FakeQuantSpec(per_channel=False),
                                  FakeQuantSpec(weight_type="uint8")])
def test_folded_weight_quant_matches_onnxruntime_grid(spec: FakeQuantSpec) -> None:
    conv, norm = nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.uniform_(0.5, 1.5)
    model = nn.Sequential(conv, norm)
    reference = copy.deepcopy(model)
    fq = attach_fake_quant(model, ["0"], spec, torch.randn(1, 2, 5, 5))
    fq.remove()
    factor = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).view(-1, 1, 1, 1)
    folded = (model[0].weight * factor).detach()
    dims = (1, 2, 3) if spec.per_channel else (0, 1, 2, 3)
    low = torch.clamp(folded.amin(dim=dims, keepdim=True), max=0)
    high = torch.clamp(folded.amax(dim=dims, keepdim=True), min=0)
    if spec.weight_type == "int8":  # symmetric, as onnxruntime quantizes signed weights
        step, zero = torch.maximum(-low, high) / 127, torch.zeros_like(low)
    else:
        step = (high - low) / 255
        zero = torch.round(-low / step)
    assert torch.allclose(folded / step + zero, torch.round(folded / step + zero), atol=1e-3)
    assert not torch.equal(model[0].weight, reference[0].weight)


@pytest.mark.parametrize("start_at", [0.0, 0.5])
def test_fake_quant_starts_at_a_share_of_the_steps(trained, small_digits: DataSplits,
                                                   example: torch.Tensor,
                                                   start_at: float) -> None:
    from spaces import FinetuneSettings
    from spaces.torch_model.training import train_model

    model = trained.fresh()
    norm = model.stages[0][1]
    tracked = int(norm.num_batches_tracked)
    fq = attach_fake_quant(model, ["stages.0.0"], FakeQuantSpec(), example, enabled=False)
    with torch.no_grad():  # attached but off: the model computes as before
        assert all(torch.equal(a, b) for a, b in zip(model(example), trained.fresh()(example),
                                                      strict=True))
    settings = FinetuneSettings(steps=4, batch_size=16, distill_alpha=0.0, distill_features=0)
    x = small_digits.preprocess(small_digits.train_x)
    train_model(model, x, small_digits.train_y, settings, on_share=(start_at, fq.start))
    assert fq.switch.on and not norm.training
    assert int(norm.num_batches_tracked) == tracked + int(start_at * 4)  # frozen from there
    assert fq.observers["stages.0.0"].seen
