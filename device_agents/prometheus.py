"""The monitor's figures as Prometheus text, served on 127.0.0.1 by a stdlib HTTP thread.

``GET /metrics`` answers the text exposition format (version 0.0.4): counters of inferences,
fallbacks and events since the monitor started, and the last full or partial window's latency
quantiles, exit rates, fallback rate and confidence PSI as gauges. No dependency beyond the
standard library; loopback only. See docs/MONITORING.md.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from device_agents.deployment_spec import FALLBACK_ACTIONS
from device_agents.errors import MonitorError
from device_agents.monitor import Monitor
from device_agents.monitor_records import EVENT_KINDS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LOOPBACK = "127.0.0.1"


def exposition(monitor: Monitor) -> str:
    """The monitor's figures in the Prometheus text format."""
    inferences, window, fallbacks, events = monitor.snapshot()
    lines = [
        "# HELP paretoedge_inferences_total Inferences the monitor recorded.",
        "# TYPE paretoedge_inferences_total counter",
        f"paretoedge_inferences_total {inferences}",
        "# HELP paretoedge_fallbacks_total Inferences a fallback answered, by action.",
        "# TYPE paretoedge_fallbacks_total counter",
        *(f'paretoedge_fallbacks_total{{action="{a}"}} {fallbacks.get(a, 0)}'
          for a in FALLBACK_ACTIONS),
        "# HELP paretoedge_events_total Monitor events raised, by kind.",
        "# TYPE paretoedge_events_total counter",
        *(f'paretoedge_events_total{{kind="{k}"}} {events.get(k, 0)}' for k in EVENT_KINDS),
    ]
    if window is not None:
        lines += [
            "# HELP paretoedge_window_latency_ms Latency quantiles of the last window (ms).",
            "# TYPE paretoedge_window_latency_ms gauge",
            *(f'paretoedge_window_latency_ms{{quantile="{q}"}} {v:.6g}'
              for q, v in (("0.5", window.latency_p50_ms), ("0.95", window.latency_p95_ms),
                           ("0.99", window.latency_p99_ms))),
            "# HELP paretoedge_window_exit_rate Share of the last window each exit answered.",
            "# TYPE paretoedge_window_exit_rate gauge",
            *(f'paretoedge_window_exit_rate{{exit="{k}"}} {rate:.6g}'
              for k, rate in enumerate(window.exit_rates)),
            "# HELP paretoedge_window_fallback_rate Share of the last window a fallback "
            "answered.",
            "# TYPE paretoedge_window_fallback_rate gauge",
            f"paretoedge_window_fallback_rate {window.fallback_rate:.6g}",
            "# HELP paretoedge_window_index The last window's number (from 0).",
            "# TYPE paretoedge_window_index gauge",
            f"paretoedge_window_index {window.window}",
        ]
        if window.psi is not None:
            lines += [
                "# HELP paretoedge_window_confidence_psi Population stability index of the "
                "last window's confidence against the reference.",
                "# TYPE paretoedge_window_confidence_psi gauge",
                f"paretoedge_window_confidence_psi {window.psi:.6g}",
            ]
    return "\n".join(lines) + "\n"


class PrometheusExporter:
    """Serves :func:`exposition` of a monitor at ``http://127.0.0.1:PORT/metrics``.

    ``port=0`` picks a free port (read it back from :attr:`port`). Use as a context manager, or
    call :meth:`start` and :meth:`stop`.

    Example:
        >>> with PrometheusExporter(monitor, port=9464) as exporter:  # doctest: +SKIP
        ...     serve_requests()
    """

    def __init__(self, monitor: Monitor, *, port: int = 9464) -> None:
        self.monitor = monitor
        self._requested_port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise MonitorError("prometheus exporter: not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/metrics"

    def start(self) -> PrometheusExporter:
        if self._server is not None:
            return self
        monitor = self.monitor

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404, "only /metrics")
                    return
                body = exposition(monitor).encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # a scrape every few seconds is not news

        try:
            self._server = ThreadingHTTPServer((LOOPBACK, self._requested_port), Handler)
        except OSError as exc:
            raise MonitorError(f"prometheus exporter: cannot listen on {LOOPBACK}:"
                               f"{self._requested_port} ({exc.strerror})") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="paretoedge-prometheus", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server, self._thread = None, None

    def __enter__(self) -> PrometheusExporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
