"""Shared fixtures: a real local Ray cluster for the tests that need one (started once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster (the way ``paretoedge run`` starts one), shut down at the end."""
    import ray

    from device_agents.ray_actor import device_resource
    from search.agent_pool import start_ray

    if ray.is_initialized():
        ray.shutdown()
    start_ray(None, num_cpus=os.cpu_count() or 2,
              resources={device_resource("local"): 4, device_resource("test"): 4})
    yield ray
    ray.shutdown()
