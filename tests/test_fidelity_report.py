"""experiments/benchmarks/fidelity_report.py: a study's trials per fidelity and what each
promotion's long finetune bought, read from its records."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from search.records import TrialRecord

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "fidelity_report.py"


@pytest.fixture(scope="module")
def report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fidelity_report", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fidelity_report"] = module
    spec.loader.exec_module(module)
    return module


def _record(number: int, drop: float, *, ratio: float = 0.5, fidelity: str = "",
            state: str = "COMPLETE", reused_from: int | None = None, baseline: bool = False,
            fail_reason: str | None = None, finished_at: float | None = None) -> TrialRecord:
    candidate: dict[str, Any] = {"quantization": ["int8"], "prune_ratio": ratio}
    if fidelity:
        candidate["fidelity"] = fidelity
    return TrialRecord(number=number, state=state, candidate=candidate,
                       metrics={"accuracy_drop": drop, "latency_p95_ms": 0.1 + ratio},
                       feasible=drop <= 0.01, baseline=baseline, bundle=None,
                       bundle_digest=None, fail_reason=fail_reason, reused_from=reused_from,
                       finished_at=finished_at)


def test_pairs_each_promoted_configuration_with_its_screened_trial(report: ModuleType) -> None:
    records = [_record(0, 0.0, ratio=0.0, baseline=True),
               _record(1, 0.022),                            # screened, outside the band
               _record(2, 0.004, ratio=0.25),                # screened, never promoted
               _record(3, 0.022, reused_from=1),             # a twin of 1: not measured
               _record(4, 0.008, fidelity="full"),           # 1 promoted: inside now
               _record(5, 0.0, state="FAIL", fail_reason="build failed: boom")]
    pairs = report.fidelity_pairs(records)
    assert [(p["screened_trial"], p["full_trial"]) for p in pairs] == [(1, 4)]
    pair = pairs[0]
    assert pair["screened_drop_pp"] == pytest.approx(2.2)
    assert pair["full_drop_pp"] == pytest.approx(0.8)
    assert pair["recovered_pp"] == pytest.approx(1.4)
    assert pair["full_feasible"] is True
    assert report.counts(records) == {"measured": 4, "screened": 2, "full_fidelity": 1,
                                      "reused": 1, "failed": 1, "interrupted": 0}


def test_a_full_trial_without_a_screened_one_is_no_pair(report: ModuleType) -> None:
    """A configuration enqueued at the full fidelity (its screened trial lost) pairs with
    nothing: the recovered accuracy needs both measurements."""
    assert report.fidelity_pairs([_record(0, 0.0, ratio=0.0, baseline=True),
                                  _record(1, 0.005, fidelity="full")]) == []


def test_a_study_cut_at_a_wall_time_keeps_the_trials_finished_by_then(report: ModuleType
                                                                      ) -> None:
    """Searches of equal wall time compare at one cut: the baseline's finish plus the time."""
    records = [_record(0, 0.0, ratio=0.0, baseline=True, finished_at=1000.0),
               _record(1, 0.02, finished_at=1500.0),
               _record(2, 0.008, fidelity="full", finished_at=2799.0),
               _record(3, 0.001, ratio=0.25, finished_at=2801.0),
               _record(4, 0.001, ratio=0.125, state="RUNNING")]
    assert [r.number for r in report.records_until(records, 1800.0)] == [0, 1, 2]
    assert [r.number for r in report.records_until(records, 100.0)] == [0]
