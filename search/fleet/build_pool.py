"""Where candidates are built: the ``BuildPool`` interface, the driver itself
(:class:`InlineBuildPool`, today's default: one build at a time on the host's free cores), and
Ray tasks on the nodes that carry the resource ``builder`` (:class:`RayBuildPool`).

A build on a builder node makes its own builder once per worker process (``make_builder``: a
picklable callable, e.g. the study's preparation from its config, reading and filling that
node's build cache by content key), builds into a temporary directory and returns the bundle's
files; the driver writes them into the study's bundle directory, so the bundle and its digest
are the same as a local build's. A builder process that dies mid-build (killed, OOM, its node
lost) has its build retried by Ray on another builder process, up to ``retries`` more times; a
``BuildError`` (the candidate cannot be built) is not retried: the trial fails with it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from spaces import BuildError, BuiltBundle, Candidate

#: The Ray resource a builder node carries (``paretoedge builder start`` gives it one per
#: concurrent build).
BUILDER_RESOURCE = "builder"


@dataclass(frozen=True)
class BuildDone:
    """A finished build: the bundle, or why it could not be built."""

    key: int
    built: BuiltBundle | None
    error: str | None = None
    builder_id: str = ""


class BuildPool(Protocol):
    """Where the study loop sends builds. ``poll`` returns what finished since."""

    def free_slots(self) -> int: ...

    def submit(self, key: int, candidate: Candidate, directory: Path) -> None: ...

    def poll(self, timeout: float) -> list[BuildDone]: ...

    def in_flight(self) -> int: ...

    def close(self) -> None: ...


class InlineBuildPool:
    """Builds at once, on the driver, with the study's builder (one build at a time)."""

    def __init__(self, builder: Any) -> None:
        self.builder = builder
        self._done: list[BuildDone] = []

    def free_slots(self) -> int:
        return 1

    def in_flight(self) -> int:
        return len(self._done)

    def submit(self, key: int, candidate: Candidate, directory: Path) -> None:
        try:
            self._done.append(BuildDone(key, self.builder.build(candidate, directory)))
        except BuildError as exc:
            self._done.append(BuildDone(key, None, str(exc)))

    def poll(self, timeout: float) -> list[BuildDone]:
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        pass


#: Builders made in this worker process, by the ``make_builder`` that made them.
_BUILDERS: dict[str, Any] = {}


def build_remotely(make_builder: Callable[[], Any], builder_key: str,
                   candidate: dict[str, Any]) -> dict[str, Any]:
    """The body of a build task on a builder node: the bundle's files and facts."""
    builder = _BUILDERS.get(builder_key)
    if builder is None:
        builder = _BUILDERS[builder_key] = make_builder()
    scratch = Path(tempfile.mkdtemp(prefix="paretoedge-build-"))
    try:
        try:
            built = builder.build(Candidate.from_dict(candidate), scratch / "bundle")
        except BuildError as exc:
            return {"error": str(exc), "builder": _builder_id()}
        files = {p.name: p.read_bytes() for p in sorted(built.directory.iterdir())
                 if p.is_file()}
        return {"files": files, "digest": built.digest, "build_seconds": built.build_seconds,
                "info": dict(built.info), "builder": _builder_id()}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _builder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class _Build:
    key: int
    directory: Path
    started: float = field(default_factory=time.perf_counter)


class RayBuildPool:
    """Builds as Ray tasks on the cluster's builder nodes, ``slots`` at a time.

    Example:
        >>> pool = RayBuildPool(make_builder=functools.partial(prepare_builder, config),
        ...                     builder_key="digits")  # doctest: +SKIP
        >>> pool.submit(3, candidate, workspace.bundle_dir(3))  # doctest: +SKIP
        >>> [done.built.digest for done in pool.poll(timeout=1.0)]  # doctest: +SKIP
    """

    def __init__(self, *, make_builder: Callable[[], Any], builder_key: str,
                 slots: int | None = None, retries: int = 2, num_cpus: float = 1.0,
                 recount_every_s: float = 10.0) -> None:
        self.make_builder = make_builder
        self.builder_key = builder_key
        #: fixed, or (None) the cluster's ``builder`` resources, counted again every
        #: ``recount_every_s`` so that builder nodes joining or leaving are seen
        self._fixed_slots = slots
        self.recount_every_s = recount_every_s
        self._counted_at = float("-inf")
        self._slots = 0
        import ray

        # a worker that dies mid-build is a system failure: Ray runs the task again elsewhere
        self._task = ray.remote(build_remotely).options(
            num_cpus=num_cpus, resources={BUILDER_RESOURCE: 1}, max_retries=retries,
            retry_exceptions=False)
        self._running: dict[Any, _Build] = {}

    @property
    def slots(self) -> int:
        """Builds at once: the ``builder`` resources of the cluster's nodes."""
        if self._fixed_slots is not None:
            return self._fixed_slots
        if time.monotonic() - self._counted_at >= self.recount_every_s:
            import ray

            self._slots = int(ray.cluster_resources().get(BUILDER_RESOURCE, 0))
            self._counted_at = time.monotonic()
        return self._slots

    def free_slots(self) -> int:
        return max(0, self.slots - len(self._running))

    def in_flight(self) -> int:
        return len(self._running)

    def submit(self, key: int, candidate: Candidate, directory: Path) -> None:
        ref = self._task.remote(self.make_builder, self.builder_key, candidate.to_dict())
        self._running[ref] = _Build(key, directory)

    def poll(self, timeout: float) -> list[BuildDone]:
        import ray

        if not self._running:
            return []
        refs = list(self._running)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if not ready and timeout > 0:
            ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        return [self._finish(ref, self._running.pop(ref)) for ref in ready]

    def _finish(self, ref: Any, build: _Build) -> BuildDone:
        import ray

        try:
            result = ray.get(ref)
        except Exception as exc:  # every retry died, or the task could not run
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return BuildDone(build.key, None, f"builder lost: {type(exc).__name__}: {first}")
        if "error" in result:
            return BuildDone(build.key, None, result["error"], result["builder"])
        if build.directory.exists():
            shutil.rmtree(build.directory)
        build.directory.mkdir(parents=True)
        for name, data in result["files"].items():
            (build.directory / name).write_bytes(data)
        built = BuiltBundle(build.directory, result["digest"], result["build_seconds"],
                            result["info"])
        return BuildDone(build.key, built, builder_id=result["builder"])

    def close(self) -> None:
        import ray

        for ref in self._running:
            with contextlib.suppress(Exception):  # a task that already ended
                ray.cancel(ref, force=True)
        self._running = {}
