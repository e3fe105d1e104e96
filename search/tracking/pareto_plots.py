"""Pictures of a study for its MLflow run: ``pareto.html`` (plotly) and ``pareto.png``.

The x axis is the study's first latency objective (the first objective other than accuracy
when none is a latency); each other objective is plotted against it, accuracy first: with 2
objectives one 2-D plot, with the defaults accuracy and size against p95 latency. A last panel
shows the hypervolume per finished trial.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from search.metrics import METRICS
from search.objective_set import Objective, ObjectiveSet
from search.records import TrialRecord
from search.results.pareto import HypervolumePoint
from spaces.candidate import candidate_label

_GROUPS = (("Pareto front", "#d62728"), ("feasible", "#1f77b4"),
           ("outside the accuracy band", "#b0b0b0"))


def _group(record: TrialRecord, front: set[int]) -> str:
    if record.number in front:
        return "Pareto front"
    return "feasible" if record.feasible else "outside the accuracy band"


def _plotted(records: Sequence[TrialRecord], objectives: ObjectiveSet) -> list[TrialRecord]:
    return [r for r in records if r.complete and set(objectives.names) <= set(r.metrics)]


def _axes(objectives: ObjectiveSet) -> tuple[Objective, list[Objective]]:
    """The x axis and the objectives plotted against it (accuracy first)."""
    x = objectives.order_by
    ys = sorted((o for o in objectives.objectives if o != x),
                key=lambda o: o.metric != "accuracy")
    return x, ys


def _label(metric: str) -> str:
    unit = METRICS[metric].unit if metric in METRICS else ""
    name = {"accuracy": "accuracy", "size_kb": "size"}.get(metric)
    if name is None and metric.startswith("latency_"):
        name = metric.removeprefix("latency_").removesuffix("_ms") + " latency"
    return (name or metric) + (f" ({unit})" if unit else "")


def _hover(r: TrialRecord, objectives: ObjectiveSet) -> str:
    lines = [f"trial {r.number}{' (fp32)' if r.baseline else ''}",
             candidate_label(dict(r.candidate))]
    lines += [f"{name} {r.metrics[name]:.4g}" for name in objectives.names]
    return "<br>".join(lines)


def pareto_html(records: Sequence[TrialRecord], front: set[int],
                history: Sequence[HypervolumePoint], title: str,
                objectives: ObjectiveSet | None = None) -> str:
    """An interactive page: each objective against the first latency objective, and the
    hypervolume.

    Self-contained (plotly.js embedded): the MLflow UI serves it with no internet access.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    objectives = objectives or ObjectiveSet.default()
    x_axis, ys = _axes(objectives)
    done = _plotted(records, objectives)
    columns = len(ys) + 1
    figure = make_subplots(rows=1, cols=columns, subplot_titles=(
        *(f"{_label(y.metric)} vs {_label(x_axis.metric)}" for y in ys),
        "hypervolume per finished trial"))
    for name, color in _GROUPS:
        chosen = [r for r in done if _group(r, front) == name]
        if not chosen:
            continue
        hover = [_hover(r, objectives) for r in chosen]
        x = [r.metrics[x_axis.metric] for r in chosen]
        for column, y in enumerate(ys, start=1):
            figure.add_trace(go.Scatter(
                x=x, y=[r.metrics[y.metric] for r in chosen], mode="markers", name=name,
                legendgroup=name, showlegend=column == 1, text=hover, hoverinfo="text",
                marker={"color": color, "size": 10 if name == "Pareto front" else 7}),
                row=1, col=column)
    figure.add_trace(go.Scatter(x=[p.step for p in history], y=[p.hypervolume for p in history],
                                mode="lines+markers", name="hypervolume",
                                text=[f"after trial {p.trial}" for p in history]),
                     row=1, col=columns)
    for column, y in enumerate(ys, start=1):
        figure.update_xaxes(title_text=_label(x_axis.metric), row=1, col=column)
        figure.update_yaxes(title_text=_label(y.metric), row=1, col=column)
    figure.update_xaxes(title_text="finished trials", row=1, col=columns)
    figure.update_layout(title=title, height=520, width=500 * columns)
    return figure.to_html(include_plotlyjs=True, full_html=True)


def pareto_png(records: Sequence[TrialRecord], front: set[int],
               history: Sequence[HypervolumePoint], title: str,
               objectives: ObjectiveSet | None = None) -> bytes:
    """The same panels as a static PNG (matplotlib, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    objectives = objectives or ObjectiveSet.default()
    x_axis, ys = _axes(objectives)
    done = _plotted(records, objectives)
    columns = len(ys) + 1
    figure = Figure(figsize=(5 * columns, 4.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, columns)
    for name, color in reversed(_GROUPS):
        chosen = [r for r in done if _group(r, front) == name]
        if not chosen:
            continue
        x = [r.metrics[x_axis.metric] for r in chosen]
        size = 40 if name == "Pareto front" else 18
        for ax, y in zip(axes, ys, strict=False):
            ax.scatter(x, [r.metrics[y.metric] for r in chosen], c=color, s=size, label=name)
    members = sorted((r for r in done if r.number in front),
                     key=lambda r: objectives.order_key(r.metrics))
    for r in members:
        axes[0].annotate(str(r.number), (r.metrics[x_axis.metric], r.metrics[ys[0].metric]),
                         fontsize=7, xytext=(3, 3), textcoords="offset points")
    for ax, y in zip(axes, ys, strict=False):
        ax.set(xlabel=_label(x_axis.metric), ylabel=_label(y.metric),
               title=f"{_label(y.metric)} vs {_label(x_axis.metric)}")
    axes[-1].plot([p.step for p in history], [p.hypervolume for p in history], marker=".")
    axes[-1].set(xlabel="finished trials", ylabel="hypervolume", title="hypervolume")
    if done:
        axes[0].legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def history_csv(history: Sequence[HypervolumePoint]) -> str:
    lines = ["step,trial,hypervolume,front_size"]
    lines += [f"{p.step},{p.trial},{p.hypervolume!r},{p.front_size}" for p in history]
    return "\n".join(lines) + "\n"
