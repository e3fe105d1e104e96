"""``paretoedge agent start|list`` and ``paretoedge agents``: the device agents' command line.

The commands, their options and help are defined once, in :mod:`device_agents.agent_cli` (a
board without the ``paretoedge`` command runs ``python -m device_agents.agent_cli``); here they
are mounted with ``paretoedge``'s error handling. Heavy imports happen inside the commands.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from device_agents.agent_cli import build_app, list_command


def register_agent_commands(app: typer.Typer, guard: Callable[[Any], Any]) -> None:
    """Add ``agent start``, ``agent list`` and ``agents`` (the same as ``agent list``) to the
    ``paretoedge`` app; ``guard`` turns known errors into one line and an exit code."""
    app.add_typer(build_app(guard), name="agent")
    app.command("agents")(guard(list_command))
