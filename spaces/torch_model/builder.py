"""The torch builder: a candidate of a PyTorch model into a bundle, reusing every cached prefix
of the build.

prune + finetune is keyed by the pruning config (and, for a quantization-aware finetune, the
int8 groups); export + quantization by pruning + precision; thresholds need no rebuild (they
only change the manifest).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from device_agents.bundle import BundleManifest, ExitPolicy, InputSpec, StageSpec, write_bundle
from spaces.builder import BuiltBundle
from spaces.candidate import Candidate, stable_key
from spaces.data import DataSplits
from spaces.errors import BuildError
from spaces.layer_groups import FULL, LayerGroups
from spaces.onnx_graph.mixed_precision import quantize_graph, runtime_disabled_optimizers
from spaces.onnx_graph.node_groups import module_inputs
from spaces.onnx_graph.quantize import fusion_report
from spaces.pruning_space import normalize_stage_ratios
from spaces.quantization_space import UnsupportedPrecisionError, why_not_runnable
from spaces.runtime_space import manifest_runtime
from spaces.settings import BuildSettings, FinetuneSettings
from spaces.torch_model.baseline import TrainedModel
from spaces.torch_model.export import INPUT_NAME, export_model
from spaces.torch_model.fake_quant import (
    QAT_START,
    FakeQuantSpec,
    attach_fake_quant,
)
from spaces.torch_model.module_groups import operators_by_group, stage_groups
from spaces.torch_model.pruning import (
    kept_stage_channels,
    named_layers,
    prune_model,
    replay_pruning,
)
from spaces.torch_model.pruning_cache import PrunedCache
from spaces.torch_model.staged_model import StagedModel
from spaces.torch_model.temperature import fit_temperatures
from spaces.torch_model.training import exit_logits, train_model


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
    #: quantization-aware finetune: the learned input range of each fake-quantized module
    activation_ranges: tuple[tuple[str, float, float], ...] = ()


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("paretoedge", "torch", "torch-pruning", "onnx", "onnxruntime"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "unknown"
    return out


class TorchBuilder:
    """Turns candidates into bundles for one trained model and its data.

    Example:
        >>> builder = TorchBuilder(trained=trained, data=data, cache_dir=Path("runs/cache"))
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
        named_layers(fresh, settings.pruning.ignored_layers, "pruning.ignored_layers")
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

    @property
    def model_key(self) -> str:
        """The trained fp32 model's key (model source, data, training settings)."""
        return self.trained.key

    # -- prune + finetune ---------------------------------------------------------------------
    def pruned_key(self, ratio: float, stage_ratios: tuple[float, ...] = (),
                   fidelity: str = "", qat_groups: tuple[str, ...] = ()) -> str:
        """The cache key of a pruning: model and data (the baseline key), ratios, pruning and
        the fidelity's finetune settings (the seed included). An unpruned model needs
        neither (nor a fidelity: it is not finetuned), unless it is finetuned
        quantization-aware: ``qat_groups`` (the int8 groups) and the fake quantization's
        types then join the key; without them the key is the one of before QAT existed."""
        ratio, stage_ratios = normalize_stage_ratios(stage_ratios) if stage_ratios else (
            ratio, ())
        s = self.settings
        prunes = ratio > 0 or any(r > 0 for r in stage_ratios)
        finetune = self._finetune(fidelity).to_dict() if prunes or qat_groups else None
        qat = ([{"qat": {"int8_groups": list(qat_groups),
                         **FakeQuantSpec.of(s.quant).to_dict()}}] if qat_groups else [])
        return stable_key("pruned", self.trained.key, list(stage_ratios) or ratio,
                          s.pruning.to_dict() if prunes else None, finetune, *qat)

    def qat_groups(self, candidate: Candidate) -> tuple[str, ...]:
        """The int8 groups a candidate finetunes quantization-aware (empty without QAT); a
        QAT candidate without an int8 group is a :class:`BuildError`."""
        if not candidate.qat:
            return ()
        groups = tuple(self.groups[k] for k in candidate.int8_groups if k < len(self.groups))
        if not groups:
            raise BuildError(f"candidate {candidate.describe()}: quantization-aware finetuning "
                             f"needs at least one int8 group")
        return groups

    def _finetune(self, fidelity: str) -> FinetuneSettings:
        try:
            return self.settings.finetune_for(fidelity)
        except ValueError as exc:
            raise BuildError(str(exc)) from exc

    def pruned(self, ratio: float, stage_ratios: tuple[float, ...] = (),
               fidelity: str = "", qat_groups: tuple[str, ...] = ()) -> _Pruned:
        """The model pruned by ``ratio`` (or one ratio per stage) and finetuned at
        ``fidelity``'s finetune (quantization-aware on ``qat_groups``, the int8 groups, when
        given; then even an unpruned model is finetuned), from the in-memory cache, the disk
        cache (replaying its history) or built now."""
        if stage_ratios:
            if len(stage_ratios) != self.num_stages:
                raise BuildError(f"candidate has {len(stage_ratios)} stage pruning ratios for "
                                 f"a model of {self.num_stages} stages")
            ratio, stage_ratios = normalize_stage_ratios(stage_ratios)
        unknown = [g for g in qat_groups if g not in self.groups]
        if unknown:
            raise BuildError(f"quantization-aware finetune of unknown layer groups {unknown}")
        key = self.pruned_key(ratio, stage_ratios, fidelity, qat_groups)
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
                model, meta = self._prune_and_finetune(ratio, stage_ratios,
                                                       self._finetune(fidelity), qat_groups)
                cache.write(key, meta, model.state_dict())
        entry = _Pruned(key, model.eval(), meta["history"], tuple(meta["temperatures"]),
                        meta["macs"], meta["params"], tuple(meta.get("stage_ratios", ())),
                        tuple(meta.get("val_exit_accuracies", ())),
                        tuple((path, float(lo), float(hi)) for path, (lo, hi) in
                              sorted(meta.get("qat", {}).get("activation_ranges", {}).items())))
        self._pruned[key] = entry
        return entry

    # -- layer groups -------------------------------------------------------------------------
    def operators(self) -> dict[str, tuple[str, ...]]:
        """The compute operators of each layer group (what decides the precisions it runs)."""
        if self._operators is None:
            self._operators = operators_by_group(self.trained.fresh(), self.example,
                                                 self.layer_groups)
        return dict(self._operators)

    def _qat_modules(self, model: StagedModel, qat_groups: tuple[str, ...]) -> list[str]:
        """The module paths of ``model`` in the int8 groups ``qat_groups``."""
        return [path for path, _ in model.named_modules()
                if self.layer_groups.group_of(path) in qat_groups]

    def _prune_and_finetune(self, ratio: float, stage_ratios: tuple[float, ...],
                            ft: FinetuneSettings, qat_groups: tuple[str, ...] = ()
                            ) -> tuple[StagedModel, dict[str, Any]]:
        s, data = self.settings, self.data
        p = s.pruning
        started = time.perf_counter()
        prunes = ratio > 0 or any(r > 0 for r in stage_ratios)
        finetunes = prunes or bool(qat_groups)
        chosen = ft.subset_indices(len(data.train_x)) if finetunes else np.arange(0)
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
        qat: dict[str, Any] | None = None
        tuned = bool(result.history) or bool(qat_groups)
        if tuned:  # channels left (or QAT): finetune every exit, distilled from the teacher
            distills = ft.distill_alpha > 0 or ft.distill_features > 0
            teacher = self.trained.fresh() if distills else None
            channels = (kept_stage_channels(self.trained.fresh(), result.history, self.example)
                        if ft.distill_features > 0 else None)
            fake = None
            if qat_groups:  # off for the first QAT_START of the steps, then on
                fake = attach_fake_quant(result.model,
                                         self._qat_modules(result.model, qat_groups),
                                         FakeQuantSpec.of(s.quant), self.example,
                                         enabled=False)
            train_model(result.model, train_x, train_y, ft, teacher=teacher,
                        teacher_channels=channels,
                        on_share=(QAT_START, fake.start) if fake is not None else None)
            if fake is not None:
                ranges = fake.remove()
                qat = {"int8_groups": list(qat_groups), "modules": list(fake.modules),
                       "folded_batchnorm": list(fake.folded),
                       "activation_ranges": {p: list(r) for p, r in ranges.items()},
                       **FakeQuantSpec.of(s.quant).to_dict()}
        val_x, val_y = data.preprocess(data.calibration_x), data.calibration_y
        val_logits = exit_logits(result.model, val_x)
        meta = {"history": result.history, "temperatures": fit_temperatures(val_logits,
                                                                            val_y),
                "macs": result.macs, "params": result.params, "ratio": ratio,
                "stage_ratios": list(stage_ratios),
                "val_exit_accuracies": [float((lg.argmax(1) == val_y).mean())
                                        for lg in val_logits],
                "pruning": p.to_dict(), "finetune": ft.to_dict() if tuned else None,
                "finetune_samples": len(train_x) if tuned else 0,
                "seconds": time.perf_counter() - started}
        if qat is not None:
            meta["qat"] = qat
        return result.model, meta

    # -- export + quantize --------------------------------------------------------------------
    def graphs(self, pruned: _Pruned, quantization: tuple[str, ...],
               cascade: bool, dynamic_batch: bool = False) -> tuple[list[Path], dict[str, Any]]:
        """The candidate's ONNX graphs and what the build found out (fusion counts, the
        optimizers the runtime must disable), cached by pruning + precisions + settings (and
        the dynamic batch axis, where the runtime knob asks for one)."""
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
                         self.settings.quant.to_dict(), self.layer_groups.to_dict(),
                         *(["dynamic_batch"] if dynamic_batch else []))
        directory = self.cache_dir / "graphs" / key
        info_path = directory / "info.json"
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            return [directory / name for name in info["files"]], info["fusion"]
        tmp = directory.with_name(key + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        float_paths = export_model(pruned.model, self.example, tmp / "fp32", cascade=cascade,
                                   dynamic_batch=dynamic_batch)
        stage_inputs = pruned.model.stage_inputs(torch.from_numpy(self._calibration))
        precisions = dict(zip(self.groups, quantization, strict=True))
        disabled = runtime_disabled_optimizers(quantization)
        files = []
        fusion: dict[str, Any] = {"integer_ops": 0, "float_after_dequantize": 0,
                                  "disabled_optimizers": list(disabled)}
        for k, path in enumerate(float_paths):
            target = tmp / path.name
            kind = k if cascade else FULL
            quantize_graph(path, target, precisions=precisions, groups=self.layer_groups,
                           kind=kind, num_stages=self.num_stages,
                           calibration=(stage_inputs[k].numpy() if cascade
                                        else self._calibration),
                           settings=self.settings.quant, input_name=INPUT_NAME,
                           tensor_ranges=self._learned_ranges(path, pruned, kind))
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

    def _learned_ranges(self, path: Path, pruned: _Pruned, kind: int
                        ) -> dict[str, tuple[float, float]]:
        """The ranges a quantization-aware finetune learned at its modules' inputs, as ranges
        of this graph's tensors (empty without QAT). One tensor read by several modules (a
        block's input, read by its first conv and its shortcut) takes the union."""
        if not pruned.activation_ranges:
            return {}
        import onnx

        nodes = onnx.load(str(path), load_external_data=False).graph.node
        inputs = module_inputs(nodes, kind=kind, num_stages=self.num_stages)
        ranges: dict[str, tuple[float, float]] = {}
        for module, low, high in pruned.activation_ranges:
            for tensor in inputs.get(module, ()):
                old = ranges.get(tensor, (low, high))
                ranges[tensor] = (min(old[0], low), max(old[1], high))
        return ranges

    # -- bundle -------------------------------------------------------------------------------
    def _qat_provenance(self, candidate: Candidate, pruned: _Pruned) -> dict[str, Any]:
        """The manifest's ``qat`` (only for a QAT candidate): its int8 groups, and the input
        range each fake-quantized module learned (what the export used)."""
        if not candidate.qat:
            return {}
        return {"qat": {"int8_groups": list(self.qat_groups(candidate)),
                        **FakeQuantSpec.of(self.settings.quant).to_dict(),
                        "activation_ranges": {m: [lo, hi] for m, lo, hi in
                                              pruned.activation_ranges}}}

    def _exit_policy(self, candidate: Candidate, temperatures: tuple[float, ...]) -> ExitPolicy:
        """Thresholds, per-exit temperatures (validation-fitted), confidence and fallback."""
        return ExitPolicy(thresholds=candidate.exit_thresholds, temperatures=temperatures,
                          confidence=candidate.exit_confidence or self.settings.confidence,
                          fallback=self.settings.exit_fallback)

    def build(self, candidate: Candidate, directory: Path) -> BuiltBundle:
        """Build ``candidate`` into a bundle at ``directory``; raise :class:`BuildError`."""
        started = time.perf_counter()
        try:
            pruned = self.pruned(candidate.prune_ratio, candidate.stage_prune_ratios,
                                 candidate.fidelity, self.qat_groups(candidate))
            paths, fusion = self.graphs(pruned, candidate.quantization, candidate.early_exit,
                                        dynamic_batch=candidate.static_shape is False)
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
            runtime_options=manifest_runtime(candidate),
            provenance={"candidate": candidate.to_dict(), "groups": list(self.groups),
                        "layer_groups": self.layer_groups.to_dict(),
                        "build": self.settings.to_dict(), "versions": self._versions,
                        "baseline_key": self.trained.key, "pruning_history": pruned.history,
                        "exits": dict(self.trained.exits) or {"source": "declared"},
                        **self._qat_provenance(candidate, pruned),
                        "pruning": {"key": pruned.key,
                                    "stage_ratios": list(candidate.stage_ratios(
                                        self.num_stages)),
                                    "val_exit_accuracies": list(pruned.val_exit_accuracies)},
                        "metrics": info},
        )
        digest = write_bundle(directory, manifest, {p.name: p for p in paths})
        return BuiltBundle(directory=directory, digest=digest,
                           build_seconds=time.perf_counter() - started, info=info)
