"""``paretoedge agent start`` and ``paretoedge agents``: the CLI face of the device agents.

The work is in :mod:`device_agents.agent_cli` (a board without the ``paretoedge`` command runs
``python -m device_agents.agent_cli``); heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table


class ListFormat(StrEnum):
    table = "table"
    json = "json"


agent_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Run device agents on this machine for a study's Ray cluster.")


def agent_start(
        address: Annotated[str, typer.Option("--address", help="HOST:PORT of the Ray head "
                                                               "the study uses.")],
        device: Annotated[str, typer.Option("--device", help="Device class of this machine, "
                                                             "as in the config's device.class.")],
        threads: Annotated[int, typer.Option(help="onnxruntime threads per agent.", min=1)] = 1,
        cores: Annotated[str | None, typer.Option(help="Cores to pin the agents to (2,3 or "
                                                       "2-3); default: the last free ones.")
                         ] = None,
        agents: Annotated[int, typer.Option(help="Agents on this machine, measuring in "
                                                 "parallel on cores of their own.", min=1)] = 1,
        cache_dir: Annotated[Path | None, typer.Option(help="Bundle and eval-set cache.")
                             ] = None,
        providers: Annotated[str, typer.Option(help="onnxruntime execution providers, "
                                                    "comma-separated.")
                             ] = "CPUExecutionProvider",
        token_file: Annotated[Path | None, typer.Option(help="The cluster's Ray auth token "
                                                             "(default: RAY_AUTH_TOKEN or "
                                                             "~/.ray/auth_token).")] = None,
        ray_arg: Annotated[list[str] | None, typer.Option(help="Extra argument for `ray "
                                                               "start` (repeatable).")] = None,
) -> None:
    """Join this machine to a study's Ray cluster as agents of a device class.

    Starts a Ray node with the class's resource and label, creates the agents on it, keeps
    them alive, and removes them and the node on Ctrl-C.
    """
    from device_agents.agent_cli import options_from, run_agent

    code = run_agent(options_from(address, device, threads, cores, agents, cache_dir, providers,
                                  token_file, ray_arg or ()),
                     say=lambda line: print(line, flush=True))
    raise typer.Exit(code)


def agents_command(
        address: Annotated[str | None, typer.Option(
            "--address", help="HOST:PORT of the Ray head (default: RAY_ADDRESS, or the cluster "
                              "running on this machine).")] = None,
        device: Annotated[str | None, typer.Option("--device", help="Only this class.")] = None,
        format: Annotated[ListFormat, typer.Option("--format")] = ListFormat.table,
) -> None:
    """List the agents connected to the cluster: class, host, cores, onnxruntime, heartbeat."""
    from device_agents.agent_cli import COLUMNS, list_agents

    rows = list_agents(address, device)
    if format is ListFormat.json:
        sys.stdout.write(json.dumps(rows, indent=2, sort_keys=True, default=str) + "\n")
        return
    console = Console() if sys.stdout.isatty() else Console(width=200)
    if not rows:
        console.print("no agents in the cluster" + (f" of class {device!r}" if device else ""))
        return
    table = Table(title=f"{len(rows)} agent(s)")
    for heading, _ in COLUMNS:
        table.add_column(heading)
    for row in rows:
        table.add_row(*[cell(row) for _, cell in COLUMNS])
    console.print(table)


def register_agent_commands(app: typer.Typer, guard: Callable[[Any], Any]) -> None:
    """Add ``agent start`` and ``agents`` to the ``paretoedge`` app."""
    agent_app.command("start")(guard(agent_start))
    app.add_typer(agent_app, name="agent")
    app.command("agents")(guard(agents_command))
