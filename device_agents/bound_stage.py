"""One stage of a bundle, run on buffers bound once: the cascade's per-inference call.

``InferenceSession.run(None, {name: x})`` validates the feed in Python, wraps the numpy input
in a new tensor and allocates a new numpy array for every output, on every call. A
:class:`BoundStage` binds its input and its outputs to numpy buffers once (onnxruntime's
``IOBinding``), so an inference is: write the input buffer in place, ``run_with_iobinding``,
read the output buffers. A stage's ``features`` buffer is bound as the next stage's input, so
nothing is copied between stages. On the reference model that saves about 2 us per inference,
3-5 % of the fastest bundles' latency (docs/RUNTIME.md, "The runner's own cost per
inference").

Binding needs every shape known at batch 1: the input's non-batch dimensions and every output's
must be static in the graph (a symbolic batch axis is fine; it is bound at 1). A graph with any
other symbolic dimension runs through ``InferenceSession.run`` (:attr:`BoundStage.bound` is
False), with the same results, as does every stage made with ``bind=False``. The buffers make
a runner single-threaded: one :class:`~device_agents.cascade.CascadeRunner` per thread (or one
opened with ``bind_buffers=False``, shared).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

__all__ = ["BoundStage", "Stage"]


class Stage(Protocol):
    """What the cascade calls per stage (:class:`BoundStage` on onnxruntime,
    :class:`~device_agents.openvino_stage.OpenVinoStage` on OpenVINO)."""

    bound: bool
    input: np.ndarray
    output_names: list[str]

    def run(self, x: np.ndarray | None = None) -> list[np.ndarray]: ...

_FLOAT = "tensor(float)"


def _static(shape: Sequence[Any], batch: int) -> tuple[int, ...] | None:
    """``shape`` with a symbolic (or unknown) batch axis set to ``batch``; None when any other
    dimension is not a fixed integer."""
    if not shape:
        return ()
    first = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else batch
    rest = tuple(shape[1:])
    if not all(isinstance(d, int) and d > 0 for d in rest):
        return None
    return (first, *rest)


class BoundStage:
    """A session with its input and outputs bound to numpy buffers (see the module).

    ``input_shape``: what the stage is fed, at batch 1 (the bundle's input shape for the first
    stage). ``feed``: a buffer to bind as the input (the previous stage's ``features`` output),
    else the stage owns a new one. Either way it is :attr:`input`, which the caller may write
    in place before :meth:`run`.
    """

    def __init__(self, session: Any, input_shape: Sequence[int], *,
                 feed: np.ndarray | None = None, bind: bool = True) -> None:
        self.session = session
        meta_in, meta_out = session.get_inputs()[0], session.get_outputs()
        self.input_name: str = meta_in.name
        self.output_names: list[str] = [o.name for o in meta_out]
        shape = tuple(int(d) for d in input_shape)
        batch = shape[0] if shape else 1
        out_shapes = [_static(o.shape, batch) for o in meta_out]
        self.input: np.ndarray = (feed if feed is not None and feed.shape == shape
                                  else np.zeros(shape, dtype=np.float32))
        self.bound = (bind and meta_in.type == _FLOAT and all(o.type == _FLOAT for o in meta_out)
                      and _static(meta_in.shape, batch) == shape
                      and all(s is not None for s in out_shapes))
        self.outputs: list[np.ndarray] = []
        self._binding: Any = None
        if not self.bound:
            return
        binding = session.io_binding()
        binding.bind_cpu_input(self.input_name, self.input)
        for name, out_shape in zip(self.output_names, out_shapes, strict=True):
            assert out_shape is not None
            buffer = np.zeros(out_shape, dtype=np.float32)
            binding.bind_output(name, "cpu", 0, np.float32, list(out_shape),
                                buffer.ctypes.data)
            self.outputs.append(buffer)
        self._binding = binding

    @classmethod
    def chain(cls, sessions: Sequence[Any], input_shape: Sequence[int], *,
              bind: bool = True) -> list[BoundStage]:
        """The stages of a cascade: the first fed ``input_shape``, each next one fed the
        previous one's ``features`` buffer (bound as its input: no copy between stages)."""
        stages: list[BoundStage] = []
        for session in sessions:
            if not stages:
                stages.append(cls(session, input_shape, bind=bind))
                continue
            previous = stages[-1]
            if previous.bound:
                stages.append(cls(session, previous.outputs[0].shape, feed=previous.outputs[0],
                                  bind=bind))
            else:
                batch = int(input_shape[0]) if len(input_shape) else 1
                declared = _static(session.get_inputs()[0].shape, batch)
                stages.append(cls(session, declared if declared is not None else (0,),
                                  bind=bind))
        return stages

    def run(self, x: np.ndarray | None = None) -> list[np.ndarray]:
        """Run on ``x``, or on :attr:`input` as written; the outputs in graph order. Bound,
        ``x`` is copied into the input buffer (unless it is that buffer) and the outputs are
        the stage's buffers, overwritten by its next run."""
        if self._binding is None:
            result: list[np.ndarray] = self.session.run(
                None, {self.input_name: self.input if x is None else x})
            return result
        if x is not None and x is not self.input:
            np.copyto(self.input, x.reshape(self.input.shape))
        self.session.run_with_iobinding(self._binding)
        return self.outputs
