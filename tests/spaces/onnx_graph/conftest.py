"""Small ONNX graphs built node by node (no torch): a plain CNN and a residual one, on 8x8
single-channel inputs with 10 classes, and random data shaped like them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from spaces import DataSplits

CLASSES = 10
WIDTH = 8


class GraphMaker:
    """Adds nodes with random weights; names every node after its role."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def weight(self, name: str, shape: tuple[int, ...]) -> str:
        array = (self.rng.standard_normal(shape) * 0.3).astype(np.float32)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, name: str, inputs: list[str], **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [f"{name}_out"], name=name, **attrs))
        return f"{name}_out"

    def conv(self, name: str, x: str, c_in: int, c_out: int, relu: bool = True) -> str:
        out = self.node("Conv", name, [x, self.weight(f"{name}.w", (c_out, c_in, 3, 3)),
                                       self.weight(f"{name}.b", (c_out,))], pads=[1, 1, 1, 1])
        return self.node("Relu", f"{name}_relu", [out]) if relu else out

    def head(self, x: str, channels: int) -> str:
        pooled = self.node("GlobalAveragePool", "pool", [x])
        flat = self.node("Flatten", "flatten", [pooled])
        return self.node("Gemm", "fc", [flat, self.weight("fc.w", (CLASSES, channels)),
                                        self.weight("fc.b", (CLASSES,))], transB=1)

    def model(self, output: str, *, input_name: str = "x", input_type: int = TensorProto.FLOAT,
              input_shape: tuple[Any, ...] = ("batch", 1, 8, 8)) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "test", [helper.make_tensor_value_info(input_name, input_type,
                                                               list(input_shape))],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", CLASSES])],
            self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model


def plain_cnn(convs: int = 4, **model_options: Any) -> onnx.ModelProto:
    """conv0 (1 -> WIDTH) .. conv<n-1>, each with a Relu, then pool, flatten, fc."""
    g = GraphMaker()
    x = model_options.pop("input_name", "x")
    current = x
    for k in range(convs):
        current = g.conv(f"conv{k}", current, 1 if k == 0 else WIDTH, WIDTH)
    out = g.head(current, WIDTH)
    return g.model(out, input_name=x, **model_options)


def residual_cnn(blocks: int = 2) -> onnx.ModelProto:
    """stem, then residual blocks (two convs and an Add of the block's input), then the head."""
    g = GraphMaker()
    x = g.conv("stem", "x", 1, WIDTH)
    for b in range(blocks):
        y = g.conv(f"block{b}.conv_a", x, WIDTH, WIDTH)
        y = g.conv(f"block{b}.conv_b", y, WIDTH, WIDTH, relu=False)
        x = g.node("Relu", f"block{b}.relu", [g.node("Add", f"block{b}.add", [y, x])])
    return g.model(g.head(x, WIDTH))


def random_digits(n: int = 40, shape: tuple[int, ...] = (1, 8, 8)) -> DataSplits:
    rng = np.random.default_rng(0)

    def split() -> tuple[np.ndarray, np.ndarray]:
        return (rng.uniform(0, 16, (n, *shape)).astype(np.float32),
                rng.integers(0, CLASSES, n).astype(np.int64))

    (tx, ty), (vx, vy), (sx, sy) = split(), split(), split()
    return DataSplits(train_x=tx, train_y=ty, val_x=vx, val_y=vy, test_x=sx, test_y=sy,
                      num_classes=CLASSES, name="random-digits")


@pytest.fixture
def save_graph(tmp_path: Path) -> Callable[[onnx.ModelProto, str], Path]:
    def save(model: onnx.ModelProto, name: str = "model.onnx") -> Path:
        path = tmp_path / name
        onnx.save(model, str(path))
        return path

    return save


@pytest.fixture(scope="session")
def graphs() -> Any:
    """The graph and data makers above (test modules cannot import a conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(plain_cnn=plain_cnn, residual_cnn=residual_cnn,
                           random_digits=random_digits, classes=CLASSES)
