"""The experiment config (YAML), validated with pydantic at the edge.

Every problem is reported with its field path, all at once (``paretoedge validate``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from device_agents.bundle import CONFIDENCE_MEASURES
from device_agents.profiles import profile_for
from search.durations import parse_duration
from search.errors import ConfigError
from search.metrics import CONFIRMATION_METRICS, DEFAULT_OBJECTIVES, METRICS, limitable_metrics
from spaces.precisions import Precision


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainConfig(_Strict):
    epochs: int = Field(30, ge=1, le=1000)
    lr: float = Field(3e-3, gt=0, le=10)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(64, ge=1)
    seed: int = 0


class ModelConfig(_Strict):
    """Where the model comes from: PyTorch code (``factory``, with a trained ``checkpoint`` or
    trained here) or an ONNX file alone (``onnx``)."""

    factory: str | None = Field(None, description="'file.py:function' (relative to the config) "
                                "or 'package.module:function' returning a torch.nn.Module")
    checkpoint: str | None = Field(None, description="a state_dict file (torch.save) loaded "
                                   "strictly into the factory's module; nothing is trained")
    onnx: str | None = Field(None, description="an ONNX file (relative to the config): the "
                             "model without its code; quantization and runtime knobs only")
    train: TrainConfig | Literal[False] = Field(
        TrainConfig(), description="how the factory's module is trained first; false: it "
                                   "is used as it comes (a factory that loads its weights)")

    @field_validator("train", mode="before")
    @classmethod
    def _train_true(cls, value: object) -> object:
        return {} if value is True else value

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.factory is None) == (self.onnx is None):
            raise ValueError("give exactly one of 'factory' (PyTorch code) and 'onnx' (an "
                             "ONNX file)")
        if self.onnx is not None and self.checkpoint is not None:
            raise ValueError("'checkpoint' needs 'factory' (the code it is loaded into), not "
                             "'onnx'")
        if "train" in self.model_fields_set and self.train is not False and (
                self.checkpoint is not None or self.onnx is not None):
            beside = "checkpoint" if self.checkpoint else "onnx"
            raise ValueError(f"'train' settings beside '{beside}': a trained model is not "
                             f"trained again (remove 'train')")
        return self

    @property
    def trains(self) -> bool:
        """Whether the study trains the factory's module before the search."""
        return self.factory is not None and self.checkpoint is None and self.train is not False

    @property
    def train_settings(self) -> TrainConfig:
        """``train``'s settings (its defaults where it is off: finetunes and heads use its
        batch size and seed)."""
        return self.train if isinstance(self.train, TrainConfig) else TrainConfig()


class DataConfig(_Strict):
    loader: str = Field(description="'file.py:function' returning spaces.DataSplits")
    seed: int = 0


class DeviceConfig(_Strict):
    class_: str = Field("local", alias="class", pattern=r"^[A-Za-z0-9_.-]+$")
    agents: int = Field(1, ge=1, le=64, description="local agents to start (no address)")
    threads: int = Field(1, ge=1, le=256)
    address: str | None = Field(None, pattern=r"^[^\s:/]+:\d+$",
                                description="HOST:PORT of a running Ray head whose agents "
                                            "measure (paretoedge agent start); None starts a "
                                            "local cluster with `agents` local agents")
    wait_for_agents_s: float = Field(120.0, gt=0, description="how long trials wait for an "
                                                              "agent of the class to be free")
    discover_every_s: float = Field(5.0, gt=0, le=600, description="how often the study "
                                    "looks for agents that joined and pings the ones it has")
    heartbeat_timeout_s: float = Field(60.0, gt=0, description="an agent silent this long is "
                                       "dropped and its trial goes to another agent")
    overlap_builds: bool = Field(False, description="on a local cluster, build the next "
                                 "candidate while an agent measures (faster, but the build on "
                                 "the next core inflates the latency; logged per trial)")
    builds: Literal["local", "cluster"] = Field(
        "local", description="local: the driver builds, one candidate at a time; cluster: Ray "
        "tasks on the nodes of the cluster at device.address that carry the resource "
        "'builder' (paretoedge builder start; docs/SCALING.md)")

    @model_validator(mode="after")
    def _cluster_builds(self) -> DeviceConfig:
        if self.builds == "cluster" and self.address is None:
            raise ValueError("builds: cluster needs device.address (the Ray cluster whose "
                             "builder nodes build)")
        return self

    @property
    def builds_overlap(self) -> bool:
        """Whether a build may run while a measurement is in flight: always on remote
        devices (the build host is not the device), on a local cluster only when asked."""
        return self.overlap_builds or self.address is not None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ConstraintsConfig(_Strict):
    """The accuracy band and hard limits on any metric (``{peak_mem_mb: 64}``): an upper bound
    on a metric where less is better, a lower bound on one where more is."""

    max_accuracy_drop: float = Field(0.01, ge=0, le=1)
    latency_p95_ms: float | None = Field(None, gt=0)
    size_kb: float | None = Field(None, gt=0)

    model_config = ConfigDict(extra="allow", frozen=True)

    @model_validator(mode="after")
    def _known_metrics(self) -> ConstraintsConfig:
        for name, value in (self.model_extra or {}).items():
            metric = METRICS.get(name)
            if metric is None or not metric.direction or name in CONFIRMATION_METRICS \
                    or name == "accuracy_drop":
                raise ValueError(f"{name}: not a metric a limit can be put on (one of "
                                 f"{', '.join(limitable_metrics())})")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name}: must be a number, got {value!r}")
        return self

    def limits(self) -> dict[str, float]:
        """Every metric limit (not the accuracy band), by metric name."""
        found = {"latency_p95_ms": self.latency_p95_ms, "size_kb": self.size_kb,
                 **{k: float(v) for k, v in (self.model_extra or {}).items()}}
        return {name: float(v) for name, v in found.items() if v is not None}


class WeightOnlyConfig(_Strict):
    """How ``int8_wo``/``int4_wo`` groups are built (onnxruntime's MatMulNBits)."""

    block_size: int = Field(32, ge=16, le=256)
    accuracy_level: int = Field(4, ge=0, le=4, description="compute type of MatMulNBits: "
                                                           "4 = int8, 0 = unset")
    symmetric: bool = True

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of 2 (16, 32, 64, 128, 256)")
        return value


class QuantizationConfig(_Strict):
    """The quantization knob: precisions searched per layer group, and how each is built."""

    precisions: list[Precision] = ["fp32", "int8"]
    groups: Literal["auto", "stages"] | dict[str, list[str]] = Field(
        "auto", description="'auto' (first layer, each stage, last layer), 'stages', or "
                            "{group: [module paths]}")
    group_precisions: dict[str, list[Precision]] = Field(
        {}, description="per group, the precisions searched instead of 'precisions'")
    target: Literal["auto", "x86", "arm"] = Field(
        "auto", description="instruction set the int8 defaults are chosen for; auto: the "
                            "host for device class 'local', else guessed from the class name")
    activation_type: Literal["uint8", "int8"] | None = Field(
        None, description="default per target: uint8 on x86 (U8S8), int8 on arm (S8S8)")
    weight_type: Literal["uint8", "int8"] = "int8"
    per_channel: bool = True
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_samples: int = Field(256, ge=1)
    weight_only: WeightOnlyConfig = WeightOnlyConfig()
    seed_from_sensitivity: bool = Field(
        False, description="enqueue mixed configurations from 'paretoedge sensitivity' at start")
    seed_trials: int = Field(4, ge=1, le=100)
    qat: list[StrictBool] = Field(
        [False], description="quantization-aware finetuning of candidates with int8 groups: "
                             "[false], [true] or [false, true] (searched, Optuna param 'qat')")

    @field_validator("qat")
    @classmethod
    def _qat_values(cls, value: list[bool], info: ValidationInfo) -> list[bool]:
        if not value or len(set(value)) != len(value):
            raise ValueError("must list false and/or true, each once, e.g. [false, true]")
        offered = set(info.data.get("precisions") or ()).union(
            *(info.data.get("group_precisions") or {}).values())
        if True in value and "int8" not in offered:
            raise ValueError("true needs int8 among quantization.precisions (or "
                             "group_precisions): QAT finetunes the int8 groups")
        return value

    @field_validator("precisions")
    @classmethod
    def _nonempty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must list at least one precision")
        return value

    @field_validator("groups")
    @classmethod
    def _group_names(cls, value: str | dict[str, list[str]]) -> str | dict[str, list[str]]:
        if isinstance(value, dict):
            if not value:
                raise ValueError("must name at least one group (or be 'auto' or 'stages')")
            for name, modules in value.items():
                if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                    raise ValueError(f"group name {name!r}: use letters, digits, '._-'")
                if not modules:
                    raise ValueError(f"group {name!r} lists no module")
        return value

    @field_validator("group_precisions")
    @classmethod
    def _group_precisions(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, precisions in value.items():
            if not precisions:
                raise ValueError(f"group {name!r}: must list at least one precision")
        return value


class FinetuneConfig(_Strict):
    """The finetune after pruning: a budget (epochs, or steps), a schedule, distillation."""

    epochs: int = Field(4, ge=0, le=1000)
    steps: int | None = Field(None, ge=1, description="budget in optimizer steps; overrides "
                                                      "epochs")
    train_subset: int | None = Field(None, ge=1, description="finetune on this many training "
                                                             "samples (seeded), not all")
    lr: float = Field(2e-3, gt=0, le=10)
    schedule: Literal["onecycle", "cosine"] = "onecycle"
    warmup: float = Field(0.15, ge=0, lt=1)
    batch_size: int | None = Field(None, ge=1, description="default: model.train.batch_size")
    distill_alpha: float = Field(0.5, ge=0, le=1)
    distill_temperature: float = Field(1.0, gt=0)
    distill_target: Literal["final", "exit"] = Field(
        "final", description="each exit learns from the teacher's final logits, or from the "
                             "teacher's same exit")
    distill_features: float = Field(
        1.0, ge=0, le=100, description="weight of feature distillation: each pruned stage's "
                                       "output learns the teacher's at the channels it kept")
    seed: int | None = Field(None, description="default: model.train.seed")


RatioValue = Annotated[float, Field(ge=0, le=0.95)]


class PromotionConfig(_Strict):
    """Which screened candidates are built again with ``pruning.finetune_full`` (as trials of
    their own): pruned ones on the feasible front, or outside the accuracy band by at most
    ``margin`` with latency objectives that would put them on it; at most ``share`` of the
    study's trials."""

    share: float = Field(0.25, gt=0, le=0.9, description="at most this share of the study's "
                                                          "trials are promotions")
    margin: float = Field(0.015, ge=0, le=1, description="accuracy below the band by at most "
                          "this much is still promoted (the long finetune recovered 1.4 pp at "
                          "ratio 0.375 on the reference model, BENCHMARKS.md)")


class PruningConfig(_Strict):
    """The pruning knob: ratios searched, the criterion, and the finetune after pruning."""

    ratio_max: RatioValue = 0.5
    ratio_step: float = Field(0.125, gt=0, le=0.95)
    per_stage: bool = False
    importance: Literal["l1", "l2", "taylor"] = "l2"
    taylor_batches: int = Field(4, ge=1, le=1000)
    round_to: int | None = Field(None, ge=1, description="default: round_to_by_device of the "
                                                         "device class, else 8")
    round_to_by_device: dict[str, Annotated[int, Field(ge=1)]] = {}
    ignored_layers: list[str] = []
    finetune: FinetuneConfig = FinetuneConfig()
    finetune_full: FinetuneConfig | None = Field(
        None, description="the long finetune of promoted candidates (multi-fidelity); None: "
                          "every candidate has the one finetune")
    promotion: PromotionConfig = PromotionConfig()

    def round_to_for(self, device_class: str) -> int:
        """Channel rounding for a device class: ``round_to``, else the class's entry, else 8."""
        if self.round_to is not None:
            return self.round_to
        return profile_for(device_class, round_to_by_device=self.round_to_by_device).round_to


class ExitHeadsConfig(_Strict):
    """How exit heads retrofitted with ``early_exit.after`` look and are trained."""

    hidden: int = Field(0, ge=0, description="hidden width of the head (0: pool + linear)")
    training: Literal["frozen", "joint"] = "frozen"
    epochs: int = Field(30, ge=1, le=1000, description="epochs of the heads on the frozen "
                                                      "backbone (cheap: pooled features)")
    lr: float = Field(0.01, gt=0, le=10)
    joint_epochs: int = Field(2, ge=1, le=1000, description="then, with training: joint, "
                                                           "epochs of everything together")
    joint_lr: float = Field(1e-3, gt=0, le=10)
    loss_weights: list[float] | None = Field(
        None, description="one weight per exit, the model's own classifier last")

    @field_validator("loss_weights")
    @classmethod
    def _positive(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (not value or any(w < 0 for w in value)
                                  or not any(w > 0 for w in value)):
            raise ValueError("must be non-negative weights, at least one positive")
        return value


class EarlyExitConfig(_Strict):
    """The early-exit knob: where exits are, how thresholds are searched, the confidence."""

    enabled: bool = True
    after: list[str] | None = Field(None, description="named modules of a plain model to put "
                                                      "exit heads after (a StagedModel "
                                                      "declares its own)")
    heads: ExitHeadsConfig = ExitHeadsConfig()
    threshold: tuple[float, float] = (0.5, 0.999)
    thresholds: Literal["per_exit", "shared"] = "per_exit"
    scale: Literal["log", "linear"] = "log"
    confidence: str | list[str] = Field(
        "max_softmax", description="max_softmax, margin or entropy; a list searches them")
    fallback: Literal["last", "most_confident"] = "last"

    @field_validator("threshold")
    @classmethod
    def _threshold_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high <= 1:
            raise ValueError("must be [low, high] with 0 < low <= high <= 1")
        return value

    @field_validator("after")
    @classmethod
    def _module_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value or any(not name.strip() for name in value):
                raise ValueError("must list module names, e.g. [layer1, layer2]")
            if len(set(value)) != len(value):
                raise ValueError("lists a module twice")
        return value

    @field_validator("confidence")
    @classmethod
    def _measures(cls, value: str | list[str]) -> str | list[str]:
        names = value if isinstance(value, list) else [value]
        if not names or len(set(names)) != len(names) or \
                any(name not in CONFIDENCE_MEASURES for name in names):
            raise ValueError(f"must be one measure of {', '.join(CONFIDENCE_MEASURES)}, or a "
                             f"list of distinct ones to search")
        return value

    @model_validator(mode="after")
    def _weights_match_exits(self) -> EarlyExitConfig:
        weights = self.heads.loss_weights
        if self.after is not None and weights is not None and \
                len(weights) != len(self.after) + 1:
            raise ValueError(f"heads.loss_weights has {len(weights)} values for "
                             f"{len(self.after) + 1} exits (one per module of 'after', then "
                             f"the model's own classifier)")
        return self

    @property
    def measures(self) -> tuple[str, ...]:
        return tuple(self.confidence) if isinstance(self.confidence, list) \
            else (self.confidence,)


class MeasurementConfig(_Strict):
    warmup_runs: int = Field(50, ge=0)
    warmup_seconds: float = Field(0.2, ge=0)
    #: timing goes on until the 95 % CI of every ranked latency percentile (objectives and
    #: constraints) is within ci_rel_width of it, after min_runs runs and min_seconds
    min_runs: int = Field(1024, ge=10)
    max_runs: int = Field(100_000, ge=10)
    min_seconds: float = Field(0.5, ge=0)
    max_seconds: float = Field(10.0, ge=0, description="0: no limit")
    round_runs: int = Field(100, ge=1)
    ci_rel_width: float = Field(0.02, gt=0, lt=1)
    timeout_s: float = Field(300.0, gt=0)
    retries: int = Field(2, ge=0, le=10)
    #: below this CPU share of the measuring process the measurement was contended
    min_cpu_share: float = Field(0.9, ge=0, le=1)
    contention_retries: int = Field(2, ge=0, le=10)
    contention_pause_s: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _runs_order(self) -> MeasurementConfig:
        if self.max_runs < self.min_runs:
            raise ValueError("max_runs must be >= min_runs")
        return self


class ConfirmConfig(_Strict):
    """The confirmation at a study's end: the baseline and the front re-timed by one agent,
    interleaved in ``rounds`` rounds of ``runs_per_round`` runs each, and evaluated on the test
    split."""

    enabled: bool = True
    rounds: int = Field(5, ge=1, le=100)
    runs_per_round: int = Field(1000, ge=10, le=1_000_000)


class ProfilingConfig(_Strict):
    """Per-operator profiles of the front at a study's end (after the confirmation): each
    member's bundle profiled by an agent with onnxruntime's profiler over ``runs`` inferences
    of the test split; logged to MLflow, printed by ``paretoedge profile``."""

    enabled: bool = True
    runs: int = Field(1000, ge=10, le=1_000_000)


GraphOptimization = Literal["disabled", "basic", "extended", "layout", "all"]


class RuntimeConfig(_Strict):
    """The runtime knobs (docs/RUNTIME.md): each a list of values to search, or absent for
    today's behaviour (all graph optimizations, ``device.threads``, the agents' providers, the
    graph's batch axis as the builder makes it). One value applies to every trial; the
    baseline (trial 0) takes each list's first value."""

    graph_optimization: list[GraphOptimization] | None = Field(
        None, description="onnxruntime graph optimization levels, e.g. [all, extended, basic]")
    static_shape: list[bool] | None = Field(
        None, description="true: the graph's input fixed to batch 1; false: a dynamic batch "
                          "axis (a PyTorch model's export; an ONNX file keeps its own)")
    threads: list[Annotated[int, Field(ge=1, le=256)]] | None = Field(
        None, description="intra-op thread counts (at most the cores of the class's agents; "
                          "local agents are pinned to the largest)")
    providers: list[str] | None = Field(
        None, description="execution providers the agents have, NAME[:key=value;...] "
                          "(CPU, XNNPACK, OpenVINO, CUDA, TensorRT or a full name)")
    engines: list[Literal["onnxruntime", "openvino"]] | None = Field(
        None, description="the runtime that runs a bundle: onnxruntime, or OpenVINO's own "
                          "(pip install paretoedge[openvino] where the agents run)")

    @field_validator("graph_optimization", "static_shape", "threads", "providers", "engines")
    @classmethod
    def _distinct(cls, value: list[object] | None) -> list[object] | None:
        if value is not None:
            if not value:
                raise ValueError("must list at least one value (or leave the key out)")
            if len(set(value)) != len(value):
                raise ValueError("lists a value twice")
        return value

    @field_validator("providers")
    @classmethod
    def _provider_texts(cls, value: list[str] | None) -> list[str] | None:
        from device_agents.runtime_options import provider_from_text

        for text in value or ():
            try:
                provider_from_text(text)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        return value

    @property
    def max_threads(self) -> int:
        """The most intra-op threads a trial may ask for (0: the knob is not searched)."""
        return max(self.threads or (0,))


class SearchConfig(_Strict):
    """The sampler and the budgets: trials, wall-clock time, and patience."""

    sampler: Literal["tpe", "nsga2", "random", "gp"] = "tpe"
    seed: int = 0
    trials: int = Field(20, ge=1)
    timeout: str | None = Field(None, description="stop asking for trials after this long "
                                                  "(90s, 30m, 8h); --timeout overrides it")
    patience: int | None = Field(None, ge=1, description="stop when the hypervolume has not "
                                                         "improved for this many trials")
    storage: str = Field("journal", description="where the trials are stored: 'journal' (the "
                         "workdir's Optuna journal, one driver) or postgresql://user@host:port/"
                         "database (several drivers share the study; docs/SCALING.md)")

    @field_validator("timeout")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_duration(value, "timeout")
            except ConfigError as exc:
                raise ValueError(str(exc).removeprefix("timeout: ")) from None
        return value

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str) -> str:
        from search.storage import check_storage

        return check_storage(value)


class TrackingConfig(_Strict):
    """MLflow logging into ``<workdir>/mlflow.db``."""

    mlflow: bool = True
    experiment: str | None = None
    bundles: Literal["front", "all", "none"] = Field(
        "front", description="bundles logged as artifacts of their trial's run")
    plots: bool = Field(True, description="pareto.html (plotly) and pareto.png on the study run")
    retry_after_s: float = Field(30.0, gt=0, description="after a failure (MLflow down or "
                                                          "locked), skip it this long, then retry")


def _objectives(value: dict[str, str]) -> dict[str, str]:
    if not 2 <= len(value) <= 4:
        raise ValueError(f"name 2 to 4 objectives, not {len(value)}")
    for name in value:
        metric = METRICS.get(name)
        if metric is None or not metric.direction or name in CONFIRMATION_METRICS \
                or name == "accuracy_drop":
            raise ValueError(f"{name}: not a measured metric (one of "
                             f"{', '.join(limitable_metrics())})")
    return value


Objectives = Annotated[dict[str, Literal["min", "max"]], AfterValidator(_objectives)]


class StudyConfig(_Strict):
    """The whole experiment: what to search, on which device, under which constraints."""

    study: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: ModelConfig
    data: DataConfig
    objectives: Objectives = Field(
        dict(DEFAULT_OBJECTIVES), description="metric: min or max, 2 to 4 of them")
    device: DeviceConfig = DeviceConfig()
    constraints: ConstraintsConfig = ConstraintsConfig()
    quantization: QuantizationConfig = QuantizationConfig()
    pruning: PruningConfig = PruningConfig()
    early_exit: EarlyExitConfig = EarlyExitConfig()
    measurement: MeasurementConfig = MeasurementConfig()
    confirm: ConfirmConfig = ConfirmConfig()
    profiling: ProfilingConfig = ProfilingConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    search: SearchConfig = SearchConfig()
    tracking: TrackingConfig = TrackingConfig()
    base_dir: Path = Field(Path("."), exclude=True)

    @model_validator(mode="after")
    def _graph_only_knobs(self) -> StudyConfig:
        if self.model.onnx is not None:
            for key in ("pruning", "early_exit"):
                if key in self.model_fields_set:
                    raise ValueError(f"{key}: needs the model's PyTorch code (model.factory); "
                                     f"an ONNX model searches quantization and runtime "
                                     f"options only")
            if True in self.quantization.qat:
                raise ValueError("quantization.qat: quantization-aware finetuning needs the "
                                 "model's PyTorch code (model.factory), not model.onnx")
        return self

    @property
    def searches_pruning(self) -> bool:
        return self.model.onnx is None

    @property
    def searches_exits(self) -> bool:
        return self.model.onnx is None and self.early_exit.enabled


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _describe(error: ErrorDetails) -> str:
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    message = str(error.get("msg", "invalid"))
    return message.removeprefix("Value error, ")


def parse_config(data: object, source: str, base_dir: Path) -> StudyConfig:
    """Validate a parsed YAML document; raise :class:`ConfigError` listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return StudyConfig.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        problems = [f"{source}: {_location(e['loc'])}: {_describe(e)}" if e["loc"]
                    else f"{source}: {_describe(e)}" for e in exc.errors()]
        raise ConfigError(problems[0] + (f" (and {len(problems) - 1} more; run "
                                         f"'paretoedge validate {source}')"
                                         if len(problems) > 1 else ""), problems) from exc


def load_config(path: Path | str) -> StudyConfig:
    """Read and validate an experiment YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise ConfigError(f"{path}: a binary file, not a YAML config")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                          f"{exc.start}); save the config as UTF-8") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = (str(getattr(exc, "problem", None) or exc).strip()
                   or type(exc).__name__).splitlines()[0]
        raise ConfigError(f"{path}:{where} not valid YAML ({problem})") from exc
    return parse_config(data, str(path), path.resolve().parent)
