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

import numpy as np
import torch

from device_agents.bundle import BundleManifest, ExitPolicy, InputSpec, StageSpec, write_bundle
from spaces.baseline import TrainedModel
from spaces.candidate import Candidate, stable_key
from spaces.data import DataSplits
from spaces.errors import BuildError
from spaces.export import INPUT_NAME, export_model
from spaces.pruning import PruningSettings, named_layers, prune_model, replay_pruning
from spaces.pruning_cache import PrunedCache
from spaces.pruning_space import normalize_stage_ratios
from spaces.quantize import QuantSettings, fusion_report, node_names, quantize_int8
from spaces.staged_model import StagedModel
from spaces.temperature import fit_temperatures
from spaces.training import FinetuneSettings, exit_logits, train_model


@dataclass(frozen=True)
class BuildSettings:
    """How candidates are built (not searched): finetune, quantization, pruning details."""

    finetune: FinetuneSettings = FinetuneSettings()
    quant: QuantSettings = QuantSettings()
    pruning: PruningSettings = PruningSettings()
    confidence: str = "max_softmax"

    def to_dict(self) -> dict[str, Any]:
        return {"finetune": self.finetune.to_dict(), "quant": self.quant.to_dict(),
                "pruning": self.pruning.to_dict(), "confidence": self.confidence}


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
    stage_ratios: tuple[float, ...] = ()
    val_exit_accuracies: tuple[float, ...] = ()


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
        fresh = trained.fresh()
        self.num_stages = fresh.num_stages
        named_layers(fresh, settings.pruning.ignored_layers, "pruning.ignored_layers")
        self.groups = groups or tuple(f"stage{k}" for k in range(self.num_stages))
        self._pruned: dict[str, _Pruned] = {}
        self._calibration = data.preprocess(data.train_x[: settings.quant.calibration_samples])
        self._versions = _versions()

    # -- prune + finetune ---------------------------------------------------------------------
    def pruned_key(self, ratio: float, stage_ratios: tuple[float, ...] = ()) -> str:
        """The cache key of a pruning: model and data (the baseline key), ratios, pruning and
        finetune settings (the seed included). An unpruned model needs neither."""
        ratio, stage_ratios = normalize_stage_ratios(stage_ratios) if stage_ratios else (
            ratio, ())
        s = self.settings
        prunes = ratio > 0 or any(r > 0 for r in stage_ratios)
        return stable_key("pruned", self.trained.key, list(stage_ratios) or ratio,
                          s.pruning.to_dict() if prunes else None,
                          s.finetune.to_dict() if prunes else None)

    def pruned(self, ratio: float, stage_ratios: tuple[float, ...] = ()) -> _Pruned:
        """The model pruned by ``ratio`` (or one ratio per stage) and finetuned, from the
        in-memory cache, the disk cache (replaying its history) or built now."""
        if stage_ratios:
            if len(stage_ratios) != self.num_stages:
                raise BuildError(f"candidate has {len(stage_ratios)} stage pruning ratios for "
                                 f"a model of {self.num_stages} stages")
            ratio, stage_ratios = normalize_stage_ratios(stage_ratios)
        key = self.pruned_key(ratio, stage_ratios)
        if key in self._pruned:
            return self._pruned[key]
        cache = PrunedCache(self.cache_dir / "pruned")
        with cache.lock(key):
            cached = cache.read(key)
            if cached is not None:
                meta = cached.meta
                model = replay_pruning(self.trained.fresh(), meta["history"], self.example)
                model.load_state_dict(cached.state)
            else:
                model, meta = self._prune_and_finetune(ratio, stage_ratios)
                cache.write(key, meta, model.state_dict())
        entry = _Pruned(key, model.eval(), meta["history"], tuple(meta["temperatures"]),
                        meta["macs"], meta["params"], tuple(meta.get("stage_ratios", ())),
                        tuple(meta.get("val_exit_accuracies", ())))
        self._pruned[key] = entry
        return entry

    def _prune_and_finetune(self, ratio: float, stage_ratios: tuple[float, ...]
                            ) -> tuple[StagedModel, dict[str, Any]]:
        s, data = self.settings, self.data
        ft, p = s.finetune, s.pruning
        started = time.perf_counter()
        prunes = ratio > 0 or any(r > 0 for r in stage_ratios)
        chosen = ft.subset_indices(len(data.train_x)) if prunes else np.arange(0)
        train_x, train_y = data.preprocess(data.train_x[chosen]), data.train_y[chosen]
        batches = []
        if prunes and p.importance == "taylor":
            order = np.random.default_rng(ft.seed).permutation(len(train_x))
            for k in range(p.taylor_batches):
                index = order[k * ft.batch_size:(k + 1) * ft.batch_size]
                if len(index):
                    batches.append((torch.from_numpy(train_x[index]),
                                    torch.from_numpy(train_y[index])))
        result = prune_model(self.trained.fresh(), ratio, self.example,
                             importance=p.importance, round_to=p.round_to,
                             stage_ratios=stage_ratios, ignored_layers=p.ignored_layers,
                             taylor_batches=batches)
        if result.history:  # channels left: finetune (every exit), distilled from the teacher
            teacher = self.trained.fresh() if ft.distill_alpha > 0 else None
            train_model(result.model, train_x, train_y, ft, teacher=teacher)
        val_x = data.preprocess(data.val_x)
        val_logits = exit_logits(result.model, val_x)
        meta = {"history": result.history, "temperatures": fit_temperatures(val_logits,
                                                                            data.val_y),
                "macs": result.macs, "params": result.params, "ratio": ratio,
                "stage_ratios": list(stage_ratios),
                "val_exit_accuracies": [float((lg.argmax(1) == data.val_y).mean())
                                        for lg in val_logits],
                "pruning": p.to_dict(), "finetune": ft.to_dict() if result.history else None,
                "finetune_samples": len(train_x) if result.history else 0,
                "seconds": time.perf_counter() - started}
        return result.model, meta

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
    def build(self, candidate: Candidate, directory: Path) -> BuiltBundle:
        """Build ``candidate`` into a bundle at ``directory``; raise :class:`BuildError`."""
        started = time.perf_counter()
        try:
            pruned = self.pruned(candidate.prune_ratio, candidate.stage_prune_ratios)
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
            exits=ExitPolicy(thresholds=candidate.exit_thresholds, temperatures=temperatures,
                             confidence=self.settings.confidence),
            provenance={"candidate": candidate.to_dict(), "groups": list(self.groups),
                        "build": self.settings.to_dict(), "versions": self._versions,
                        "baseline_key": self.trained.key, "pruning_history": pruned.history,
                        "pruning": {"key": pruned.key,
                                    "stage_ratios": list(candidate.stage_ratios(
                                        self.num_stages)),
                                    "val_exit_accuracies": list(pruned.val_exit_accuracies)},
                        "metrics": info},
        )
        digest = write_bundle(directory, manifest, {p.name: p for p in paths})
        return BuiltBundle(directory=directory, digest=digest,
                           build_seconds=time.perf_counter() - started, info=info)
