"""The bundle format: write, read, verify, ship (payload) and materialise."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from device_agents import (
    BundleError,
    BundleIntegrityError,
    BundleManifest,
    BundlePayload,
    ExitPolicy,
    InputSpec,
    Preprocessing,
    StageSpec,
    bundle_digest,
    read_manifest,
    verify_bundle,
    write_bundle,
)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(num_stages: int = 2, **exits) -> BundleManifest:
    return BundleManifest(
        input=InputSpec(name="x", shape=(1, 4)),
        stages=tuple(StageSpec(name=f"s{k}", file=f"s{k}.onnx", sha256="not-a-digest")
                     for k in range(num_stages)),
        num_classes=3,
        preprocessing=Preprocessing(scale=0.5, mean=(0.1, 0.2, 0.3, 0.4), std=(1.0, 2.0, 3.0, 4.0)),
        exits=ExitPolicy(**{"thresholds": (0.7,) * (num_stages - 1),
                            "temperatures": (1.5,) * num_stages, **exits}),
        provenance={"candidate": {"bits": [8, 4]}, "versions": {"onnx": "x"}},
    )


def _rewrite_manifest(directory: Path, **changes) -> None:
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            data[outer][inner] = value
        elif value is None:
            del data[key]
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def test_write_read_verify_round_trip(tmp_path, cascade):
    blobs = {"s0.onnx": cascade.stage_onnx(cascade.W_EXIT0, last=False),
             "s1.onnx": cascade.stage_onnx(cascade.W_LAST, last=True)}
    manifest = _manifest()
    directory = tmp_path / "bundle"

    digest = write_bundle(directory, manifest, blobs)

    assert digest == bundle_digest(directory)
    assert digest == _sha((directory / "manifest.json").read_bytes())
    assert sorted(p.name for p in directory.iterdir()) == ["manifest.json", "s0.onnx", "s1.onnx"]
    read = read_manifest(directory)
    assert read.input == manifest.input
    assert read.num_classes == manifest.num_classes
    assert read.preprocessing == manifest.preprocessing
    assert read.exits == manifest.exits
    assert dict(read.provenance) == dict(manifest.provenance)
    assert [(s.name, s.file) for s in read.stages] == [("s0", "s0.onnx"), ("s1", "s1.onnx")]
    # The stages' sha256 are computed from the files, whatever the caller put in the manifest.
    assert [s.sha256 for s in read.stages] == [_sha(blobs["s0.onnx"]), _sha(blobs["s1.onnx"])]
    assert verify_bundle(directory, digest) == read
    assert verify_bundle(directory) == read
    assert BundleManifest.from_dict(read.to_dict()) == read


def test_write_bundle_copies_stage_files_and_replaces_old_bundle(tmp_path, cascade):
    source = tmp_path / "exported.onnx"
    source.write_bytes(cascade.stage_onnx(cascade.W_LAST, last=True))
    directory = tmp_path / "bundle"
    directory.mkdir()
    (directory / "stale.txt").write_text("from an older bundle")
    manifest = _manifest(num_stages=1, thresholds=(), temperatures=(1.0,))

    digest = write_bundle(directory, manifest, {"s0.onnx": source})

    assert (directory / "s0.onnx").read_bytes() == source.read_bytes()
    assert not (directory / "stale.txt").exists()
    assert not (tmp_path / "bundle.tmp").exists()
    assert verify_bundle(directory, digest).stages[0].sha256 == _sha(source.read_bytes())


def test_write_bundle_is_deterministic(tmp_path):
    blobs = {"s0.onnx": b"zero", "s1.onnx": b"one"}
    assert write_bundle(tmp_path / "a", _manifest(), blobs) == write_bundle(
        tmp_path / "b", _manifest(), blobs)
    assert write_bundle(tmp_path / "c", _manifest(), {**blobs, "s1.onnx": b"other"}) != (
        bundle_digest(tmp_path / "a"))


def test_write_bundle_without_a_stage_file_raises(tmp_path):
    with pytest.raises(BundleError, match="s1"):
        write_bundle(tmp_path / "bundle", _manifest(), {"s0.onnx": b"zero"})


def test_write_bundle_rejects_an_inconsistent_manifest(tmp_path):
    with pytest.raises(BundleError, match="thresholds"):
        write_bundle(tmp_path / "bundle", _manifest(thresholds=(0.5, 0.5)),
                     {"s0.onnx": b"zero", "s1.onnx": b"one"})
    assert not (tmp_path / "bundle").exists()


def test_tampered_stage_file_fails_verification(tmp_path):
    directory = tmp_path / "bundle"
    digest = write_bundle(directory, _manifest(), {"s0.onnx": b"zero", "s1.onnx": b"one"})
    (directory / "s1.onnx").write_bytes(b"ONE")

    with pytest.raises(BundleIntegrityError, match=r"s1\.onnx"):
        verify_bundle(directory)
    with pytest.raises(BundleIntegrityError):
        verify_bundle(directory, digest)


def test_tampered_manifest_fails_the_requested_digest(tmp_path):
    directory = tmp_path / "bundle"
    digest = write_bundle(directory, _manifest(), {"s0.onnx": b"zero", "s1.onnx": b"one"})
    _rewrite_manifest(directory, num_classes=4)

    verify_bundle(directory)  # still self-consistent
    with pytest.raises(BundleIntegrityError, match=r"manifest\.json"):
        verify_bundle(directory, digest)


def test_missing_stage_file_is_a_bundle_error(tmp_path):
    directory = tmp_path / "bundle"
    write_bundle(directory, _manifest(), {"s0.onnx": b"zero", "s1.onnx": b"one"})
    (directory / "s0.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        verify_bundle(directory)


def test_directory_without_manifest_is_a_bundle_error(tmp_path):
    with pytest.raises(BundleError, match=r"manifest\.json"):
        read_manifest(tmp_path)
    with pytest.raises(BundleError, match=r"manifest\.json"):
        bundle_digest(tmp_path)
    with pytest.raises(BundleError, match=r"manifest\.json"):
        verify_bundle(tmp_path)


def test_manifest_that_is_not_json_is_a_bundle_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="JSON"):
        read_manifest(tmp_path)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"format": "onnx-bundle"}, "format"),
        ({"format": None}, "format"),
        ({"format_version": 3}, "format_version"),
        ({"format_version": None}, "format_version"),
        ({"exits.thresholds": [0.5, 0.5]}, "thresholds"),
        ({"exits.thresholds": [0.0]}, "thresholds"),
        ({"exits.thresholds": [1.5]}, "thresholds"),
        ({"exits.thresholds": [-0.2]}, "thresholds"),
        ({"exits.temperatures": [1.0]}, "temperatures"),
        ({"exits.temperatures": [1.0, 0.0]}, "temperatures"),
        ({"exits.confidence": "top1"}, "confidence"),
        ({"stages": []}, "stages"),
        ({"stages": None}, "stages"),
        ({"input": None}, "input"),
        ({"num_classes": "three"}, "three"),
    ],
)
def test_invalid_manifest_raises_naming_the_field(tmp_path, changes, field):
    directory = tmp_path / "bundle"
    write_bundle(directory, _manifest(), {"s0.onnx": b"zero", "s1.onnx": b"one"})
    _rewrite_manifest(directory, **changes)

    with pytest.raises(BundleError, match=field):
        read_manifest(directory)
    with pytest.raises(BundleError, match=field):
        verify_bundle(directory)


@pytest.mark.parametrize("thresholds", [[1.0], [1e-6], []])
def test_valid_threshold_edges_are_accepted(tmp_path, thresholds):
    directory = tmp_path / "bundle"
    write_bundle(directory, _manifest(), {"s0.onnx": b"zero", "s1.onnx": b"one"})
    _rewrite_manifest(directory, **{"exits.thresholds": thresholds})
    assert read_manifest(directory).exits.thresholds == tuple(thresholds)


def test_payload_round_trip(tmp_path):
    directory = tmp_path / "bundle"
    digest = write_bundle(directory, _manifest(), {"s0.onnx": b"zero", "s1.onnx": b"one"})
    (directory / "notes.txt").write_text("not part of the bundle")

    payload = BundlePayload.from_directory(directory)

    assert payload.digest == digest
    assert set(payload.files) == {"manifest.json", "s0.onnx", "s1.onnx"}
    target = payload.materialize(tmp_path / "cache")
    assert target == tmp_path / "cache" / digest
    for name, data in payload.files.items():
        assert (target / name).read_bytes() == data
    assert bundle_digest(target) == digest
    assert verify_bundle(target, digest) == read_manifest(directory)
    # A second materialisation reuses the directory.
    assert payload.materialize(tmp_path / "cache") == target
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [digest]


def test_payload_with_tampered_file_does_not_materialize(tmp_path):
    directory = tmp_path / "bundle"
    write_bundle(directory, _manifest(), {"s0.onnx": b"zero", "s1.onnx": b"one"})
    good = BundlePayload.from_directory(directory)
    bad = BundlePayload(digest=good.digest, files={**good.files, "s0.onnx": b"corrupt"})

    with pytest.raises(BundleIntegrityError):
        bad.materialize(tmp_path / "cache")
    # The corrupt copy must not be cached under the digest: the good payload still works.
    target = good.materialize(tmp_path / "cache")
    assert (target / "s0.onnx").read_bytes() == b"zero"


def test_payload_with_wrong_digest_does_not_materialize(tmp_path):
    directory = tmp_path / "bundle"
    write_bundle(directory, _manifest(), {"s0.onnx": b"zero", "s1.onnx": b"one"})
    good = BundlePayload.from_directory(directory)
    bad = BundlePayload(digest="0" * 64, files=good.files)
    with pytest.raises(BundleIntegrityError):
        bad.materialize(tmp_path / "cache")


def test_payload_file_names_must_be_plain(tmp_path):
    directory = tmp_path / "bundle"
    write_bundle(directory, _manifest(), {"s0.onnx": b"zero", "s1.onnx": b"one"})
    good = BundlePayload.from_directory(directory)
    bad = BundlePayload(digest=good.digest, files={**good.files, "../escape.onnx": b"x"})
    with pytest.raises(BundleError, match="plain"):
        bad.materialize(tmp_path / "cache")
    assert not (tmp_path / "escape.onnx").exists()


def test_agents_sharing_a_cache_can_materialize_the_same_bundle_at_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    directory = tmp_path / "bundle"
    digest = write_bundle(directory, _manifest(), {"s0.onnx": b"zero" * 10000,
                                                    "s1.onnx": b"one" * 10000})
    payload = BundlePayload.from_directory(directory)
    for round_ in range(5):
        root = tmp_path / f"cache{round_}"
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(payload.materialize, [root] * 8))
        assert results == [root / digest] * 8
        assert sorted(p.name for p in root.iterdir()) == [digest]  # no temporary left behind


def test_a_directory_left_half_written_by_a_crash_is_replaced(tmp_path):
    directory = tmp_path / "bundle"
    digest = write_bundle(directory, _manifest(), {"s0.onnx": b"zero", "s1.onnx": b"one"})
    payload = BundlePayload.from_directory(directory)
    (tmp_path / "cache" / digest).mkdir(parents=True)
    (tmp_path / "cache" / digest / "s0.onnx").write_bytes(b"half")
    assert verify_bundle(payload.materialize(tmp_path / "cache"), digest)
