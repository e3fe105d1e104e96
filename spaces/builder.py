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
from spaces.pruning import prune_model, replay_pruning
from spaces.quantize import QuantSettings, fusion_report, node_names, quantize_int8
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
                 groups: tuple[str, ...] | None = None) -> None:
        self.trained = trained
        self.data = data
        self.settings = settings
        self.cache_dir = Path(cache_dir)
        self.example = torch.from_numpy(data.preprocess(data.train_x[:1]))
        self.num_stages = trained.fresh().num_stages
        self.groups = groups or tuple(f"stage{k}" for k in range(self.num_stages))
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

    # -- export + quantize --------------------------------------------------------------------
    def graphs(self, pruned: _Pruned, quantization: tuple[str, ...],
               cascade: bool) -> tuple[list[Path], dict[str, Any]]:
        if len(quantization) != len(self.groups):
            raise BuildError(f"candidate has {len(quantization)} precisions for "
                             f"{len(self.groups)} layer groups {list(self.groups)}")
        key = stable_key("graphs", pruned.key, list(quantization), cascade,
                         self.settings.quant.to_dict())
        directory = self.cache_dir / "graphs" / key
        info_path = directory / "info.json"
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            return [directory / name for name in info["files"]], info["fusion"]
        tmp = directory.with_name(key + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        float_paths = export_model(pruned.model, self.example, tmp / "fp32", cascade=cascade)
        stage_inputs = pruned.model.stage_inputs(torch.from_numpy(self._calibration))
        files, fusion = [], {"integer_ops": 0, "float_after_dequantize": 0}
        if cascade:
            for k, path in enumerate(float_paths):
                target = tmp / path.name
                if quantization[k] == "int8":
                    quantize_int8(path, target, stage_inputs[k].numpy(),
                                  settings=self.settings.quant, input_name=INPUT_NAME)
                else:
                    shutil.copyfile(path, target)
                files.append(target)
        else:
            target = tmp / float_paths[0].name
            if "int8" in quantization:
                excluded = self._float_group_nodes(float_paths[0], quantization)
                quantize_int8(float_paths[0], target, self._calibration,
                              settings=self.settings.quant, input_name=INPUT_NAME,
                              nodes_to_exclude=excluded)
            else:
                shutil.copyfile(float_paths[0], target)
            files.append(target)
        for path in files:
            report = fusion_report(path)
            fusion["integer_ops"] += report.integer_ops
            fusion["float_after_dequantize"] += report.float_after_dequantize
        shutil.rmtree(tmp / "fp32")
        info = {"files": [p.name for p in files], "fusion": fusion}
        (tmp / "info.json").write_text(json.dumps(info))
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)
        return [directory / p.name for p in files], fusion

    def _float_group_nodes(self, path: Path, quantization: tuple[str, ...]) -> list[str]:
        """Nodes of the single graph that belong to groups left in fp32."""
        last = len(self.groups) - 1
        prefixes = [f"/stages.{k}/" for k, q in enumerate(quantization) if q == "fp32"]
        if quantization[last] == "fp32":
            prefixes.append("/head/")
        return [n for n in node_names(path) if n.startswith(tuple(prefixes))]

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
            provenance={"candidate": candidate.to_dict(), "groups": list(self.groups),
                        "build": self.settings.to_dict(), "versions": self._versions,
                        "baseline_key": self.trained.key, "pruning_history": pruned.history,
                        "exits": dict(self.trained.exits) or {"source": "declared"},
                        "metrics": info},
        )
        digest = write_bundle(directory, manifest, {p.name: p for p in paths})
        return BuiltBundle(directory=directory, digest=digest,
                           build_seconds=time.perf_counter() - started, info=info)
