"""A device has no torch: load, run and measure a bundle in a Python where torch cannot import."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np

from device_agents import EvalSet

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent('''
    import json
    import sys

    import numpy as np

    import device_agents
    import device_agents.measure_child
    import device_agents.ray_actor
    import device_agents.agent_cli
    import device_agents.agent_node
    import device_agents.energy
    import device_agents.registry
    from device_agents import (
        BundlePayload, CascadeRunner, EvalSet, EvalSetPayload, LocalDeviceAgent,
        MeasurementProtocol, MeasureRequest,
    )
    from device_agents.measure import measure_bundle

    bundle, digest, eval_path, cache = sys.argv[1:5]
    runner = CascadeRunner.load(bundle, expected_digest=digest)
    early = runner.predict(np.array([50, 0, 0, 1], dtype=np.float32))
    late = runner.predict(np.array([0, 0, 1, 0], dtype=np.float32))

    eval_set = EvalSet.from_bytes(open(eval_path, "rb").read())
    protocol = MeasurementProtocol(warmup_runs=5, warmup_seconds=0.0, min_runs=20,
                                   max_runs=200, round_runs=10)
    measured = measure_bundle(bundle, eval_set, protocol, expected_digest=digest)

    payload = EvalSetPayload.from_eval_set(eval_set)
    agent = LocalDeviceAgent(device_class="no-torch", cache_dir=cache, isolate=False)
    by_agent = agent.measure(MeasureRequest(
        bundle_digest=digest, bundle=BundlePayload.from_directory(bundle),
        eval_set_digest=payload.digest, eval_set=payload, protocol=protocol))

    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()) as shown:
        help_status = device_agents.agent_cli.main(["start", "--help"])
    parser_ok = help_status == 0 and "--providers" in shown.getvalue()
    torch_loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    try:
        import torch  # noqa: F401
        blocked = False
    except ImportError:
        blocked = True
    print(json.dumps({
        "early": [early.label, early.exit_index], "late": [late.label, late.exit_index],
        "accuracy": measured.accuracy, "exit_rates": list(measured.exit_rates),
        "agent_accuracy": by_agent.accuracy, "torch_modules": torch_loaded,
        "blocked": blocked, "parser_ok": parser_ok,
        "heavy": sorted(m for m in ("optuna", "mlflow", "onnx", "spaces", "search")
                        if m in sys.modules),
    }))
''')


def test_device_agents_run_and_measure_without_torch(tmp_path, make_bundle, cascade,
                                                     python_without_torch):
    directory, digest = make_bundle(cascade.TWO_STAGE, thresholds=(0.9,))
    eval_set = EvalSet(
        inputs=np.array([[50, 0, 0, 1], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], np.float32),
        labels=np.array([0, 1, 0, 0], dtype=np.int64))
    eval_path = tmp_path / "eval.npz"
    eval_set.save(eval_path)

    done = python_without_torch(CHILD, directory, digest, eval_path, tmp_path / "cache",
                                cwd=tmp_path, timeout=120)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["blocked"] is True  # the blocker works, so the run really had no torch
    assert result["torch_modules"] == []
    assert result["early"] == [0, 0]
    assert result["late"] == [1, 1]
    assert result["accuracy"] == 0.75
    assert result["exit_rates"] == [0.25, 0.75]
    assert result["agent_accuracy"] == 0.75
    # `python -m device_agents.agent_cli` works on a board with only the agent's dependencies
    # (typer and rich are among them: the base install)
    assert result["parser_ok"] is True and result["heavy"] == []
