"""The registry on the workdir's sqlite store (real MLflow): versions, aliases and their
history, pulling with verification, and the errors of unknown names, aliases and versions."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from device_agents.errors import BundleIntegrityError
from search.errors import RegistryError
from search.registry import ModelRef, resolve_version
from search.registry.model_registry import SHA256_TAG, ModelRegistry


@pytest.fixture
def registry(tmp_path: Path, store_copy) -> ModelRegistry:
    return ModelRegistry.open(workdir=store_copy(tmp_path / "runs"))


@pytest.fixture
def register(registry: ModelRegistry, tmp_path: Path, make_bundle):
    """``register(seed, **tags) -> version``: a linear bundle as a new version of ``lin``."""

    def add(seed: int, **tags: str) -> str:
        bundle = tmp_path / f"bundle-{seed}"
        make_bundle(bundle, seed)
        return registry.register("lin", bundle, {"study": "lin", **tags}).version

    return add


def test_versions_aliases_and_rollback(registry: ModelRegistry, tmp_path: Path,
        register) -> None:
    first = register(0, **{"metric.accuracy": "1.0"})
    second = register(1)
    assert (first, second) == ("1", "2")
    assert registry.point("lin", "production", first) is None
    assert registry.point("lin", "production", second) == first
    versions = registry.versions("lin")
    assert [(v.version, v.aliases) for v in versions] == [("1", ()), ("2", ("production",))]
    assert versions[0].metrics() == {"accuracy": 1.0}
    assert versions[0].sha256 and versions[0].sha256 != versions[1].sha256
    tags = registry.model("lin").tags
    assert json.loads(tags["paretoedge.alias_history.production"]) == ["1"]
    assert registry.rollback("lin", "production") == ("2", "1")
    assert registry.aliases("lin") == {"production": "1"}
    with pytest.raises(RegistryError, match="lin@production: the alias has no previous holder"):
        registry.rollback("lin", "production")
    assert registry.rollback("lin", "production", to="2") == ("1", "2")
    # 2 no longer was in the history: moving to it keeps 1 as the holder to go back to
    assert json.loads(registry.model("lin").tags["paretoedge.alias_history.production"]) == ["1"]
    assert registry.rollback("lin", "production") == ("2", "1")
    with pytest.raises(RegistryError, match="no version 9"):
        registry.rollback("lin", "production", to="9")


def test_unknown_names_aliases_and_versions_are_named(registry: ModelRegistry, tmp_path: Path,
                                                      register) -> None:
    version = register(0)
    registry.point("lin", "production", version)
    with pytest.raises(RegistryError, match="no registered model 'ghost'"):
        registry.resolve(ModelRef.parse("ghost@production"))
    with pytest.raises(RegistryError, match=r"no alias 'staging'.*aliases: production"):
        registry.resolve(ModelRef.parse("lin@staging"))
    with pytest.raises(RegistryError, match="no version 5"):
        registry.resolve(ModelRef.parse("lin@5"))
    with pytest.raises(RegistryError, match="no alias 'staging'"):
        registry.rollback("lin", "staging")


def test_pull_verifies_every_file_and_the_registered_sha256(registry: ModelRegistry, tmp_path: Path,
                                                           register, make_bundle) -> None:
    version = registry.resolve(ModelRef("lin", version=register(0)))
    pulled = tmp_path / "device" / "bundle"
    registry.pull(ModelRef.parse("lin@1"), pulled)
    assert (pulled / "model.onnx").read_bytes() == (tmp_path / "bundle-0" / "model.onnx"
                                                    ).read_bytes()
    with pytest.raises(RegistryError, match="not an empty directory"):
        registry.pull(ModelRef.parse("lin@1"), pulled)
    stored = Path(unquote(urlparse(version.source).path))
    # a stage file changed in the store: its sha256 no longer matches manifest.json
    original = (stored / "model.onnx").read_bytes()
    (stored / "model.onnx").write_bytes(original[:-4] + b"\0\0\0\0")
    with pytest.raises(BundleIntegrityError, match=r"model\.onnx: sha256"):
        registry.pull(ModelRef.parse("lin@1"), tmp_path / "tampered")
    assert not (tmp_path / "tampered").exists()
    # a whole other (consistent) bundle in its place: only the registered sha256 tells
    make_bundle(tmp_path / "other", seed=5)
    for name in ("manifest.json", "model.onnx"):
        (stored / name).write_bytes((tmp_path / "other" / name).read_bytes())
    with pytest.raises(BundleIntegrityError, match=SHA256_TAG):
        registry.pull(ModelRef.parse("lin@1"), tmp_path / "swapped")
    assert not (tmp_path / "swapped").exists()


def test_resolve_version_gives_a_verified_local_bundle(registry: ModelRegistry, tmp_path: Path,
                                                       register) -> None:
    registry.point("lin", "production", register(0))
    version, directory = resolve_version(tmp_path / "runs", "lin@production")
    assert version == "1" and (directory / "manifest.json").is_file()
    version, _ = resolve_version(registry.uri, "lin@1")  # a tracking URI works too
    assert version == "1"
    with pytest.raises(RegistryError, match="no alias 'canary'"):
        resolve_version(tmp_path / "runs", "lin@canary")


def test_deployments_experiment_opens_on_its_runs(registry: ModelRegistry, tmp_path: Path,
                                                  register) -> None:
    register(0)
    experiment = registry.client.get_experiment_by_name("paretoedge/deployments")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # its artifacts live next to mlflow.db, never in the current directory
    assert Path(unquote(urlparse(experiment.artifact_location).path)).is_relative_to(
        (tmp_path / "runs").resolve())
