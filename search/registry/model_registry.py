"""The registered models of paretoedge in MLflow's Model Registry: a version per deployed
bundle (the bundle is the version's artifacts, logged to a run of the experiment
``paretoedge/deployments``), aliases with a history of their holders (:mod:`alias_history`),
and pulling a version back into a directory, verified.

The registry is the workdir's sqlite store (``<workdir>/mlflow.db``) or any tracking URI (a
running ``mlflow server``); see docs/DEPLOYMENT.md.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.errors import RegistryError
from search.registry.alias_history import AliasHistory, history_tag
from search.registry.model_ref import ModelRef
from search.tracking.mlflow_store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

DEPLOYMENTS_EXPERIMENT = "paretoedge/deployments"
#: the version tag holding the deployed bundle's sha256 (of its manifest.json)
SHA256_TAG = "bundle_sha256"


def registry_uri(workdir: Path | None, tracking_uri: str | None) -> str:
    """``tracking_uri`` when given, else the workdir's sqlite store."""
    if tracking_uri:
        return tracking_uri
    if workdir is None:
        raise RegistryError("--workdir or --tracking-uri: name where the registry is")
    return f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


def _artifact_location(uri: str) -> str | None:
    """Deployment runs keep their artifacts next to a sqlite store (never in the current
    directory); a server decides for itself (``--artifacts-destination``)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts" / "deployments").as_uri()
    return None


@dataclass(frozen=True)
class RegisteredVersion:
    """One version of a registered model as paretoedge reads it."""

    name: str
    version: str
    tags: Mapping[str, str]
    aliases: tuple[str, ...]
    created_ms: int
    source: str
    run_id: str | None
    description: str

    @property
    def sha256(self) -> str | None:
        return self.tags.get(SHA256_TAG)

    def metrics(self) -> dict[str, float]:
        """The trial's metrics, kept as ``metric.<name>`` tags."""
        out = {}
        for key, value in self.tags.items():
            if key.startswith("metric."):
                try:
                    out[key[len("metric."):]] = float(value)
                except ValueError:
                    continue
        return out


def _not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


class ModelRegistry:
    """Registered models at one tracking URI.

    Example:
        >>> registry = ModelRegistry.open(workdir=Path("runs"))  # doctest: +SKIP
        >>> version = registry.register("digits", Path("deployed"), {"study": "digits"})
        >>> registry.point("digits", "production", version)  # doctest: +SKIP
        >>> registry.pull(ModelRef.parse("digits@production"), Path("device/bundle"))
    """

    def __init__(self, client: Any, uri: str) -> None:
        self.client = client
        self.uri = uri

    @classmethod
    def open(cls, *, workdir: Path | None = None, tracking_uri: str | None = None
             ) -> ModelRegistry:
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        uri = registry_uri(workdir, tracking_uri)
        if uri.startswith("sqlite:///") and not tracking_uri:
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return cls(MlflowClient(tracking_uri=uri, registry_uri=uri), uri)

    # -- reading ------------------------------------------------------------------------------
    def model(self, name: str) -> Any:
        """The registered model ``name`` (``mlflow.entities.model_registry.RegisteredModel``)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name)
        except MlflowException as exc:
            if _not_found(exc):
                raise RegistryError(f"no registered model {name!r} in {self.uri}") from exc
            raise

    def aliases(self, name: str) -> dict[str, str]:
        return {alias: str(v) for alias, v in (self.model(name).aliases or {}).items()}

    def _version(self, mv: Any, aliases: Mapping[str, str]) -> RegisteredVersion:
        version = str(mv.version)
        return RegisteredVersion(
            name=mv.name, version=version, tags=dict(mv.tags or {}),
            aliases=tuple(sorted(a for a, v in aliases.items() if v == version)),
            created_ms=int(mv.creation_timestamp or 0), source=mv.source or "",
            run_id=mv.run_id, description=mv.description or "")

    def versions(self, name: str) -> list[RegisteredVersion]:
        """Every version of ``name``, oldest first."""
        aliases = self.aliases(name)  # raises for an unknown name
        found = self.client.search_model_versions(f"name = '{name}'", max_results=10000)
        return sorted((self._version(mv, aliases) for mv in found), key=lambda v: int(v.version))

    def resolve(self, ref: ModelRef) -> RegisteredVersion:
        """The version ``ref`` names (by alias or number)."""
        from mlflow.exceptions import MlflowException

        aliases = self.aliases(ref.name)
        if ref.alias is not None:
            if ref.alias not in aliases:
                known = ", ".join(sorted(aliases)) or "none"
                raise RegistryError(f"{ref}: model {ref.name!r} has no alias {ref.alias!r} "
                                    f"(aliases: {known})")
            version = aliases[ref.alias]
        else:
            assert ref.version is not None
            version = ref.version
        try:
            mv = self.client.get_model_version(ref.name, version)
        except MlflowException as exc:
            if _not_found(exc):
                raise RegistryError(f"{ref}: model {ref.name!r} has no version {version}"
                                    ) from exc
            raise
        return self._version(mv, aliases)

    # -- writing ------------------------------------------------------------------------------
    def _deployments_experiment(self) -> str:
        found = self.client.get_experiment_by_name(DEPLOYMENTS_EXPERIMENT)
        if found is not None:
            return str(found.experiment_id)
        return str(self.client.create_experiment(
            DEPLOYMENTS_EXPERIMENT, artifact_location=_artifact_location(self.uri),
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}))

    def register(self, name: str, bundle: Path, tags: Mapping[str, str],
                 description: str = "") -> RegisteredVersion:
        """A new version of ``name`` (created if new) whose artifacts are ``bundle``'s files:
        they are logged to a run of ``paretoedge/deployments`` (tagged like the version) and
        the version points at them."""
        from mlflow.exceptions import MlflowException

        from device_agents.bundle import bundle_digest

        tags = {**tags, SHA256_TAG: bundle_digest(bundle)}
        run = self.client.create_run(self._deployments_experiment(), run_name=f"deploy-{name}",
                                     tags={"paretoedge.registered_model": name, **tags})
        self.client.log_artifacts(run.info.run_id, str(bundle), artifact_path="bundle")
        self.client.set_terminated(run.info.run_id)
        try:
            self.client.get_registered_model(name)
        except MlflowException as exc:
            if not _not_found(exc):
                raise
            self.client.create_registered_model(
                name, description="paretoedge bundles (docs/DEPLOYMENT.md)")
        mv = self.client.create_model_version(name, f"{run.info.artifact_uri}/bundle",
                                              run_id=run.info.run_id, tags=dict(tags),
                                              description=description)
        return self._version(mv, self.aliases(name))

    def point(self, name: str, alias: str, version: str) -> str | None:
        """Move ``alias`` to ``version``; the holder it leaves joins the alias's history.
        Return that previous holder (None when the alias was unset or already there)."""
        self.resolve(ModelRef(name=name, version=version))  # raises for an unknown version
        previous = self.aliases(name).get(alias)
        if previous == version:
            return None
        history = self._history(name, alias).moved(from_version=previous)
        self.client.set_registered_model_alias(name, alias, version)
        self.client.set_registered_model_tag(name, history_tag(alias), history.to_tag())
        return previous

    def _history(self, name: str, alias: str) -> AliasHistory:
        return AliasHistory.from_tag((self.model(name).tags or {}).get(history_tag(alias)))

    def rollback(self, name: str, alias: str, to: str | None = None) -> tuple[str, str]:
        """Move ``alias`` back to its previous holder (or to version ``to``); return (from,
        to). The holders after the one chosen leave the history; a ``to`` that never held the
        alias is a move forward (the holder it leaves joins the history, as with
        :meth:`point`)."""
        current = self.aliases(name).get(alias)
        if current is None:
            raise RegistryError(f"{name}@{alias}: model {name!r} has no alias {alias!r}")
        if to is not None:
            self.resolve(ModelRef(name=name, version=str(int(to)) if to.isdigit() else to))
        wanted = str(int(to)) if to is not None and to.isdigit() else to
        history = self._history(name, alias)
        if wanted is not None and wanted not in history.versions:
            # a version that never held the alias: a move forward, the holder joins the history
            target, history = wanted, history.moved(from_version=current)
        else:
            try:
                target, history = history.back_to(wanted)
            except RegistryError as exc:
                raise RegistryError(f"{name}@{alias}: {exc}") from exc
        self.client.set_registered_model_alias(name, alias, target)
        self.client.set_registered_model_tag(name, history_tag(alias), history.to_tag())
        return current, target

    # -- pulling ------------------------------------------------------------------------------
    def pull(self, ref: ModelRef, directory: Path) -> RegisteredVersion:
        """Download the version's bundle into ``directory`` (absent or empty) and verify every
        file's sha256 and the registered sha256; nothing is left there when it does not."""
        from device_agents.bundle import bundle_digest, verify_bundle
        from device_agents.errors import BundleIntegrityError

        version = self.resolve(ref)
        directory = Path(directory)
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise RegistryError(f"{directory}: exists and is not an empty directory")
        directory.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory.parent, prefix=".pull-") as tmp:
            self._download(version, Path(tmp))
            verify_bundle(Path(tmp))
            if version.sha256 is not None and bundle_digest(Path(tmp)) != version.sha256:
                raise BundleIntegrityError(f"{ref}: manifest.json's sha256 does not match the "
                                           f"registered {SHA256_TAG} {version.sha256[:12]}...")
            if directory.exists():
                directory.rmdir()
            shutil.move(tmp, directory)
            Path(tmp).mkdir()  # for the context manager's clean-up
        return version

    def _download(self, version: RegisteredVersion, directory: Path) -> None:
        """The version's artifacts into ``directory``: through its run (this client's tracking
        URI, so a server's proxied artifacts too), or from its source URI."""
        import mlflow.artifacts

        prefix = f"{self.client.get_run(version.run_id).info.artifact_uri}/" \
            if version.run_id else None
        if prefix is not None and version.source.startswith(prefix):
            self.client.download_artifacts(version.run_id, version.source[len(prefix):],
                                           str(directory))
            # the run's path ("bundle") is kept under the destination: lift its files up
            inner = directory / version.source[len(prefix):]
            for item in list(inner.iterdir()):
                shutil.move(str(item), directory / item.name)
            inner.rmdir()
            return
        mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(directory),
                                            tracking_uri=self.uri)
