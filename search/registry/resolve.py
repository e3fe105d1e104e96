"""``resolve_version``: a registered version as a bundle directory on this machine, for the
commands that read a deployed bundle (``paretoedge monitor --against NAME@ALIAS``)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from search.registry.model_ref import ModelRef
from search.registry.model_registry import ModelRegistry


def _is_uri(where: Path | str) -> bool:
    return isinstance(where, str) and "://" in where


def resolve_version(where: Path | str, spec: str, *, cache: Path | None = None
                    ) -> tuple[str, Path]:
    """``NAME@ALIAS`` or ``NAME@VERSION`` in the registry of a workdir (its ``mlflow.db``) or
    of a tracking URI; return the version number and a local directory holding its bundle.

    A version whose artifacts are local files is read in place (verified); otherwise it is
    pulled (verified) into ``cache`` (default: ``<workdir>/cache/registry``, or a temporary
    directory for a tracking URI) under ``<name>/<version>``.

    Raises:
        RegistryError: an unknown name, alias or version (exit code 2 in the CLI).
        BundleIntegrityError: the bundle does not verify.
    """
    import tempfile

    from device_agents.bundle import bundle_digest, verify_bundle
    from device_agents.errors import BundleIntegrityError

    registry = (ModelRegistry.open(tracking_uri=str(where)) if _is_uri(where)
                else ModelRegistry.open(workdir=Path(where)))
    ref = ModelRef.parse(spec, what="--against")
    version = registry.resolve(ref)
    parsed = urlparse(version.source)
    if parsed.scheme == "file" and Path(unquote(parsed.path)).is_dir():
        local = Path(unquote(parsed.path))
        verify_bundle(local)
        if version.sha256 is not None and bundle_digest(local) != version.sha256:
            raise BundleIntegrityError(f"{spec}: manifest.json's sha256 does not match the "
                                       f"registered one")
        return version.version, local
    if cache is None:
        cache = (Path(tempfile.mkdtemp(prefix="paretoedge-registry-")) if _is_uri(where)
                 else Path(where).resolve() / "cache" / "registry")
    directory = cache / ref.name / version.version
    if directory.is_dir() and any(directory.iterdir()):
        verify_bundle(directory, version.sha256)
        return version.version, directory
    registry.pull(ModelRef(name=ref.name, version=version.version), directory)
    return version.version, directory
