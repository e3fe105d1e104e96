"""Builds on the cluster's builder nodes (``device.builds: cluster``): the build pool of a study,
and how a builder node makes the study's builder.

A builder node (``paretoedge builder start``) prepares the study's builder once per worker
process from the config the driver sends (the model's code and data are read from the same
paths as on the driver: a shared filesystem, or the same checkout at the same place), with its
build cache in ``$PARETOEDGE_BUILD_CACHE`` (``builder start --cache``; content-keyed, so
builders pointed at one shared folder build each trained baseline and pruned model once).
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import Any

from search.config import StudyConfig
from search.errors import ConfigError
from search.fleet.build_pool import BuildPool, RayBuildPool
from search.study.preparation import Prepared, prepare
from search.workspace import Workspace
from spaces.candidate import stable_key

#: The build cache of a builder node (set by ``paretoedge builder start --cache``).
CACHE_ENV = "PARETOEDGE_BUILD_CACHE"


def node_cache() -> Path:
    default = Path(tempfile.gettempdir()) / "paretoedge-build-cache"
    return Path(os.environ.get(CACHE_ENV) or default)


def node_builder(config_data: dict[str, Any], base_dir: str) -> Any:
    """The study's builder, prepared on a builder node (runs in the build task)."""
    config = StudyConfig.model_validate({**config_data, "base_dir": base_dir})
    cache = node_cache()
    cache.mkdir(parents=True, exist_ok=True)
    return prepare(config, cache).builder


def cluster_build_pool(config: StudyConfig, workspace: Workspace,
                       prepared: Prepared) -> BuildPool:
    """Builds as Ray tasks on the builder nodes of the running cluster (``device.address``)."""
    data = config.model_dump(mode="json", by_alias=True)
    base_dir = str(config.base_dir.resolve())
    pool = RayBuildPool(make_builder=functools.partial(node_builder, data, base_dir),
                        builder_key=stable_key("builder", data, base_dir),
                        retries=config.measurement.retries)
    if pool.slots < 1:
        raise ConfigError(f"device.builds: cluster: no node of the cluster at "
                          f"{config.device.address} carries the resource 'builder' (join one "
                          f"with `paretoedge builder start --address {config.device.address}`)")
    return pool
