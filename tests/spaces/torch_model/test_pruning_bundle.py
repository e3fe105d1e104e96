"""Pruned bundles built by TorchBuilder: provenance that replays, and no torch on the device."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import spaces.torch_model.builder as builder_module
from device_agents import EvalSet, read_manifest, verify_bundle
from spaces import (
    BuildSettings,
    Candidate,
    DataSplits,
    FinetuneSettings,
    PruningSettings,
    QuantSettings,
    TorchBuilder,
)
from spaces.torch_model.pruning import replay_pruning

ROOT = Path(__file__).resolve().parents[3]
SETTINGS = BuildSettings(
    finetune=FinetuneSettings(steps=30, train_subset=600, schedule="cosine", distill_alpha=0.7),
    pruning=PruningSettings(importance="taylor", taylor_batches=2, round_to=4),
    quant=QuantSettings(calibration_samples=32))
CANDIDATE = Candidate(quantization=("fp32", "fp32", "fp32"), prune_ratio=0.25,
                      stage_prune_ratios=(0.5, 0.25, 0.0), exit_thresholds=(0.9, 0.9))
SINGLE = Candidate(quantization=("fp32", "fp32", "fp32"), prune_ratio=0.5)


@pytest.fixture(scope="module")
def taylor_builder(trained, digits: DataSplits, tmp_path_factory) -> TorchBuilder:
    return TorchBuilder(trained=trained, data=digits,
                            cache_dir=tmp_path_factory.mktemp("taylor-cache"), settings=SETTINGS)


@pytest.fixture(scope="module")
def stagewise_bundle(taylor_builder: TorchBuilder, tmp_path_factory):
    return taylor_builder.build(CANDIDATE, tmp_path_factory.mktemp("bundles") / "stagewise")


def _weight_shapes(directory: Path) -> list[tuple[int, ...]]:
    """Shapes of the Conv and Gemm/MatMul weights of every stage graph, in graph order."""
    shapes = []
    for stage in read_manifest(directory).stages:
        graph = onnx.load(directory / stage.file).graph
        weights = {t.name: numpy_helper.to_array(t).shape for t in graph.initializer}
        for node in graph.node:
            if node.op_type in ("Conv", "Gemm", "MatMul") and node.input[1] in weights:
                shape = weights[node.input[1]]
                # a Linear exports as Gemm(transB=1) or as MatMul with the transposed weight
                if node.op_type == "MatMul":
                    shape = shape[::-1]
                shapes.append(tuple(shape))
    return shapes


def _torch_weight_shapes(model) -> list[tuple[int, ...]]:
    """Conv and Linear weight shapes in execution order: stage 0, head 0, stage 1, ..."""
    return [tuple(m.weight.shape) for stage, head in zip(model.stages, model.heads, strict=True)
            for part in (stage, head) for m in part.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_the_bundle_records_the_pruning(stagewise_bundle, taylor_builder) -> None:
    manifest = verify_bundle(stagewise_bundle.directory, stagewise_bundle.digest)
    provenance = manifest.provenance
    assert Candidate.from_dict(provenance["candidate"]) == CANDIDATE
    assert provenance["pruning"]["stage_ratios"] == [0.5, 0.25, 0.0]
    assert provenance["build"]["pruning"] == {"importance": "taylor", "round_to": 4,
                                              "ignored_layers": [], "taylor_batches": 2}
    assert provenance["build"]["finetune"]["schedule"] == "cosine"
    assert provenance["build"]["finetune"]["steps"] == 30
    assert len(provenance["pruning"]["val_exit_accuracies"]) == 3
    assert provenance["pruning_history"]
    assert stagewise_bundle.info["macs_m"] > 0 and stagewise_bundle.info["params_k"] > 0


def test_the_provenance_alone_replays_the_architecture(stagewise_bundle, tiny_factory,
                                                       example) -> None:
    """The user's model factory plus the bundle's manifest give back the pruned architecture."""
    manifest = json.loads((stagewise_bundle.directory / "manifest.json").read_text())
    history = manifest["provenance"]["pruning_history"]
    unpruned = tiny_factory()
    replayed = replay_pruning(tiny_factory(), history, example)
    shapes = _torch_weight_shapes(replayed)
    assert shapes != _torch_weight_shapes(unpruned)
    assert shapes == _weight_shapes(stagewise_bundle.directory)
    # stage 0 lost half of its 16 channels, stage 1 a quarter (rounded to 4), stage 2 none
    convs = [m for m in replayed.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 12, 16]
    assert [lin.out_features for lin in replayed.modules() if isinstance(lin, nn.Linear)] == [
        10, 10, 10]


def test_a_new_builder_reuses_the_stagewise_taylor_finetune(stagewise_bundle, taylor_builder,
                                                            trained, digits, tmp_path,
                                                            monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("a cached pruning or finetune ran again")

    monkeypatch.setattr(builder_module, "train_model", forbidden)
    monkeypatch.setattr(builder_module, "prune_model", forbidden)
    again = TorchBuilder(trained=trained, data=digits, cache_dir=taylor_builder.cache_dir,
                             settings=SETTINGS)
    rebuilt = again.build(CANDIDATE, tmp_path / "again")
    assert rebuilt.digest == stagewise_bundle.digest


CHILD = textwrap.dedent('''
    import json
    import sys

    import numpy as np

    from device_agents import (
        BundlePayload, CascadeRunner, EvalSet, EvalSetPayload, LocalDeviceAgent,
        MeasurementProtocol, MeasureRequest,
    )

    bundle, digest, eval_path, cache = sys.argv[1:5]
    eval_set = EvalSet.from_bytes(open(eval_path, "rb").read())
    runner = CascadeRunner.load(bundle, expected_digest=digest)
    logits = [runner.run(eval_set.inputs[i])[0].tolist() for i in range(len(eval_set))]
    labels = [runner.predict(eval_set.inputs[i]).label for i in range(len(eval_set))]
    payload = EvalSetPayload.from_eval_set(eval_set)
    protocol = MeasurementProtocol(warmup_runs=5, warmup_seconds=0.0, min_runs=20,
                                   max_runs=100, round_runs=10)
    agent = LocalDeviceAgent(device_class="no-torch", cache_dir=cache, isolate=False)
    measured = agent.measure(MeasureRequest(
        bundle_digest=digest, bundle=BundlePayload.from_directory(bundle),
        eval_set_digest=payload.digest, eval_set=payload, protocol=protocol))
    try:
        import torch  # noqa: F401
        blocked = False
    except ImportError:
        blocked = True
    print(json.dumps({"logits": logits, "labels": labels, "accuracy": measured.accuracy,
                      "p95": measured.latency.p95_ms, "blocked": blocked,
                      "torch_modules": sorted(m for m in sys.modules if m.startswith("torch"))}))
''')


@pytest.mark.slow
def test_a_pruned_bundle_runs_on_a_device_without_torch(builder: TorchBuilder,
                                                        digits: DataSplits, tmp_path: Path,
                                                        python_without_torch) -> None:
    built = builder.build(SINGLE, tmp_path / "pruned")
    pruned = builder.pruned(0.5)
    assert pruned.history  # channels really left this model
    n = 64
    eval_set = EvalSet(inputs=digits.test_x[:n], labels=digits.test_y[:n])
    eval_path = tmp_path / "eval.npz"
    eval_set.save(eval_path)
    with torch.no_grad():
        expected = pruned.model.eval()(torch.from_numpy(digits.preprocess(digits.test_x[:n])))
    expected_logits = expected[-1].numpy()

    done = python_without_torch(CHILD, built.directory, built.digest, eval_path,
                                tmp_path / "agent", cwd=tmp_path, timeout=300)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["blocked"] is True and result["torch_modules"] == []
    np.testing.assert_allclose(np.array(result["logits"]), expected_logits, atol=1e-4,
                               rtol=1e-4)
    assert result["labels"] == expected_logits.argmax(1).tolist()
    assert result["accuracy"] == pytest.approx(float(np.mean(
        expected_logits.argmax(1) == digits.test_y[:n])))
    assert result["p95"] > 0
