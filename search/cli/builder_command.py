"""``paretoedge builder start``: join this machine to a study's Ray cluster as a builder node
(the resource ``builder``, one per concurrent build), for studies with ``device.builds:
cluster`` (docs/SCALING.md). The node runs until Ctrl-C; its builds read and fill the build
cache ``--cache``."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

BUILDER_HELP = "Join this machine to a study's Ray cluster as a builder node (docs/SCALING.md)."


def ray_builder_command(address: str, builds: int, cpus: int) -> list[str]:
    """The ``ray start`` command line of a builder node."""
    return [sys.executable, "-m", "ray.scripts.scripts", "start", "--address", address,
            "--num-cpus", str(cpus),
            "--resources", json.dumps({"builder": builds}),
            "--dashboard-agent-listen-port", "0", "--metrics-export-port", "0",
            "--disable-usage-stats", "--block"]


def start_builder(
    address: Annotated[str, typer.Option(help="HOST:PORT of the study's Ray head")],
    builds: Annotated[int, typer.Option(min=1, max=64, help="builds at once on this node")] = 1,
    cache: Annotated[Path, typer.Option(help="the build cache (content-keyed; a shared folder "
                                             "is shared by every builder using it)")]
    = Path.home() / ".cache" / "paretoedge" / "builds",
    log: Annotated[Path, typer.Option(help="the node's log")]
    = Path.home() / ".cache" / "paretoedge" / "builder.log",
) -> None:
    """Start a builder node and keep it until Ctrl-C."""
    from device_agents.agent_node import RayNodeProcess, check_reachable, enable_token_auth
    from search.study.cluster_builds import CACHE_ENV

    check_reachable(address)  # Ray would retry an unreachable head for minutes
    enable_token_auth()
    cache.mkdir(parents=True, exist_ok=True)
    os.environ[CACHE_ENV] = str(cache.resolve())  # the node's build workers inherit it
    cpus = max(1, (os.cpu_count() or 1))
    node = RayNodeProcess(ray_builder_command(address, builds, cpus), log)
    node.start()
    node.wait_started(timeout=120)
    typer.echo(f"builder node joined {address}: {builds} build(s) at once, cache {cache}; "
               f"Ctrl-C to leave")
    try:
        while node.alive():
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()


def register_builder_commands(app: typer.Typer, guard: Callable[[Any], Any]) -> None:
    """Add ``builder start`` to the ``paretoedge`` app."""
    builder_app = typer.Typer(no_args_is_help=True, add_completion=False, help=BUILDER_HELP)
    builder_app.command("start")(guard(start_builder))
    app.add_typer(builder_app, name="builder")
