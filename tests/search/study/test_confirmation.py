"""The end of a study: the baseline and the front confirmed on the held-out test split by one
agent, the search itself measured on the selection split only."""

from __future__ import annotations

import pytest

from search.config import load_config
from search.fleet.dispatch import InlineDispatcher
from search.study.runner import RunOptions, StudyRunner
from search.tracking.tracker import NullTracker
from search.workspace import Workspace, load_records

from .test_study import fake_device


def run(write_config, tmp_path, agent, confirm: bool = True):
    config = load_config(write_config())
    runner = StudyRunner(config, Workspace(tmp_path / "runs", config.study),
                         dispatcher_factory=lambda c, w: InlineDispatcher(agent),
                         tracker=NullTracker())
    return runner.run(RunOptions(trials=5, confirm=confirm))


@pytest.mark.slow
def test_the_front_is_confirmed_on_the_test_split(write_config, tmp_path) -> None:
    agent = fake_device()
    summary = run(write_config, tmp_path, agent)
    (request,) = agent.confirm_requests
    # the search decided on the selection split; the confirmation measured the test split
    assert {r.eval_set_digest for r in agent.requests} != {request.eval_set_digest}
    assert request.eval_set.load().labels.shape == (200,)  # the tiny project's test split
    assert all(len(r.eval_set.load()) == 150 for r in agent.requests)  # half of validation
    confirmed = [summary.front.baseline, *summary.front.members]
    assert [b.key for b in request.bundles] == [r.number for r in confirmed]
    for r in confirmed:
        assert {"test_accuracy", "test_accuracy_drop", "confirmed_latency_p95_ms",
                "confirmed_speedup_p95"} <= set(r.metrics)
    baseline = summary.front.baseline
    for r in summary.front.members:  # the fake board's latencies, as ratios to the baseline
        assert r.metrics["confirmed_speedup_p95"] == pytest.approx(
            baseline.metrics["confirmed_latency_p95_ms"] / r.metrics["confirmed_latency_p95_ms"])
    records, attrs = load_records(Workspace(tmp_path / "runs", "tiny"))
    assert attrs["confirmation"]["split"] == "test"
    stored = {r.number: r.metrics.get("test_accuracy") for r in records}
    assert all(stored[r.number] == r.metrics["test_accuracy"] for r in confirmed)
    # then each confirmed bundle is profiled per operator on the test split, and stored
    from search.results.profile_store import stored_profiles

    assert [p.trial_number for p in agent.profile_requests] == [r.number for r in confirmed]
    assert {p.eval_set_digest for p in agent.profile_requests} == {request.eval_set_digest}
    profiles = stored_profiles(Workspace(tmp_path / "runs", "tiny"))
    assert {n: p.bundle_digest for n, p in profiles.items()} == {
        r.number: r.bundle_digest for r in confirmed}


@pytest.mark.slow
def test_no_confirm_leaves_the_front_unconfirmed(write_config, tmp_path) -> None:
    agent = fake_device()
    summary = run(write_config, tmp_path, agent, confirm=False)
    assert agent.confirm_requests == [] and agent.profile_requests == []
    assert all("test_accuracy" not in r.metrics for r in summary.records)


def test_a_stored_checkpoint_study_reads_back_without_its_train_defaults(tmp_path) -> None:
    """The stored dump holds model.train's defaults, which a checkpoint's config must not
    name: `paretoedge confirm` and `profile` of such a study read it back all the same."""
    from search.config import parse_config
    from search.study.confirmation import stored_config

    from ..conftest import tiny_config_dict

    raw = tiny_config_dict(model={"factory": "tiny_model.py:build_model",
                                  "checkpoint": "weights.pt"})
    del raw["model"]["train"]
    config = parse_config(raw, "config.yaml", tmp_path)
    attrs = {"config": config.model_dump(mode="json", by_alias=True),
             "config_dir": str(tmp_path)}
    assert "train" in attrs["config"]["model"]  # what the runner stores
    again = stored_config(attrs)
    assert again.model.checkpoint == "weights.pt" and not again.model.trains
    assert again.base_dir == tmp_path


def test_confirmed_speedups_are_the_median_of_per_round_ratios() -> None:
    """A slow spell of the host during one of the baseline's turns inflates its pooled p95;
    the speed-up is the median of the ratios taken round by round, seconds apart."""
    from device_agents import Confirmation, LatencyStats, Measurement
    from search.study.confirmation import confirmed_metrics

    def measurement(p50: float, p95: float) -> Measurement:
        latency = LatencyStats(mean_ms=p50, std_ms=0.01, p50_ms=p50, p90_ms=p95, p95_ms=p95,
                               p99_ms=p95, n=500, median_ci_low_ms=p50, median_ci_high_ms=p50,
                               converged=True)
        return Measurement(bundle_digest="d", accuracy=0.9, n_eval=10, ece=0.0,
                           exit_rates=(1.0,), latency=latency, size_kb=1.0, peak_mem_mb=1.0)

    confirmation = Confirmation(
        measurements=(measurement(1.0, 2.0), measurement(0.5, 0.5)),
        round_p50_ms=((1.0, 1.0, 1.0, 1.0, 1.0), (0.5, 0.5, 0.5, 0.5, 0.5)),
        round_p95_ms=((1.0, 1.0, 5.0, 1.0, 1.0), (0.5, 0.5, 0.5, 0.5, 0.5)),  # round 2 slow
        rounds=5)
    metrics = confirmed_metrics(confirmation, [0, 7], 0)
    assert metrics[7]["confirmed_speedup_p95"] == pytest.approx(2.0)  # not 2.0 / 0.5 = 4x
    assert metrics[7]["confirmed_speedup_p50"] == pytest.approx(2.0)
    assert metrics[0]["confirmed_speedup_p95"] == pytest.approx(1.0)
    assert metrics[7]["confirmed_latency_p95_ms"] == 0.5


def test_a_stored_onnx_study_reads_back_without_the_knobs_it_refuses(tmp_path) -> None:
    """An ONNX model searches quantization only: the stored defaults of model.train, pruning
    and early_exit are dropped when the config is read back (confirm, profile, deploy)."""
    from search.config import parse_config
    from search.study.confirmation import stored_config

    raw = {"study": "graph", "model": {"onnx": "model.onnx"},
           "data": {"loader": "data.py:load_data"}}
    config = parse_config(raw, "config.yaml", tmp_path)
    attrs = {"config": config.model_dump(mode="json", by_alias=True),
             "config_dir": str(tmp_path)}
    assert {"pruning", "early_exit"} <= set(attrs["config"])
    again = stored_config(attrs)
    assert again.model.onnx == "model.onnx" and again.model.factory is None

