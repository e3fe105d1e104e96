"""A measurement in a process of its own: ``python -m device_agents.measure_child JOB RESULT``.

``JOB`` is a JSON file: its ``kind``, the eval-set file, the protocol, providers, cores, and
for ``measure`` (the default) one bundle directory and digest, for ``confirm`` several, with
their keys, the rounds and the runs per round, for ``profile`` one bundle and the runs. The
:class:`Measurement` (``measure``), :class:`Confirmation` (``confirm``) or
:class:`OperatorProfile` (``profile``) is pickled to ``RESULT``. The agent uses one process per
measurement, so that peak memory is the bundle's own and a crash of onnxruntime costs one
trial, not the agent. ``python -m device_agents.measure_child --wait PARENT_PID [CORES]``
starts a spare: it imports everything (on ``CORES``, e.g. ``0,2``, when given), then reads
``JOB<TAB>RESULT`` from stdin (the agent keeps one ready, so the start-up of about 0.3 s is
off the next request's path); end of input makes it exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import sys
from pathlib import Path
from typing import Any

from device_agents.eval_set import EvalSet
from device_agents.measure import confirm_bundles, device_fingerprint, measure_bundle
from device_agents.operator_profile import OperatorProfile, profile_bundle
from device_agents.protocol import Confirmation, Measurement, MeasurementProtocol

#: What a job asks for: one measurement, a confirmation of several bundles, or a profile.
JOB_KINDS = ("measure", "confirm", "profile")


def die_with_parent(parent_pid: int | None) -> None:
    """Ask Linux to kill this process when the agent that started it dies (a killed agent
    must not leave a measurement running on its core); exit at once if it is already gone."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
    if parent_pid is not None and os.getppid() != parent_pid:
        sys.exit(3)


def main(job_path: str, result_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    die_with_parent(job.get("parent_pid"))
    if job.get("cores") and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(job["cores"]))
    result = run_job(job)
    tmp = Path(result_path + ".tmp")
    tmp.write_bytes(pickle.dumps(result))
    tmp.rename(result_path)
    return 0


def run_job(job: dict[str, Any]) -> Measurement | Confirmation | OperatorProfile:
    """Run a job (as the agent writes it) in this process."""
    kind = job.get("kind", "measure")
    if kind not in JOB_KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    eval_set = EvalSet.from_bytes(Path(job["eval_set"]).read_bytes())
    providers = tuple(job["providers"])
    if kind == "profile":
        return profile_bundle(Path(job["directory"]), eval_set.inputs, runs=job["runs"],
                              warmup_runs=job["warmup_runs"], threads=job["threads"],
                              providers=providers, expected_digest=job["digest"],
                              agent_id=job["agent_id"],
                              fingerprint=device_fingerprint(job["threads"], providers))
    protocol = MeasurementProtocol.from_dict(job["protocol"])
    if kind == "confirm":
        return confirm_bundles([Path(d) for d in job["directories"]], eval_set, protocol,
                               rounds=job["rounds"], runs_per_round=job["runs_per_round"],
                               expected_digests=job["digests"], keys=job["keys"],
                               providers=providers, agent_id=job["agent_id"])
    return measure_bundle(Path(job["directory"]), eval_set, protocol,
                          expected_digest=job["digest"], providers=providers,
                          agent_id=job["agent_id"])


def wait_for_job(parent_pid: int, start_cores: str = "") -> int:
    """The spare's life: import the runtime (on ``start_cores``, off the agent's measured
    cores), wait for one job on stdin, run it (pinned to the job's cores), exit."""
    die_with_parent(parent_pid)
    if start_cores and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):  # a core taken away since: start where it is
            os.sched_setaffinity(0, {int(c) for c in start_cores.split(",")})
    import onnxruntime  # noqa: F401  (~0.15 s: done while waiting, not while measuring)

    line = sys.stdin.readline().strip()
    if not line:
        return 0  # the agent closed it unused
    job_path, result_path = line.split("\t")
    return main(job_path, result_path)


if __name__ == "__main__":
    if sys.argv[1] == "--wait":
        sys.exit(wait_for_job(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else ""))
    sys.exit(main(sys.argv[1], sys.argv[2]))
