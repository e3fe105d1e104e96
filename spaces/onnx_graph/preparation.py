"""From an ONNX file and its data to a ready :class:`OnnxBuilder`, with no torch: load the
graph with onnxruntime, check its input against the data loader's samples and its output
against the classes, give it the names a bundle needs, and derive its layer groups.

The graph is the user's, unchanged in what it computes: nodes without a (unique) name are named
``<op>_<index>`` (int8 quantization excludes nodes by name), and its one output is renamed
``logits`` (what the bundle runtime reads). Every problem is a one-line :class:`ModelError`
naming the file (a bad layer-group spec is a :class:`SpaceError`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spaces.candidate import stable_key
from spaces.data import DataSplits
from spaces.errors import ModelError
from spaces.onnx_graph.builder import OnnxBuilder
from spaces.onnx_graph.graph_groups import GraphGroupsSpec, graph_groups
from spaces.onnx_graph.model_file import check_onnx_file
from spaces.settings import BuildSettings

log = logging.getLogger(__name__)
#: The name of the bundle's logits output (docs/BUNDLE_FORMAT.md).
LOGITS = "logits"
#: Called with each group's compute operators before anything is built (raise to stop).
OperatorCheck = Callable[[Mapping[str, tuple[str, ...]]], None]
#: Bumped when the prepared copy of a graph changes (part of the cache keys).
PREPARATION_VERSION = 1


@dataclass(frozen=True)
class OnnxModelSpec:
    """The user's ONNX file (``model.onnx``, relative paths from the config's directory) and
    its layer groups (``quantization.groups``: ``auto``, ``stages`` or node-name prefixes)."""

    path: Path
    groups: GraphGroupsSpec = "auto"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:240]}{'...' if len(text) > 240 else ''}"


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def open_graph(path: Path) -> Any:
    """An onnxruntime session of ``path``; :class:`ModelError` when it cannot load it (the
    check of ``paretoedge validate``, :func:`~spaces.onnx_graph.model_file.check_onnx_file`)."""
    check_onnx_file(path)
    return _session(path)


def _shape_text(shape: Any) -> str:
    return "[" + ", ".join("?" if d is None or isinstance(d, str) else str(d)
                           for d in shape) + "]"


def check_io(session: Any, path: Path, data: DataSplits) -> None:
    """The graph takes one float32 tensor shaped like one preprocessed sample of the data
    loader (batch 1, or a free batch dimension) and has one output."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise ModelError(f"model.onnx: {path}: the graph has {len(inputs)} inputs "
                         f"({', '.join(i.name for i in inputs)}); a bundle feeds exactly one "
                         f"(the data loader's samples)")
    if len(outputs) != 1:
        raise ModelError(f"model.onnx: {path}: the graph has {len(outputs)} outputs "
                         f"({', '.join(o.name for o in outputs)}); a bundle reads exactly one "
                         f"(the logits)")
    graph_input = inputs[0]
    expected = (1, *data.sample_shape)
    shape = list(graph_input.shape or ())
    fits = len(shape) == len(expected) and all(
        d is None or isinstance(d, str) or int(d) == e for d, e in zip(shape, expected,
                                                                      strict=True))
    if graph_input.type != "tensor(float)" or not fits:
        raise ModelError(f"model.onnx: {path}: input {graph_input.name!r} expects "
                         f"{graph_input.type.removeprefix('tensor(').rstrip(')')} "
                         f"{_shape_text(shape)}, but the data loader's samples are float "
                         f"{_shape_text(expected)} (one sample after preprocessing)")


def check_output(session: Any, path: Path, data: DataSplits) -> None:
    """Run the first training sample: one row of ``num_classes`` logits must come out."""
    name = session.get_inputs()[0].name
    sample = data.preprocess(data.train_x[:1])
    try:
        logits = np.asarray(session.run(None, {name: sample})[0])
    except Exception as exc:  # onnxruntime raises its own (untyped) exceptions
        raise ModelError(f"model.onnx: {path}: running the data loader's first sample "
                         f"failed ({_one_line(exc)})") from exc
    if logits.shape != (1, data.num_classes):
        raise ModelError(f"model.onnx: {path}: output {session.get_outputs()[0].name!r} is "
                         f"{list(logits.shape)} for one sample, expected [1, "
                         f"{data.num_classes}] (the data loader has {data.num_classes} "
                         f"classes)")


def _rename_tensor(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in (*graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


def named_for_bundles(model: Any, path: Path) -> Any:
    """``model`` (an ``onnx.ModelProto`` read from ``path``, edited in place) with a unique
    name on every node and its single output named ``logits``."""
    graph = model.graph
    seen: set[str] = set()
    for k, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{k}"
        seen.add(node.name)
    output = graph.output[0].name
    if output != LOGITS:
        taken = {n for node in graph.node for n in (*node.input, *node.output)}
        if LOGITS in taken:
            raise ModelError(f"model.onnx: {path}: a tensor other than the output is named "
                             f"{LOGITS!r} (the bundle's name for the output)")
        _rename_tensor(graph, output, LOGITS)
    return model


def prepare_onnx_builder(spec: OnnxModelSpec, data: DataSplits, settings: BuildSettings,
                         cache_dir: Path, *, check_operators: OperatorCheck | None = None
                         ) -> OnnxBuilder:
    """Check the graph against the data, prepare its bundle copy, and return its builder."""
    import onnx

    path = spec.path
    session = open_graph(path)
    check_io(session, path, data)
    check_output(session, path, data)
    source_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # loads in onnxruntime but not in onnx: report it the same way
        raise ModelError(f"model.onnx: {path}: onnx cannot read it ({_one_line(exc)})") from exc
    named_for_bundles(model, path)
    groups = graph_groups(model.graph, spec.groups)
    operators = groups.operators(model.graph.node)
    if check_operators is not None:
        check_operators(operators)
    key = stable_key("onnx-model", source_sha256, PREPARATION_VERSION, data.digest())
    directory = cache_dir / "onnx" / key
    directory.mkdir(parents=True, exist_ok=True)
    graph_path = directory / "model.onnx"
    if not graph_path.is_file():
        tmp = directory / f"model.onnx.{os.getpid()}.tmp"  # concurrent drivers write their own
        onnx.save(model, str(tmp))
        tmp.replace(graph_path)
    check_output(_session(graph_path), path, data)
    log.info("ONNX model %s: %d nodes, layer groups %s", path, len(model.graph.node),
             ", ".join(groups.names))
    return OnnxBuilder(graph=graph_path, source=path, source_sha256=source_sha256,
                       model_key=key, groups=groups, operators=operators,
                       input_name=session.get_inputs()[0].name, data=data,
                       cache_dir=cache_dir, settings=settings)
