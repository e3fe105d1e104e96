"""One stage of a bundle run by OpenVINO's own runtime (``runtime.engine: openvino``).

The same ONNX file onnxruntime would run, compiled by OpenVINO for the CPU with the latency
hint, the runner's threads and float precision kept float (``INFERENCE_PRECISION_HINT: f32``;
its default on CPUs with bf16 units runs float layers in bf16). The stage has
:class:`~device_agents.bound_stage.BoundStage`'s interface, and its call path is as lean: the
input is a numpy buffer bound once to the infer request (shared memory, written in place), and
the outputs are read in place after ``infer()``. ``request.infer([x])`` would instead convert
the input and copy every output into a dict on every call, which costs about 90 us on the
reference host (BENCHMARKS.md, 8d).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from device_agents.errors import BundleError

__all__ = ["OpenVinoStage"]


class OpenVinoStage:
    """A compiled stage with its input bound to :attr:`input` (see the module)."""

    bound = True

    def __init__(self, core: Any, path: Path, input_shape: Sequence[int], *,
                 threads: int) -> None:
        import openvino as ov

        try:
            compiled = core.compile_model(str(path), "CPU", {
                "INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY",
                # float stays float: on CPUs with bf16 units OpenVINO would otherwise run
                # float layers in bf16 (1.7x faster fp32 on the reference host, other answers)
                "INFERENCE_PRECISION_HINT": "f32"})
        except RuntimeError as exc:
            raise BundleError(f"{path}: OpenVINO cannot compile it: "
                              f"{str(exc).splitlines()[0]}") from None
        self.output_names: list[str] = [o.get_any_name() for o in compiled.outputs]
        self.input = np.zeros(tuple(int(d) for d in input_shape), dtype=np.float32)
        self._compiled = compiled  # the request needs its model alive
        self._request = compiled.create_infer_request()
        # the request reads the buffer's memory: it lives as long as this stage
        self._request.set_input_tensor(ov.Tensor(self.input, shared_memory=True))
        self._count = len(compiled.outputs)

    @classmethod
    def chain(cls, paths: Sequence[Path], input_shape: Sequence[int], *,
              threads: int) -> list[OpenVinoStage]:
        """The stages of a cascade, each fed the previous one's ``features`` (copied into its
        input buffer: OpenVINO's outputs belong to their request)."""
        import openvino as ov

        core = ov.Core()
        stages: list[OpenVinoStage] = []
        for path in paths:
            shape = input_shape if not stages else stages[-1].output_shape(0)
            stages.append(cls(core, path, shape, threads=threads))
        return stages

    def output_shape(self, k: int) -> tuple[int, ...]:
        shape = self._compiled.outputs[k].get_partial_shape()
        if shape.is_dynamic:
            raise BundleError(f"OpenVINO: output {self.output_names[k]!r} has a dynamic shape "
                              f"({shape}); the next stage's input cannot be bound")
        return tuple(int(d) for d in shape.to_shape())

    def run(self, x: np.ndarray | None = None) -> list[np.ndarray]:
        """Run on ``x`` (copied into the input buffer), or on :attr:`input` as written; the
        outputs in graph order, views of the request's tensors until its next run."""
        if x is not None and x is not self.input:
            np.copyto(self.input, x.reshape(self.input.shape))
        request = self._request
        request.infer()
        return [request.get_output_tensor(k).data for k in range(self._count)]
