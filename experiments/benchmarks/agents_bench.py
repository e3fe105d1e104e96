"""Device agents: throughput with 1 and 2 agents, and the spread of repeated measurements.

1. Throughput: ``--trials`` measurements of fixed cost (``--fixed-runs`` timed runs after 50
   warm-up runs, the whole eval set once for accuracy; the CI rule cannot stop it early) sent
   through the real Ray agent pool, keeping every agent busy; trials per minute, and the
   mean duration of one measurement (it grows when two measurements share a core). Configs:
   one agent; two agents with the local default plan (``local_core_plan``: the last cores,
   one each, core 0 left to the builder; on a 2-core machine both land on core 1); two agents
   on cores 1 and 0 (one core each, the builder's core shared; nothing is built here).
2. Spread: one bundle measured ``--repeats`` times by one agent with the default protocol
   (warm-up 50 runs / 0.2 s, timing until the median's 95 % CI is within 2 % or 3,000 runs);
   the coefficient of variation of p50 across the repeats, and each repeat's CI width.

The bundle is a synthetic MLP (784-512-512-10, fp32, built with onnx.helper, about 0.1 ms a run)
unless ``--bundle DIR`` names a real one (e.g. a study's ``bundles/trial_0000``, the fp32
baseline); the eval set is random data of the bundle's input shape (accuracy is not the point).

Usage:
    PYTHONPATH=$PWD .venv/bin/python experiments/benchmarks/agents_bench.py \\
        --workdir runs/agents_bench [--trials 12] [--repeats 10] [--bundle DIR]

Prints rich tables and writes ``<workdir>/agents_bench.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from device_agents import (  # noqa: E402
    BundleManifest,
    BundlePayload,
    EvalSet,
    EvalSetPayload,
    InputSpec,
    MeasurementProtocol,
    MeasureRequest,
    StageSpec,
    read_manifest,
    write_bundle,
)


def mlp_bundle(directory: Path) -> Path:
    """A one-stage fp32 MLP 784-512-512-10 (MatMul + Add + Relu)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    sizes = [784, 512, 512, 10]
    nodes, inits, current = [], [], "input"
    for k, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        inits += [numpy_helper.from_array(rng.normal(0, n_in ** -0.5, (n_in, n_out))
                                          .astype(np.float32), f"W{k}"),
                  numpy_helper.from_array(np.zeros(n_out, np.float32), f"b{k}")]
        last = k == len(sizes) - 2
        nodes += [helper.make_node("MatMul", [current, f"W{k}"], [f"m{k}"]),
                  helper.make_node("Add", [f"m{k}", f"b{k}"], ["logits" if last else f"a{k}"])]
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{k}"], [f"r{k}"]))
            current = f"r{k}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 784])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    manifest = BundleManifest(input=InputSpec("input", (1, 784)),
                              stages=(StageSpec("model", "model.onnx", ""),), num_classes=10,
                              provenance={"benchmark": "agents_bench synthetic MLP"})
    write_bundle(directory, manifest, {"model.onnx": model.SerializeToString()})
    return directory


def random_eval_set(bundle: Path, samples: int) -> EvalSetPayload:
    manifest = read_manifest(bundle)
    shape = tuple(manifest.input.shape[1:])
    rng = np.random.default_rng(1)
    inputs = rng.normal(size=(samples, *shape)).astype(np.float32)
    return EvalSetPayload.from_eval_set(EvalSet(
        inputs=inputs, labels=rng.integers(0, manifest.num_classes, size=samples)))


def pool_with(cores_plan: list[tuple[int, ...]], builder: tuple[int, ...], cache: Path) -> Any:
    """A local Ray cluster and one agent per entry of ``cores_plan``."""
    import ray

    from device_agents.ray_actor import create_agent
    from device_agents.registry import AgentName, device_resource
    from search.fleet.agent_pool import RayAgentPool, start_ray

    start_ray(None, num_cpus=os.cpu_count() or 1,
              resources={device_resource("bench"): len(cores_plan)})
    os.sched_setaffinity(0, set(builder))
    node = ray.get_runtime_context().get_node_id()
    handles = [create_agent(AgentName("bench", node, f"b{i}"), cores=cores,
                            cache_dir=str(cache), node_labels={})
               for i, cores in enumerate(cores_plan)]
    pool = RayAgentPool("bench", handles, timeout_s=600, retries=0, wait_for_agents_s=120)
    pool.wait_ready()
    return pool


def stop(pool: Any) -> None:
    import ray

    pool.close()
    ray.shutdown()
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def throughput(plan: list[tuple[int, ...]], builder: tuple[int, ...], bundle: BundlePayload,
               payload: EvalSetPayload, protocol: MeasurementProtocol, trials: int,
               cache: Path) -> dict[str, Any]:
    pool = pool_with(plan, builder, cache)
    try:
        ref = pool.share(payload)
        request = MeasureRequest(bundle_digest=bundle.digest, bundle=bundle,
                                 eval_set_digest=payload.digest, eval_set=ref, protocol=protocol)
        # one untimed measurement per agent: bundle and eval set reach each agent's cache
        for key in range(len(plan)):
            pool.submit(("warm", key), request)
        while pool.in_flight():
            pool.poll(timeout=1.0)
        started, sent, done = time.perf_counter(), 0, []
        while len(done) < trials:
            while sent < trials and pool.free_slots() > 0:
                pool.submit(sent, request)
                sent += 1
            done.extend(pool.poll(timeout=1.0))
        elapsed = time.perf_counter() - started
    finally:
        stop(pool)
    failed = [c.error for c in done if c.measurement is None]
    if failed:
        raise RuntimeError(f"measurements failed: {failed[:3]}")
    durations = [c.measurement.duration_s for c in done]
    return {"agents": len(plan), "cores": [list(c) for c in plan], "builder": list(builder),
            "trials": trials, "elapsed_s": elapsed, "trials_per_min": trials / elapsed * 60,
            "measure_s_mean": statistics.mean(durations),
            "cpu_share_mean": statistics.mean(c.measurement.latency.cpu_share for c in done),
            "p50_ms_mean": statistics.mean(c.measurement.latency.p50_ms for c in done),
            "agents_used": len({c.agent_id for c in done})}


def spread(bundle: BundlePayload, payload: EvalSetPayload, repeats: int,
           cache: Path) -> dict[str, Any]:
    from search.fleet.agent_pool import local_core_plan

    plan, builder = local_core_plan(os.cpu_count() or 1, 1)
    pool = pool_with(plan, builder, cache)
    protocol = MeasurementProtocol()  # the protocol class defaults (a study passes its own)
    rows = []
    try:
        request = MeasureRequest(bundle_digest=bundle.digest, bundle=bundle,
                                 eval_set_digest=payload.digest,
                                 eval_set=pool.share(payload), protocol=protocol)
        for k in range(repeats):
            pool.submit(k, request)
            finished: list[Any] = []
            while not finished:
                finished = pool.poll(timeout=1.0)
            (completed,) = finished
            m = completed.measurement
            if m is None:
                raise RuntimeError(completed.error)
            rows.append({"repeat": k, "p50_ms": m.latency.p50_ms, "p95_ms": m.latency.p95_ms,
                         "mean_ms": m.latency.mean_ms, "n": m.latency.n,
                         "ci_rel_width": m.latency.ci_rel_width,
                         "converged": m.latency.converged, "peak_mem_mb": m.peak_mem_mb,
                         "cpu_share": m.latency.cpu_share, "loadavg_1m": os.getloadavg()[0]})
    finally:
        stop(pool)
    p50 = [r["p50_ms"] for r in rows]
    return {"protocol": protocol.to_dict(), "cores": list(plan[0]), "repeats": rows,
            "p50_mean_ms": statistics.mean(p50), "p50_cv": statistics.stdev(p50) /
            statistics.mean(p50), "p50_min_ms": min(p50), "p50_max_ms": max(p50),
            "p95_cv": statistics.stdev(r["p95_ms"] for r in rows) /
            statistics.mean(r["p95_ms"] for r in rows)}


def load() -> dict[str, float]:
    one, five, _ = os.getloadavg()
    return {"loadavg_1m": one, "loadavg_5m": five}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "agents_bench")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--fixed-runs", type=int, default=30000)
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--bundle", type=Path, help="a bundle directory (default: synthetic)")
    args = parser.parse_args()
    console = Console(width=160)
    args.workdir.mkdir(parents=True, exist_ok=True)
    directory = args.bundle or mlp_bundle(args.workdir / "mlp_bundle")
    bundle = BundlePayload.from_directory(directory)
    payload = random_eval_set(directory, args.eval_samples)
    cpus = os.cpu_count() or 1
    fixed = MeasurementProtocol(warmup_runs=50, warmup_seconds=0.0, min_runs=args.fixed_runs,
                                max_runs=args.fixed_runs, round_runs=args.fixed_runs)
    from search.fleet.agent_pool import local_core_plan

    configs = [("1 agent", *local_core_plan(cpus, 1)),
               ("2 agents, local default plan", *local_core_plan(cpus, 2))]
    if cpus >= 2:
        configs.append(("2 agents, one core each", [(cpus - 1,), (cpus - 2,)], (0,)))
    result: dict[str, Any] = {"machine": {"cpu_count": cpus, "platform": platform.platform(),
                                          **load()},
                              "bundle": str(directory), "fixed_protocol": fixed.to_dict(),
                              "throughput": []}
    for label, plan, builder in configs:
        row = throughput(plan, builder, bundle, payload, fixed, args.trials,
                         args.workdir / "cache")
        row["config"] = label
        result["throughput"].append(row)
        console.print(f"{label}: {row['trials_per_min']:.1f} trials/min")
    result["spread"] = spread(bundle, payload, args.repeats, args.workdir / "cache")
    result["machine"].update({f"{k}_after": v for k, v in load().items()})

    table = Table(title=f"Throughput: {args.trials} measurements of fixed cost "
                        f"({args.fixed_runs} timed runs + {args.eval_samples} accuracy samples)"
                        f" on {cpus} cores")
    for heading in ("config", "agent cores", "builder cores", "agents used", "trials/min",
                    "speed-up", "s per measurement", "p50 ms", "CPU share"):
        table.add_column(heading)
    base = result["throughput"][0]["trials_per_min"]
    for row in result["throughput"]:
        table.add_row(row["config"], str(row["cores"]), str(row["builder"]),
                      str(row["agents_used"]), f"{row['trials_per_min']:.1f}",
                      f"{row['trials_per_min'] / base:.2f}x", f"{row['measure_s_mean']:.2f}",
                      f"{row['p50_ms_mean']:.4f}", f"{row['cpu_share_mean']:.2f}")
    console.print(table)
    s = result["spread"]
    table = Table(title=f"Spread: one bundle measured {args.repeats} times by one agent (core "
                        f"{s['cores']}), default protocol")
    for heading in ("repeat", "p50 ms", "p95 ms", "n", "CI width / p50", "converged",
                    "CPU share", "load avg 1 min"):
        table.add_column(heading)
    for r in s["repeats"]:
        table.add_row(str(r["repeat"]), f"{r['p50_ms']:.4f}", f"{r['p95_ms']:.4f}", str(r["n"]),
                      f"{r['ci_rel_width'] * 100:.2f} %", str(r["converged"]),
                      f"{r['cpu_share']:.2f}", f"{r['loadavg_1m']:.1f}")
    console.print(table)
    console.print(f"p50: mean {s['p50_mean_ms']:.4f} ms, min {s['p50_min_ms']:.4f}, max "
                  f"{s['p50_max_ms']:.4f}, coefficient of variation {s['p50_cv'] * 100:.2f} % "
                  f"(p95: {s['p95_cv'] * 100:.2f} %); load average before "
                  f"{result['machine']['loadavg_1m']:.1f}, after "
                  f"{result['machine']['loadavg_1m_after']:.1f}")
    out = args.workdir / "agents_bench.json"
    out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
