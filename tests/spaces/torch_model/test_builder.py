"""TorchBuilder: candidates become verified, runnable bundles; every prefix is cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import spaces.torch_model.builder as builder_module
from device_agents.bundle import read_manifest, verify_bundle
from device_agents.cascade import CascadeRunner
from spaces import BuildError, Candidate, DataSplits, TorchBuilder

FP32 = ("fp32", "fp32", "fp32")
INT8 = ("int8", "int8", "int8")
N_TEST = 120  # test samples run through the ORT cascade (one at a time)


def _torch_exit_logits(model, data: DataSplits, n: int = N_TEST) -> list[np.ndarray]:
    with torch.no_grad():
        outputs = model.eval()(torch.from_numpy(data.preprocess(data.test_x[:n])))
    return [o.numpy() for o in outputs]


def _run_bundle(directory: Path, data: DataSplits, n: int = N_TEST):
    runner = CascadeRunner.load(directory)
    return runner, [runner.predict(data.test_x[i]) for i in range(n)]


@pytest.fixture(scope="module")
def fp32_bundle(builder: TorchBuilder, tmp_path_factory):
    directory = tmp_path_factory.mktemp("bundles") / "fp32"
    return builder.build(Candidate(quantization=FP32), directory)


@pytest.fixture(scope="module")
def exit_bundle(builder: TorchBuilder, tmp_path_factory):
    directory = tmp_path_factory.mktemp("bundles") / "exit"
    return builder.build(Candidate(quantization=FP32, exit_thresholds=(0.9, 0.9)), directory)


@pytest.fixture(scope="module")
def pruned_candidate() -> Candidate:
    return Candidate(quantization=("int8", "fp32", "int8"), prune_ratio=0.5,
                     exit_thresholds=(0.8, 0.8))


@pytest.fixture(scope="module")
def pruned_bundle(builder: TorchBuilder, pruned_candidate: Candidate, tmp_path_factory):
    directory = tmp_path_factory.mktemp("bundles") / "pruned"
    return builder.build(pruned_candidate, directory)


def test_baseline_is_a_single_graph_without_exits(fp32_bundle, digits: DataSplits) -> None:
    manifest = verify_bundle(fp32_bundle.directory, fp32_bundle.digest)
    assert [s.file for s in manifest.stages] == ["model.onnx"]
    assert manifest.exits.thresholds == ()
    assert len(manifest.exits.temperatures) == 1
    assert manifest.num_classes == 10
    assert manifest.input.shape == (1, 1, 8, 8)
    assert manifest.input.name == "input"
    assert manifest.preprocessing == digits.preprocessing
    assert sorted(p.name for p in fp32_bundle.directory.iterdir()) == ["manifest.json",
                                                                       "model.onnx"]


def test_baseline_bundle_predicts_like_torch(fp32_bundle, trained, digits: DataSplits) -> None:
    expected = _torch_exit_logits(trained.fresh(), digits)[-1]
    runner, predictions = _run_bundle(fp32_bundle.directory, digits)
    assert runner.num_stages == 1
    assert [p.label for p in predictions] == expected.argmax(1).tolist()
    assert all(p.exit_index == 0 for p in predictions)
    for i in range(5):
        logits, _ = runner.run(digits.test_x[i])
        np.testing.assert_allclose(logits, expected[i], atol=1e-4, rtol=1e-4)


def test_early_exit_candidate_is_a_cascade(exit_bundle, trained, digits: DataSplits) -> None:
    manifest = verify_bundle(exit_bundle.directory, exit_bundle.digest)
    assert [s.file for s in manifest.stages] == ["stage0.onnx", "stage1.onnx", "stage2.onnx"]
    assert manifest.exits.thresholds == (0.9, 0.9)
    assert len(manifest.exits.temperatures) == 3
    assert all(t > 0 for t in manifest.exits.temperatures)

    # each sample leaves at the first exit confident enough, with that exit's torch prediction
    logits = _torch_exit_logits(trained.fresh(), digits)
    runner, predictions = _run_bundle(exit_bundle.directory, digits)
    assert runner.num_stages == 3
    for i, prediction in enumerate(predictions):
        assert prediction.label == int(logits[prediction.exit_index][i].argmax())
        scaled = logits[prediction.exit_index][i] / manifest.exits.temperatures[
            prediction.exit_index]
        p = np.exp(scaled - scaled.max())
        confidence = (p / p.sum()).max()
        if prediction.exit_index < 2:
            assert confidence >= 0.9 - 1e-4
    assert {p.exit_index for p in predictions} <= {0, 1, 2}


def test_thresholds_need_no_rebuild(builder: TorchBuilder, exit_bundle, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("rebuilt a graph that only differs by its thresholds")

    monkeypatch.setattr(builder_module, "export_model", forbidden)
    monkeypatch.setattr(builder_module, "train_model", forbidden)
    other = builder.build(Candidate(quantization=FP32, exit_thresholds=(0.6, 0.7)), tmp_path / "b")
    first, second = read_manifest(exit_bundle.directory), read_manifest(other.directory)
    assert [s.sha256 for s in first.stages] == [s.sha256 for s in second.stages]
    assert second.exits.thresholds == (0.6, 0.7)
    assert other.digest != exit_bundle.digest


def test_pruned_int8_cascade(pruned_bundle, fp32_bundle, pruned_candidate: Candidate,
                             digits: DataSplits) -> None:
    manifest = verify_bundle(pruned_bundle.directory, pruned_bundle.digest)
    assert len(manifest.stages) == 3
    assert manifest.exits.thresholds == (0.8, 0.8)

    info = pruned_bundle.info
    assert set(info) >= {"macs_m", "params_k", "fused_int_ops_ratio"}
    assert info["macs_m"] < 0.6 * fp32_bundle.info["macs_m"]
    assert info["params_k"] < 0.6 * fp32_bundle.info["params_k"]
    assert info["fused_int_ops_ratio"] == 1.0  # U8S8 per-channel: every int8 op fused
    assert fp32_bundle.info["fused_int_ops_ratio"] == 0.0

    provenance = manifest.provenance
    assert Candidate.from_dict(provenance["candidate"]) == pruned_candidate
    assert provenance["pruning_history"]  # replayable record of the removed channels
    assert provenance["groups"] == ["stage0", "stage1", "stage2"]
    assert provenance["metrics"] == pytest.approx(dict(info))
    assert {"torch", "onnxruntime"} <= set(provenance["versions"])

    _, predictions = _run_bundle(pruned_bundle.directory, digits, n=60)
    accuracy = np.mean([p.label == y for p, y in zip(predictions, digits.test_y, strict=False)])
    assert accuracy > 0.3  # 1-epoch finetune of a 50 % pruned int8 model: far above chance


def test_pruned_cache_is_reused_by_a_new_builder(builder: TorchBuilder, pruned_bundle,
                                                 pruned_candidate: Candidate, trained,
                                                 digits: DataSplits, build_cache: Path,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    assert list((build_cache / "pruned").iterdir())
    assert list((build_cache / "graphs").iterdir())

    def forbidden(*args, **kwargs):
        raise AssertionError("a cached step ran again")

    for name in ("train_model", "prune_model", "export_model", "quantize_graph"):
        monkeypatch.setattr(builder_module, name, forbidden)
    again = TorchBuilder(trained=trained, data=digits, cache_dir=build_cache,
                             settings=builder.settings)
    rebuilt = again.build(pruned_candidate, tmp_path / "again")
    assert rebuilt.digest == pruned_bundle.digest  # the same bytes, from the disk cache
    assert rebuilt.info == pytest.approx(dict(pruned_bundle.info))


def test_cached_pruned_model_replays_from_disk(builder: TorchBuilder, pruned_bundle,
                                               trained, digits: DataSplits, build_cache: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("retrained a cached pruning")

    monkeypatch.setattr(builder_module, "train_model", forbidden)
    in_memory = builder.pruned(0.5)
    from_disk = TorchBuilder(trained=trained, data=digits, cache_dir=build_cache,
                                 settings=builder.settings).pruned(0.5)
    assert from_disk.history == in_memory.history
    assert from_disk.temperatures == pytest.approx(in_memory.temperatures)
    fresh = {k: tuple(v.shape) for k, v in trained.fresh().state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in from_disk.model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in in_memory.model.state_dict().items()}
    assert shapes != fresh
    x = torch.from_numpy(digits.preprocess(digits.test_x[:16]))
    with torch.no_grad():
        for a, b in zip(from_disk.model(x), in_memory.model(x), strict=True):
            torch.testing.assert_close(a, b)


def test_mixed_single_graph_keeps_the_first_group_float(builder: TorchBuilder,
                                                        tmp_path: Path,
                                                        digits: DataSplits) -> None:
    built = builder.build(Candidate(quantization=("fp32", "int8", "int8")), tmp_path / "mixed")
    manifest = verify_bundle(built.directory)
    assert [s.file for s in manifest.stages] == ["model.onnx"]
    assert built.info["integer_ops"] > 0
    all_int8 = builder.build(Candidate(quantization=INT8), tmp_path / "int8")
    assert 0 < built.info["integer_ops"] < all_int8.info["integer_ops"]
    _, predictions = _run_bundle(built.directory, digits, n=10)
    assert all(p.exit_index == 0 for p in predictions)


def test_wrong_number_of_precisions(builder: TorchBuilder, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="2 precisions for 3 layer groups"):
        builder.build(Candidate(quantization=("fp32", "fp32")), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_bad_prune_ratio_is_a_build_error(builder: TorchBuilder, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="outside"):
        builder.build(Candidate(quantization=FP32, prune_ratio=1.0), tmp_path / "bad")


def test_runtime_knobs_reach_the_manifest_and_the_export(builder: TorchBuilder, fp32_bundle,
                                                         tmp_path: Path,
                                                         digits: DataSplits) -> None:
    """docs/RUNTIME.md: the level and the threads in the manifest's runtime section, a dynamic
    batch axis in the graph; a candidate without knobs has no runtime section at all."""
    import json

    import onnx

    assert "runtime" not in json.loads((fp32_bundle.directory / "manifest.json").read_text())
    built = builder.build(Candidate(quantization=FP32, graph_optimization="basic",
                                    intra_op_threads=1, static_shape=False),
                          tmp_path / "knobs")
    manifest = verify_bundle(built.directory, built.digest)
    assert manifest.runtime_options.graph_optimization == "basic"
    assert manifest.runtime_options.intra_op_threads == 1
    graph = onnx.load(str(built.directory / "model.onnx")).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    _, knobs = _run_bundle(built.directory, digits, 20)
    _, plain = _run_bundle(fp32_bundle.directory, digits, 20)
    assert [p.label for p in knobs] == [p.label for p in plain]
