"""The runtime knob: nothing changes when it is not configured (candidates, their dicts and
keys); configured, each dimension is a param or a fixed value, and what the agents cannot give
is refused (docs/RUNTIME.md)."""

from __future__ import annotations

import optuna
import pytest

from device_agents.profiles import CPU_PROVIDER, Provider
from spaces import (
    Candidate,
    ExitSpace,
    PruningSpace,
    QuantizationSpace,
    RuntimeSpace,
    SearchSpace,
    SpaceError,
)
from spaces.candidate import stable_key
from spaces.runtime_space import check_offered, manifest_runtime

QUANT = QuantizationSpace(groups=("first", "last"))
PARAMS = {"quant_first": "int8", "quant_last": "fp32", "prune_ratio": 0.25,
          "early_exit": False}


def _space(runtime: RuntimeSpace = RuntimeSpace()) -> SearchSpace:
    return SearchSpace(quantization=QUANT, pruning=PruningSpace(),
                       exits=ExitSpace(num_exits=1), runtime=runtime)


def test_without_runtime_knobs_candidates_and_keys_are_unchanged() -> None:
    space = _space()
    candidate = space.suggest(optuna.trial.FixedTrial(PARAMS))
    before = {"quantization": ["int8", "fp32"], "prune_ratio": 0.25, "exit_thresholds": []}
    assert candidate.to_dict() == before
    assert stable_key(candidate.to_dict()) == stable_key(before)
    assert Candidate.from_dict(before) == candidate
    assert space.baseline_params() == {"quant_first": "fp32", "quant_last": "fp32",
                                       "prune_ratio": 0.0, "early_exit": False}
    assert manifest_runtime(candidate).is_default
    assert candidate.describe() == "int8/fp32 prune=0.25 no-exit"


def test_searched_dimensions_are_params_and_single_values_apply_to_every_trial() -> None:
    runtime = RuntimeSpace(graph_optimizations=("all", "basic"), threads=(1,),
                           providers=("CPU",), static_shapes=(True, False))
    space = _space(runtime)
    assert runtime.param_names() == ("runtime_graph_optimization", "runtime_static_shape")
    assert space.baseline_params()["runtime_graph_optimization"] == "all"
    assert space.baseline().intra_op_threads == 1 and space.baseline().static_shape is True
    trial = optuna.trial.FixedTrial({**PARAMS, "runtime_graph_optimization": "basic",
                                     "runtime_static_shape": False})
    candidate = space.suggest(trial)
    assert (candidate.graph_optimization, candidate.intra_op_threads, candidate.provider,
            candidate.static_shape) == ("basic", 1, CPU_PROVIDER, False)
    data = candidate.to_dict()
    assert data["graph_optimization"] == "basic" and data["static_shape"] is False
    assert data["provider"] == CPU_PROVIDER and data["intra_op_threads"] == 1
    assert Candidate.from_dict(data) == candidate
    assert "opt=basic" in candidate.describe() and "static=False" in candidate.describe()
    options = manifest_runtime(candidate)
    assert options.graph_optimization == "basic" and options.intra_op_threads == 1
    assert options.providers == (Provider(CPU_PROVIDER),)
    # "all" is the runtime's default: left out of the dict like any default
    at_all = space.suggest(optuna.trial.FixedTrial({**PARAMS, "runtime_static_shape": True,
                                                    "runtime_graph_optimization": "all"}))
    assert "graph_optimization" not in at_all.to_dict()


def test_another_provider_falls_back_to_the_cpu_for_what_it_does_not_run() -> None:
    runtime = RuntimeSpace(providers=("XNNPACK:intra_op_num_threads=1",))
    assert runtime.providers == ("XnnpackExecutionProvider:intra_op_num_threads=1",)
    candidate = Candidate(quantization=("fp32",), provider=runtime.providers[0])
    assert manifest_runtime(candidate).providers == (
        Provider("XnnpackExecutionProvider", {"intra_op_num_threads": "1"}),
        Provider(CPU_PROVIDER))


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"graph_optimization" + "s": ("fastest",)}, "runtime.graph_optimization"),
    ({"threads": (0,)}, "runtime.threads"),
    ({"threads": (1, 1)}, "runtime.threads"),
    ({"providers": (":x=1",)}, "runtime.providers"),
])
def test_bad_values_are_one_line_naming_the_field(kwargs, field) -> None:
    with pytest.raises(SpaceError, match=field.replace(".", r"\.")):
        RuntimeSpace(**kwargs)


def test_what_the_agents_cannot_give_is_named() -> None:
    space = RuntimeSpace(threads=(1, 2), providers=("CPU", "XNNPACK"))
    problem = check_offered(space, cores=1, available_providers=[CPU_PROVIDER])
    assert problem is not None and problem.startswith("runtime.threads: 2")
    problem = check_offered(space, cores=2, available_providers=[CPU_PROVIDER])
    assert problem is not None and "XnnpackExecutionProvider" in problem
    assert check_offered(space, cores=2, available_providers=[
        CPU_PROVIDER, "XnnpackExecutionProvider"]) is None


def test_the_engine_is_a_dimension_written_into_the_manifest() -> None:
    runtime = RuntimeSpace(engines=("onnxruntime", "openvino"))
    space = _space(runtime)
    assert runtime.param_names() == ("runtime_engine",)
    assert space.baseline().engine == "onnxruntime"
    assert "engine" not in space.baseline().to_dict()  # the default: older keys unchanged
    candidate = space.suggest(optuna.trial.FixedTrial({**PARAMS,
                                                       "runtime_engine": "openvino"}))
    assert candidate.to_dict()["engine"] == "openvino"
    assert Candidate.from_dict(candidate.to_dict()) == candidate
    assert "engine=openvino" in candidate.describe()
    assert manifest_runtime(candidate).engine == "openvino"
    assert manifest_runtime(space.baseline()).is_default
    with pytest.raises(SpaceError, match=r"runtime\.engines: 'tvm'"):
        RuntimeSpace(engines=("tvm",))


def test_an_engine_the_agents_lack_is_named() -> None:
    space = RuntimeSpace(engines=("onnxruntime", "openvino"))
    problem = check_offered(space, cores=1, available_providers=[CPU_PROVIDER])
    assert problem is not None and problem.startswith("runtime.engines: openvino")
    assert check_offered(space, cores=1, available_providers=[CPU_PROVIDER],
                         available_engines=["onnxruntime", "openvino"]) is None
