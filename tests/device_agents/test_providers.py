"""onnxruntime providers with options: parsed once, handed to onnxruntime as (name, options)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from device_agents import BundlePayload, CascadeRunner, EvalSet, EvalSetPayload, MeasureRequest
from device_agents.agent import LocalDeviceAgent
from device_agents.profiles import (
    Provider,
    as_providers,
    parse_providers,
    provider_names,
    session_providers,
)

CPU_WITH_OPTIONS = "CPUExecutionProvider:use_arena=0"


def test_a_provider_is_a_name_or_a_name_with_options_and_its_spec_reads_back():
    cuda = Provider.parse(" CUDAExecutionProvider:device_id=0; gpu_mem_limit = 1024 ")
    assert cuda == Provider("CUDAExecutionProvider", {"device_id": "0", "gpu_mem_limit": "1024"})
    assert cuda.spec == "CUDAExecutionProvider:device_id=0;gpu_mem_limit=1024"
    assert Provider.parse(cuda.spec) == cuda and cuda.on_gpu
    assert Provider.parse("CPUExecutionProvider") == Provider("CPUExecutionProvider")
    assert Provider("CPUExecutionProvider").spec == "CPUExecutionProvider"
    assert Provider.parse("CPUExecutionProvider:") == Provider("CPUExecutionProvider")


@pytest.mark.parametrize("text", ["", ":device_id=0", "CUDA:device_id", "CUDA:=0"])
def test_a_malformed_provider_is_a_value_error(text):
    with pytest.raises(ValueError):
        Provider.parse(text)


def test_plain_names_reach_onnxruntime_as_names_and_options_as_tuples():
    providers = parse_providers("CUDAExecutionProvider:device_id=0,CPUExecutionProvider")
    assert session_providers(providers) == [("CUDAExecutionProvider", {"device_id": "0"}),
                                            "CPUExecutionProvider"]
    assert session_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert session_providers([CPU_WITH_OPTIONS]) == [("CPUExecutionProvider", {"use_arena": "0"})]
    assert as_providers(["A", Provider("B")]) == (Provider("A"), Provider("B"))
    assert provider_names(providers) == ("CUDAExecutionProvider", "CPUExecutionProvider")


def test_the_cascade_runner_opens_its_sessions_with_the_providers_options(make_bundle, cascade,
                                                                         monkeypatch):
    import onnxruntime as ort

    seen = []
    real = ort.InferenceSession

    def recording(*args, **kwargs):
        seen.append(kwargs["providers"])
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    directory, _ = make_bundle(cascade.TWO_STAGE, thresholds=(0.9,))
    runner = CascadeRunner.load(directory, providers=(CPU_WITH_OPTIONS,))
    assert seen == [[("CPUExecutionProvider", {"use_arena": "0"})]] * 2
    assert runner.predict(np.array([50, 0, 0, 1], dtype=np.float32)).exit_index == 0

    seen.clear()
    CascadeRunner.load(directory)  # the default: the plain name, as before
    assert seen == [["CPUExecutionProvider"]] * 2


@pytest.mark.parametrize("isolate", [True, False])
def test_an_agent_measures_with_provider_options_and_reports_them(tmp_path, make_bundle, cascade,
                                                                  fast_protocol, isolate):
    directory, digest = make_bundle(cascade.TWO_STAGE, thresholds=(0.9,))
    payload = EvalSetPayload.from_eval_set(EvalSet(
        inputs=np.array([[50, 0, 0, 1], [0, 0, 1, 0]], dtype=np.float32),
        labels=np.array([0, 1], dtype=np.int64)))
    agent = LocalDeviceAgent(device_class="test", cache_dir=tmp_path / "cache", isolate=isolate,
                             providers=[CPU_WITH_OPTIONS])
    measured = agent.measure(MeasureRequest(
        bundle_digest=digest, bundle=BundlePayload.from_directory(directory),
        eval_set_digest=payload.digest, eval_set=payload, protocol=fast_protocol))
    assert measured.accuracy == 1.0
    assert measured.fingerprint["providers"] == [CPU_WITH_OPTIONS]
    assert agent.providers == (Provider("CPUExecutionProvider", {"use_arena": "0"}),)
    assert json.loads(json.dumps(agent.info()))["providers"] == [CPU_WITH_OPTIONS]
    agent.close()
