"""``paretoedge replay`` and ``paretoedge monitor``: watching a deployed bundle
(docs/MONITORING.md). Heavy imports happen inside the commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from device_agents import MonitorReference


def resolve_against(against: str, workdir: Path, tracking_uri: str | None
                    ) -> tuple[str, MonitorReference]:
    """``--against``: a bundle directory, or ``NAME@ALIAS`` / ``NAME@VERSION`` of the registry
    (through ``search.registry.resolve_version``); its manifest's deployment reference."""
    from device_agents import BundleError, verify_bundle

    path = Path(against)
    if path.is_dir():
        label, directory = str(path), path
    elif "@" in against:
        from search.registry import resolve_version

        version, directory = resolve_version(tracking_uri or workdir, against)
        label = f"{against} (version {version})"
    else:
        raise BundleError(f"--against {against}: neither a bundle directory nor NAME@ALIAS")
    manifest = verify_bundle(directory)
    if manifest.deployment is None or manifest.deployment.reference is None:
        raise BundleError(f"--against {label}: the bundle has no deployment reference "
                          f"(deploy it with paretoedge deploy)")
    return label, manifest.deployment.reference


def register_monitor_commands(app: typer.Typer, guard: Callable[[Any], Any],
                              console: Console) -> None:
    """Add ``replay`` and ``monitor`` to the ``paretoedge`` app; ``guard`` turns known errors
    into one line and an exit code."""

    @app.command()
    @guard
    def replay(bundle: Annotated[Path, typer.Argument(help="A bundle directory (a deployed "
                                                           "one carries its reference).")],
               config: Annotated[Path, typer.Option("--config", help="The experiment YAML "
                                                    "whose data loader gives the split.")],
               telemetry: Annotated[Path, typer.Option("--telemetry",
                                                       help="Where to write the telemetry "
                                                            "(JSON lines).")],
               split: Annotated[str, typer.Option(help="test or selection.")] = "test",
               shift: Annotated[str | None, typer.Option(
                   help="Change the raw inputs first: noise:SIGMA or brightness:DELTA, "
                        "fractions of the raw range.")] = None,
               window: Annotated[int, typer.Option(help="Inferences per monitor window.",
                                                   min=2)] = 200,
               max_bytes: Annotated[int, typer.Option(
                   "--max-bytes", help="Bound of the telemetry file (then one .1 file).",
                   min=4096)] = 10_000_000,
               sample_every: Annotated[int, typer.Option(
                   "--sample-every", help="Write every n-th inference line (0: none).",
                   min=0)] = 1,
               seed: Annotated[int, typer.Option(help="Seed of the noise.")] = 0) -> None:
        """Run every sample of a split through a bundle with a monitor; write telemetry and
        print accuracy, abstentions, fallbacks, exit rates and the monitor's events."""
        from search.cli.replay_command import parse_shift, replay_split, replay_table

        report = replay_split(bundle, config, split=split, shift=parse_shift(shift),
                              telemetry=telemetry, window=window, max_bytes=max_bytes,
                              sample_every=sample_every, seed=seed)
        console.print(replay_table(report))
        for event in report.events[:10]:
            console.print(f"event: {event.describe()}", markup=False, highlight=False)

    @app.command()
    @guard
    def monitor(telemetry: Annotated[list[Path], typer.Argument(
                    help="Telemetry files (a rotated FILE.1 is a file of its own).")],
                against: Annotated[str | None, typer.Option(
                    help="Compare against this bundle directory's or registered version's "
                         "(NAME@ALIAS, NAME@VERSION) reference, not the files' own.")] = None,
                html: Annotated[Path | None, typer.Option(
                    help="Also write a plotly page here.")] = None,
                workdir: Annotated[Path, typer.Option(
                    "--workdir", help="Where the registry's mlflow.db lives (for "
                                      "NAME@ALIAS).")] = Path("runs"),
                tracking_uri: Annotated[str | None, typer.Option(
                    "--tracking-uri", help="The registry's tracking URI instead of the "
                                           "workdir's.")] = None) -> None:
        """Summarise devices' telemetry: latency percentiles against the measured ones, exit
        rates against the expected, confidence drift (PSI), fallbacks and events."""
        from device_agents import read_telemetry
        from search.cli.telemetry_html import telemetry_html
        from search.cli.telemetry_summary import (
            events_table,
            summarise_telemetry,
            summary_table,
        )

        files = [read_telemetry(path) for path in telemetry]  # each problem names its file
        reference = None
        if against is not None:
            label, reference = resolve_against(against, workdir, tracking_uri)
            console.print(f"against: {label}", markup=False, highlight=False)
        summaries = [summarise_telemetry(f, reference) for f in files]
        console.print(summary_table(summaries))
        events = events_table(summaries)
        if events is not None:
            console.print(events)
        if any(s.reference is None for s in summaries):
            console.print("note: a file without a reference (no header reference and no "
                          "--against) shows no expected values and raised no events")
        if html is not None:
            header = next((f.header for f in files if f.header is not None), None)
            settings = header.settings if header is not None else None
            page = telemetry_html(summaries, title="paretoedge monitor: "
                                  + ", ".join(str(p) for p in telemetry),
                                  **({} if settings is None else {
                                      "psi_threshold": settings.psi_threshold,
                                      "latency_factor": settings.latency_factor}))
            html.parent.mkdir(parents=True, exist_ok=True)
            html.write_text(page)
            console.print(f"html: {html}", markup=False, highlight=False)
