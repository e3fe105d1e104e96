"""The driver's phase clock: exclusive phases that add up to the wall time."""

from __future__ import annotations

import pytest

from search.study.phase_clock import ASK, BUILD, TELL, WAIT, PhaseClock


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_nested_phase_pauses_the_outer_one() -> None:
    t = FakeTime()
    clock = PhaseClock(now=t)
    with clock.phase(BUILD):
        t.now += 3.0
        with clock.phase(TELL):
            t.now += 1.0
        t.now += 2.0
    t.now += 0.5  # outside any phase: "other"
    times = clock.times()
    assert times.seconds[BUILD] == pytest.approx(5.0)
    assert times.seconds[TELL] == pytest.approx(1.0)
    assert times.wall_s == pytest.approx(6.5)
    assert times.other_s == pytest.approx(0.5)
    assert times.overhead_s == pytest.approx(1.5)  # tell + other; building is not overhead


def test_waiting_is_not_overhead_and_phases_add_up() -> None:
    t = FakeTime()
    clock = PhaseClock(now=t)
    for phase, seconds in ((ASK, 0.1), (WAIT, 4.0), (TELL, 0.2)):
        with clock.phase(phase):
            t.now += seconds
    times = clock.times().to_dict()
    assert times["overhead_s"] == pytest.approx(0.3)
    assert times["wall_s"] == pytest.approx(sum(v for k, v in times.items()
                                                if k not in ("wall_s", "overhead_s")))


def test_an_unknown_phase_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown phase"), PhaseClock().phase("lunch"):
        pass
