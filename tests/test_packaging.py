"""What each install brings: a board's install must not pull the host's heavy stack."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST_ONLY = {"torch", "torch-pruning", "optuna", "mlflow", "onnx", "onnxscript", "scikit-learn"}


def _names(requirements: list[str]) -> set[str]:
    import re

    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_agent_install_has_no_host_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    board = _names(project["dependencies"]) | _names(project["optional-dependencies"]["agent"])
    assert board & HOST_ONLY == set()
    assert {"numpy", "onnxruntime", "ray"} <= board
    # plain `ray` lacks what multi-node clusters and `ray start` need (grpcio, aiohttp, ...)
    assert any(r.startswith("ray[default]") for r in project["dependencies"])
    assert _names(project["optional-dependencies"]["search"]) >= HOST_ONLY


def test_the_makefile_installs_the_host_extras_and_the_cpu_torch_first() -> None:
    import re

    makefile = (ROOT / "Makefile").read_text()
    install = re.search(r"-e '\.\[([a-z,]+)\]'", makefile)
    assert install is not None, "the Makefile installs the package with its extras"
    extras = set(install.group(1).split(","))
    # the search's engines (openvino) are offered by the default install, so the tests run them
    assert extras >= {"search", "dev", "openvino"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert extras <= set(project["optional-dependencies"])
    assert makefile.index("torch==2.13.0") < install.start()
