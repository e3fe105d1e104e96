"""Candidate: a frozen value with an explicit dict form and a short label."""

from __future__ import annotations

import dataclasses
import json

import pytest

from spaces.candidate import Candidate, stable_key


@pytest.mark.parametrize("candidate", [
    Candidate(quantization=("fp32",)),
    Candidate(quantization=("int8", "fp32", "int8"), prune_ratio=0.375),
    Candidate(quantization=("int8", "int8", "int8"), prune_ratio=0.5,
              exit_thresholds=(0.9, 0.95)),
    Candidate(quantization=("int8", "fp32", "int8"), prune_ratio=0.5, qat=True),
])
def test_dict_round_trip_through_json(candidate: Candidate) -> None:
    data = json.loads(json.dumps(candidate.to_dict()))
    assert Candidate.from_dict(data) == candidate
    assert hash(Candidate.from_dict(data)) == hash(candidate)


def test_to_dict_uses_plain_json_types() -> None:
    data = Candidate(quantization=("int8", "fp32"), prune_ratio=0.25,
                     exit_thresholds=(0.9,)).to_dict()
    assert data == {"quantization": ["int8", "fp32"], "prune_ratio": 0.25,
                    "exit_thresholds": [0.9]}


def test_from_dict_defaults_and_coercion() -> None:
    candidate = Candidate.from_dict({"quantization": ["fp32", "int8"]})
    assert candidate == Candidate(quantization=("fp32", "int8"), prune_ratio=0.0,
                                  exit_thresholds=())
    coerced = Candidate.from_dict({"quantization": ("int8",), "prune_ratio": "0.5",
                                   "exit_thresholds": [1]})
    assert coerced.prune_ratio == 0.5 and isinstance(coerced.prune_ratio, float)
    assert coerced.exit_thresholds == (1.0,)


def test_early_exit_follows_thresholds() -> None:
    assert not Candidate(quantization=("fp32", "fp32")).early_exit
    assert Candidate(quantization=("fp32", "fp32"), exit_thresholds=(0.8,)).early_exit


def test_describe() -> None:
    assert Candidate(quantization=("fp32", "fp32")).describe() == "fp32/fp32 prune=0 no-exit"
    label = Candidate(quantization=("int8", "int8", "fp32"), prune_ratio=0.25,
                      exit_thresholds=(0.9, 0.95)).describe()
    assert label == "int8/int8/fp32 prune=0.25 exit@0.90,0.95"


def test_candidate_is_frozen() -> None:
    candidate = Candidate(quantization=("fp32",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        candidate.prune_ratio = 0.5  # type: ignore[misc]


def test_stable_key_is_deterministic_and_discriminating() -> None:
    assert stable_key("pruned", 0.5, {"a": 1, "b": 2}) == stable_key("pruned", 0.5,
                                                                     {"b": 2, "a": 1})
    assert stable_key("pruned", 0.5) != stable_key("pruned", 0.25)
    assert len(stable_key("x")) == 20


def test_qat_is_in_the_dict_and_the_label_only_when_set() -> None:
    plain = Candidate(quantization=("int8", "fp32"), prune_ratio=0.25)
    assert "qat" not in plain.to_dict()  # qat=false candidates keep their dicts and keys
    qat = dataclasses.replace(plain, qat=True)
    assert qat.to_dict() == {**plain.to_dict(), "qat": True}
    assert qat.describe() == "int8/fp32 qat prune=0.25 no-exit"
    assert qat.int8_groups == (0,)
    assert Candidate.from_dict(plain.to_dict()).qat is False
