"""DESIGN.md's boundaries, checked on the import graph of the source."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> top-level modules it must never import (at any depth of its own modules)
FORBIDDEN = {
    "device_agents": {"torch", "torch_pruning", "spaces", "search", "optuna", "mlflow"},
    "spaces": {"search"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_inside_their_boundary(package: str) -> None:
    offenders = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imports_of(path) & FORBIDDEN[package]
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_spaces_uses_only_the_bundle_module_of_device_agents() -> None:
    allowed = {"device_agents.bundle", "device_agents.eval_set", "device_agents"}
    for path in (ROOT / "spaces").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith("device_agents"):
                assert node.module in allowed, f"{path.name} imports {node.module}"


def test_nothing_outside_search_imports_search() -> None:
    # The example model/data modules must not need search; benchmark scripts drive studies.
    models = list((ROOT / "experiments").glob("*.py"))
    for path in list((ROOT / "spaces").rglob("*.py")) + list((ROOT / "device_agents").rglob(
            "*.py")) + models:
        assert "search" not in imports_of(path), path


def _modules_after(code: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", code + "\nimport sys\n"
                           "print(' '.join(sorted(sys.modules)))"], capture_output=True,
                          text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return set(done.stdout.split())


def test_the_cli_and_config_validation_import_nothing_heavy() -> None:
    heavy = {"torch", "onnxruntime", "ray", "mlflow", "optuna", "torch_pruning"}
    assert _modules_after("import search.cli.app") & heavy == set()
    assert _modules_after("from search.config import load_config") & heavy == set()


def test_the_device_runtime_imports_no_torch() -> None:
    loaded = _modules_after("import device_agents, device_agents.cascade, "
                            "device_agents.measure, device_agents.agent")
    assert "torch" not in loaded
