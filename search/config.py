"""The experiment config (YAML), validated with pydantic at the edge.

Every problem is reported with its field path, all at once (``paretoedge validate``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from search.errors import ConfigError

DEFAULT_ROUND_TO = 8


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainConfig(_Strict):
    epochs: int = Field(30, ge=1, le=1000)
    lr: float = Field(3e-3, gt=0, le=10)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(64, ge=1)
    seed: int = 0


class ModelConfig(_Strict):
    factory: str = Field(description="'file.py:function' (relative to the config) or "
                                     "'package.module:function' returning a torch.nn.Module")
    train: TrainConfig = TrainConfig()


class DataConfig(_Strict):
    loader: str = Field(description="'file.py:function' returning spaces.DataSplits")
    seed: int = 0


class DeviceConfig(_Strict):
    class_: str = Field("local", alias="class", pattern=r"^[A-Za-z0-9_.-]+$")
    agents: int = Field(1, ge=1, le=64, description="local agents to start (no address)")
    threads: int = Field(1, ge=1, le=256)
    address: str | None = Field(None, description="HOST:PORT of a running Ray head; None "
                                                  "starts a local cluster")
    wait_for_agents_s: float = Field(120.0, gt=0)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ConstraintsConfig(_Strict):
    max_accuracy_drop: float = Field(0.01, ge=0, le=1)
    latency_p95_ms: float | None = Field(None, gt=0)
    size_kb: float | None = Field(None, gt=0)


class QuantizationConfig(_Strict):
    """The quantization knob: precisions searched per layer group, and how int8 is built."""

    precisions: list[Literal["fp32", "int8"]] = ["fp32", "int8"]
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["uint8", "int8"] = "int8"
    per_channel: bool = True
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_samples: int = Field(256, ge=1)

    @field_validator("precisions")
    @classmethod
    def _nonempty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must list at least one precision")
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
    distill_temperature: float = Field(4.0, gt=0)
    distill_target: Literal["final", "exit"] = Field(
        "final", description="each exit learns from the teacher's final logits, or from the "
                             "teacher's same exit")
    seed: int | None = Field(None, description="default: model.train.seed")


RatioValue = Annotated[float, Field(ge=0, le=0.95)]


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

    def round_to_for(self, device_class: str) -> int:
        """Channel rounding for a device class: ``round_to``, else the class's entry, else 8."""
        if self.round_to is not None:
            return self.round_to
        return self.round_to_by_device.get(device_class, DEFAULT_ROUND_TO)


class EarlyExitConfig(_Strict):
    """The early-exit knob: whether exits may be used, the threshold range, the confidence."""

    enabled: bool = True
    threshold: tuple[float, float] = (0.5, 0.999)
    confidence: Literal["max_softmax", "margin", "entropy"] = "max_softmax"

    @field_validator("threshold")
    @classmethod
    def _threshold_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high <= 1:
            raise ValueError("must be [low, high] with 0 < low <= high <= 1")
        return value


class MeasurementConfig(_Strict):
    warmup_runs: int = Field(50, ge=0)
    warmup_seconds: float = Field(0.2, ge=0)
    min_runs: int = Field(300, ge=10)
    max_runs: int = Field(3000, ge=10)
    round_runs: int = Field(100, ge=1)
    ci_rel_width: float = Field(0.02, gt=0, lt=1)
    timeout_s: float = Field(300.0, gt=0)
    retries: int = Field(2, ge=0, le=10)

    @model_validator(mode="after")
    def _runs_order(self) -> MeasurementConfig:
        if self.max_runs < self.min_runs:
            raise ValueError("max_runs must be >= min_runs")
        return self


class SearchConfig(_Strict):
    sampler: Literal["tpe", "nsga2", "random", "gp"] = "tpe"
    seed: int = 0
    trials: int = Field(20, ge=1)


class TrackingConfig(_Strict):
    mlflow: bool = True
    experiment: str | None = None


class StudyConfig(_Strict):
    """The whole experiment: what to search, on which device, under which constraints."""

    study: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: ModelConfig
    data: DataConfig
    device: DeviceConfig = DeviceConfig()
    constraints: ConstraintsConfig = ConstraintsConfig()
    quantization: QuantizationConfig = QuantizationConfig()
    pruning: PruningConfig = PruningConfig()
    early_exit: EarlyExitConfig = EarlyExitConfig()
    measurement: MeasurementConfig = MeasurementConfig()
    search: SearchConfig = SearchConfig()
    tracking: TrackingConfig = TrackingConfig()
    base_dir: Path = Field(Path("."), exclude=True)


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _describe(error: dict) -> str:
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
        problems = [f"{source}: {_location(e['loc'])}: {_describe(e)}" for e in exc.errors()]
        raise ConfigError(problems[0] + (f" (and {len(problems) - 1} more; run "
                                         f"'paretoedge validate {source}')"
                                         if len(problems) > 1 else ""), problems) from exc


def load_config(path: Path | str) -> StudyConfig:
    """Read and validate an experiment YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") \
            from exc
    return parse_config(data, str(path), path.resolve().parent)
