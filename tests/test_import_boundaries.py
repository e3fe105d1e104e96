"""The boundaries of docs/ARCHITECTURE.md, checked on the import graph of the source."""

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
    allowed = {"device_agents.bundle", "device_agents.eval_set", "device_agents.profiles",
               "device_agents.runtime_options",
               "device_agents"}
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


# -- the layout of issue 12: torch behind the builder seam, search in wings, no cycles ---------
TORCH = {"torch", "torch_pruning", "torchvision"}
#: search's wings, and the wings each may import (base modules are open to all).
WINGS = {"study": {"fleet", "tracking", "results"}, "fleet": set(), "tracking": {"results"},
         "results": set(), "registry": {"study", "fleet", "tracking", "results"},
         "cli": {"study", "fleet", "tracking", "results", "registry"}}


def module_imports(path: Path) -> set[str]:
    """Full dotted names imported anywhere in ``path`` (function-level imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_torch_is_imported_only_behind_the_builder_seam() -> None:
    offenders = {}
    for path in sorted((ROOT / "spaces").rglob("*.py")):
        if "torch_model" in path.parts:
            continue
        bad = imports_of(path) & TORCH
        if bad:  # the top level (knobs, candidate, spaces) and the graph side need no torch
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    for path in sorted((ROOT / "search").rglob("*.py")):
        names = module_imports(path)
        bad = {n for n in names if n.split(".")[0] in TORCH}
        bad |= {n for n in names if n.startswith("spaces.torch_model")
                and n != "spaces.torch_model.preparation"}
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_search_wings_import_only_the_wings_below_them() -> None:
    offenders = {}
    for path in sorted((ROOT / "search").rglob("*.py")):
        rel = path.relative_to(ROOT / "search").parts
        wing = rel[0] if len(rel) > 1 else None
        allowed = WINGS[wing] | {wing} if wing else set()
        used = {n.split(".")[1] for n in module_imports(path)
                if n.startswith("search.") and n.split(".")[1] in WINGS}
        if used - allowed:
            offenders[str(path.relative_to(ROOT))] = sorted(used - allowed)
    assert offenders == {}


@pytest.mark.parametrize("package", ["search", "spaces", "device_agents"])
def test_no_import_cycles(package: str) -> None:
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        graph[module_name(path)] = {n for n in module_imports(path)
                                    if n.split(".")[0] == package}
    modules = set(graph)
    graph = {m: {d for d in deps if d in modules and d != m and not m.startswith(d + ".")}
             for m, deps in graph.items()}
    # a package __init__ that re-exports its modules is not a cycle with them
    graph = {m: {d for d in deps if not (d == package and m != package)}
             for m, deps in graph.items()}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep):], dep] if dep in stack else [node, dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_run_path_of_an_onnx_model_imports_no_torch() -> None:
    # model.onnx: what `paretoedge run` imports to prepare and build (the study loop, the
    # graph-only builder, the example data loader) loads no torch
    loaded = _modules_after(
        "import search.study.runner, search.study.sensitivity, search.fleet.study_pool, "
        "spaces.onnx_graph.preparation, spaces.onnx_graph.builder\n"
        "from pathlib import Path\n"
        "from spaces import load_reference\n"
        f"load_reference('digits_model.py:load_data', Path({str(ROOT / 'experiments')!r}))")
    assert not {m for m in loaded if m.split(".")[0] in TORCH}
