"""paretoedge validate catches what a run would trip on later: one line per problem naming the
file or field, exit code 2."""

from __future__ import annotations

from pathlib import Path

import yaml

from .test_cli import assert_one_line_error, paretoedge

PLAIN = '''
from torch import nn


def build():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
'''


def _write(tmp_path: Path, model: dict, loader: str = "tiny_model.py:load_data") -> Path:
    (tmp_path / "plain.py").write_text(PLAIN)
    path = tmp_path / "checkpointed.yaml"
    path.write_text(yaml.safe_dump({"study": "ck", "model": model, "data": {"loader": loader}}))
    return path


def test_a_binary_or_non_utf8_config(tmp_path: Path) -> None:
    (tmp_path / "binary.yaml").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00")
    assert_one_line_error(paretoedge("validate", "binary.yaml", cwd=tmp_path), 2,
                          "binary.yaml", "binary file")
    (tmp_path / "latin1.yaml").write_bytes("study: caf\u00e9\n".encode("latin-1"))
    for command in ("validate", "run"):
        assert_one_line_error(paretoedge(command, "latin1.yaml", cwd=tmp_path), 2,
                              "latin1.yaml", "not UTF-8")


def test_references_that_would_fail_the_run_later(write_config, tmp_path: Path) -> None:
    path = write_config(model={"factory": "tiny_model.py:no_such_function"},
                        data={"loader": "tiny_model.py:np"})
    done = paretoedge("validate", str(path), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in done.stderr
    assert "model.factory" in lines[0] and "no_such_function" in lines[0]
    assert "data.loader" in lines[1] and "not callable" in lines[1]


def test_a_checkpoint_that_does_not_fit_the_factory(write_config, tmp_path: Path) -> None:
    import torch

    write_config()  # tiny_model.py, for the loader
    torch.save({"0.weight": torch.zeros(4, 1, 5, 5)}, tmp_path / "ck.pt")
    path = _write(tmp_path, {"factory": "plain.py:build", "checkpoint": "ck.pt"})
    assert_one_line_error(paretoedge("validate", str(path), cwd=tmp_path), 2,
                          "checkpointed.yaml", str(tmp_path / "ck.pt"), "'0.weight'",
                          "(4, 1, 5, 5)", "(4, 1, 3, 3)")
    # the run stops on the same file before anything is trained
    assert_one_line_error(paretoedge("run", str(path), "--workdir", str(tmp_path / "runs"),
                                     cwd=tmp_path), 2, str(tmp_path / "ck.pt"), "'0.weight'")


def test_a_good_checkpoint_validates(write_config, tmp_path: Path) -> None:
    import torch

    from spaces import load_reference

    write_config()
    (tmp_path / "plain.py").write_text(PLAIN)
    torch.save(load_reference("plain.py:build", tmp_path)().state_dict(), tmp_path / "ck.pt")
    done = paretoedge("validate", str(_write(tmp_path, {"factory": "plain.py:build",
                                                        "checkpoint": "ck.pt"})), cwd=tmp_path)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr


def test_runtime_knobs_the_local_agents_cannot_give(write_config, tmp_path: Path) -> None:
    import os

    cores = len(os.sched_getaffinity(0))
    path = write_config(runtime={"threads": [1, cores + 1]})
    for command in ("validate", "run"):  # refused before anything is trained
        assert_one_line_error(paretoedge(command, str(path), cwd=tmp_path), 2,
                              "runtime.threads", f"{cores + 1} intra-op threads")
    assert not (tmp_path / "runs" / "cache" / "baseline").exists()
