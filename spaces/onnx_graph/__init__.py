"""Transforms of ONNX graphs (no torch): int8 QDQ quantization, mixed precision per layer
group, weight-only MatMulNBits, and the mapping of graph nodes to layer groups."""
