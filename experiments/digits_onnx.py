"""Writes ``digits.onnx`` for ``digits_onnx.yaml``: the digits CNN of ``digits_model.py``,
trained briefly and exported as a plain classifier (its final exit), the way a model arrives
from elsewhere: one input ``pixels`` (a free batch dimension), one output ``scores``.

    python experiments/digits_onnx.py            # writes experiments/digits.onnx

The study then needs no model code and no torch: ``paretoedge run experiments/digits_onnx.yaml``.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent


def _digits_model() -> ModuleType:
    spec = importlib.util.spec_from_file_location("digits_model", HERE / "digits_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export_digits_onnx(path: Path, *, width: int = 16, epochs: int = 8, seed: int = 0) -> Path:
    """Train the digits CNN (``width`` channels, ``epochs`` epochs on the training split of
    ``load_data(0)``) and write its final classifier to ``path`` as ONNX."""
    import torch
    from torch import nn

    from spaces import TrainSettings
    from spaces.torch_model.training import train_model

    digits = _digits_model()
    data = digits.load_data(0)
    torch.manual_seed(seed)
    model = digits.build_model(width=width)
    train_model(model, data.preprocess(data.train_x), data.train_y,
                TrainSettings(epochs=epochs, lr=3e-3, batch_size=64, seed=seed))

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stages, self.head = model.stages, model.heads[-1]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for stage in self.stages:
                x = stage(x)
            return self.head(x)

    classifier = Classifier().eval()
    example = torch.from_numpy(data.preprocess(data.train_x[:1]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(classifier, (example,), str(path), dynamo=False, opset_version=17,
                          input_names=["pixels"], output_names=["scores"],
                          dynamic_axes={"pixels": {0: "batch"}, "scores": {0: "batch"}},
                          do_constant_folding=True)
    return path


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "digits.onnx"
    print(export_digits_onnx(target, width=64, epochs=20))
