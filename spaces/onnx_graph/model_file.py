"""An ONNX model given as a file (``model.onnx``): the check that onnxruntime can load it.

Used by ``paretoedge validate`` before a study starts; a builder of ONNX-only models can call
the same check first. Every problem is one :class:`ModelError` line naming the file.
"""

from __future__ import annotations

from pathlib import Path

from spaces.errors import ModelError


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def check_onnx_file(path: Path, field: str = "model.onnx") -> None:
    """Raise :class:`ModelError` unless ``path`` is an ONNX model onnxruntime's CPU provider
    can load (an ``InferenceSession`` is created and dropped; nothing runs).

    Example:
        >>> check_onnx_file(Path("model.onnx"))  # doctest: +SKIP
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{field}: {path}: file not found")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the exception says what is wrong
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"{field}: {path}: not an ONNX model onnxruntime can load: "
                         f"{_first_line(exc)}") from exc


def has_dynamic_input(path: Path) -> bool:
    """Whether the graph's first input (not an initializer) has a symbolic dimension: what the
    runtime knob ``static_shape`` fixes to batch 1 (docs/RUNTIME.md)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    first = next(i for i in graph.input if i.name not in weights)
    return any(not d.HasField("dim_value") for d in first.type.tensor_type.shape.dim)
