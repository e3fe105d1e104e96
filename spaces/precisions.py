"""The precisions a layer group can take: the one list config, candidates and builders share.

``int8``: static QDQ (activations and weights, fused integer kernels); ``int8_wo``/``int4_wo``:
weight-only ``MatMulNBits`` (MatMul/Linear layers only); ``fp16``: weights stored in float16
and computed in float32 (a size option, never faster on CPU; docs/STACK.md).
"""

from __future__ import annotations

from typing import Literal, get_args

Precision = Literal["fp32", "int8", "int8_wo", "int4_wo", "fp16"]
#: Every precision, in the order tables and configs list them.
ALL_PRECISIONS: tuple[str, ...] = get_args(Precision)
#: The precisions searched by default: float, and int8 static QDQ.
PRECISIONS: tuple[str, ...] = ("fp32", "int8")
#: Bits of the weight-only precisions.
WEIGHT_ONLY_BITS = {"int8_wo": 8, "int4_wo": 4}
