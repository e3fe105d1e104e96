"""Telemetry files: the header line, one line per record, bounded on disk, read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from device_agents import TelemetryError, TelemetryWriter, read_telemetry
from device_agents.deployment import MonitorReference
from device_agents.monitor_records import (
    InferenceRecord,
    MonitorEvent,
    MonitorSettings,
    WindowSummary,
)
from device_agents.telemetry import TelemetryHeader

REFERENCE = MonitorReference(exit_rates=(0.4, 0.6), confidence_edges=(0.0, 0.5, 1.0),
                             confidence_hist=(0.3, 0.7), latency_p50_ms=0.1,
                             latency_p95_ms=0.2, accuracy=0.95)
HEADER = TelemetryHeader(bundle_digest="ab" * 32, num_exits=2, settings=MonitorSettings(window=4),
                         reference=REFERENCE, source_digest="cd" * 32, started_at=1.0)
WINDOW = WindowSummary(window=0, first=0, count=4, latency_p50_ms=0.1, latency_p95_ms=0.2,
                       latency_p99_ms=0.25, latency_max_ms=0.3, exit_rates=(0.5, 0.5),
                       confidence_mean=0.8, confidence_hist=(0.25, 0.75), psi=0.01,
                       fallback_rate=0.25, fallbacks={"abstain": 1})
EVENT = MonitorEvent(kind="exit_rate_drift", window=0, observed=0.5, expected=0.4,
                     threshold=0.05, exit_index=0)


def _records(n: int) -> list[InferenceRecord]:
    return [InferenceRecord(n=i, latency_ms=round(0.1 + i * 1e-3, 6), exit_index=i % 2,
                            confidence=0.9, fallback="abstain" if i == 3 else None)
            for i in range(n)]


def test_every_record_round_trips_after_the_header(tmp_path: Path) -> None:
    writer = TelemetryWriter(tmp_path / "t.jsonl")
    writer.start(HEADER)
    records = _records(4)
    for record in records:
        writer.inference(record)
    writer.window(WINDOW)
    writer.event(EVENT)
    writer.close()

    lines = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [line["type"] for line in lines] == ["header"] + ["inference"] * 4 + ["window",
                                                                                  "event"]
    assert lines[0]["format"] == "paretoedge-telemetry" and lines[0]["version"] == 1
    read = read_telemetry(tmp_path / "t.jsonl")
    assert read.header == HEADER
    assert list(read.inferences) == records
    assert read.windows == (WINDOW,) and read.events == (EVENT,)


def test_sampling_keeps_every_nth_inference_line(tmp_path: Path) -> None:
    writer = TelemetryWriter(tmp_path / "t.jsonl", sample_every=5)
    writer.start(HEADER)
    for record in _records(23):
        writer.inference(record)
    writer.close()

    assert [r.n for r in read_telemetry(tmp_path / "t.jsonl").inferences] == [0, 5, 10, 15, 20]


def test_the_file_is_bounded_and_rotates_to_one_dot_1_file(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    writer = TelemetryWriter(path, max_bytes=4096)
    writer.start(HEADER)
    for record in _records(500):  # about 80 bytes a line: several rotations
        writer.inference(record)
    writer.close()

    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["t.jsonl", "t.jsonl.1"]
    for p in (path, writer.rotated_path):
        assert p.stat().st_size <= 4096
        read = read_telemetry(p)
        assert read.header == HEADER  # each file reads alone
    newest = read_telemetry(path).inferences
    older = read_telemetry(writer.rotated_path).inferences
    assert newest[-1].n == 499 and older[-1].n + 1 == newest[0].n


def test_a_missing_file_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(TelemetryError, match=r"nowhere\.jsonl: no such telemetry file"):
        read_telemetry(tmp_path / "nowhere.jsonl")


@pytest.mark.parametrize(("content", "message"), [
    ("", "empty telemetry file"),
    ('{"type": "header"}\n', r":1: not a telemetry line \(format is None"),
    ('{"type": "inference", "n": 0}\n', r":1: not a telemetry line \(missing field"),
    ('not json\n{"type": "event"}\n', r":1: not a telemetry line"),
    ('[1, 2]\n', "not a JSON object"),
    ('{"type": "inference", "n": 0, "latency_ms": 1, "exit": 0, "confidence": 1}\n'
     '{"type": "mystery"}\n', r":2: not a telemetry line \(unknown line type 'mystery'\)"),
])
def test_a_malformed_file_names_the_file_and_line(tmp_path: Path, content: str,
                                                  message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)

    with pytest.raises(TelemetryError, match=message) as caught:
        read_telemetry(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_binary_file_is_unreadable_telemetry(tmp_path: Path) -> None:
    path = tmp_path / "blob.jsonl"
    path.write_bytes(b"\xff\xfe\x00\x81")

    with pytest.raises(TelemetryError, match="cannot read telemetry"):
        read_telemetry(path)


def test_a_last_line_still_being_written_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    writer = TelemetryWriter(path)
    writer.start(HEADER)
    writer.window(WINDOW)
    writer.close()
    with open(path, "a") as handle:
        handle.write('{"type": "inference", "n": 1')  # the device was cut off mid-line

    read = read_telemetry(path)
    assert read.windows == (WINDOW,) and read.inferences == ()


def test_bounds_below_a_header_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TelemetryError, match="max_bytes must be >= 4096"):
        TelemetryWriter(tmp_path / "t.jsonl", max_bytes=100)


def test_a_restart_keeps_the_previous_file_as_dot_1(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    first = TelemetryWriter(path)
    first.start(HEADER)
    first.window(WINDOW)
    first.close()

    second = TelemetryWriter(path)
    second.start(HEADER)
    second.event(EVENT)
    second.close()

    assert read_telemetry(path).events == (EVENT,) and read_telemetry(path).windows == ()
    assert read_telemetry(second.rotated_path).windows == (WINDOW,)


def test_writing_after_close_is_a_telemetry_error(tmp_path: Path) -> None:
    writer = TelemetryWriter(tmp_path / "t.jsonl")
    writer.start(HEADER)
    writer.close()

    with pytest.raises(TelemetryError, match="after close"):
        writer.window(WINDOW)
