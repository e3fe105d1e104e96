"""The graph-only builder: a candidate of a model given as an ONNX file into a bundle, with no
torch. The fp32 bundle is the user's graph (prepared by
:mod:`spaces.onnx_graph.preparation`) with the data loader's preprocessing in its manifest; the
candidates vary the precision of each layer group only (no pruning, no exits: both need the
model's code). Quantized graphs are cached by precisions + settings.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from device_agents.bundle import BundleManifest, ExitPolicy, InputSpec, StageSpec, write_bundle
from spaces.builder import BuiltBundle
from spaces.candidate import Candidate, stable_key
from spaces.data import DataSplits
from spaces.errors import BuildError
from spaces.layer_groups import FULL, LayerGroups
from spaces.onnx_graph.graph_groups import GraphGroups
from spaces.onnx_graph.mixed_precision import quantize_graph, runtime_disabled_optimizers
from spaces.onnx_graph.model_file import has_dynamic_input
from spaces.onnx_graph.quantize import fusion_report
from spaces.quantization_space import UnsupportedPrecisionError, why_not_runnable
from spaces.runtime_space import manifest_runtime
from spaces.settings import BuildSettings

GRAPH_FILE = "model.onnx"


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("paretoedge", "onnx", "onnxruntime"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "unknown"
    return out


def graph_size_facts(path: Path) -> dict[str, float]:
    """``params_k`` (float weights of the graph) and, where shape inference knows every output
    shape, ``macs_m`` (multiply-accumulates of its Conv, Gemm and MatMul nodes for one
    sample)."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    facts = {"params_k": sum(int(np.prod(d)) for d in weights.values()) / 1e3}
    try:
        inferred = shape_inference.infer_shapes(model).graph
    except Exception:  # shape inference is best effort: no macs_m then
        return facts
    shapes = {v.name: tuple(d.dim_value if d.HasField("dim_value") else 1
                            for d in v.type.tensor_type.shape.dim)
              for v in (*inferred.value_info, *inferred.output, *inferred.input)}
    shapes.update(weights)
    macs = 0
    for node in inferred.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        out, weight = shapes.get(node.output[0]), shapes.get(node.input[1])
        if not out or not weight:
            return facts
        if node.op_type == "Conv":
            macs += int(np.prod(out)) * int(np.prod(weight[1:]))
        elif node.op_type == "ConvTranspose":
            source = shapes.get(node.input[0])
            if not source:
                return facts
            macs += int(np.prod(source)) * int(np.prod(weight[1:]))
        else:
            reduced = shapes.get(node.input[0])
            if not reduced:
                return facts
            macs += int(np.prod(out)) * int(reduced[-1])
    facts["macs_m"] = macs / 1e6
    return facts


class OnnxBuilder:
    """Turns quantization candidates of one ONNX graph into bundles.

    Example:
        >>> builder = prepare_onnx_builder(OnnxModelSpec(Path("digits.onnx")), data,
        ...                                BuildSettings(), Path("runs/cache"))  # doctest: +SKIP
        >>> builder.build(candidate, Path("runs/digits/bundles/trial_0001"))  # doctest: +SKIP
    """

    num_stages = 1

    def __init__(self, *, graph: Path, source: Path, source_sha256: str, model_key: str,
                 groups: GraphGroups, operators: Mapping[str, tuple[str, ...]],
                 input_name: str, data: DataSplits, cache_dir: Path,
                 settings: BuildSettings = BuildSettings()) -> None:
        self.graph = Path(graph)
        self.source = Path(source)
        self.source_sha256 = source_sha256
        self.graph_groups = groups
        self.layer_groups: LayerGroups = groups.layer_groups
        self.input_name = input_name
        self.data = data
        self.cache_dir = Path(cache_dir)
        self.settings = settings
        self._model_key = model_key
        self._operators = dict(operators)
        self._calibration = data.preprocess(data.train_x[: settings.quant.calibration_samples])
        self._facts = graph_size_facts(self.graph)
        self._versions = _versions()

    @property
    def model_key(self) -> str:
        """The ONNX file's sha256, the preparation and the data, as one key."""
        return self._model_key

    @property
    def groups(self) -> tuple[str, ...]:
        return self.graph_groups.names

    def operators(self) -> dict[str, tuple[str, ...]]:
        """The compute operators of each layer group (what decides the precisions it runs)."""
        return dict(self._operators)

    def _check(self, candidate: Candidate) -> None:
        if (candidate.prune_ratio or candidate.stage_prune_ratios or candidate.exit_thresholds
                or candidate.qat):
            raise BuildError(f"{candidate.describe()}: an ONNX model is searched in "
                             f"quantization only, and runtime knobs (no pruning, no exits, "
                             f"no quantization-aware finetune)")
        if candidate.static_shape is False and not self.dynamic_input:
            raise BuildError(f"{candidate.describe()}: {self.source.name}'s input is static; "
                             f"there is no dynamic batch axis to keep")
        if len(candidate.quantization) != len(self.groups):
            raise BuildError(f"candidate has {len(candidate.quantization)} precisions for "
                             f"{len(self.groups)} layer groups {list(self.groups)}")
        for group, precision in zip(self.groups, candidate.quantization, strict=True):
            why = why_not_runnable(precision, self._operators[group])
            if why:
                raise BuildError(str(UnsupportedPrecisionError(group, precision,
                                                               self._operators[group], why)))

    @functools.cached_property
    def dynamic_input(self) -> bool:
        """Whether the graph's input has a symbolic dimension (a free batch axis) that the
        runtime knob ``static_shape: true`` fixes (docs/RUNTIME.md)."""
        return has_dynamic_input(self.graph)

    def static_graph(self) -> Path:
        """The graph with its input fixed to one sample's shape (batch 1), cached."""
        import onnx
        from onnxruntime.tools.onnx_model_utils import make_input_shape_fixed

        key = stable_key("onnx-static", self._model_key)
        target = self.cache_dir / "graphs" / key / GRAPH_FILE
        if target.is_file():
            return target
        model = onnx.load(str(self.graph))
        make_input_shape_fixed(model.graph, self.input_name,
                               [1, *self.data.sample_shape])
        tmp = target.with_name(GRAPH_FILE + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(tmp))
        tmp.rename(target)
        return target

    def quantized(self, quantization: tuple[str, ...], static_shape: bool = False
                  ) -> tuple[Path, dict[str, Any]]:
        """The graph at these precisions and what the build found out (fusion counts, the
        optimizers the runtime must disable), cached by model + precisions + settings (and
        the fixed input shape, where the runtime knob asks for it)."""
        key = stable_key("onnx-graph", self._model_key, list(quantization),
                         self.settings.quant.to_dict(), self.layer_groups.to_dict(),
                         *(["static_shape"] if static_shape else []))
        directory = self.cache_dir / "graphs" / key
        info_path = directory / "info.json"
        if info_path.is_file():
            return directory / GRAPH_FILE, json.loads(info_path.read_text())
        source = self.static_graph() if static_shape else self.graph
        tmp = directory.with_name(key + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        target = tmp / GRAPH_FILE
        quantize_graph(source, target,
                       precisions=dict(zip(self.groups, quantization, strict=True)),
                       groups=self.layer_groups, kind=FULL, num_stages=1,
                       calibration=self._calibration, settings=self.settings.quant,
                       input_name=self.input_name, assign=self.graph_groups.assign)
        disabled = runtime_disabled_optimizers(quantization)
        report = fusion_report(target, disabled)
        info = {"integer_ops": report.integer_ops,
                "float_after_dequantize": report.float_after_dequantize,
                "disabled_optimizers": list(disabled)}
        (tmp / "info.json").write_text(json.dumps(info))
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)
        return directory / GRAPH_FILE, info

    def build(self, candidate: Candidate, directory: Path) -> BuiltBundle:
        """Build ``candidate`` into a bundle at ``directory``; raise :class:`BuildError`."""
        started = time.perf_counter()
        self._check(candidate)
        try:
            path, fusion = self.quantized(candidate.quantization,
                                          static_shape=bool(candidate.static_shape)
                                          and self.dynamic_input)
        except BuildError:
            raise
        except Exception as exc:  # onnx or onnxruntime failing on this candidate
            raise BuildError(f"{type(exc).__name__}: {exc}") from exc
        integer = int(fusion["integer_ops"])
        total = integer + int(fusion["float_after_dequantize"])
        info: dict[str, Any] = {**self._facts,
                                "fused_int_ops_ratio": integer / total if total else 0.0,
                                "integer_ops": integer}
        manifest = BundleManifest(
            input=InputSpec(name=self.input_name, shape=(1, *self.data.sample_shape),
                            dtype=str(self.data.test_x.dtype)),
            stages=(StageSpec(name=Path(GRAPH_FILE).stem, file=GRAPH_FILE, sha256=""),),
            num_classes=self.data.num_classes,
            preprocessing=self.data.preprocessing,
            exits=ExitPolicy(confidence=self.settings.confidence,
                             fallback=self.settings.exit_fallback),
            disabled_optimizers=tuple(fusion.get("disabled_optimizers", ())),
            runtime_options=manifest_runtime(candidate),
            provenance={"candidate": candidate.to_dict(), "groups": list(self.groups),
                        "layer_groups": self.layer_groups.to_dict(),
                        "build": {"quantization": self.settings.quant.to_dict()},
                        "versions": self._versions,
                        "source": {"onnx": str(self.source), "sha256": self.source_sha256},
                        "baseline_key": self._model_key, "metrics": info},
        )
        digest = write_bundle(directory, manifest, {GRAPH_FILE: path})
        return BuiltBundle(directory=directory, digest=digest,
                           build_seconds=time.perf_counter() - started, info=info)
