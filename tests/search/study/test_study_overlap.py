"""On a local cluster no candidate is built while an agent measures, unless
``device.overlap_builds`` trades that truth for throughput (and every trial says which)."""

from __future__ import annotations

import pytest

from device_agents import DeviceAgent, MeasureRequest
from search.config import load_config
from search.fleet.dispatch import Completed
from search.study.runner import RunOptions, StudyRunner
from search.tracking.tracker import NullTracker
from search.workspace import Workspace

from .test_study import fake_device


class SlowDispatcher:
    """One agent whose measurements finish only on the second poll after their submission."""

    def __init__(self, agent: DeviceAgent) -> None:
        self.agent = agent
        self.flying: list[list] = []  # [key, request, polls seen]

    def free_slots(self) -> int:
        return 0 if self.flying else 1

    def in_flight(self) -> int:
        return len(self.flying)

    def wait_for_free_slot(self, timeout: float | None = None) -> bool:
        return True

    def share(self, payload: object) -> object:
        return payload

    def submit(self, key: int, request: MeasureRequest) -> None:
        self.flying.append([key, request, 0])

    def poll(self, timeout: float) -> list[Completed]:
        done = []
        for job in list(self.flying):
            job[2] += 1
            if job[2] >= 2:
                self.flying.remove(job)
                done.append(Completed(job[0], self.agent.measure(job[1])))
        return done

    def close(self) -> None:
        pass


def builds_while_measuring(write_config, tmp_path, monkeypatch, **device) -> tuple[list[int],
                                                                                   list]:
    in_flight_at_build: list[int] = []
    original = StudyRunner._build

    def build(self, pending, prepared):
        in_flight_at_build.append(len(self._pending))
        return original(self, pending, prepared)

    monkeypatch.setattr(StudyRunner, "_build", build)
    config = load_config(write_config(device=device))
    runner = StudyRunner(config, Workspace(tmp_path / "runs", config.study),
                         dispatcher_factory=lambda c, w: SlowDispatcher(fake_device()),
                         tracker=NullTracker())
    summary = runner.run(RunOptions(trials=5))
    return in_flight_at_build, summary.records


@pytest.mark.slow
def test_no_build_runs_while_a_local_agent_measures(write_config, tmp_path,
                                                     monkeypatch) -> None:
    in_flight, records = builds_while_measuring(write_config, tmp_path, monkeypatch)
    assert len(in_flight) >= 4 and set(in_flight) == {0}
    measured = [r for r in records if r.complete and not r.reused]
    assert measured and all(r.metrics["overlap_builds"] == 0.0 for r in measured)


@pytest.mark.slow
def test_overlap_builds_builds_beside_the_measurement_and_says_so(write_config, tmp_path,
                                                                  monkeypatch) -> None:
    in_flight, records = builds_while_measuring(write_config, tmp_path, monkeypatch,
                                                overlap_builds=True)
    assert max(in_flight) >= 1
    measured = [r for r in records if r.complete and not r.reused]
    assert measured and all(r.metrics["overlap_builds"] == 1.0 for r in measured)
