"""Pictures of a study for its MLflow run: ``pareto.html`` (plotly) and ``pareto.png``."""

from __future__ import annotations

import io
from collections.abc import Sequence

from search.records import TrialRecord
from search.results.pareto import HypervolumePoint
from spaces.candidate import candidate_label

_GROUPS = (("Pareto front", "#d62728"), ("feasible", "#1f77b4"),
           ("outside the accuracy band", "#b0b0b0"))


def _group(record: TrialRecord, front: set[int]) -> str:
    if record.number in front:
        return "Pareto front"
    return "feasible" if record.feasible else "outside the accuracy band"


def _plotted(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    return [r for r in records if r.complete
            and {"accuracy", "latency_p95_ms", "size_kb"} <= set(r.metrics)]


def pareto_html(records: Sequence[TrialRecord], front: set[int],
                history: Sequence[HypervolumePoint], title: str) -> str:
    """An interactive page: accuracy and size against p95 latency, and the hypervolume.

    Self-contained (plotly.js embedded): the MLflow UI serves it with no internet access.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    done = _plotted(records)
    figure = make_subplots(rows=1, cols=3, subplot_titles=(
        "accuracy vs p95 latency", "size vs p95 latency", "hypervolume per finished trial"))
    for name, color in _GROUPS:
        chosen = [r for r in done if _group(r, front) == name]
        if not chosen:
            continue
        hover = [f"trial {r.number}{' (fp32)' if r.baseline else ''}<br>"
                 f"{candidate_label(dict(r.candidate))}<br>"
                 f"accuracy {r.metrics['accuracy']:.4f}<br>"
                 f"p95 {r.metrics['latency_p95_ms']:.4f} ms<br>"
                 f"size {r.metrics['size_kb']:.1f} KB" for r in chosen]
        x = [r.metrics["latency_p95_ms"] for r in chosen]
        for column, key in ((1, "accuracy"), (2, "size_kb")):
            figure.add_trace(go.Scatter(
                x=x, y=[r.metrics[key] for r in chosen], mode="markers", name=name,
                legendgroup=name, showlegend=column == 1, text=hover, hoverinfo="text",
                marker={"color": color, "size": 10 if name == "Pareto front" else 7}),
                row=1, col=column)
    figure.add_trace(go.Scatter(x=[p.step for p in history], y=[p.hypervolume for p in history],
                                mode="lines+markers", name="hypervolume",
                                text=[f"after trial {p.trial}" for p in history]),
                     row=1, col=3)
    figure.update_xaxes(title_text="p95 latency (ms)", row=1, col=1)
    figure.update_xaxes(title_text="p95 latency (ms)", row=1, col=2)
    figure.update_xaxes(title_text="finished trials", row=1, col=3)
    figure.update_yaxes(title_text="accuracy", row=1, col=1)
    figure.update_yaxes(title_text="size (KB)", row=1, col=2)
    figure.update_layout(title=title, height=520, width=1500)
    return figure.to_html(include_plotlyjs=True, full_html=True)


def pareto_png(records: Sequence[TrialRecord], front: set[int],
               history: Sequence[HypervolumePoint], title: str) -> bytes:
    """The same three panels as a static PNG (matplotlib, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    done = _plotted(records)
    figure = Figure(figsize=(15, 4.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    for name, color in reversed(_GROUPS):
        chosen = [r for r in done if _group(r, front) == name]
        if not chosen:
            continue
        x = [r.metrics["latency_p95_ms"] for r in chosen]
        size = 40 if name == "Pareto front" else 18
        axes[0].scatter(x, [r.metrics["accuracy"] for r in chosen], c=color, s=size, label=name)
        axes[1].scatter(x, [r.metrics["size_kb"] for r in chosen], c=color, s=size, label=name)
    members = sorted((r for r in done if r.number in front),
                     key=lambda r: r.metrics["latency_p95_ms"])
    for r in members:
        axes[0].annotate(str(r.number), (r.metrics["latency_p95_ms"], r.metrics["accuracy"]),
                         fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes[0].set(xlabel="p95 latency (ms)", ylabel="accuracy", title="accuracy vs p95 latency")
    axes[1].set(xlabel="p95 latency (ms)", ylabel="size (KB)", title="size vs p95 latency")
    axes[2].plot([p.step for p in history], [p.hypervolume for p in history], marker=".")
    axes[2].set(xlabel="finished trials", ylabel="hypervolume", title="hypervolume")
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
