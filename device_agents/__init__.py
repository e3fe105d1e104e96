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
from device_agents.deployment import (
    DeploymentSpec,
    FallbackPolicy,
    MonitorReference,
    deployed_copy,
    reference_from_evaluation,
)
from device_agents.errors import (
    BundleError,
    BundleIntegrityError,
    DeviceAgentError,
    EvalSetError,
    MeasurementError,
    MonitorError,
    TelemetryError,
)
from device_agents.eval_set import EvalSet, EvalSetPayload
from device_agents.monitor import Monitor
from device_agents.monitor_records import (
    InferenceRecord,
    MonitorEvent,
    MonitorSettings,
    WindowSummary,
)
from device_agents.operator_profile import OperatorProfile, OperatorTime, profile_bundle
from device_agents.prometheus import PrometheusExporter
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
from device_agents.runtime_options import RuntimeOptions
from device_agents.telemetry import TelemetryFile, TelemetryWriter, read_telemetry

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
    "DeploymentSpec",
    "DeviceAgent",
    "DeviceAgentError",
    "EvalSet",
    "EvalSetError",
    "EvalSetPayload",
    "ExitPolicy",
    "FakeAgent",
    "FallbackPolicy",
    "InferenceRecord",
    "InputSpec",
    "LatencyStats",
    "LocalDeviceAgent",
    "MeasureRequest",
    "Measurement",
    "MeasurementError",
    "MeasurementProtocol",
    "Monitor",
    "MonitorError",
    "MonitorEvent",
    "MonitorReference",
    "MonitorSettings",
    "OperatorProfile",
    "OperatorTime",
    "PercentileCI",
    "Prediction",
    "Preprocessing",
    "ProfileRequest",
    "PrometheusExporter",
    "RuntimeOptions",
    "StageSpec",
    "TelemetryError",
    "TelemetryFile",
    "TelemetryWriter",
    "WindowSummary",
    "bundle_digest",
    "deployed_copy",
    "profile_bundle",
    "read_manifest",
    "read_telemetry",
    "reference_from_evaluation",
    "verify_bundle",
    "write_bundle",
]
