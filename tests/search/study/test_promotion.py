"""Multi-fidelity: which screened candidates are promoted to the long finetune, and how the
front, the hypervolume and `best` take a configuration at its highest fidelity."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from search.objective_set import ObjectiveSet
from search.records import TrialRecord, at_highest_fidelity, superseded
from search.results.pareto import HypervolumeHistory, ParetoFront
from search.results.query import best
from search.study.promotion import PromotionRule

from ..conftest import make_record

BAND = 0.01


def trial(number: int, *, drop: float, p95: float, prune: float = 0.25,
          fidelity: str = "", size: float = 100.0, baseline: bool = False,
          contended: bool = False) -> TrialRecord:
    record = make_record(number, accuracy=0.95 - drop, p95=p95, size=size,
                         feasible=drop <= BAND, baseline=baseline)
    candidate = {"quantization": ["int8"], "prune_ratio": prune, "exit_thresholds": []}
    if fidelity:
        candidate["fidelity"] = fidelity
    return replace(record, candidate=candidate, finished_at=float(number),
                   metrics={**record.metrics, "accuracy_drop": drop,
                            "contended": float(contended)})


def rule(**overrides) -> PromotionRule:
    settings = {"share": 0.25, "margin": 0.015, "max_accuracy_drop": BAND,
                "objectives": ObjectiveSet.default(), "limits": {}}
    return PromotionRule(**{**settings, **overrides})


def baseline() -> TrialRecord:
    return trial(0, drop=0.0, p95=1.0, prune=0.0, size=400.0, baseline=True)


def test_a_pruned_member_of_the_feasible_front_is_promoted() -> None:
    records = [baseline(), trial(1, drop=0.005, p95=0.5)]
    assert rule().reason(records[1], records, promoted=set(), trials=20) == \
        "on the feasible front"


def test_a_dominated_feasible_trial_is_not_promoted() -> None:
    records = [baseline(), trial(1, drop=0.001, p95=0.4, prune=0.125),
               trial(2, drop=0.005, p95=0.5)]  # worse accuracy, slower, same size
    assert rule().reason(records[2], records, promoted=set(), trials=20) is None


def test_just_outside_the_band_but_front_worthy_is_promoted_within_the_margin() -> None:
    records = [baseline(), trial(1, drop=0.005, p95=0.5), trial(2, drop=0.02, p95=0.25,
                                                             prune=0.5)]
    why = rule().reason(records[2], records, promoted=set(), trials=20)
    assert why is not None and "1.00 pp outside the band" in why
    assert rule(margin=0.005).reason(records[2], records, promoted=set(), trials=20) is None
    slower = trial(3, drop=0.02, p95=0.6, prune=0.5)  # would be dominated even inside
    assert rule().reason(slower, [*records, slower], promoted=set(), trials=20) is None


def test_a_limit_it_breaks_keeps_a_near_miss_out() -> None:
    records = [baseline(), trial(1, drop=0.005, p95=0.5),
               trial(2, drop=0.02, p95=0.25, prune=0.5, size=300.0)]
    assert rule(limits={"size_kb": 200.0}).reason(records[2], records, promoted=set(),
                                                  trials=20) is None


def test_unpruned_baseline_contended_promoted_and_full_trials_are_not_promoted() -> None:
    base = baseline()
    unpruned = trial(1, drop=0.002, p95=0.6, prune=0.0)
    contended = trial(2, drop=0.002, p95=0.3, contended=True)
    full = trial(3, drop=0.002, p95=0.45, fidelity="full")
    records = [base, unpruned, contended, full]
    for record in records:
        assert rule().reason(record, records, promoted=set(), trials=20) is None
    screened = trial(4, drop=0.003, p95=0.2)
    records.append(screened)
    assert rule().reason(screened, records, promoted={4}, trials=20) is None  # queued already


def test_promotions_stop_at_their_share_of_the_budget_and_once_per_configuration() -> None:
    records = [baseline(), trial(1, drop=0.005, p95=0.5), trial(2, drop=0.004, p95=0.3,
                                                             prune=0.5)]
    assert rule(share=0.05).reason(records[2], records, promoted={1}, trials=20) is None
    assert rule(share=0.05).reason(records[2], records, promoted={1}, trials=40) is not None
    twin = trial(3, drop=0.004, p95=0.31, prune=0.5)  # the same configuration, sampled again
    records.append(twin)
    assert rule().reason(twin, records, promoted={2}, trials=40) is None


def test_the_highest_fidelity_stands_for_its_configuration() -> None:
    screened = trial(1, drop=0.02, p95=0.3, prune=0.5)  # outside the band screened
    other = trial(2, drop=0.005, p95=0.6)
    full = trial(3, drop=0.006, p95=0.31, prune=0.5, fidelity="full")
    records = [baseline(), screened, other, full]
    assert superseded(records) == {1}
    assert [r.number for r in at_highest_fidelity(records)] == [0, 2, 3]
    assert screened.configuration == full.configuration
    assert json.loads(full.configuration)["prune_ratio"] == 0.5
    front = ParetoFront.from_records(records, BAND)
    assert front.numbers == {0, 2, 3}  # the fp32 baseline: the most accurate
    history = HypervolumeHistory.replay(records, BAND)
    assert history.front.numbers == {0, 2, 3}
    assert history.hypervolume == pytest.approx(front.hypervolume())
    lucky = trial(4, drop=0.004, p95=0.3, prune=0.375)  # screened, then promoted: worse
    its_full = trial(5, drop=0.0055, p95=0.31, prune=0.375, fidelity="full")
    chosen = best([*records, lucky, its_full], where="latency_p95_ms < 0.35",
                  maximize="accuracy")
    assert chosen.number == 5  # not the screened 4: its configuration measured 0.0055 since


def test_a_feasible_screen_superseded_by_an_infeasible_full_fidelity_leaves_the_front() -> None:
    """The highest fidelity is the configuration's measurement, whatever it says."""
    screened = trial(1, drop=0.005, p95=0.3)
    full = trial(2, drop=0.02, p95=0.3, fidelity="full")  # the long finetune did worse
    records = [baseline(), screened, full]
    assert ParetoFront.from_records(records, BAND).numbers == {0}
    history = HypervolumeHistory.replay(records, BAND)
    assert history.points[1].front_size == 2  # the baseline and the screened trial
    assert history.front.numbers == {0} and history.points[2].front_size == 1


def graded_device():
    """A board on which the long finetune keeps more accuracy: a pruned candidate loses
    0.08 x ratio of accuracy screened, a quarter of that fully finetuned."""
    from device_agents import FakeAgent, LatencyStats, Measurement

    def handler(request):
        manifest = json.loads(request.bundle.files["manifest.json"])
        candidate = manifest["provenance"]["candidate"]
        ratio = candidate["prune_ratio"]
        loss = 0.08 * ratio * (0.25 if candidate.get("fidelity") == "full" else 1.0)
        p95 = 1.0 * (1 - ratio) * (1 - 0.2 * sum(q == "int8" for q in candidate["quantization"]))
        latency = LatencyStats(mean_ms=p95 * 0.8, std_ms=0.01, p50_ms=p95 * 0.7,
                               p90_ms=p95 * 0.9, p95_ms=p95, p99_ms=p95 * 1.1, n=100,
                               median_ci_low_ms=p95 * 0.69, median_ci_high_ms=p95 * 0.71,
                               converged=True)
        return Measurement(bundle_digest=request.bundle_digest, accuracy=0.95 - loss,
                           n_eval=200, ece=0.02, exit_rates=(1.0,), latency=latency,
                           size_kb=100.0 * (1 - ratio), peak_mem_mb=10.0, agent_id="fake-0")

    return FakeAgent(handler)


@pytest.mark.slow
def test_a_study_promotes_screened_candidates_to_the_long_finetune(write_config,
                                                                   tmp_path) -> None:
    """Real builds of the tiny model: promoted trials repeat a screened trial's params at the
    full fidelity, are finetuned and cached apart, and stand for their configuration."""
    import optuna

    from search.config import load_config
    from search.fleet.dispatch import InlineDispatcher
    from search.study.runner import RunOptions, StudyRunner
    from search.tracking.tracker import NullTracker
    from search.workspace import Workspace, open_storage

    config = load_config(write_config(
        constraints={"max_accuracy_drop": 0.02},
        pruning={"finetune_full": {"epochs": 2}, "promotion": {"share": 0.25, "margin": 0.03}},
        search={"trials": 12, "sampler": "tpe", "seed": 0}))
    workspace = Workspace(tmp_path / "runs", config.study)
    summary = StudyRunner(config, workspace, dispatcher_factory=lambda c, w: InlineDispatcher(
        graded_device()), tracker=NullTracker()).run(RunOptions(trials=12, confirm=False))
    study = optuna.load_study(study_name=config.study, storage=open_storage(workspace.journal))
    trials = {t.number: t for t in study.trials}
    records = {r.number: r for r in summary.records}
    promoted = [t for t in study.trials if t.user_attrs.get("fidelity") == "full"]
    assert 1 <= len(promoted) <= 3  # a quarter of 12 trials at most
    for t in promoted:
        source = records[t.user_attrs["promoted_from"]]
        mine = records[t.number]
        assert mine.fidelity == "full" and mine.configuration == source.configuration
        assert t.params == trials[source.number].params
        assert source.candidate["prune_ratio"] > 0 and source.number < t.number
        assert source.number not in summary.front.numbers  # superseded by its full fidelity
        manifest = json.loads((workspace.workdir / mine.bundle / "manifest.json").read_text())
        assert manifest["provenance"]["build"]["finetune_full"]["epochs"] == 2
        # finetuned again, apart: the pruned cache holds both fidelities of its ratio
        assert manifest["provenance"]["pruning"]["key"] != json.loads(
            (workspace.workdir / source.bundle / "manifest.json").read_text()
        )["provenance"]["pruning"]["key"]
    assert len({records[t.user_attrs["promoted_from"]].configuration for t in promoted}) == \
        len(promoted)  # once per configuration
