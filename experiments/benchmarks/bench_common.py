"""Shared plumbing of the benchmark scripts: loading a study's model, measuring, reporting.

Benchmarks are scripts (``python experiments/benchmarks/<name>.py``), never imported by the
packages. Each prints a rich table and writes its results as JSON into its workdir.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
console = Console(width=160)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import onnxruntime
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    result = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        result.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        result.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    return result


def write_json(workdir: Path, name: str, payload: Mapping[str, Any]) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=str))
    console.print(f"results written to {path}")
    return path


def copy_baseline(source: Path | None, cache: Path) -> None:
    """Reuse a trained fp32 model: copy ``<source>/baseline`` into a workdir's cache.

    ``source`` is another workdir's cache (training the reference model takes ~45 CPU-minutes).
    Nothing to copy (``None``, or no model there) leaves the study to train its own.
    """
    import shutil

    if source is None or not (source / "baseline").is_dir():
        return
    target = cache / "baseline"
    target.mkdir(parents=True, exist_ok=True)
    for path in (source / "baseline").iterdir():
        if path.suffix in (".pt", ".json") and not (target / path.name).exists():
            shutil.copyfile(path, target / path.name)


def measure_interleaved(bundles: Mapping[str, Path], eval_set: Any, workdir: Path, *,
                        rounds: int, runs: int, core: int | None = None) -> dict[str, list[Any]]:
    """Measure every bundle ``rounds`` times with one agent, interleaved in a rotating order.

    Each round is a full measurement (accuracy over ``eval_set``, then ``runs`` timed runs after
    100 warm-up runs), so slow drift of the machine affects every bundle alike.
    """
    from device_agents import (
        BundlePayload,
        EvalSetPayload,
        LocalDeviceAgent,
        MeasurementProtocol,
        MeasureRequest,
    )

    payload = EvalSetPayload.from_eval_set(eval_set)
    agent = LocalDeviceAgent(device_class="bench", threads=1, cache_dir=workdir / "agent",
                             cores=None if core is None else (core,))
    protocol = MeasurementProtocol(threads=1, warmup_runs=100, warmup_seconds=0.2,
                                   min_runs=runs, max_runs=runs, round_runs=100)
    names = list(bundles)
    results: dict[str, list[Any]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            bundle = BundlePayload.from_directory(bundles[name])
            results[name].append(agent.measure(MeasureRequest(
                bundle_digest=bundle.digest, bundle=bundle,
                eval_set_digest=payload.digest, eval_set=payload, protocol=protocol)))
        console.print(f"round {r + 1}/{rounds} measured")
    return results
