"""The deployable bundle: a directory with ``manifest.json`` and one ONNX file per stage.

A bundle is what a user deploys. It is self-describing: the input spec, the preprocessing, the
stages (each an ONNX graph returning ``features`` and ``logits``, the last one ``logits`` only),
the exit thresholds and temperatures, and the provenance (the candidate and the versions that
built it). Nothing else of the project is needed to run it: see :class:`CascadeRunner`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from device_agents.deployment_spec import FALLBACK_BUNDLE_DIR, DeploymentSpec
from device_agents.errors import BundleError, BundleIntegrityError
from device_agents.runtime_options import RuntimeOptions

FORMAT_NAME = "paretoedge-bundle"
#: the version of a bundle as a study writes it
FORMAT_VERSION = 1
#: the version of a bundle with a ``deployment`` section (a runtime that reads only 1 would
#: ignore the fallback, so such a bundle says it needs more)
DEPLOYED_FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (FORMAT_VERSION, DEPLOYED_FORMAT_VERSION)
MANIFEST = "manifest.json"
CONFIDENCE_MEASURES = ("max_softmax", "margin", "entropy")
FALLBACKS = ("last", "most_confident")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class InputSpec:
    """The raw input of one sample, before preprocessing (batch dimension included, = 1)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        return cls(name=str(data["name"]), shape=tuple(int(d) for d in data["shape"]),
                   dtype=str(data.get("dtype", "float32")))


@dataclass(frozen=True)
class Preprocessing:
    """Affine preprocessing applied on the device: ``(raw * scale - mean) / std``, per channel.

    ``mean`` and ``std`` hold one value, or one per channel (axis 1 of the input).
    """

    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        return cls(scale=float(data.get("scale", 1.0)),
                   mean=tuple(float(v) for v in data.get("mean", (0.0,))),
                   std=tuple(float(v) for v in data.get("std", (1.0,))))


@dataclass(frozen=True)
class StageSpec:
    """One ONNX graph of the cascade. Every stage but the last also returns ``features``."""

    name: str
    file: str
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageSpec:
        return cls(name=str(data["name"]), file=str(data["file"]), sha256=str(data["sha256"]))


@dataclass(frozen=True)
class ExitPolicy:
    """When a sample leaves the cascade early.

    ``thresholds[k]`` applies to the exit after stage ``k`` (one per stage but the last; 1.0
    turns that exit off); ``temperatures[k]`` scales stage ``k``'s logits before the confidence
    is computed (one per stage, the last included, so that the whole cascade is calibrated).
    ``fallback`` says who answers when no exit is confident: the last stage (``last``) or the
    most confident exit (``most_confident``). The field is optional in ``manifest.json``.
    """

    thresholds: tuple[float, ...] = ()
    temperatures: tuple[float, ...] = (1.0,)
    confidence: str = "max_softmax"
    fallback: str = "last"

    def to_dict(self) -> dict[str, Any]:
        return {"thresholds": list(self.thresholds), "temperatures": list(self.temperatures),
                "confidence": self.confidence, "fallback": self.fallback}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExitPolicy:
        return cls(thresholds=tuple(float(t) for t in data.get("thresholds", ())),
                   temperatures=tuple(float(t) for t in data.get("temperatures", (1.0,))),
                   confidence=str(data.get("confidence", "max_softmax")),
                   fallback=str(data.get("fallback", "last")))


@dataclass(frozen=True)
class BundleManifest:
    """Everything ``manifest.json`` says about a bundle."""

    input: InputSpec
    stages: tuple[StageSpec, ...]
    num_classes: int
    preprocessing: Preprocessing = Preprocessing()
    exits: ExitPolicy = ExitPolicy()
    provenance: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    #: onnxruntime graph optimizers the sessions must not run (optional "runtime" section; e.g.
    #: WeightBiasQuantization, which would quantize layers a mixed-precision bundle keeps float)
    disabled_optimizers: tuple[str, ...] = ()
    #: the optional "deployment" section (format version 2): the fallback policy and the
    #: monitor's reference, written by ``device_agents.deployment.deployed_copy``
    deployment: DeploymentSpec | None = None
    #: the rest of the "runtime" section: graph optimization level, intra-op threads,
    #: providers with their options (``device_agents/runtime_options.py``); each field absent
    #: at its default
    runtime_options: RuntimeOptions = RuntimeOptions()

    def to_dict(self) -> dict[str, Any]:
        section = {**({"disabled_optimizers": list(self.disabled_optimizers)}
                      if self.disabled_optimizers else {}), **self.runtime_options.to_dict()}
        runtime = {"runtime": section} if section else {}
        deployment = ({"deployment": self.deployment.to_dict()}
                      if self.deployment is not None else {})
        return {**runtime, **deployment,
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "input": self.input.to_dict(),
            "num_classes": self.num_classes,
            "preprocessing": self.preprocessing.to_dict(),
            "stages": [s.to_dict() for s in self.stages],
            "exits": self.exits.to_dict(),
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BundleManifest:
        if data.get("format") != FORMAT_NAME:
            raise BundleError(f"manifest: 'format' is {data.get('format')!r}, "
                              f"expected {FORMAT_NAME!r}")
        version = int(data.get("format_version", -1))
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise BundleError(f"manifest: format_version {version} is not supported "
                              f"(this runtime reads "
                              f"{', '.join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)})")
        try:
            manifest = cls(
                input=InputSpec.from_dict(data["input"]),
                stages=tuple(StageSpec.from_dict(s) for s in data["stages"]),
                num_classes=int(data["num_classes"]),
                preprocessing=Preprocessing.from_dict(data.get("preprocessing", {})),
                exits=ExitPolicy.from_dict(data.get("exits", {})),
                provenance=dict(data.get("provenance", {})),
                format_version=version,
                disabled_optimizers=tuple(str(name) for name in
                                          data.get("runtime", {}).get("disabled_optimizers", ())),
                deployment=(DeploymentSpec.from_dict(data["deployment"])
                            if data.get("deployment") is not None else None),
                runtime_options=RuntimeOptions.from_dict(data.get("runtime", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"manifest: malformed field {exc}") from exc
        manifest.check()
        return manifest

    def check(self) -> None:
        """Raise :class:`BundleError` when the manifest contradicts itself."""
        if not self.stages:
            raise BundleError("manifest: 'stages' is empty")
        if len(self.exits.thresholds) not in (0, len(self.stages) - 1):
            raise BundleError(f"manifest: exits.thresholds has {len(self.exits.thresholds)} "
                              f"values for {len(self.stages)} stages (expected 0 or "
                              f"{len(self.stages) - 1})")
        if len(self.exits.temperatures) != len(self.stages):
            raise BundleError(f"manifest: exits.temperatures has {len(self.exits.temperatures)} "
                              f"values for {len(self.stages)} stages")
        if any(not 0.0 < t <= 1.0 for t in self.exits.thresholds):
            raise BundleError("manifest: exits.thresholds must lie in (0, 1]")
        if any(t <= 0.0 for t in self.exits.temperatures):
            raise BundleError("manifest: exits.temperatures must be positive")
        if self.exits.confidence not in CONFIDENCE_MEASURES:
            raise BundleError(f"manifest: exits.confidence {self.exits.confidence!r} is not one "
                              f"of {', '.join(CONFIDENCE_MEASURES)}")
        if self.exits.fallback not in FALLBACKS:
            raise BundleError(f"manifest: exits.fallback {self.exits.fallback!r} is not one "
                              f"of {', '.join(FALLBACKS)}")
        if self.deployment is not None:
            if self.format_version < DEPLOYED_FORMAT_VERSION:
                raise BundleError(f"manifest: a deployment section needs format_version "
                                  f"{DEPLOYED_FORMAT_VERSION}, not {self.format_version}")
            self.deployment.check(self.num_classes, len(self.stages))


def manifest_bytes(manifest: BundleManifest) -> bytes:
    return (json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n").encode()


def write_bundle(directory: Path, manifest: BundleManifest,
                 stage_files: Mapping[str, Path | bytes]) -> str:
    """Write a bundle directory and return its digest (the sha256 of ``manifest.json``).

    ``stage_files`` maps each stage's file name to its ONNX bytes or to a file to copy. The
    stages' sha256 in ``manifest`` are recomputed from the files, so a caller cannot record a
    digest that does not match.
    """
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stages = []
    for stage in manifest.stages:
        if stage.file not in stage_files:
            raise BundleError(f"bundle: no file given for stage {stage.name!r} ({stage.file})")
        source = stage_files[stage.file]
        target = tmp / stage.file
        if isinstance(source, bytes):
            target.write_bytes(source)
        else:
            shutil.copyfile(source, target)
        stages.append(StageSpec(name=stage.name, file=stage.file, sha256=sha256_file(target)))
    final = replace(manifest, stages=tuple(stages))
    final.check()
    data = manifest_bytes(final)
    (tmp / MANIFEST).write_bytes(data)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return sha256_bytes(data)


def read_manifest(directory: Path) -> BundleManifest:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: no manifest.json (is this a paretoedge bundle?)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    return BundleManifest.from_dict(data)


def bundle_digest(directory: Path) -> str:
    """The bundle's identity: the sha256 of its manifest, which pins every stage's sha256."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: no manifest.json (is this a paretoedge bundle?)")
    return sha256_file(path)


def verify_bundle(directory: Path, expected_digest: str | None = None) -> BundleManifest:
    """Check the manifest digest and every stage's sha256; return the manifest.

    A deployed bundle whose fallback escalates also has its ``fallback_bundle/`` verified
    against the digest its manifest records (so every file of both bundles is checked).
    """
    directory = Path(directory)
    if expected_digest is not None and bundle_digest(directory) != expected_digest:
        raise BundleIntegrityError(f"{directory / MANIFEST}: sha256 does not match the request")
    manifest = read_manifest(directory)
    for stage in manifest.stages:
        path = directory / stage.file
        if not path.is_file():
            raise BundleError(f"{path}: stage file missing")
        if sha256_file(path) != stage.sha256:
            raise BundleIntegrityError(f"{path}: sha256 does not match manifest.json")
    if manifest.deployment is not None and manifest.deployment.fallback_digest is not None:
        fallback = directory / FALLBACK_BUNDLE_DIR
        if not (fallback / MANIFEST).is_file():
            raise BundleError(f"{fallback}: the escalation bundle is missing")
        verify_bundle(fallback, manifest.deployment.fallback_digest)
    return manifest


def bundle_files(directory: Path, manifest: BundleManifest | None = None) -> list[str]:
    """The files of a bundle relative to its directory: the manifest, the stages, and, for a
    deployed bundle that escalates, those of ``fallback_bundle/`` (as ``fallback_bundle/...``).
    """
    directory = Path(directory)
    manifest = manifest if manifest is not None else read_manifest(directory)
    names = [MANIFEST, *(s.file for s in manifest.stages)]
    if manifest.deployment is not None and manifest.deployment.fallback_digest is not None:
        names += [f"{FALLBACK_BUNDLE_DIR}/{name}"
                  for name in bundle_files(directory / FALLBACK_BUNDLE_DIR)]
    return names


def bundle_size_bytes(directory: Path, manifest: BundleManifest) -> int:
    """Bytes of the model itself: the stage files (the manifest is not counted)."""
    return sum((Path(directory) / s.file).stat().st_size for s in manifest.stages)


@dataclass(frozen=True)
class BundlePayload:
    """A bundle's files in memory, to ship to an agent on another machine."""

    digest: str
    files: Mapping[str, bytes]

    @classmethod
    def from_directory(cls, directory: Path) -> BundlePayload:
        directory = Path(directory)
        names: Sequence[str] = bundle_files(directory)
        return cls(digest=bundle_digest(directory),
                   files={name: (directory / name).read_bytes() for name in names})

    def materialize(self, root: Path) -> Path:
        """Write the files under ``root/<digest>`` (once) and verify them; return the dir.

        Several agents on one host may share ``root``: each writes into a private temporary
        directory and renames it into place; whoever loses the race keeps the winner's copy.
        """
        directory = Path(root) / self.digest
        if not (directory / MANIFEST).is_file():
            Path(root).mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=self.digest[:16] + ".", suffix=".partial",
                                        dir=root))
            try:
                for name, data in self.files.items():
                    if not _payload_name_is_plain(name):
                        raise BundleError(f"bundle payload: file name {name!r} is not plain")
                    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                    (tmp / name).write_bytes(data)
                # before the rename: a corrupt payload must not be cached under its digest
                verify_bundle(tmp, self.digest)
                if directory.exists() and not (directory / MANIFEST).is_file():
                    shutil.rmtree(directory, ignore_errors=True)  # left by a crash
                try:
                    tmp.rename(directory)
                except OSError:  # another agent put the same bundle in place first
                    if not (directory / MANIFEST).is_file():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        verify_bundle(directory, self.digest)
        return directory


def _payload_name_is_plain(name: str) -> bool:
    """A file of the bundle's own directory, or of its ``fallback_bundle/`` (one level)."""
    parts = name.split("/")
    if len(parts) == 2 and parts[0] == FALLBACK_BUNDLE_DIR:
        parts = parts[1:]
    return (len(parts) == 1 and Path(parts[0]).name == parts[0]
            and parts[0] not in ("", ".", ".."))
