"""``paretoedge monitor ... --html OUT.html``: the telemetry as one self-contained plotly page.

Four panels over the windows of every file: latency p50/p95 (with the measured p95 and the
event threshold), each exit's rate (with the expected rates), the confidence PSI (with the
threshold), and the events. plotly.js is embedded, so the page opens without a network.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from search.cli.telemetry_summary import TelemetrySummary

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def telemetry_html(summaries: Sequence[TelemetrySummary], title: str = "paretoedge monitor",
                   psi_threshold: float = 0.25, latency_factor: float = 1.5) -> str:
    """The page's HTML (see the module)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=4, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                           subplot_titles=("latency per window (ms)", "exit rates per window",
                                           "confidence drift (PSI) per window", "events"))
    for i, s in enumerate(summaries):
        color = _COLORS[i % len(_COLORS)]
        name = Path(s.path).name
        x = [w.window for w in s.windows]
        figure.add_trace(go.Scatter(x=x, y=[w.latency_p95_ms for w in s.windows],
                                    mode="lines+markers", name=f"{name} p95",
                                    line={"color": color}), row=1, col=1)
        figure.add_trace(go.Scatter(x=x, y=[w.latency_p50_ms for w in s.windows],
                                    mode="lines", name=f"{name} p50",
                                    line={"color": color, "dash": "dot"}), row=1, col=1)
        exits = max((len(w.exit_rates) for w in s.windows), default=0)
        for k in range(exits):
            figure.add_trace(go.Scatter(x=x, y=[w.exit_rates[k] for w in s.windows],
                                        mode="lines+markers", name=f"{name} exit {k}",
                                        line={"color": color,
                                              "dash": ("solid", "dash", "dot")[k % 3]}),
                             row=2, col=1)
        figure.add_trace(go.Scatter(x=x, y=[w.psi for w in s.windows], mode="lines+markers",
                                    name=f"{name} PSI", line={"color": color}), row=3, col=1)
        figure.add_trace(go.Scatter(
            x=[e.window for e in s.events], y=[e.kind for e in s.events], mode="markers",
            name=f"{name} events", marker={"color": color, "size": 10, "symbol": "x"},
            text=[e.describe() for e in s.events], hoverinfo="text"), row=4, col=1)
        ref = s.reference
        if ref is not None:
            figure.add_hline(y=ref.latency_p95_ms, line={"color": color, "dash": "dash"},
                             annotation_text=f"measured p95 {ref.latency_p95_ms:.3f}",
                             row=1, col=1)
            figure.add_hline(y=ref.latency_p95_ms * latency_factor,
                             line={"color": "grey", "dash": "dot"},
                             annotation_text=f"p95 x {latency_factor:g}", row=1, col=1)
            for k, rate in enumerate(ref.exit_rates):
                figure.add_hline(y=rate, line={"color": "grey", "dash": "dash"},
                                 annotation_text=f"expected exit {k}", row=2, col=1)
    figure.add_hline(y=psi_threshold, line={"color": "red", "dash": "dash"},
                     annotation_text=f"PSI {psi_threshold:g}", row=3, col=1)
    figure.update_xaxes(title_text="window", row=4, col=1)
    figure.update_layout(title=title, height=1100, width=1100)
    return figure.to_html(include_plotlyjs=True, full_html=True)
