"""Dispatching measure requests to agents: the interface, and an inline one for fakes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from device_agents import (
    Confirmation,
    ConfirmingAgent,
    ConfirmRequest,
    DeviceAgent,
    Measurement,
    MeasureRequest,
    OperatorProfile,
    ProfileRequest,
)


@dataclass(frozen=True)
class Completed:
    """A finished dispatch: the measurement, or the reason it failed after all retries."""

    key: int
    measurement: Measurement | None
    error: str | None = None
    agent_id: str = ""
    attempts: int = 1


class Dispatcher(Protocol):
    """Where the study loop sends measurements. ``poll`` returns what finished since."""

    def free_slots(self) -> int: ...

    def submit(self, key: int, request: MeasureRequest) -> None: ...

    def poll(self, timeout: float) -> list[Completed]: ...

    def in_flight(self) -> int: ...

    def wait_for_free_slot(self, timeout: float | None = None) -> bool:
        """Wait (saying why) until an agent is free; ``False`` when none came in time."""
        ...

    def share(self, payload: object) -> object:
        """Make a large payload (the eval set) available to every agent once."""
        ...

    def close(self) -> None: ...


class InlineDispatcher:
    """Runs each request at once on one in-process agent (a ``FakeAgent`` in tests)."""

    def __init__(self, agent: DeviceAgent) -> None:
        self.agent = agent
        self._done: list[Completed] = []

    def free_slots(self) -> int:
        return 1

    def in_flight(self) -> int:
        return len(self._done)

    def wait_for_free_slot(self, timeout: float | None = None) -> bool:
        return True

    def share(self, payload: object) -> object:
        return payload

    def confirm(self, request: ConfirmRequest) -> Confirmation:
        if not isinstance(self.agent, ConfirmingAgent):
            raise TypeError(f"{type(self.agent).__name__} cannot confirm (no confirm method)")
        return self.agent.confirm(request)

    def profile(self, request: ProfileRequest) -> OperatorProfile:
        profile = getattr(self.agent, "profile", None)
        if profile is None:
            raise TypeError(f"{type(self.agent).__name__} cannot profile (no profile method)")
        result: OperatorProfile = profile(request)
        return result

    def submit(self, key: int, request: MeasureRequest) -> None:
        try:
            self._done.append(Completed(key, self.agent.measure(request)))
        except Exception as exc:  # the agent's failure is the trial's failure
            self._done.append(Completed(key, None, f"{type(exc).__name__}: {exc}"))

    def poll(self, timeout: float) -> list[Completed]:
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        pass
