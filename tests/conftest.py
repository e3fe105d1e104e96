"""Shared fixtures: a real local Ray cluster for the tests that need one (started once)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"


def session_resources() -> dict[str, float]:
    """The custom resources of the session's cluster: agents of the classes ``local`` and
    ``test``, and two build slots (``builder``, for ``RayBuildPool``)."""
    from device_agents.ray_actor import device_resource

    return {device_resource("local"): 4, device_resource("test"): 4, "builder": 2}


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster (the way ``paretoedge run`` starts one), shut down at the end."""
    import ray

    from search.fleet.agent_pool import start_ray

    if ray.is_initialized():
        ray.shutdown()
    start_ray(None, num_cpus=os.cpu_count() or 2, resources=session_resources())
    yield ray
    ray.shutdown()


#: Run first in a child Python: importing torch then fails, as on a device with only the agent.
NO_TORCH = textwrap.dedent('''
    import importlib.abc
    import sys


    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None


    sys.meta_path.insert(0, NoTorch())
''')


@pytest.fixture
def no_torch_site(tmp_path: Path) -> Path:
    """A site directory whose ``sitecustomize`` blocks torch in every Python started with it on
    PYTHONPATH (a driver and the Ray workers it starts alike)."""
    site = tmp_path / "no-torch-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NO_TORCH)
    return site


@pytest.fixture(scope="session")
def python_without_torch():
    """Runs ``script`` with arguments in a fresh Python where torch cannot be imported."""

    def run(script: str, *args: object, cwd: Path, timeout: float
            ) -> subprocess.CompletedProcess[str]:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        return subprocess.run([sys.executable, "-c", NO_TORCH + script, *map(str, args)],
                              capture_output=True, text=True, cwd=cwd, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": path}, check=False)

    return run
