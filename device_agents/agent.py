"""Device agents: the one-method interface, the local implementation and a fake for tests."""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from device_agents.bundle import BundlePayload
from device_agents.errors import EvalSetError, MeasurementError
from device_agents.eval_set import EvalSet, EvalSetPayload
from device_agents.measure import device_fingerprint, measure_bundle
from device_agents.protocol import Measurement, MeasureRequest


@runtime_checkable
class DeviceAgent(Protocol):
    """Anything that can measure a bundle on a device."""

    def measure(self, request: MeasureRequest) -> Measurement: ...


def _resolve(value: Any) -> Any:
    """A payload, or a Ray object reference to one (resolved only when needed)."""
    if type(value).__name__ == "ObjectRef":
        import ray

        return ray.get(value)
    return value


class LocalDeviceAgent:
    """Measures bundles in this process, pinned to ``cores`` when given.

    Eval sets are cached in memory by sha256 and bundles on disk under ``cache_dir`` by digest,
    so a repeated request transfers and writes nothing.

    Example:
        >>> agent = LocalDeviceAgent(device_class="x86-edge")
        >>> agent.measure(request).latency.p95_ms  # doctest: +SKIP
        0.21
    """

    def __init__(self, *, device_class: str, threads: int = 1,
                 cores: tuple[int, ...] | None = None, cache_dir: Path | None = None,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",),
                 agent_id: str | None = None) -> None:
        self.device_class = device_class
        self.threads = threads
        self.providers = providers
        self.agent_id = agent_id or f"{device_class}-{uuid.uuid4().hex[:8]}"
        if cores:
            os.sched_setaffinity(0, set(cores))
        self.cores = tuple(sorted(os.sched_getaffinity(0))) if hasattr(
            os, "sched_getaffinity") else ()
        self.cache_dir = Path(cache_dir or Path(tempfile.gettempdir()) / "paretoedge-agent")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._eval_sets: dict[str, EvalSet] = {}
        self._lock = threading.Lock()
        self.measurements = 0
        self.last_heartbeat = time.time()

    def eval_set(self, digest: str, payload: EvalSetPayload | Any) -> EvalSet:
        cached = self._eval_sets.get(digest)
        if cached is not None:
            return cached
        loaded: EvalSetPayload = _resolve(payload)
        if loaded.digest != digest:
            raise EvalSetError(f"eval set: payload digest {loaded.digest[:12]} does not match "
                               f"the request's {digest[:12]}")
        self._eval_sets[digest] = loaded.load()
        return self._eval_sets[digest]

    def measure(self, request: MeasureRequest) -> Measurement:
        with self._lock:  # one measurement at a time: they would disturb each other's latency
            self.last_heartbeat = time.time()
            eval_set = self.eval_set(request.eval_set_digest, request.eval_set)
            directory = self.cache_dir / "bundles" / request.bundle_digest
            if not (directory / "manifest.json").is_file():
                payload: BundlePayload = _resolve(request.bundle)
                if payload.digest != request.bundle_digest:
                    raise MeasurementError("bundle payload digest does not match the request")
                payload.materialize(self.cache_dir / "bundles")
            measurement = measure_bundle(directory, eval_set, request.protocol,
                                         expected_digest=request.bundle_digest,
                                         providers=self.providers, agent_id=self.agent_id)
            self.measurements += 1
            self.last_heartbeat = time.time()
            return measurement

    def info(self) -> dict[str, Any]:
        """What ``paretoedge agents`` lists about this agent."""
        fingerprint = device_fingerprint(self.threads, self.providers)
        return {"agent_id": self.agent_id, "device_class": self.device_class,
                "host": fingerprint["host"], "cores": list(self.cores),
                "cpu": fingerprint["cpu"], "onnxruntime": fingerprint["onnxruntime"],
                "providers": list(self.providers), "threads": self.threads,
                "measurements": self.measurements, "last_heartbeat": self.last_heartbeat,
                "pid": os.getpid()}


class FakeAgent:
    """A test double that answers every request with ``handler(request)``.

    Example:
        >>> agent = FakeAgent(lambda request: canned_measurement)  # doctest: +SKIP
    """

    def __init__(self, handler: Callable[[MeasureRequest], Measurement]) -> None:
        self.handler = handler
        self.requests: list[MeasureRequest] = []

    def measure(self, request: MeasureRequest) -> Measurement:
        self.requests.append(request)
        return self.handler(request)
