"""Weight-only precisions: int8/int4 ``MatMulNBits`` for MatMul layers, and fp16 weight storage.

``MatMulNBits`` (onnxruntime's blockwise weight-only kernel) replaces ``MatMul`` nodes only, so the
``Gemm`` nodes the exporter writes for ``nn.Linear`` are first rewritten to ``MatMul + Add``.
fp16 is a size option: the weights are stored as float16 and cast back to float32 when the
session starts (onnxruntime folds the cast), so a group computes exactly as fp32 from half-size
weights; on CPU, real fp16 kernels would be slower (docs/STACK.md).

All functions edit an ``onnx.ModelProto`` in place and take the names of the nodes to change.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

import numpy as np

from spaces.errors import BuildError
from spaces.settings import QuantSettings


def _initializers(model) -> dict:
    return {i.name: i for i in model.graph.initializer}


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def gemm_to_matmul(model, names: Collection[str]) -> list[str]:
    """Rewrite the named ``Gemm`` nodes as ``MatMul`` (+ ``Add`` of the bias); return the names
    of the new MatMul nodes. A Gemm whose weight is not a constant cannot be rewritten."""
    from onnx import helper, numpy_helper

    initializers = _initializers(model)
    nodes: list[Any] = []
    matmuls: list[str] = []
    replaced: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "Gemm" or node.name not in names:
            nodes.append(node)
            continue
        attrs = _attributes(node)
        if attrs.get("transA", 0) or node.input[1] not in initializers:
            raise BuildError(f"{node.name}: Gemm with a transposed input or a non-constant "
                             f"weight cannot run as MatMulNBits")
        weight = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)
        weight = (weight.T if attrs.get("transB", 0) else weight) * float(attrs.get("alpha", 1.0))
        weight_name = f"{node.input[1]}_matmul_{len(matmuls)}"
        replaced.update(i for i in node.input[1:] if i in initializers)
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight),
                                                               weight_name))
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight_name], [product],
                                      name=f"{node.name}_MatMul"))
        matmuls.append(f"{node.name}_MatMul")
        if has_bias:
            bias = node.input[2]
            beta = float(attrs.get("beta", 1.0))
            if beta != 1.0:
                if bias not in initializers:
                    raise BuildError(f"{node.name}: Gemm with beta != 1 and a non-constant bias")
                bias = f"{bias}_beta_{len(matmuls)}"
                model.graph.initializer.append(numpy_helper.from_array(
                    numpy_helper.to_array(initializers[node.input[2]]) * beta, bias))
            nodes.append(helper.make_node("Add", [product, bias], list(node.output),
                                          name=f"{node.name}_Add"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input} | \
        {out.name for out in model.graph.output}
    for name in replaced - used:  # the Gemm's original weight (and a bias scaled by beta)
        model.graph.initializer.remove(initializers[name])
    return matmuls


def quantize_matmul_nbits(model, names: Collection[str], bits: int, settings: QuantSettings):
    """Replace the named ``MatMul`` nodes by ``MatMulNBits`` with ``bits``-bit weights; return
    the new model (the quantizer works on a copy)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if not names:
        return model
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in names]
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    try:
        quantizer = MatMulNBitsQuantizer(model, bits=bits,
                                         block_size=settings.weight_only_block_size,
                                         is_symmetric=settings.weight_only_symmetric,
                                         accuracy_level=settings.weight_only_accuracy_level,
                                         nodes_to_exclude=others)
        quantizer.process()
    except Exception as exc:  # onnxruntime raises bare Exceptions on unsupported graphs
        raise BuildError(f"{bits}-bit MatMulNBits quantization failed: "
                         f"{type(exc).__name__}: {exc}") from exc
    result = quantizer.model.model
    left = [n.name for n in result.graph.node if n.op_type == "MatMul" and n.name in names]
    if left:
        raise BuildError(f"MatMulNBits could not quantize {', '.join(left)} (its weight must be "
                         f"a constant 2-D matrix)")
    return result


def store_fp16(model, names: Collection[str]) -> int:
    """Store the float weights of the named nodes as float16, cast to float32 at load time.
    Returns the number of weights converted (a weight shared with other nodes stays float32)."""
    from onnx import TensorProto, helper, numpy_helper

    initializers = _initializers(model)
    users: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, set()).add(node.name)
    casts, converted = [], set()
    for node in model.graph.node:
        if node.name not in names:
            continue
        for name in node.input:
            tensor = initializers.get(name)
            if tensor is None or name in converted or tensor.data_type != TensorProto.FLOAT or \
                    not users[name] <= set(names):
                continue
            half = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16),
                                           f"{name}_fp16")
            model.graph.initializer.remove(tensor)
            model.graph.initializer.append(half)
            casts.append(helper.make_node("Cast", [half.name], [name], to=TensorProto.FLOAT,
                                          name=f"{name}_Cast"))
            converted.add(name)
    for cast in reversed(casts):
        model.graph.node.insert(0, cast)
    return len(converted)
