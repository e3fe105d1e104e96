"""Telemetry files: the monitor's JSON lines, bounded on disk, and reading them back.

A file starts with a header line (``type: header``: the format, the bundle's digest, the
reference the monitor compares against, its settings), then one line per inference (every
``sample_every``-th; windows are computed from every inference regardless), one per window
summary and one per event, in the order they happened. When the next line would take the file
past ``max_bytes`` it is renamed to ``<file>.1`` (replacing an older one) and a new file starts
with the header again, so each file reads alone. See docs/MONITORING.md.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from device_agents.deployment_spec import MonitorReference
from device_agents.errors import TelemetryError
from device_agents.monitor_records import (
    InferenceRecord,
    MonitorEvent,
    MonitorSettings,
    WindowSummary,
)

TELEMETRY_FORMAT = "paretoedge-telemetry"
TELEMETRY_VERSION = 1
#: the smallest file bound: a header and a few records must fit
MIN_MAX_BYTES = 4096


@dataclass(frozen=True)
class TelemetryHeader:
    """The first line of every telemetry file."""

    bundle_digest: str
    num_exits: int
    settings: MonitorSettings
    reference: MonitorReference | None = None
    source_digest: str | None = None
    started_at: float = 0.0
    sample_every: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"type": "header", "format": TELEMETRY_FORMAT, "version": TELEMETRY_VERSION,
                "bundle_digest": self.bundle_digest, "source_digest": self.source_digest,
                "num_exits": self.num_exits, "settings": self.settings.to_dict(),
                "reference": None if self.reference is None else self.reference.to_dict(),
                "started_at": self.started_at, "sample_every": self.sample_every}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TelemetryHeader:
        if data.get("format") != TELEMETRY_FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {TELEMETRY_FORMAT!r}")
        if int(data.get("version", -1)) != TELEMETRY_VERSION:
            raise ValueError(f"telemetry version {data.get('version')!r} is not supported "
                             f"(this reads {TELEMETRY_VERSION})")
        reference, source = data.get("reference"), data.get("source_digest")
        return cls(bundle_digest=str(data["bundle_digest"]), num_exits=int(data["num_exits"]),
                   settings=MonitorSettings.from_dict(data.get("settings", {})),
                   reference=None if reference is None else MonitorReference.from_dict(reference),
                   source_digest=None if source is None else str(source),
                   started_at=float(data.get("started_at", 0.0)),
                   sample_every=int(data.get("sample_every", 1)))


class TelemetryWriter:
    """Appends the monitor's records to ``path`` as JSON lines, at most ``max_bytes`` a file.

    ``sample_every``: write every n-th inference line (0: none); windows and events are always
    written. The file is flushed after every window and event line.

    Example:
        >>> writer = TelemetryWriter("telemetry.jsonl", max_bytes=1 << 20)  # doctest: +SKIP
        >>> CascadeRunner.load("deploy/v1", monitor=Monitor(telemetry=writer))  # doctest: +SKIP
    """

    def __init__(self, path: Path | str, *, max_bytes: int = 10_000_000,
                 sample_every: int = 1) -> None:
        if max_bytes < MIN_MAX_BYTES:
            raise TelemetryError(f"telemetry: max_bytes must be >= {MIN_MAX_BYTES}, got "
                                 f"{max_bytes}")
        if sample_every < 0:
            raise TelemetryError(f"telemetry: sample_every must be >= 0, got {sample_every}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.sample_every = sample_every
        self._header_line: bytes | None = None
        self._handle: IO[bytes] | None = None
        self._size = 0

    @property
    def rotated_path(self) -> Path:
        return self.path.with_name(self.path.name + ".1")

    def start(self, header: TelemetryHeader) -> None:
        """Open a new file and write the header line; a non-empty file already at ``path``
        (a device that restarted) is kept as ``<path>.1`` first, like a rotation."""
        self.close()
        self._header_line = _line(header.to_dict())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file() and self.path.stat().st_size > 0:
            os.replace(self.path, self.rotated_path)
        self._open_new()

    def inference(self, record: InferenceRecord) -> None:
        if self.sample_every and record.n % self.sample_every == 0:
            self._write(_line(record.to_dict()), flush=False)

    def window(self, summary: WindowSummary) -> None:
        self._write(_line(summary.to_dict()), flush=True)

    def event(self, event: MonitorEvent) -> None:
        self._write(_line(event.to_dict()), flush=True)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _open_new(self) -> None:
        assert self._header_line is not None
        try:
            self._handle = open(self.path, "wb")  # noqa: SIM115 - kept open between writes
        except OSError as exc:
            raise TelemetryError(f"{self.path}: cannot write telemetry ({exc.strerror})") from exc
        self._handle.write(self._header_line)
        self._size = len(self._header_line)

    def _write(self, line: bytes, *, flush: bool) -> None:
        if self._handle is None:
            raise TelemetryError(f"{self.path}: telemetry written before start() or after "
                                 f"close()")
        if self._size + len(line) > self.max_bytes:
            self._handle.close()
            os.replace(self.path, self.rotated_path)
            self._open_new()
            assert self._handle is not None
        self._handle.write(line)
        self._size += len(line)
        if flush:
            self._handle.flush()


def _line(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, separators=(",", ":")) + "\n").encode()


def new_header(*, bundle_digest: str, num_exits: int, settings: MonitorSettings,
               reference: MonitorReference | None, source_digest: str | None,
               sample_every: int) -> TelemetryHeader:
    return TelemetryHeader(bundle_digest=bundle_digest, num_exits=num_exits, settings=settings,
                           reference=reference, source_digest=source_digest,
                           started_at=time.time(), sample_every=sample_every)


@dataclass(frozen=True)
class TelemetryFile:
    """One telemetry file read back: its header (``None`` when it has none) and records."""

    path: Path
    header: TelemetryHeader | None
    inferences: tuple[InferenceRecord, ...] = ()
    windows: tuple[WindowSummary, ...] = ()
    events: tuple[MonitorEvent, ...] = field(default=())


def read_telemetry(path: Path | str) -> TelemetryFile:
    """Read a telemetry file; a missing, unreadable or malformed one is a
    :class:`TelemetryError` naming the file (and the line)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise TelemetryError(f"{path}: no such telemetry file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise TelemetryError(f"{path}: cannot read telemetry ({reason})") from exc
    header: TelemetryHeader | None = None
    inferences: list[InferenceRecord] = []
    windows: list[WindowSummary] = []
    events: list[MonitorEvent] = []
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise TelemetryError(f"{path}: empty telemetry file")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            kind = data.get("type")
            if kind == "header":
                if number != 1:
                    raise ValueError("a header after the first line")
                header = TelemetryHeader.from_dict(data)
            elif kind == "inference":
                inferences.append(InferenceRecord.from_dict(data))
            elif kind == "window":
                windows.append(WindowSummary.from_dict(data))
            elif kind == "event":
                events.append(MonitorEvent.from_dict(data))
            else:
                raise ValueError(f"unknown line type {kind!r}")
        except (ValueError, KeyError, TypeError) as exc:
            if number == len(lines) and not text.endswith("\n"):
                continue  # the last line of a file still being written
            reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise TelemetryError(f"{path}:{number}: not a telemetry line ({reason})") from exc
    return TelemetryFile(path=path, header=header, inferences=tuple(inferences),
                         windows=tuple(windows), events=tuple(events))
