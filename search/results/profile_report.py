"""A bundle's per-operator profile as people read it: a rich table, a CSV and a plotly chart."""

from __future__ import annotations

import csv
import io

from rich.table import Table

from device_agents import OperatorProfile


def _share(value: float, total: float) -> str:
    return f"{100 * value / total:.1f} %" if total else "-"


def profile_rows(profile: OperatorProfile) -> list[tuple[str, str, str, int, float]]:
    """(stage, part, operator type, nodes, us per inference), kernels first (largest first
    within a stage), then each stage's gap, then the preprocessing and the time outside."""
    rows: list[tuple[str, str, str, int, float]] = []
    for k, gap in enumerate(profile.stage_gap_us):
        stage = [op for op in profile.operators if op.stage == k]
        for op in sorted(stage, key=lambda o: -o.us):
            rows.append((str(k), op.part, op.op_type, op.nodes, op.us))
        rows.append((str(k), "gaps", "between operators", 0, gap))
    rows.append(("-", "preprocessing", "numpy", 0, profile.preprocessing_in_wall_us))
    rows.append(("-", "outside sessions", "python, exit tests", 0, profile.outside_us))
    return rows


def profile_table(profile: OperatorProfile, title: str) -> Table:
    """Every row of :func:`profile_rows` with its share of the wall time, then the parts."""
    total = profile.wall_us
    table = Table(title=title, title_justify="left")
    for name, justify in (("stage", "right"), ("part", "left"), ("operator", "left"),
                          ("nodes", "right"), ("us / inference", "right"),
                          ("share", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for stage, part, op_type, nodes, us in profile_rows(profile):
        table.add_row(stage, part, op_type, str(nodes) if nodes else "", f"{us:.2f}",
                      _share(us, total))
    table.add_section()
    for part, us in profile.by_part().items():
        if us > 0:
            table.add_row("all", part, "", "", f"{us:.2f}", _share(us, total))
    runs = ", ".join(f"stage {k}: {n}" for k, n in enumerate(profile.stage_runs))
    rates = " / ".join(f"{r:.2f}" for r in profile.exit_rates)
    table.caption = (f"{profile.inferences} inferences: {profile.wall_us:.1f} us each with "
                     f"the profiler, {profile.plain_wall_us:.1f} us without (same process, "
                     f"right after); session runs {runs}; exit rates {rates}")
    per_node = profile.profiler_us_per_node
    if per_node is not None:
        table.caption += (f"; the profiler's own cost: about {per_node:.1f} us per node run, "
                          f"mostly in the gaps and outside the sessions (read the shares of "
                          f"the kernels, and the latency from the plain timing)")
    return table


def profile_csv(profile: OperatorProfile) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["stage", "part", "operator", "nodes", "us_per_inference", "share"])
    for stage, part, op_type, nodes, us in profile_rows(profile):
        share = us / profile.wall_us if profile.wall_us else 0.0
        writer.writerow([stage, part, op_type, nodes, f"{us:.4f}", f"{share:.4f}"])
    return out.getvalue()


def profile_html(profile: OperatorProfile, title: str) -> str:
    """A stacked bar per stage: kernel time per operator type, the gaps, and beside them the
    preprocessing and the time outside the sessions."""
    import plotly.graph_objects as go

    figure = go.Figure()
    stages = [f"stage {k}" for k in range(len(profile.stage_session_us))]
    columns = [*stages, "around the sessions"]
    for op_type, _ in profile.by_op_type():
        values = [sum(op.us for op in profile.operators
                      if op.stage == k and op.op_type == op_type) for k in range(len(stages))]
        figure.add_bar(name=op_type, x=columns, y=[*values, 0.0])
    figure.add_bar(name="gaps between operators", x=columns, y=[*profile.stage_gap_us, 0.0])
    figure.add_bar(name="preprocessing", x=columns,
                   y=[0.0] * len(stages) + [profile.preprocessing_in_wall_us])
    figure.add_bar(name="outside sessions (python, exit tests)", x=columns,
                   y=[0.0] * len(stages) + [profile.outside_us])
    figure.update_layout(barmode="stack", title=title, yaxis_title="us per inference",
                         legend_title="operator type")
    html: str = figure.to_html(include_plotlyjs=True, full_html=True)
    return html
