"""The ``paretoedge`` command line. Heavy imports happen inside the commands."""

from __future__ import annotations

import json
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Search quantization, pruning and early exits jointly, measured on "
                       "real devices; query the Pareto front afterwards.")
# Tables need room: outside a terminal rich would wrap them at 80 columns.
console = Console() if sys.stdout.isatty() else Console(width=160)
errors = Console(stderr=True)
_state = {"debug": False}

WorkdirOption = Annotated[Path, typer.Option("--workdir", help="Where studies, bundles and "
                                                                "mlflow.db live.")]
IncludeContendedOption = Annotated[bool, typer.Option(
    "--include-contended", help="Also rank trials whose measurement stayed contended (cpu share "
                                "below measurement.min_cpu_share after every retry).")]


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


class Source(StrEnum):
    optuna = "optuna"
    mlflow = "mlflow"


def _fail(code: int, message: str) -> NoReturn:
    errors.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _guard(fn):
    """Turn known errors into one line and an exit code; ``--debug`` shows the traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from search.errors import (
            ConfigError,
            NothingFoundError,
            QueryError,
            RegistryError,
            SearchError,
            StudyNotFoundError,
        )

        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except Exception as exc:
            if _state["debug"]:
                raise
            from device_agents.errors import DeviceAgentError
            from spaces.errors import SpacesError

            if isinstance(exc, NothingFoundError):
                _fail(1, str(exc))
            if isinstance(exc, (ConfigError, QueryError, StudyNotFoundError, RegistryError,
                                SpacesError, DeviceAgentError)):
                _fail(2, str(exc))
            if isinstance(exc, SearchError):
                _fail(1, str(exc))
            _fail(1, f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")

    return wrapper


@app.callback()
def main_options(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False
                 ) -> None:
    _state["debug"] = debug
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


@app.command()
@_guard
def validate(config: Annotated[Path, typer.Argument(help="Experiment YAML.")]) -> None:
    """Check a config: every problem is listed with its field path.

    Also what a run would trip on later: the model factory and the data loader import and are
    callable (neither is called), a checkpoint reads and loads strictly into the factory's
    module (the factory is called once), an ONNX file loads in onnxruntime.
    """
    from search.config import load_config
    from search.errors import ConfigError
    from search.fleet.measurable import unmeasurable_problem
    from search.study.checks import source_problems

    try:
        cfg = load_config(config)
        problems = [f"{config}: {p}" for p in source_problems(cfg)]
        unmeasurable = unmeasurable_problem(cfg)  # e.g. energy_mj with no counter
        problems += [f"{config}: {unmeasurable}"] if unmeasurable else []
    except ConfigError as exc:
        problems = list(exc.problems)
    for problem in problems:
        errors.print(f"error: {problem}", markup=False, highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(2)
    console.print(f"{config}: ok")


@app.command()
@_guard
def run(config: Annotated[Path, typer.Argument(help="Experiment YAML.")],
        trials: Annotated[int | None, typer.Option(
            help="Total trials of the study (the fp32 baseline included); a re-run resumes "
                 "up to this number. Default: search.trials of the config.", min=1)] = None,
        timeout: Annotated[str | None, typer.Option(
            help="Stop asking for new trials after this long (90s, 30m, 8h). Default: "
                 "search.timeout of the config.")] = None,
        patience: Annotated[int | None, typer.Option(
            help="Stop when the hypervolume has not improved for this many trials. Default: "
                 "search.patience of the config.", min=1)] = None,
        workdir: WorkdirOption = Path("runs"),
        seed: Annotated[int | None, typer.Option(help="Sampler seed (overrides the "
                                                      "config).")] = None,
        confirm: Annotated[bool, typer.Option(
            "--confirm/--no-confirm", help="At the end, re-time the baseline and the front "
                                           "interleaved on one agent and measure the test split "
                                           "(`paretoedge confirm` does it later).")] = True
        ) -> None:
    """Run (or resume) a study and print its feasible Pareto front.

    Ctrl-C stops it gracefully (the trials in flight finish, the front is printed); a second
    Ctrl-C aborts them (they run again when the study is resumed).
    """
    from search.config import load_config
    from search.durations import parse_duration
    from search.results.front_table import front_table
    from search.study.runner import RunOptions, StudyRunner
    from search.workspace import Workspace

    cfg = load_config(config)
    timeout = timeout or cfg.search.timeout
    timeout_s = parse_duration(timeout) if timeout else None
    if seed is not None:
        cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"seed": seed})})
    budget = trials or cfg.search.trials
    patience = patience or cfg.search.patience
    workspace = Workspace(workdir.resolve(), cfg.study)
    limits = "".join([f", timeout {timeout}" if timeout else "",
                      f", patience {patience} trials" if patience else ""])
    console.print(f"study [bold]{cfg.study}[/bold]: {budget} trials{limits}, device class "
                  f"{cfg.device.class_!r}, workdir {workspace.workdir}")
    try:
        summary = StudyRunner(cfg, workspace, console=console).run(
            RunOptions(trials=budget, timeout_s=timeout_s, patience=patience, confirm=confirm))
    except KeyboardInterrupt:
        _fail(130, "interrupted before the first trial; nothing was lost")
    console.print(front_table(list(summary.front.members), summary.front.baseline,
                              f"Feasible Pareto front of {cfg.study} ({len(summary.front.members)}"
                              f" of {summary.completed} completed trials; {summary.failed} "
                              f"failed; accuracy band {cfg.constraints.max_accuracy_drop:g})",
                              summary.front.objectives))
    console.print(f"hypervolume {summary.front.hypervolume():.4f}; stopped: "
                  f"{summary.stop_reason}. Query it: paretoedge best {cfg.study} --workdir "
                  f"{workdir} --where 'latency_p95_ms < X' --maximize accuracy")
    if summary.timing is not None and summary.timing.wall_s > 0:
        t = summary.timing
        console.print(f"driver time {t.wall_s:.1f} s: building {t.seconds['build']:.1f} s, "
                      f"waiting for agents {t.seconds['wait']:.1f} s, orchestration (Optuna, "
                      f"dispatch, MLflow, display) {t.overhead_s:.1f} s "
                      f"({100 * t.overhead_s / t.wall_s:.1f} %)")
    if summary.interrupted:
        console.print(f"resume it: paretoedge run {config} --workdir {workdir}"
                      + (f" --trials {budget}" if trials else ""))
        raise typer.Exit(130)


@app.command(name="confirm")
@_guard
def confirm_command(study: Annotated[str, typer.Argument(help="Study name.")],
                    workdir: WorkdirOption = Path("runs"),
                    rounds: Annotated[int | None, typer.Option(
                        help="Interleaved rounds (default: the study's confirm.rounds).",
                        min=1)] = None,
                    runs: Annotated[int | None, typer.Option(
                        help="Timed runs per bundle and round (default: confirm.runs_per_round).",
                        min=10)] = None) -> None:
    """Re-time the baseline and every front member on one agent, interleaved in rounds in one
    process, and evaluate them on the held-out test split; print the confirmed front."""
    from search.objective_set import ObjectiveSet
    from search.results.front_table import front_table
    from search.results.pareto import ParetoFront
    from search.study.confirmation import confirm_stored_study
    from search.workspace import Workspace

    workspace = Workspace(workdir.resolve(), study)
    records, config, settings = confirm_stored_study(workspace, rounds=rounds,
                                                     runs_per_round=runs)
    if config.tracking.mlflow:
        from search.tracking.mlflow_sync import sync_study

        console.print(f"MLflow: {sync_study(workspace.workdir, study).describe()}")
    # config.objectives: the ones stored with the study (confirm_stored_study)
    result = ParetoFront.from_records(records, config.constraints.max_accuracy_drop,
                                      objectives=ObjectiveSet.of(config.objectives))
    console.print(front_table(list(result.members), result.baseline,
                              f"Confirmed front of {study} ({settings.rounds} interleaved rounds "
                              f"x {settings.runs_per_round} runs; test split)",
                              result.objectives))


@app.command(name="profile")
@_guard
def profile_command(study: Annotated[str, typer.Argument(help="Study name.")],
                    trial: Annotated[int, typer.Option("--trial", help="Trial number.")],
                    workdir: WorkdirOption = Path("runs"),
                    runs: Annotated[int | None, typer.Option(
                        help="Inferences to profile (default: the study's profiling.runs).",
                        min=10)] = None,
                    again: Annotated[bool, typer.Option(
                        "--again", help="Take a new profile even when one is stored.")] = False,
                    output: Annotated[Format, typer.Option("--format")] = Format.table) -> None:
    """Where a trial's bundle spends its time: per operator type and stage, exit heads,
    (de)quantize nodes and layout transposes apart, the gaps between operators, preprocessing
    and the Python around the sessions (onnxruntime's profiler, on an agent of the study's
    class, over the test split). The front's profiles are taken when the study ends; others
    are taken now."""
    from search.results.profile_report import profile_csv, profile_table
    from search.results.profile_store import read_profile
    from search.study.profiling import profile_stored_study
    from search.workspace import Workspace

    workspace = Workspace(workdir.resolve(), study)
    workspace.require()
    profile = None if again or runs else read_profile(workspace, trial)
    if profile is None:
        _, profile = profile_stored_study(workspace, trial, runs=runs)
    if output == Format.json:
        print(json.dumps(profile.to_dict(), indent=2))
    elif output == Format.csv:
        print(profile_csv(profile), end="")
    else:
        console.print(profile_table(profile, f"Profile of {study} trial {trial}: time per "
                                             f"inference by operator"))


@app.command()
@_guard
def sync(study: Annotated[str, typer.Argument(help="Study name.")],
         workdir: WorkdirOption = Path("runs")) -> None:
    """Replay into MLflow whatever it lacks of a study (after MLflow was down or locked)."""
    from search.tracking.mlflow_sync import sync_study

    report = sync_study(workdir, study)
    console.print(f"{study}: {report.describe()}", markup=False, highlight=False)


@app.command()
@_guard
def ui(workdir: WorkdirOption = Path("runs"),
       port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: a free one).", min=0,
                                         max=65535)] = 5000) -> None:
    """Start the MLflow UI for the workdir's studies on 127.0.0.1 (Ctrl-C stops it)."""
    from search.cli.ui_command import experiment_links, serve_until_stopped, start_ui

    server = start_ui(workdir, port=port)

    def announce() -> None:
        console.print(f"MLflow UI: {server.url}  (store {workdir.resolve() / 'mlflow.db'}; "
                      f"Ctrl-C stops it)", markup=False, highlight=False)
        for name, link in experiment_links(workdir, server.url):
            console.print(f"{name}: {link}", markup=False, highlight=False, soft_wrap=True)
        for journal in sorted(workdir.resolve().glob("*/journal.log")):
            console.print(f"Optuna dashboard of {journal.parent.name}: optuna-dashboard "
                          f"{journal}", markup=False, highlight=False)
        sys.stdout.flush()

    serve_until_stopped(server, announce)


@app.command()
@_guard
def front(study: Annotated[str, typer.Argument(help="Study name.")],
          workdir: WorkdirOption = Path("runs"),
          format: Annotated[Format, typer.Option("--format")] = Format.table,
          include_contended: IncludeContendedOption = False) -> None:
    """Print the feasible Pareto front of a study (under the objectives it was searched with)
    with every metric."""
    from search.objective_set import ObjectiveSet
    from search.results.front_table import front_table, records_csv, records_json
    from search.results.pareto import ParetoFront
    from search.workspace import Workspace, load_records

    records, attrs = load_records(Workspace(workdir.resolve(), study))
    result = ParetoFront.from_records(records, float(attrs.get("max_accuracy_drop", 0.01)),
                                      include_contended=include_contended,
                                      objectives=ObjectiveSet.of_study(attrs))
    members = list(result.members)
    if format is Format.json:
        sys.stdout.write(records_json(members) + "\n")
    elif format is Format.csv:
        sys.stdout.write(records_csv(members))
    else:
        console.print(front_table(members, result.baseline, f"Feasible Pareto front of {study}",
                                  result.objectives))


@app.command()
@_guard
def best(study: Annotated[str, typer.Argument(help="Study name.")],
         where: Annotated[str | None, typer.Option(
             help="Constraints over metrics: 'latency_p95_ms <= 2 and size_kb < 500'.")] = None,
         maximize: Annotated[str | None, typer.Option(help="Metric to maximise.")] = None,
         minimize: Annotated[str | None, typer.Option(help="Metric to minimise.")] = None,
         device: Annotated[str | None, typer.Option("--device",
                                                    help="Only this device class.")] = None,
         export: Annotated[Path | None, typer.Option(help="Copy the bundle here.")] = None,
         workdir: WorkdirOption = Path("runs"),
         format: Annotated[Format, typer.Option("--format")] = Format.table,
         source: Annotated[Source, typer.Option(
             "--source", help="Read the trials from the Optuna journal or from MLflow (the "
                              "same answer).")] = Source.optuna,
         include_contended: IncludeContendedOption = False) -> None:
    """The best feasible trial under a constraint, and its bundle.

    Ties on the objective go along the study's objectives, accuracy last (for the defaults:
    lower p95 latency, then smaller size, then higher accuracy), then the earlier trial. Exit 1
    when nothing qualifies.
    """
    from search.cli.lookup import best as best_in_study
    from search.results.front_table import front_table

    answer = best_in_study(study, workdir=workdir, where=where, maximize=maximize,
                           minimize=minimize, device_class=device, source=source.value,
                           include_contended=include_contended)
    chosen, bundle, baseline = answer.record, answer.bundle_path, answer.baseline
    exported = answer.export(export) if export and bundle else None
    if format is Format.json:
        payload = chosen.to_dict()
        # absolute, so that a script running elsewhere can open it (both keys: the same path)
        payload["bundle"] = payload["bundle_path"] = str(bundle.resolve()) if bundle else None
        payload["exported_to"] = str(exported) if exported else None
        sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        return
    if format is Format.csv:
        from search.results.front_table import records_csv

        sys.stdout.write(records_csv([chosen]))
        return
    console.print(front_table([chosen], baseline, f"Best trial of {study}", answer.objectives))
    console.print(f"bundle: {bundle}")
    if exported:
        console.print(f"exported to: {exported}")


@app.command()
@_guard
def sensitivity(config: Annotated[Path, typer.Argument(help="Experiment YAML.")],
                workdir: WorkdirOption = Path("runs"),
                samples: Annotated[int | None, typer.Option(
                    help="Selection samples to evaluate (default: all).", min=1)] = None
                ) -> None:
    """Per layer group, the accuracy drop when only that group is quantized (onnxruntime, the
    selection split); saved for the study and logged to MLflow."""
    from search.cli.sensitivity_command import sensitivity_table
    from search.config import load_config
    from search.study.sensitivity import run_sensitivity
    from search.workspace import Workspace

    cfg = load_config(config)
    report, seeds = run_sensitivity(cfg, Workspace(workdir.resolve(), cfg.study),
                                    samples=samples, console=console)
    console.print(sensitivity_table(report, f"Quantization sensitivity of {cfg.study}"))
    console.print("mixed configurations it suggests (seeds): "
                  + ("; ".join("/".join(q) for q in seeds) or "none"))


# `paretoedge agent start` and `paretoedge agents` (issue 6)
from search.cli.agent_commands import register_agent_commands  # noqa: E402
from search.cli.builder_command import register_builder_commands  # noqa: E402

register_agent_commands(app, _guard)
register_builder_commands(app, _guard)

# `paretoedge deploy | deployments | rollback | pull | compare` (issue 16)
from search.cli.registry_commands import register_registry_commands  # noqa: E402

register_registry_commands(app, _guard, console)

# `paretoedge replay | monitor` (issue 16)
from search.cli.monitor_commands import register_monitor_commands  # noqa: E402

register_monitor_commands(app, _guard, console)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
