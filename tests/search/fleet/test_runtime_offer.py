"""The config's runtime knobs: validated at the edge, and refused (one line naming the field)
when the study's agents cannot give them: local agents by this machine's cores and
onnxruntime, a running cluster's by what its agents report (docs/RUNTIME.md)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import onnxruntime as ort
import pytest

from search.config import parse_config
from search.errors import ConfigError
from search.fleet.agent_pool import local_core_plan
from search.fleet.measurable import check_measurable, unmeasurable_problem
from search.fleet.runtime_offer import (
    agents_runtime_problem,
    check_agents_offer,
    host_cores,
)


def config(runtime=None, **changes):
    data = {"study": "s", "model": {"factory": "m.py:f"}, "data": {"loader": "m.py:d"},
            **({"runtime": runtime} if runtime is not None else {}), **changes}
    return parse_config(data, "test.yaml", base_dir=Path("."))


@pytest.mark.parametrize(("runtime", "where"), [
    ({"graph_optimization": ["fastest"]}, "runtime.graph_optimization.0"),
    ({"threads": [0]}, "runtime.threads.0"),
    ({"threads": []}, "runtime.threads"),
    ({"static_shape": [True, True]}, "runtime.static_shape"),
    ({"providers": [":k=v"]}, "runtime.providers"),
    ({"provider": ["CPU"]}, "runtime.provider"),
])
def test_malformed_runtime_sections_name_the_field(runtime, where) -> None:
    with pytest.raises(ConfigError) as caught:
        config(runtime)
    assert caught.value.problems[0].startswith(f"test.yaml: {where}: ")


def test_the_default_searches_nothing_and_checks_nothing() -> None:
    plain = config()
    assert plain.runtime.max_threads == 0
    assert unmeasurable_problem(plain) is None
    assert agents_runtime_problem(plain, [{"cores": [], "available_providers": []}]) is None


def test_local_agents_are_judged_by_this_machine() -> None:
    too_many = config({"threads": [1, host_cores() + 1]})
    with pytest.raises(ConfigError, match=rf"^runtime.threads: {host_cores() + 1} intra-op "
                                          rf"threads, but the device class's agents have"):
        check_measurable(too_many)
    assert unmeasurable_problem(config({"threads": [1, host_cores()]})) is None
    missing = "XnnpackExecutionProvider"
    if missing not in ort.get_available_providers():  # the pip wheel has CPU (and Azure)
        problem = unmeasurable_problem(config({"providers": ["CPU", "XNNPACK"]}))
        assert problem is not None and problem.startswith(f"runtime.providers: {missing} is "
                                                          f"not available")
    assert unmeasurable_problem(config({"providers": ["CPU"]})) is None


def test_a_running_clusters_agents_are_judged_by_what_they_report() -> None:
    remote = config({"threads": [1, 2], "providers": ["CPU", "XNNPACK"]},
                    device={"class": "rpi4", "address": "head:6379"})
    assert unmeasurable_problem(remote) is None  # not judged before the agents are found
    wide = {"cores": [0, 1, 2, 3], "available_providers": ["XnnpackExecutionProvider",
                                                           "CPUExecutionProvider"]}
    narrow = {"cores": [3], "available_providers": ["CPUExecutionProvider"]}
    assert agents_runtime_problem(remote, [wide]) is None
    assert agents_runtime_problem(remote, [wide, narrow]).startswith(
        "runtime.threads: 2 intra-op threads, but the device class's agents have 1 core")
    cpu_only = dict(wide, available_providers=["CPUExecutionProvider"])

    pool = SimpleNamespace(agents=[wide, cpu_only])  # what RayAgentPool.agents lists
    with pytest.raises(ConfigError, match="XnnpackExecutionProvider is not available"):
        check_agents_offer(remote, pool)
    check_agents_offer(remote, object())  # a dispatcher without agents (a fake) is not judged


def test_openvino_is_offered_only_where_every_agent_reports_it() -> None:
    remote = config({"engines": ["onnxruntime", "openvino"]},
                    device={"class": "x86", "address": "head:6379"})
    both = {"cores": [0], "available_providers": ["CPUExecutionProvider"],
            "available_engines": ["onnxruntime", "openvino"]}
    older = {"cores": [1], "available_providers": ["CPUExecutionProvider"]}  # reports none
    assert agents_runtime_problem(remote, [both]) is None
    assert agents_runtime_problem(remote, [both, older]).startswith(
        "runtime.engines: openvino is not installed on the device class's agents")
    # local agents: this machine's Python decides (the tests' install has OpenVINO)
    assert unmeasurable_problem(config({"engines": ["onnxruntime", "openvino"]})) is None


def test_local_agents_get_as_many_cores_as_the_most_threads() -> None:
    assert local_core_plan(4, 1, 2) == ([(2, 3)], (0, 1))
    assert local_core_plan(2, 1, 2) == ([(0, 1)], (0,))  # the builder shares core 0
    assert local_core_plan(4, 1) == ([(3,)], (0, 1, 2))  # one core each, as before
