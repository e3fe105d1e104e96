"""Build a candidate into a bundle, reusing every cached prefix of the build.

prune + finetune is keyed by the pruning config; export + quantization by pruning + precision;
thresholds need no rebuild (they only change the manifest).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from device_agents.bundle import BundleManifest, ExitPolicy, InputSpec, StageSpec, write_bundle
from spaces.baseline import TrainedModel
from spaces.candidate import Candidate, stable_key
from spaces.data import DataSplits
from spaces.errors import BuildError
from spaces.export import INPUT_NAME, export_model
from spaces.layer_groups import FULL, LayerGroups, operators_by_group, stage_groups
from spaces.mixed_precision import quantize_graph, runtime_disabled_optimizers
from spaces.pruning import prune_model, replay_pruning
from spaces.quantization_space import UnsupportedPrecisionError, why_not_runnable
from spaces.quantize import QuantSettings, fusion_report
from spaces.staged_model import StagedModel
from spaces.temperature import fit_temperatures
from spaces.training import TrainSettings, exit_logits, train_model


@dataclass(frozen=True)
class BuildSettings:
    """How candidates are built (not searched): finetune, quantization, pruning details."""

    finetune: TrainSettings = TrainSettings(epochs=4, distill_alpha=0.5)
    quant: QuantSettings = QuantSettings()
    prune_importance: str = "l2"
    round_to: int = 8
    confidence: str = "max_softmax"
    exit_fallback: str = "last"

    def to_dict(self) -> dict[str, Any]:
        return {"finetune": self.finetune.to_dict(), "quant": self.quant.to_dict(),
                "prune_importance": self.prune_importance, "round_to": self.round_to,
                "confidence": self.confidence, "exit_fallback": self.exit_fallback}


@dataclass(frozen=True)
class BuiltBundle:
    """A bundle on disk, its digest, and what building it found out."""

    directory: Path
    digest: str
    build_seconds: float
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Pruned:
    key: str
    model: StagedModel
    history: list[Any]
    temperatures: tuple[float, ...]
    macs: float
    params: int


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("paretoedge", "torch", "torch-pruning", "onnx", "onnxruntime"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "unknown"
    return out


class CandidateBuilder:
    """Turns candidates into bundles for one trained model and its data.

    Example:
        >>> builder = CandidateBuilder(trained=trained, data=data, cache_dir=Path("runs/cache"))
        >>> builder.build(candidate, Path("runs/digits/bundles/trial_0001"))  # doctest: +SKIP
    """

    def __init__(self, *, trained: TrainedModel, data: DataSplits, cache_dir: Path,
                 settings: BuildSettings = BuildSettings(),
                 groups: LayerGroups | tuple[str, ...] | None = None) -> None:
        self.trained = trained
        self.data = data
        self.settings = settings
        self.cache_dir = Path(cache_dir)
        self.example = torch.from_numpy(data.preprocess(data.train_x[:1]))
        fresh = trained.fresh()
        self.num_stages = fresh.num_stages
        if not isinstance(groups, LayerGroups):  # one group per stage, optionally renamed
            by_stage = stage_groups(fresh)
            if groups:
                if len(groups) != self.num_stages:
                    raise BuildError(f"{len(groups)} group names for {self.num_stages} stages")
                by_stage = LayerGroups(tuple(type(g)(name, g.modules) for name, g in
                                             zip(groups, by_stage.groups, strict=True)))
            groups = by_stage
        self.layer_groups = groups
        self.groups = groups.names
        self._operators: dict[str, tuple[str, ...]] | None = None
        self._pruned: dict[str, _Pruned] = {}
        self._calibration = data.preprocess(data.train_x[: settings.quant.calibration_samples])
        self._versions = _versions()

    # -- prune + finetune ---------------------------------------------------------------------
    def pruned(self, ratio: float) -> _Pruned:
        s = self.settings
        key = stable_key("pruned", self.trained.key, ratio, s.prune_importance, s.round_to,
                         s.finetune.to_dict() if ratio > 0 else None)
        if key in self._pruned:
            return self._pruned[key]
        directory = self.cache_dir / "pruned" / key
        model = self.trained.fresh()
        if (directory / "meta.json").is_file():
            meta = json.loads((directory / "meta.json").read_text())
            replay_pruning(model, meta["history"], self.example)
            model.load_state_dict(torch.load(directory / "state.pt", weights_only=True))
            entry = _Pruned(key, model.eval(), meta["history"], tuple(meta["temperatures"]),
                            meta["macs"], meta["params"])
        else:
            result = prune_model(model, ratio, self.example, importance=s.prune_importance,
                                 round_to=s.round_to)
            if ratio > 0:
                train_model(result.model, self.data.preprocess(self.data.train_x),
                            self.data.train_y, s.finetune, teacher=self.trained.fresh())
            val_logits = exit_logits(result.model, self.data.preprocess(self.data.val_x))
            temperatures = fit_temperatures(val_logits, self.data.val_y)
            directory.mkdir(parents=True, exist_ok=True)
            torch.save(result.model.state_dict(), directory / "state.pt")
            (directory / "meta.json").write_text(json.dumps({
                "history": result.history, "temperatures": temperatures,
                "macs": result.macs, "params": result.params, "ratio": ratio}))
            entry = _Pruned(key, result.model, result.history, temperatures, result.macs,
                            result.params)
        self._pruned[key] = entry
        return entry

    # -- layer groups -------------------------------------------------------------------------
    def operators(self) -> dict[str, tuple[str, ...]]:
        """The compute operators of each layer group (what decides the precisions it runs)."""
        if self._operators is None:
            self._operators = operators_by_group(self.trained.fresh(), self.example,
                                                 self.layer_groups)
        return dict(self._operators)

    # -- export + quantize --------------------------------------------------------------------
    def graphs(self, pruned: _Pruned, quantization: tuple[str, ...],
               cascade: bool) -> tuple[list[Path], dict[str, Any]]:
        """The candidate's ONNX graphs and what the build found out (fusion counts, the
        optimizers the runtime must disable), cached by pruning + precisions + settings."""
        if len(quantization) != len(self.groups):
            raise BuildError(f"candidate has {len(quantization)} precisions for "
                             f"{len(self.groups)} layer groups {list(self.groups)}")
        operators = self.operators()
        for group, precision in zip(self.groups, quantization, strict=True):
            why = why_not_runnable(precision, operators[group])
            if why:
                raise BuildError(str(UnsupportedPrecisionError(group, precision,
                                                               operators[group], why)))
        key = stable_key("graphs", pruned.key, list(quantization), cascade,
                         self.settings.quant.to_dict(), self.layer_groups.to_dict())
        directory = self.cache_dir / "graphs" / key
        info_path = directory / "info.json"
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            return [directory / name for name in info["files"]], info["fusion"]
        tmp = directory.with_name(key + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        float_paths = export_model(pruned.model, self.example, tmp / "fp32", cascade=cascade)
        stage_inputs = pruned.model.stage_inputs(torch.from_numpy(self._calibration))
        precisions = dict(zip(self.groups, quantization, strict=True))
        disabled = runtime_disabled_optimizers(quantization)
        files = []
        fusion: dict[str, Any] = {"integer_ops": 0, "float_after_dequantize": 0,
                                  "disabled_optimizers": list(disabled)}
        for k, path in enumerate(float_paths):
            target = tmp / path.name
            quantize_graph(path, target, precisions=precisions, groups=self.layer_groups,
                           kind=k if cascade else FULL, num_stages=self.num_stages,
                           calibration=(stage_inputs[k].numpy() if cascade
                                        else self._calibration),
                           settings=self.settings.quant, input_name=INPUT_NAME)
            files.append(target)
            report = fusion_report(target, disabled)
            fusion["integer_ops"] += report.integer_ops
            fusion["float_after_dequantize"] += report.float_after_dequantize
        shutil.rmtree(tmp / "fp32")
        info = {"files": [p.name for p in files], "fusion": fusion}
        (tmp / "info.json").write_text(json.dumps(info))
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)
        return [directory / p.name for p in files], fusion

    # -- bundle -------------------------------------------------------------------------------
    def _exit_policy(self, candidate: Candidate, temperatures: tuple[float, ...]) -> ExitPolicy:
        """Thresholds, per-exit temperatures (validation-fitted), confidence and fallback."""
        return ExitPolicy(thresholds=candidate.exit_thresholds, temperatures=temperatures,
                          confidence=candidate.exit_confidence or self.settings.confidence,
                          fallback=self.settings.exit_fallback)

    def build(self, candidate: Candidate, directory: Path) -> BuiltBundle:
        """Build ``candidate`` into a bundle at ``directory``; raise :class:`BuildError`."""
        started = time.perf_counter()
        try:
            pruned = self.pruned(candidate.prune_ratio)
            paths, fusion = self.graphs(pruned, candidate.quantization, candidate.early_exit)
        except BuildError:
            raise
        except Exception as exc:  # torch-pruning, export or ORT failing on this candidate
            raise BuildError(f"{type(exc).__name__}: {exc}") from exc
        temperatures = (pruned.temperatures if candidate.early_exit
                        else pruned.temperatures[-1:])
        stages = tuple(StageSpec(name=p.stem, file=p.name, sha256="") for p in paths)
        integer = fusion["integer_ops"]
        total = integer + fusion["float_after_dequantize"]
        info = {"macs_m": pruned.macs / 1e6, "params_k": pruned.params / 1e3,
                "fused_int_ops_ratio": integer / total if total else 0.0,
                "integer_ops": integer}
        manifest = BundleManifest(
            input=InputSpec(name=INPUT_NAME, shape=(1, *self.data.sample_shape),
                            dtype=str(self.data.test_x.dtype)),
            stages=stages,
            num_classes=self.data.num_classes,
            preprocessing=self.data.preprocessing,
            exits=self._exit_policy(candidate, temperatures),
            disabled_optimizers=tuple(fusion.get("disabled_optimizers", ())),
            provenance={"candidate": candidate.to_dict(), "groups": list(self.groups),
                        "layer_groups": self.layer_groups.to_dict(),
                        "build": self.settings.to_dict(), "versions": self._versions,
                        "baseline_key": self.trained.key, "pruning_history": pruned.history,
                        "exits": dict(self.trained.exits) or {"source": "declared"},
                        "metrics": info},
        )
        digest = write_bundle(directory, manifest, {p.name: p for p in paths})
        return BuiltBundle(directory=directory, digest=digest,
                           build_seconds=time.perf_counter() - started, info=info)
