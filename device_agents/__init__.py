"""Device side of paretoedge: the bundle format, its runtime and the measuring agents.

Needs only numpy and onnxruntime (and ray to join a cluster); never torch.
"""

from __future__ import annotations

from device_agents.agent import ConfirmingAgent, DeviceAgent, FakeAgent, LocalDeviceAgent
from device_agents.bundle import (
    BundleManifest,
    BundlePayload,
    ExitPolicy,
    InputSpec,
    Preprocessing,
    StageSpec,
    bundle_digest,
    read_manifest,
    verify_bundle,
    write_bundle,
)
from device_agents.cascade import CascadeRunner, Prediction
from device_agents.errors import (
    BundleError,
    BundleIntegrityError,
    DeviceAgentError,
    EvalSetError,
    MeasurementError,
)
from device_agents.eval_set import EvalSet, EvalSetPayload
from device_agents.operator_profile import OperatorProfile, OperatorTime, profile_bundle
from device_agents.protocol import (
    AgentActivity,
    BundleRef,
    Confirmation,
    ConfirmRequest,
    LatencyStats,
    Measurement,
    MeasurementProtocol,
    MeasureRequest,
    PercentileCI,
    ProfileRequest,
)

__all__ = [
    "AgentActivity",
    "BundleError",
    "BundleIntegrityError",
    "BundleManifest",
    "BundlePayload",
    "BundleRef",
    "CascadeRunner",
    "ConfirmRequest",
    "Confirmation",
    "ConfirmingAgent",
    "DeviceAgent",
    "DeviceAgentError",
    "EvalSet",
    "EvalSetError",
    "EvalSetPayload",
    "ExitPolicy",
    "FakeAgent",
    "InputSpec",
    "LatencyStats",
    "LocalDeviceAgent",
    "MeasureRequest",
    "Measurement",
    "MeasurementError",
    "MeasurementProtocol",
    "OperatorProfile",
    "OperatorTime",
    "PercentileCI",
    "Prediction",
    "Preprocessing",
    "ProfileRequest",
    "StageSpec",
    "bundle_digest",
    "profile_bundle",
    "read_manifest",
    "verify_bundle",
    "write_bundle",
]
