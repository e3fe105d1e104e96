"""Device agents: the one-method interface, the local implementation and a fake for tests."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast, runtime_checkable

from device_agents.bundle import BundlePayload
from device_agents.errors import EvalSetError, MeasurementError
from device_agents.eval_set import EvalSet, EvalSetPayload
from device_agents.measure import confirm_bundles, device_fingerprint, measure_bundle
from device_agents.operator_profile import OperatorProfile, profile_bundle
from device_agents.profiles import CPU_PROVIDER, ProviderLike, as_providers
from device_agents.protocol import (
    AgentActivity,
    Confirmation,
    ConfirmRequest,
    Measurement,
    MeasureRequest,
    ProfileRequest,
)
from device_agents.runtime_options import available_engines

if TYPE_CHECKING:
    from ray import ObjectRef

T = TypeVar("T")
R = TypeVar("R", Measurement, Confirmation, OperatorProfile)


@runtime_checkable
class DeviceAgent(Protocol):
    """Anything that can measure a bundle on a device."""

    def measure(self, request: MeasureRequest) -> Measurement: ...


@runtime_checkable
class ConfirmingAgent(DeviceAgent, Protocol):
    """An agent that can also time several bundles interleaved in one process
    (:class:`LocalDeviceAgent`, :class:`FakeAgent`)."""

    def confirm(self, request: ConfirmRequest) -> Confirmation: ...


def _resolve(value: T | ObjectRef[T]) -> T:
    """A payload, or a Ray object reference to one (resolved only when needed: ray is imported
    only when a reference arrives)."""
    if type(value).__name__ == "ObjectRef":
        import ray

        return ray.get(cast("ObjectRef[T]", value))
    return cast(T, value)


class LocalDeviceAgent:
    """Measures bundles on this machine, pinned to ``cores`` when given.

    Eval sets and bundles are cached on disk under ``cache_dir`` by sha256, so a repeated
    request transfers and writes nothing. With ``isolate`` (the default) each measurement runs
    in a fresh child process: peak memory is then the bundle's own (a long-lived process reuses
    freed pages, which hides it), and a bundle that crashes onnxruntime fails its trial instead
    of killing the agent. The child costs about 0.25 s (interpreter and onnxruntime start),
    outside the timed region.

    Example:
        >>> agent = LocalDeviceAgent(device_class="x86-edge")
        >>> agent.measure(request).latency.p95_ms  # doctest: +SKIP
        0.21
    """

    def __init__(self, *, device_class: str, threads: int = 1,
                 cores: tuple[int, ...] | None = None, cache_dir: Path | None = None,
                 providers: Sequence[ProviderLike] = (CPU_PROVIDER,),
                 agent_id: str | None = None, isolate: bool = True) -> None:
        self.device_class = device_class
        self.threads = threads
        self.providers = as_providers(providers)
        self.isolate = isolate
        self._spare: subprocess.Popen[str] | None = None
        self._spawner: ThreadPoolExecutor | None = None
        self.agent_id = agent_id or f"{device_class}-{uuid.uuid4().hex[:8]}"
        allowed = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
        if cores and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(cores))
        self.cores = tuple(sorted(os.sched_getaffinity(0))) if hasattr(
            os, "sched_getaffinity") else ()
        #: Where a spare measuring process starts up (it moves to the agent's cores for its
        #: job): the other cores this process may use, so that it starts while a measurement
        #: is being timed without touching the measured core; none when there are no others.
        self._spare_cores = tuple(sorted(allowed - set(self.cores)))
        self.cache_dir = Path(cache_dir or Path(tempfile.gettempdir()) / "paretoedge-agent")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._eval_sets: dict[str, EvalSet] = {}
        self._lock = threading.Lock()
        self.measurements = 0
        self.confirmations = 0
        #: payloads resolved (fetched through the object store) because the cache lacked them
        self.eval_set_fetches = 0
        self.bundle_fetches = 0
        self.started = time.time()
        self.last_heartbeat = self.started
        #: (bundle digest, trial number, monotonic start) of the job being measured
        self._current: tuple[str, int | None, float] | None = None

    def eval_set_path(self, digest: str,
                      payload: EvalSetPayload | ObjectRef[EvalSetPayload]) -> Path:
        """The eval set's file in the cache, written the first time its digest is seen."""
        path = self.cache_dir / "eval_sets" / f"{digest}.npz"
        if not path.is_file():
            loaded = _resolve(payload)
            self.eval_set_fetches += 1
            if loaded.digest != digest:
                raise EvalSetError(f"eval set: payload digest {loaded.digest[:12]} does not "
                                   f"match the request's {digest[:12]}")
            loaded.load()  # checks the sha256 and that the archive reads
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(loaded.data)
            tmp.rename(path)
        return path

    def eval_set(self, digest: str,
                 payload: EvalSetPayload | ObjectRef[EvalSetPayload]) -> EvalSet:
        if digest not in self._eval_sets:
            path = self.eval_set_path(digest, payload)
            self._eval_sets[digest] = EvalSet.from_bytes(path.read_bytes())
        return self._eval_sets[digest]

    def bundle_dir(self, request: MeasureRequest) -> Path:
        """The request's bundle in the cache, materialised and verified on first sight."""
        return self.cached_bundle(request.bundle_digest, request.bundle)

    def cached_bundle(self, digest: str,
                      payload: BundlePayload | ObjectRef[BundlePayload]) -> Path:
        """The bundle ``digest`` in the cache, materialised and verified (every file's sha256)
        on first sight; ``payload`` is resolved only then."""
        directory = self.cache_dir / "bundles" / digest
        if not (directory / "manifest.json").is_file():
            loaded = _resolve(payload)
            self.bundle_fetches += 1
            if loaded.digest != digest:
                raise MeasurementError("bundle payload digest does not match the request")
            loaded.materialize(self.cache_dir / "bundles")
        return directory

    def activity(self) -> AgentActivity | None:
        """The job being measured now and for how long (None when idle); answered while a
        measurement runs."""
        current = self._current
        if current is None:
            return None
        digest, trial, since = current
        return AgentActivity(digest, trial, time.monotonic() - since)

    def measure(self, request: MeasureRequest) -> Measurement:
        with self._lock:  # one measurement at a time: they would disturb each other's latency
            self._current = (request.bundle_digest, request.trial_number, time.monotonic())
            try:
                return self._measure(request)
            finally:
                self._current = None

    def _measure(self, request: MeasureRequest) -> Measurement:
        started = time.perf_counter()
        self.last_heartbeat = time.time()
        directory = self.bundle_dir(request)
        if self.isolate:
            eval_path = self.eval_set_path(request.eval_set_digest, request.eval_set)
            measurement = self._run_in_child({
                "kind": "measure", "directory": str(directory),
                "eval_set": str(eval_path), "protocol": request.protocol.to_dict(),
                "digest": request.bundle_digest}, Measurement)
        else:
            eval_set = self.eval_set(request.eval_set_digest, request.eval_set)
            measurement = measure_bundle(directory, eval_set, request.protocol,
                                         expected_digest=request.bundle_digest,
                                         providers=self.providers, agent_id=self.agent_id)
        self.measurements += 1
        self.last_heartbeat = time.time()
        return replace(measurement, agent_s=time.perf_counter() - started)

    def confirm(self, request: ConfirmRequest) -> Confirmation:
        """Time the request's bundles interleaved in rounds in one fresh measuring process
        (``confirm_bundles`` in ``device_agents/measure.py``), after verifying each bundle's
        sha256 as :meth:`measure` does; accuracy over the request's eval set."""
        with self._lock:  # one measurement at a time: they would disturb each other's latency
            started = time.perf_counter()
            self.last_heartbeat = time.time()
            directories = [self.cached_bundle(b.bundle_digest, b.bundle)
                           for b in request.bundles]
            digests = [b.bundle_digest for b in request.bundles]
            keys = [b.key for b in request.bundles]
            if self.isolate:
                eval_path = self.eval_set_path(request.eval_set_digest, request.eval_set)
                confirmation = self._run_in_child({
                    "kind": "confirm", "directories": [str(d) for d in directories],
                    "digests": digests, "keys": keys, "eval_set": str(eval_path),
                    "protocol": request.protocol.to_dict(), "rounds": request.rounds,
                    "runs_per_round": request.runs_per_round}, Confirmation)
            else:
                eval_set = self.eval_set(request.eval_set_digest, request.eval_set)
                confirmation = confirm_bundles(
                    directories, eval_set, request.protocol, rounds=request.rounds,
                    runs_per_round=request.runs_per_round, expected_digests=digests,
                    keys=keys, providers=self.providers, agent_id=self.agent_id)
            self.confirmations += 1
            self.last_heartbeat = time.time()
            return replace(confirmation, agent_s=time.perf_counter() - started)

    def profile(self, request: ProfileRequest) -> OperatorProfile:
        """Profile one bundle with onnxruntime's profiler (``operator_profile.py``) in a fresh
        measuring process, after verifying its sha256 as :meth:`measure` does; holds the same
        lock (one at a time)."""
        with self._lock:
            self.last_heartbeat = time.time()
            directory = self.cached_bundle(request.bundle_digest, request.bundle)
            if self.isolate:
                eval_path = self.eval_set_path(request.eval_set_digest, request.eval_set)
                profile = self._run_in_child({
                    "kind": "profile", "directory": str(directory), "eval_set": str(eval_path),
                    "digest": request.bundle_digest, "runs": request.runs,
                    "warmup_runs": request.warmup_runs, "threads": request.threads},
                    OperatorProfile)
            else:
                eval_set = self.eval_set(request.eval_set_digest, request.eval_set)
                profile = profile_bundle(
                    directory, eval_set.inputs, runs=request.runs,
                    warmup_runs=request.warmup_runs, threads=request.threads,
                    providers=self.providers, expected_digest=request.bundle_digest,
                    agent_id=self.agent_id,
                    fingerprint=device_fingerprint(request.threads, self.providers))
            self.last_heartbeat = time.time()
            return profile

    def _run_in_child(self, job: dict[str, Any], result_type: type[R]) -> R:
        """Run a job (``device_agents.measure_child``) in a fresh measuring process: the
        spare, already past its imports (a new one when it is gone); the next spare starts now
        on the other cores, or after timing when the agent has no other core."""
        with tempfile.TemporaryDirectory(dir=self.cache_dir) as tmp:
            job_path, result = Path(tmp) / "job.json", Path(tmp) / "result.pkl"
            job_path.write_text(json.dumps({
                **job, "providers": [p.spec for p in self.providers],
                "agent_id": self.agent_id, "cores": list(self.cores),
                "parent_pid": os.getpid()}))
            child = self._take_spare()
            if self._spare_cores:  # the next one starts up on other cores while this one times
                self._spare = self._spawn_child()
            try:
                _, stderr = child.communicate(f"{job_path}\t{result}\n")
            except BrokenPipeError:  # the spare died just now: start a fresh one
                child = self._spawn_child()
                _, stderr = child.communicate(f"{job_path}\t{result}\n")
            if self._spare is None:  # no other core: start the next one after timing
                self._spare = self._spawn_child()
            if child.returncode != 0 or not result.is_file():
                lines = (stderr or "").strip().splitlines()
                why = lines[-1] if lines else f"exit status {child.returncode}"
                if child.returncode < 0:
                    why = f"killed by signal {-child.returncode} (a crash, or out of memory)"
                raise MeasurementError(f"measuring process failed: {why}")
            answer = pickle.loads(result.read_bytes())
            if not isinstance(answer, result_type):
                raise MeasurementError(f"measuring process wrote a {type(answer).__name__}, "
                                       f"not a {result_type.__name__}")
            return answer

    def _spawn_child(self) -> subprocess.Popen[str]:
        """Start a measuring process from the agent's spawner thread.

        The child asks Linux to kill it when its parent *thread* dies (PR_SET_PDEATHSIG), and a
        Ray actor may run each call on a short-lived thread; the spawner thread lives as long
        as the agent, so a spare survives the call that started it.
        """
        if self._spawner is None:
            self._spawner = ThreadPoolExecutor(max_workers=1,
                                               thread_name_prefix="measure-spawner")
        return self._spawner.submit(self._popen_child).result()

    def _popen_child(self) -> subprocess.Popen[str]:
        package_root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(p for p in (package_root,
                                                         os.environ.get("PYTHONPATH")) if p)}
        start_on = ",".join(str(c) for c in self._spare_cores)
        return subprocess.Popen([sys.executable, "-m", "device_agents.measure_child", "--wait",
                                 str(os.getpid()), start_on], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=env)

    def _take_spare(self) -> subprocess.Popen[str]:
        spare, self._spare = self._spare, None
        if spare is not None and spare.poll() is None:
            return spare
        return self._spawn_child()

    def close(self) -> None:
        """Let the spare measuring process go (it exits at the end of its input)."""
        spare, self._spare = self._spare, None
        if spare is not None and spare.poll() is None:
            spare.communicate("")

    def heartbeat(self) -> float:
        """Record that the agent answered now; return the time."""
        self.last_heartbeat = time.time()
        return self.last_heartbeat

    def info(self) -> dict[str, Any]:
        """What ``paretoedge agents`` lists about this agent."""
        import onnxruntime as ort

        fingerprint = device_fingerprint(self.threads, self.providers)
        return {"agent_id": self.agent_id, "device_class": self.device_class,
                "host": fingerprint["host"], "machine": fingerprint["machine"],
                "cores": list(self.cores), "cpu": fingerprint["cpu"],
                "onnxruntime": fingerprint["onnxruntime"],
                "providers": [p.spec for p in self.providers],
                "available_providers": list(ort.get_available_providers()),
                "available_engines": list(available_engines()),
                "threads": self.threads, "measurements": self.measurements,
                "confirmations": self.confirmations,
                "busy": self._lock.locked(), "eval_set_fetches": self.eval_set_fetches,
                "bundle_fetches": self.bundle_fetches, "started": self.started,
                "last_heartbeat": self.last_heartbeat, "pid": os.getpid()}


class FakeAgent:
    """A test double that answers every request with ``handler(request)``, and every
    confirmation with ``confirm_handler(request)``; without one, a confirmation is built from
    ``handler``, called once per bundle (each round's p50 and p95 are then the measurement's).

    Example:
        >>> agent = FakeAgent(lambda request: canned_measurement)  # doctest: +SKIP
    """

    def __init__(self, handler: Callable[[MeasureRequest], Measurement],
                 confirm_handler: Callable[[ConfirmRequest], Confirmation] | None = None) -> None:
        self.handler = handler
        self.confirm_handler = confirm_handler
        self.requests: list[MeasureRequest] = []
        self.confirm_requests: list[ConfirmRequest] = []
        self.profile_requests: list[ProfileRequest] = []

    def measure(self, request: MeasureRequest) -> Measurement:
        self.requests.append(request)
        return self.handler(request)

    def profile(self, request: ProfileRequest) -> OperatorProfile:
        """A real profile (``profile_bundle``, in this process) of the request's bundle."""
        self.profile_requests.append(request)
        bundle = _resolve(request.bundle)
        eval_set = _resolve(request.eval_set).load()
        with tempfile.TemporaryDirectory(prefix="fake-agent-") as tmp:
            directory = bundle.materialize(Path(tmp))
            return profile_bundle(directory, eval_set.inputs, runs=request.runs,
                                  warmup_runs=request.warmup_runs, threads=request.threads,
                                  expected_digest=request.bundle_digest, agent_id="fake")

    def confirm(self, request: ConfirmRequest) -> Confirmation:
        self.confirm_requests.append(request)
        if self.confirm_handler is not None:
            return self.confirm_handler(request)
        measurements = tuple(self.handler(MeasureRequest(
            bundle_digest=b.bundle_digest, bundle=b.bundle,
            eval_set_digest=request.eval_set_digest, eval_set=request.eval_set,
            protocol=request.protocol, trial_number=b.key)) for b in request.bundles)
        return Confirmation(
            measurements=measurements,
            round_p50_ms=tuple((m.latency.p50_ms,) * request.rounds for m in measurements),
            round_p95_ms=tuple((m.latency.p95_ms,) * request.rounds for m in measurements),
            rounds=request.rounds, fingerprint=measurements[0].fingerprint,
            agent_id=measurements[0].agent_id, keys=tuple(b.key for b in request.bundles),
            duration_s=sum(m.duration_s for m in measurements))
