"""Scale: one driver feeding a fleet of agents and builders on a multi-node Ray cluster, with
simulated work, and what the sampler costs as a study grows.

1. Fleet. A Ray cluster of several nodes on this machine (``ray.cluster_utils.Cluster``): the
   head (the driver's), ``--agent-nodes`` nodes with the custom resource ``agent_slot`` and
   ``--builder-nodes`` nodes with ``builder``. ``--agents`` agents are real Ray actors (one
   process each, spread over the agent nodes by their resource) whose measurement is a fixed
   ``--measure-s`` of simulated work (a sleep); builds are Ray tasks on the builder nodes, at
   most ``--builders`` at once, of a fixed ``--build-s``. The driver is the study's real
   sampler (``search.study.samplers.make_sampler``, ``spaces.SearchSpace.suggest``) on a real
   Optuna journal study with the default three objectives; it asks for as many candidates as
   free builders and agents can absorb (a builder is free, and the candidates not yet at an
   agent are fewer than the free agents plus the builders), dispatches each to a builder, then
   to a free agent, and tells the result (a repeated candidate reuses its measured twin, as the
   study loop does). Reported: the agents' busy share (their measuring time over agents x the
   window from the first measurement's start to the last one's end; goal >= 90 %), trials per
   minute (and measured trials per minute: a reused twin costs nothing), the driver's CPU per
   trial (``time.process_time``), its ask + tell time per trial, and the agents one driver
   core would feed at that CPU per trial (derived: ``1000 / cpu_ms`` trials a second, the
   measured share of them going to agents of ``--measure-s`` each). It drives the sampler and
   a dispatch of its own (the study loop's asking rule with builder nodes,
   ``StudyRunner._pool_step``), not the study loop: the loop's bookkeeping
   (trial log, display, MLflow) is not in these numbers.
2. Sampler cost. Ask + tell of one trial on a journal study already holding 500, 1,000 and
   2,000 finished trials (random ones of the same space), for ``tpe`` (what
   ``search.sampler: tpe`` is: TPE with constant liar, NSGA-II past ``TPE_TRIALS_MAX``
   finished trials), ``tpe-only`` (TPE throughout) and ``nsga2``; the median and the max of
   ``--cost-asks`` asks (goal: under 50 ms a trial at 2,000).

Usage:
    PYTHONPATH=$PWD .venv/bin/python experiments/benchmarks/scale_bench.py \\
        --workdir runs/scale_bench [--agents 64] [--builders 20] [--measure-s 1.0] \\
        [--build-s 0.25] [--trials 1200] [--samplers nsga2,tpe] [--agent-nodes 4] \\
        [--builder-nodes 2] [--cost-sizes 500,1000,2000]

A smoke run: ``--agents 8 --builders 4 --trials 60 --agent-nodes 2 --builder-nodes 1
--cost-sizes 50``. Prints rich tables and writes ``<workdir>/scale_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import warnings
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from search.metrics import DEFAULT_OBJECTIVES  # noqa: E402
from search.objective_set import ObjectiveSet  # noqa: E402
from search.study.samplers import TPE_TRIALS_MAX, TpeThenNsga2, make_sampler, nsga2  # noqa: E402
from search.workspace import open_storage  # noqa: E402
from spaces import ExitSpace, PruningSpace, SearchSpace  # noqa: E402
from spaces.quantization_space import QuantizationSpace  # noqa: E402

console = Console(width=160)
OBJECTIVES = ObjectiveSet.of(dict(DEFAULT_OBJECTIVES))


def search_space() -> SearchSpace:
    """A space the size of the reference study's: 4 groups x 3 precisions, pruning, one exit."""
    return SearchSpace(quantization=QuantizationSpace(groups=("first", "body0", "body1", "last"),
                                                      precisions=("fp32", "int8", "int8_wo")),
                       pruning=PruningSpace(), exits=ExitSpace(num_exits=1))


def simulated_metrics(candidate: dict[str, Any]) -> dict[str, float]:
    """Deterministic objective values of a candidate (what a measurement would give)."""
    ratio = float(candidate["prune_ratio"])
    int8 = sum(q == "int8" for q in candidate["quantization"])
    weight_only = sum(q == "int8_wo" for q in candidate["quantization"])
    exits = 0.85 if candidate["exit_thresholds"] else 1.0
    return {"accuracy": 0.92 - 0.08 * ratio ** 2 - 0.004 * int8 - 0.002 * weight_only
            - (0.01 * (1 - min(candidate["exit_thresholds"])) if candidate["exit_thresholds"]
               else 0.0),
            "latency_p95_ms": 4.0 * (1 - 0.7 * ratio) * (1 - 0.12 * int8) * exits,
            "size_kb": 900.0 * (1 - ratio) ** 2 * (1 - 0.18 * int8 - 0.15 * weight_only)}


def study_directions() -> list[Any]:
    import optuna

    return [optuna.study.StudyDirection[d.upper()] for d in OBJECTIVES.directions]


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)


# -- 1. the fleet ------------------------------------------------------------------------------
@dataclass
class FleetResult:
    sampler: str
    agents: int
    builders: int
    measure_s: float
    build_s: float
    trials: int
    measured: int
    reused: int
    busy_share: float
    trials_per_min: float
    measured_per_min: float
    driver_cpu_ms_per_trial: float
    ask_tell_ms_per_trial: float
    wall_s: float
    agent_nodes: int
    builder_nodes: int
    notes: list[str] = field(default_factory=list)

    @property
    def agents_one_core_feeds(self) -> float:
        """Agents of this measurement time that the driver's CPU per trial could keep busy if
        the driver had a core of its own (a derived figure: 1,000 / CPU ms trials a second,
        of which the measured share go to agents, each taking one per ``measure_s``)."""
        per_s = 1000.0 / self.driver_cpu_ms_per_trial
        return per_s * (self.measured / self.trials) * self.measure_s


@dataclass
class _Job:
    trial: Any
    candidate: dict[str, Any]
    key: str


def start_cluster(agent_nodes: int, builder_nodes: int, agents: int, builders: int) -> Any:
    """A head for the driver, agent nodes sharing ``agents`` slots, builder nodes sharing
    ``builders`` (a Ray node is a raylet of its own: a separate machine to Ray)."""
    import ray
    from ray.cluster_utils import Cluster

    store = 80 * 1024 * 1024  # the simulated work passes no data
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "object_store_memory": store})
    for k in range(agent_nodes):
        share = agents // agent_nodes + (k < agents % agent_nodes)
        cluster.add_node(num_cpus=0, resources={"agent_slot": share},
                         object_store_memory=store)
    for k in range(builder_nodes):
        share = builders // builder_nodes + (k < builders % builder_nodes)
        cluster.add_node(num_cpus=0, resources={"builder": share}, object_store_memory=store)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING,
             namespace="scale_bench")
    return cluster


def make_agent_class() -> Any:
    import ray

    @ray.remote(num_cpus=0, resources={"agent_slot": 1})
    class SleepAgent:
        """An agent whose measurement is ``measure_s`` of simulated work."""

        def __init__(self, measure_s: float) -> None:
            self.measure_s = measure_s
            self.node = ray.get_runtime_context().get_node_id()

        def ping(self) -> str:
            return self.node

        def measure(self, candidate: dict[str, Any]) -> tuple[dict[str, float], float, float]:
            started = time.time()
            time.sleep(self.measure_s)
            return simulated_metrics(candidate), started, time.time()

    return SleepAgent


def make_build_task(build_s: float) -> Any:
    import ray

    @ray.remote(num_cpus=0, resources={"builder": 1}, max_retries=3)
    def build(key: str) -> str:
        time.sleep(build_s)
        return key

    return build


def run_fleet(args: argparse.Namespace, sampler_name: str, workdir: Path) -> FleetResult:
    import optuna
    import ray

    quiet_optuna()
    space = search_space()
    journal = workdir / f"fleet-{sampler_name}" / "journal.log"
    journal.unlink(missing_ok=True)
    study = optuna.create_study(study_name="scale", storage=open_storage(journal),
                                directions=study_directions(),
                                sampler=make_sampler(sampler_name, 0, args.trials))
    agent_class = make_agent_class()
    agents = [agent_class.remote(args.measure_s) for _ in range(args.agents)]
    nodes = ray.get([a.ping.remote() for a in agents], timeout=600)  # every agent is up
    build = make_build_task(args.build_s)
    # warm the builder workers (a worker process per concurrent task) before timing
    ray.get([build.remote("warm") for _ in range(args.builders)], timeout=600)

    free = deque(agents)
    building: dict[Any, _Job] = {}
    measuring: dict[Any, tuple[_Job, Any]] = {}
    ready: deque[_Job] = deque()
    measured_values: dict[str, dict[str, float]] = {}
    in_flight_keys: dict[str, list[_Job]] = {}
    spans: list[tuple[float, float]] = []
    asked = told = reused = 0
    sampler_s = 0.0
    cpu0, wall0 = time.process_time(), time.perf_counter()

    def tell(job: _Job, metrics: dict[str, float]) -> None:
        nonlocal told, sampler_s
        started = time.perf_counter()
        study.tell(job.trial, list(OBJECTIVES.values(metrics)))
        sampler_s += time.perf_counter() - started
        told += 1

    while told < args.trials:
        # ask for as many candidates as free builders and agents can absorb
        while asked < args.trials and len(building) < args.builders and \
                len(building) + len(ready) < len(free) + args.builders:
            started = time.perf_counter()
            trial = study.ask()
            candidate = space.suggest(trial).to_dict()
            sampler_s += time.perf_counter() - started
            asked += 1
            key = json.dumps(candidate, sort_keys=True)
            job = _Job(trial, candidate, key)
            if key in measured_values:  # a measured twin: reuse its measurement
                tell(job, measured_values[key])
                reused += 1
                continue
            if key in in_flight_keys:  # a twin in flight: told when it is measured
                in_flight_keys[key].append(job)
                reused += 1
                continue
            in_flight_keys[key] = []
            building[build.remote(key)] = job
        while ready and free:
            job, agent = ready.popleft(), free.popleft()
            measuring[agent.measure.remote(job.candidate)] = (job, agent)
        refs = [*building, *measuring]
        if not refs:
            continue
        done, _ = ray.wait(refs, num_returns=1, timeout=5.0, fetch_local=True)
        if done:
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=True)
        for ref in done:
            if ref in building:
                ready.append(building.pop(ref))
                continue
            job, agent = measuring.pop(ref)
            metrics, start, end = ray.get(ref)
            spans.append((start, end))
            free.append(agent)
            measured_values[job.key] = metrics
            tell(job, metrics)
            for twin in in_flight_keys.pop(job.key, []):
                tell(twin, metrics)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    window = max(e for _, e in spans) - min(s for s, _ in spans)
    busy = sum(e - s for s, e in spans) / (args.agents * window)
    for agent in agents:
        ray.kill(agent)
    return FleetResult(
        sampler=sampler_name, agents=args.agents, builders=args.builders,
        measure_s=args.measure_s, build_s=args.build_s, trials=told, measured=len(spans),
        reused=reused, busy_share=busy, trials_per_min=60 * told / wall,
        measured_per_min=60 * len(spans) / wall,
        driver_cpu_ms_per_trial=1000 * cpu / told, ask_tell_ms_per_trial=1000 * sampler_s / told,
        wall_s=wall, agent_nodes=len(set(nodes)), builder_nodes=args.builder_nodes)


# -- 2. the sampler's cost ---------------------------------------------------------------------
def sampler_for(name: str, trials: int) -> Any:
    if name == "tpe-only":
        return TpeThenNsga2(seed=0, trials=trials, switch_after=10**9)
    if name == "nsga2":
        return nsga2(0, trials)
    return make_sampler(name, 0, trials)


def filled_study(workdir: Path, size: int) -> Path:
    """A journal holding ``size`` finished random trials of the space (made once per size)."""
    import optuna

    journal = workdir / "cost" / f"filled-{size}.log"
    if journal.is_file():
        return journal
    space = search_space()
    study = optuna.create_study(study_name="scale", storage=open_storage(journal),
                                directions=study_directions(),
                                sampler=optuna.samplers.RandomSampler(seed=size))
    for _ in range(size):
        trial = study.ask()
        study.tell(trial, list(OBJECTIVES.values(
            simulated_metrics(space.suggest(trial).to_dict()))))
    return journal


def ask_tell_cost(workdir: Path, name: str, size: int, asks: int) -> dict[str, Any]:
    import shutil

    import optuna

    quiet_optuna()
    copy = workdir / "cost" / f"{name}-{size}.log"
    shutil.copyfile(filled_study(workdir, size), copy)
    space = search_space()
    study = optuna.load_study(study_name="scale", storage=open_storage(copy),
                              sampler=sampler_for(name, size + asks))
    times = []
    for _ in range(asks):
        started = time.perf_counter()
        trial = study.ask()
        metrics = simulated_metrics(space.suggest(trial).to_dict())
        study.tell(trial, list(OBJECTIVES.values(metrics)))
        times.append(time.perf_counter() - started)
    copy.unlink()
    return {"sampler": name, "trials": size, "asks": asks,
            "median_ms": 1000 * statistics.median(times), "max_ms": 1000 * max(times)}


# -- reporting ---------------------------------------------------------------------------------
def fleet_table(results: list[FleetResult]) -> Table:
    table = Table(title="Fleet: simulated builds and measurements on a multi-node Ray cluster",
                  title_justify="left")
    for name in ("sampler", "agents", "builders", "measure s", "build s", "trials",
                 "reused", "busy share", "trials/min", "measured/min", "driver CPU ms/trial",
                 "ask+tell ms/trial", "agents 1 core feeds"):
        table.add_column(name, justify="left" if name == "sampler" else "right")
    for r in results:
        table.add_row(r.sampler, str(r.agents), str(r.builders), f"{r.measure_s:g}",
                      f"{r.build_s:g}", str(r.trials), str(r.reused), f"{100 * r.busy_share:.1f} %",
                      f"{r.trials_per_min:.0f}", f"{r.measured_per_min:.0f}",
                      f"{r.driver_cpu_ms_per_trial:.1f}",
                      f"{r.ask_tell_ms_per_trial:.1f}", f"{r.agents_one_core_feeds:.0f}")
    return table


def cost_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"Sampler: ask + tell of one trial on a study of N finished trials "
                        f"(tpe hands over to NSGA-II past {TPE_TRIALS_MAX})",
                  title_justify="left")
    for name in ("sampler", "N trials", "asks", "median ms", "max ms"):
        table.add_column(name, justify="left" if name == "sampler" else "right")
    for row in rows:
        table.add_row(row["sampler"], str(row["trials"]), str(row["asks"]),
                      f"{row['median_ms']:.1f}", f"{row['max_ms']:.1f}")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "scale_bench")
    parser.add_argument("--agents", type=int, default=64)
    parser.add_argument("--builders", type=int, default=20)
    parser.add_argument("--measure-s", type=float, default=1.0)
    parser.add_argument("--build-s", type=float, default=0.25)
    parser.add_argument("--trials", type=int, default=1200)
    parser.add_argument("--samplers", default="nsga2,tpe",
                        help="fleet runs, one per sampler (comma-separated)")
    parser.add_argument("--agent-nodes", type=int, default=4)
    parser.add_argument("--builder-nodes", type=int, default=2)
    parser.add_argument("--cost-sizes", default="500,1000,2000")
    parser.add_argument("--cost-samplers", default="tpe,tpe-only,nsga2")
    parser.add_argument("--cost-asks", type=int, default=40,
                        help="asks timed per size (2 NSGA-II generations at 40)")
    parser.add_argument("--no-fleet", action="store_true", help="the sampler's cost only")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")

    fleet: list[FleetResult] = []
    if not args.no_fleet:
        import ray

        cluster = start_cluster(args.agent_nodes, args.builder_nodes, args.agents,
                                args.builders)
        try:
            for name in [s for s in args.samplers.split(",") if s]:
                console.print(f"fleet run: {name}, {args.agents} agents, {args.builders} "
                              f"builders, {args.trials} trials")
                fleet.append(run_fleet(args, name, args.workdir))
        finally:
            ray.shutdown()
            cluster.shutdown()
        console.print(fleet_table(fleet))
    costs = []
    for size in [int(s) for s in args.cost_sizes.split(",") if s]:
        for name in [s for s in args.cost_samplers.split(",") if s]:
            costs.append(ask_tell_cost(args.workdir, name, size, args.cost_asks))
    console.print(cost_table(costs))
    out = args.workdir / "scale_bench.json"
    out.write_text(json.dumps({"fleet": [{**asdict(r),
                                          "agents_one_core_feeds": r.agents_one_core_feeds}
                                         for r in fleet], "sampler_cost": costs,
                               "tpe_trials_max": TPE_TRIALS_MAX,
                               "args": {k: str(v) for k, v in vars(args).items()},
                               "cores": os.cpu_count(),
                               "date": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))
    console.print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
