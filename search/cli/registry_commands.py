"""``paretoedge deploy | deployments | rollback | pull | compare``: the registry's commands
(:mod:`search.registry`, docs/DEPLOYMENT.md). Heavy imports happen inside the commands."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from search.registry.canary import Comparison
    from search.registry.model_registry import RegisteredVersion


class FallbackAction(StrEnum):
    abstain = "abstain"
    default_label = "default_label"
    escalate = "escalate"


class Output(StrEnum):
    table = "table"
    json = "json"


WorkdirOption = Annotated[Path, typer.Option(
    "--workdir", help="Where studies, bundles and mlflow.db live (the registry too, unless "
                      "--tracking-uri).")]
TrackingUriOption = Annotated[str | None, typer.Option(
    "--tracking-uri", help="A registry other than the workdir's sqlite store, e.g. a running "
                           "`mlflow server` (http://127.0.0.1:5000).")]
ToleranceOption = Annotated[float, typer.Option(
    "--p95-tolerance", min=0.0, help="How much slower at p95 the newcomer may be and still "
                                     "pass (0.05: 5 %; timing noise).")]
FormatOption = Annotated[Output, typer.Option("--format")]

#: the metrics the deployments table shows (the rest are in --format json)
_COLUMNS = (("accuracy", "acc"), ("test_accuracy", "test acc"), ("latency_p95_ms", "p95 ms"),
            ("confirmed_latency_p95_ms", "p95 ms (confirmed)"), ("size_kb", "size kB"))


def _version_json(v: RegisteredVersion) -> dict[str, Any]:
    return {"name": v.name, "version": v.version, "aliases": list(v.aliases),
            "study": v.tags.get("study"), "trial": v.tags.get("trial"),
            "query": v.tags.get("query"), "device_class": v.tags.get("device_class"),
            "bundle_sha256": v.sha256, "fallback": v.tags.get("fallback"),
            "created_ms": v.created_ms, "metrics": v.metrics(), "source": v.source}


def versions_table(name: str, versions: list[RegisteredVersion]) -> Any:
    from rich.table import Table

    table = Table(title=f"Versions of {name}")
    for header in ("version", "aliases", "study", "trial", *(h for _, h in _COLUMNS),
                   "fallback", "device", "sha256"):
        table.add_column(header, justify="right" if header in ("version", "trial") else "left")
    for v in versions:
        metrics = v.metrics()
        cells = [f"{metrics[k]:.4g}" if k in metrics else "-" for k, _ in _COLUMNS]
        fallback = v.tags.get("fallback", "none")
        if fallback != "none":
            policy = json.loads(fallback)
            fallback = f"{policy['action']} < {policy['below']:g}"
        table.add_row(v.version, ", ".join(v.aliases) or "-", v.tags.get("study", "-"),
                      v.tags.get("trial", "-"), *cells, fallback,
                      v.tags.get("device_class", "-"), (v.sha256 or "-")[:12])
    return table


def comparison_table(comparison: Comparison) -> Any:
    from rich.table import Table

    c = comparison
    table = Table(title=f"{c.newcomer.ref} against {c.holder.ref} on {c.device_class} "
                        f"({c.rounds} interleaved rounds x {c.runs_per_round} runs; test split, "
                        f"{c.n_test} samples; band {c.band:g})")
    for header in ("", "version", "test acc", "p50 ms", "p95 ms", "mean ms", "energy mJ"):
        table.add_column(header)
    for label, f in (("holder", c.holder), ("newcomer", c.newcomer)):
        table.add_row(label, f.version, f"{f.test_accuracy:.4f}", f"{f.p50_ms:.4f}",
                      f"{f.p95_ms:.4f}", f"{f.mean_ms:.4f}",
                      "-" if f.energy_mj is None else f"{f.energy_mj:.4g}")
    return table


def register_registry_commands(app: typer.Typer, guard: Callable[[Any], Any],
                               console: Console) -> None:
    """Add the registry's commands to the ``paretoedge`` app."""

    def out(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    @app.command()
    @guard
    def deploy(study: Annotated[str, typer.Argument(help="Study name.")],
               name: Annotated[str, typer.Option("--name", help="The registered model.")],
               where: Annotated[str | None, typer.Option(
                   help="Constraints over metrics, as for `best`.")] = None,
               maximize: Annotated[str | None, typer.Option(help="Metric to maximise.")] = None,
               minimize: Annotated[str | None, typer.Option(help="Metric to minimise.")] = None,
               alias: Annotated[str, typer.Option(help="The alias to point at it.")
                                ] = "production",
               workdir: WorkdirOption = Path("runs"),
               tracking_uri: TrackingUriOption = None,
               fallback_below: Annotated[float | None, typer.Option(
                   "--fallback-below", help="Below this calibrated confidence the fallback "
                                            "answers.")] = None,
               fallback_action: Annotated[FallbackAction | None, typer.Option(
                   "--fallback-action", help="abstain, default_label (--default-label K) or "
                                             "escalate (to the study's fp32 bundle).")] = None,
               default_label: Annotated[int | None, typer.Option(
                   "--default-label", help="The label of --fallback-action default_label.")
               ] = None,
               canary: Annotated[bool, typer.Option(
                   "--canary", help="Compare with the alias's holder on a device first; "
                                    "refuse (exit 1) to move the alias when the newcomer is "
                                    "outside the study's band or slower at p95.")] = False,
               device: Annotated[str | None, typer.Option(
                   "--device", help="The device class of the canary comparison (default: "
                                    "the study's).")] = None,
               p95_tolerance: ToleranceOption = 0.05,
               format: FormatOption = Output.table) -> None:
        """Register the bundle `best` chooses as a new version of NAME and point the alias at
        it (the bundle gets the fallback policy and the monitor's reference)."""
        from search.errors import CanaryRefusedError, ConfigError
        from search.registry.deploy import DeployRequest, refusal
        from search.registry.deploy import deploy as deploy_study
        from search.registry.study_source import StudyQuery

        fallback = None
        if (fallback_below is None) != (fallback_action is None):
            raise ConfigError("--fallback-below and --fallback-action go together")
        if default_label is not None and fallback_action is not FallbackAction.default_label:
            raise ConfigError("--default-label is for --fallback-action default_label")
        if fallback_below is not None and fallback_action is not None:
            from device_agents.deployment import FallbackPolicy

            fallback = FallbackPolicy(below=fallback_below, action=fallback_action.value,
                                      default_label=default_label)
        done = deploy_study(DeployRequest(
            study=study, workdir=workdir, name=name, alias=alias,
            query=StudyQuery(where=where, maximize=maximize, minimize=minimize),
            tracking_uri=tracking_uri, fallback=fallback, canary=canary, device_class=device,
            p95_tolerance=p95_tolerance))
        if format is Output.json:
            payload = {**_version_json(done.version), "moved": done.moved,
                       "previous": done.previous,
                       "comparison": done.comparison.to_dict() if done.comparison else None}
            sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        else:
            if done.comparison is not None:
                console.print(comparison_table(done.comparison))
                out(done.comparison.verdict())
            out(f"registered {name} version {done.version.version}: trial "
                f"{done.record.number} of {study} (sha256 {done.version.sha256})")
        if not done.moved:
            raise CanaryRefusedError(refusal(done))
        if format is Output.table:
            before = f" (was version {done.previous})" if done.previous else ""
            out(f"{name}@{alias} -> version {done.version.version}{before}")

    @app.command()
    @guard
    def deployments(name: Annotated[str, typer.Argument(help="The registered model.")],
                    workdir: WorkdirOption = Path("runs"),
                    tracking_uri: TrackingUriOption = None,
                    format: FormatOption = Output.table) -> None:
        """List the versions of a registered model with their metrics and aliases."""
        from search.registry.model_registry import ModelRegistry

        registry = ModelRegistry.open(workdir=workdir, tracking_uri=tracking_uri)
        versions = registry.versions(name)
        if format is Output.json:
            sys.stdout.write(json.dumps({"name": name, "aliases": registry.aliases(name),
                                         "versions": [_version_json(v) for v in versions]},
                                        indent=2, sort_keys=True) + "\n")
            return
        console.print(versions_table(name, versions))

    @app.command()
    @guard
    def rollback(name: Annotated[str, typer.Argument(help="The registered model.")],
                 alias: Annotated[str, typer.Option(help="The alias to move back.")
                                  ] = "production",
                 to: Annotated[str | None, typer.Option(
                     "--to", help="The version to move it to (default: its previous "
                                  "holder).")] = None,
                 workdir: WorkdirOption = Path("runs"),
                 tracking_uri: TrackingUriOption = None) -> None:
        """Move an alias back to its previous holder, or to the version named."""
        from search.registry.model_registry import ModelRegistry

        registry = ModelRegistry.open(workdir=workdir, tracking_uri=tracking_uri)
        before, after = registry.rollback(name, alias, to)
        out(f"{name}@{alias} -> version {after} (was version {before})")

    @app.command()
    @guard
    def pull(model: Annotated[str, typer.Argument(help="NAME@ALIAS or NAME@VERSION.")],
             directory: Annotated[Path, typer.Argument(help="Where the bundle goes (absent or "
                                                            "empty).")],
             workdir: WorkdirOption = Path("runs"),
             tracking_uri: TrackingUriOption = None) -> None:
        """Download a version's bundle for a device and verify every file's sha256 and the
        registered sha256."""
        from search.registry.model_ref import ModelRef
        from search.registry.model_registry import ModelRegistry

        ref = ModelRef.parse(model)
        registry = ModelRegistry.open(workdir=workdir, tracking_uri=tracking_uri)
        version = registry.pull(ref, directory)
        out(f"{ref}: version {version.version} in {directory.resolve()} (every file's sha256 "
            f"verified; bundle sha256 {version.sha256})")

    @app.command()
    @guard
    def compare(holder: Annotated[str, typer.Argument(help="NAME@ALIAS or NAME@VERSION: the "
                                                           "one deployed.")],
                newcomer: Annotated[str, typer.Argument(help="NAME@ALIAS or NAME@VERSION: "
                                                             "the candidate.")],
                device: Annotated[str, typer.Option("--device",
                                                    help="The device class to measure on.")],
                workdir: WorkdirOption = Path("runs"),
                tracking_uri: TrackingUriOption = None,
                rounds: Annotated[int | None, typer.Option(
                    help="Interleaved rounds (default: the study's confirm.rounds).", min=1)
                ] = None,
                runs: Annotated[int | None, typer.Option(
                    help="Timed runs per bundle and round (default: confirm.runs_per_round).",
                    min=10)] = None,
                p95_tolerance: ToleranceOption = 0.05,
                format: FormatOption = Output.table) -> None:
        """Measure two versions on an agent of the class, interleaved in one run (held-out
        accuracy, latency percentiles, energy where measurable), and print the verdict under
        the study's band. Exit 0 either way."""
        from search.registry.canary import compare_versions
        from search.registry.model_ref import ModelRef
        from search.registry.model_registry import ModelRegistry

        first, second = ModelRef.parse(holder), ModelRef.parse(newcomer)
        registry = ModelRegistry.open(workdir=workdir, tracking_uri=tracking_uri)
        comparison = compare_versions(registry, first, second, workdir=workdir,
                                      device_class=device, p95_tolerance=p95_tolerance,
                                      rounds=rounds, runs_per_round=runs)
        if format is Output.json:
            sys.stdout.write(json.dumps(comparison.to_dict(), indent=2, sort_keys=True) + "\n")
            return
        console.print(comparison_table(comparison))
        out(comparison.verdict())
