"""The progress display: a live panel on a terminal, plain lines otherwise."""

from __future__ import annotations

import io

from rich.console import Console

from search.study.progress import ProgressDisplay, ProgressState, best_feasible

STATE = ProgressState(study="digits", budget=20, finished=7, failed=1, running=2,
                      best={"accuracy": 0.9861, "latency_p95_ms": 0.1234, "size_kb": 321.5},
                      front_size=4, hypervolume=0.4213, eta_s=250.0)


def test_plain_output_is_one_line_per_update() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=80)  # not a terminal
    with ProgressDisplay(console) as display:
        assert not display.live_enabled
        display.print("trial 7 done")
        display.update(STATE)
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "trial 7 done"
    assert lines[1] == ("progress digits: 7/20 trials done, 1 failed, 2 running; best feasible "
                        "accuracy 0.9861, latency_p95_ms 0.1234, size_kb 321.5; front 4, "
                        "hypervolume 0.4213; ETA 4m10s")
    assert len(lines) == 2  # long lines are not wrapped: one update, one line


def test_a_terminal_gets_a_live_panel_with_every_figure() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120, color_system=None)
    with ProgressDisplay(console, clock=lambda: 0.0) as display:
        assert display.live_enabled
        display.update(STATE)
    text = buffer.getvalue()
    for part in ("7/20 done", "1 failed", "2 running", "ETA 4m10s", "accuracy", "0.9861",
                 "latency_p95_ms", "0.1234", "size_kb", "321.5", "front 4 trials",
                 "hypervolume 0.4213"):
        assert part in text, part
    assert "progress digits:" not in text  # no log lines on a terminal


def test_best_feasible_takes_each_objective_on_its_own(record) -> None:
    records = [record(0, accuracy=0.95, p95=1.0, size=400, baseline=True),
               record(1, accuracy=0.93, p95=0.2, size=300),
               record(2, accuracy=0.99, p95=0.1, size=10, feasible=False),
               record(3, accuracy=0.99, p95=0.1, size=10, state="FAIL", feasible=False)]
    assert best_feasible(records) == {"accuracy": 0.95, "latency_p95_ms": 0.2, "size_kb": 300}
    assert best_feasible([]) == {}
