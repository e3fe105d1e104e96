"""The optional ``runtime`` section of the manifest: onnxruntime optimizers a bundle's sessions
must not run. Absent when empty, so bundles without it keep their bytes and digests."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from device_agents import BundleManifest, CascadeRunner, read_manifest, verify_bundle, write_bundle


def _bundle(tmp_path, cascade, disabled: tuple[str, ...]):
    directory = tmp_path / ("with" if disabled else "without")
    cascade.write_cascade(directory, [cascade.W_EXIT0, cascade.W_LAST])
    manifest = read_manifest(directory)
    if disabled:
        manifest = dataclasses.replace(manifest, disabled_optimizers=disabled)
        files = {s.file: directory / s.file for s in manifest.stages}
        copy = tmp_path / "with-bundle"
        write_bundle(copy, manifest, files)
        directory = copy
    return directory


def test_no_runtime_section_by_default(tmp_path, cascade) -> None:
    directory = _bundle(tmp_path, cascade, ())
    data = json.loads((directory / "manifest.json").read_text())
    assert "runtime" not in data
    assert read_manifest(directory).disabled_optimizers == ()


def test_runtime_section_round_trips_and_the_bundle_runs(tmp_path, cascade) -> None:
    directory = _bundle(tmp_path, cascade, ("WeightBiasQuantization",))
    data = json.loads((directory / "manifest.json").read_text())
    assert data["runtime"] == {"disabled_optimizers": ["WeightBiasQuantization"]}
    assert data["format_version"] == 1
    manifest = verify_bundle(directory)
    assert manifest.disabled_optimizers == ("WeightBiasQuantization",)
    assert BundleManifest.from_dict(manifest.to_dict()) == manifest
    runner = CascadeRunner.load(directory)
    logits, exit_index = runner.run(np.array([[0.0, 1.0, 2.0, 3.0]], dtype=np.float32))
    np.testing.assert_allclose(logits, [1.0, 2.0, 3.0])
    assert exit_index == 1
