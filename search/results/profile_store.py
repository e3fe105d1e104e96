"""Where a study's per-operator profiles are kept: ``<study>/profiles/trial_<NNNN>.json``."""

from __future__ import annotations

import json
from pathlib import Path

from device_agents import OperatorProfile
from search.records import TrialRecord
from search.workspace import Workspace
from spaces.candidate import candidate_label


def profile_path(workspace: Workspace, number: int) -> Path:
    return workspace.study_dir / "profiles" / f"trial_{number:04d}.json"


def read_profile(workspace: Workspace, number: int) -> OperatorProfile | None:
    """The stored profile of trial ``number``, or ``None``."""
    path = profile_path(workspace, number)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return OperatorProfile.from_dict(data["profile"])


def stored_profile_paths(workspace: Workspace) -> dict[int, Path]:
    """Every stored profile's file, by trial number (nothing read yet)."""
    directory = workspace.study_dir / "profiles"
    paths = sorted(directory.glob("trial_*.json")) if directory.is_dir() else []
    return {int(path.stem.removeprefix("trial_")): path for path in paths}


def stored_profiles(workspace: Workspace) -> dict[int, OperatorProfile]:
    """Every stored profile of the study, by trial number."""
    found = {}
    for number in stored_profile_paths(workspace):
        profile = read_profile(workspace, number)
        if profile is not None:
            found[number] = profile
    return found


def write_profile(workspace: Workspace, record: TrialRecord, profile: OperatorProfile) -> Path:
    path = profile_path(workspace, record.number)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"trial": record.number,
                               "candidate": candidate_label(record.candidate),
                               "profile": profile.to_dict()}, indent=2))
    tmp.replace(path)
    return path
