"""A study that searches the engine (runtime.engines): real builds, a real agent inline."""

from __future__ import annotations

import json

import pytest

from device_agents import LocalDeviceAgent
from device_agents.runtime_options import available_engines
from search.config import load_config
from search.errors import ConfigError
from search.fleet.dispatch import InlineDispatcher
from search.results.profile_store import stored_profiles
from search.study.confirmation import to_confirm
from search.study.profiling import profile_stored_study, split_profilable
from search.study.runner import RunOptions, StudyRunner
from search.tracking.tracker import NullTracker
from search.workspace import Workspace

pytestmark = pytest.mark.skipif(
    "openvino" not in available_engines(),
    reason="OpenVINO is not installed (pip install paretoedge[openvino])",
)


def test_only_bundles_on_onnxruntime_are_profilable(record) -> None:
    from dataclasses import replace

    ort, default, ov = (
        replace(record(n, accuracy=0.9, p95=1.0), candidate=c)
        for n, c in enumerate([{"engine": "onnxruntime"}, {}, {"engine": "openvino"}])
    )
    assert split_profilable([ort, default, ov]) == ([ort, default], [ov])


@pytest.mark.slow
def test_the_engine_is_searched_measured_confirmed_and_openvino_members_are_not_profiled(
    write_config, tmp_path
) -> None:
    config = load_config(
        write_config(
            constraints={"max_accuracy_drop": 0.5},
            runtime={"engines": ["onnxruntime", "openvino"]},
            search={"trials": 8, "sampler": "random", "seed": 1},
            confirm={"rounds": 1, "runs_per_round": 10},
            profiling={"runs": 20},
        )
    )
    workspace = Workspace(tmp_path / "runs", config.study)
    agent = LocalDeviceAgent(device_class="local", cache_dir=tmp_path / "agent", isolate=False)
    dispatcher = InlineDispatcher(agent)
    summary = StudyRunner(
        config, workspace, dispatcher_factory=lambda c, w: dispatcher, tracker=NullTracker()
    ).run(RunOptions(trials=8))

    measured = [r for r in summary.records if r.complete and not r.reused]
    assert summary.failed == 0
    # a candidate names its engine only when it is not the default
    engines = {r.number: r.candidate.get("engine", "onnxruntime") for r in measured}
    assert set(engines.values()) == {"onnxruntime", "openvino"}, engines
    assert engines[0] == "onnxruntime"  # the baseline is the first engine listed
    for r in measured:  # the bundle carries the engine the agent ran it on
        path = r.bundle_path(workspace.workdir)
        assert path is not None
        runtime = json.loads((path / "manifest.json").read_text()).get("runtime", {})
        assert runtime.get("engine", "onnxruntime") == engines[r.number]

    members = to_confirm(summary.records, config.constraints.max_accuracy_drop)
    profilable, on_openvino = split_profilable(members)
    assert on_openvino, "no front member runs on OpenVINO: pick another seed"
    assert all("test_accuracy" in r.metrics for r in members)  # OpenVINO members confirmed too
    assert set(stored_profiles(workspace)) == {r.number for r in profilable}

    with pytest.raises(ConfigError, match="OpenVINO"):
        profile_stored_study(
            workspace, on_openvino[0].number, dispatcher_factory=lambda c, w: dispatcher
        )
