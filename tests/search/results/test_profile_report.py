"""A profile as people read it: the table's rows add up to the profiled wall time, and its
caption says what the profiler itself cost, so the gaps are not read as the bundle's."""

from __future__ import annotations

import pytest

from device_agents import OperatorProfile
from device_agents.operator_profile import OperatorTime
from search.results.profile_report import profile_csv, profile_rows, profile_table


def _profile(plain_wall_us: float) -> OperatorProfile:
    return OperatorProfile(bundle_digest="d", inferences=100, wall_us=120.0,
                           plain_wall_us=plain_wall_us, preprocessing_us=2.0,
                           stage_session_us=(100.0,), stage_runs=(100,),
                           operators=(OperatorTime(0, "backbone", "QLinearConv", 3, 45.0),
                                      OperatorTime(0, "classifier", "QGemm", 1, 5.0)),
                           exit_rates=(1.0,))


def _caption(profile: OperatorProfile) -> str:
    return str(profile_table(profile, "t").caption)


def test_the_rows_add_up_to_the_profiled_wall_time() -> None:
    profile = _profile(40.0)
    assert sum(row[-1] for row in profile_rows(profile)) == pytest.approx(profile.wall_us)
    assert profile_csv(profile).splitlines()[1].startswith("0,backbone,QLinearConv,3,45.0000")


def test_the_caption_gives_the_profilers_cost_per_node() -> None:
    # 120 us profiled, 40 us plain, 4 nodes a run: 20 us per node
    assert "about 20.0 us per node run" in _caption(_profile(40.0))
    assert "per node" not in _caption(_profile(0.0))  # a profile without a plain timing
