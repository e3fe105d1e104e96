"""load_reference: 'file.py:attr' and 'module:attr', with errors that name the reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from spaces import ReferenceError_, load_reference
from spaces.references import file_digest, reference_file


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_file_reference_relative_to_base_dir(tmp_path: Path) -> None:
    _write(tmp_path, "models/mine.py", "def build():\n    return 42\nANSWER = 'yes'\n")
    assert load_reference("models/mine.py:build", tmp_path)() == 42
    assert load_reference("models/mine.py:ANSWER", tmp_path) == "yes"


def test_absolute_file_reference(tmp_path: Path) -> None:
    path = _write(tmp_path, "abs_mod.py", "VALUE = 7\n")
    assert load_reference(f"{path}:VALUE", Path("/nonexistent")) == 7


def test_module_reference() -> None:
    import json

    assert load_reference("json:dumps", Path(".")) is json.dumps


def test_example_references_resolve() -> None:
    experiments = Path(__file__).resolve().parents[2] / "experiments"
    assert callable(load_reference("digits_model.py:build_model", experiments))
    assert callable(load_reference("digits_model.py:load_data", experiments))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ReferenceError_, match=r"'nothere\.py:build'.*does not exist"):
        load_reference("nothere.py:build", tmp_path)


def test_missing_module() -> None:
    with pytest.raises(ReferenceError_, match="no_such_module_xyz:build"):
        load_reference("no_such_module_xyz:build", Path("."))


def test_module_raising_on_import(tmp_path: Path) -> None:
    _write(tmp_path, "broken.py", "VALUE = 1\nraise RuntimeError('boom at import')\n")
    for _ in range(2):  # a failed import must not leave a half-executed module behind
        with pytest.raises(ReferenceError_, match=r"'broken\.py:VALUE' does not import.*boom"):
            load_reference("broken.py:VALUE", tmp_path)


def test_module_with_syntax_error(tmp_path: Path) -> None:
    _write(tmp_path, "syntax.py", "def broken(:\n")
    with pytest.raises(ReferenceError_, match=r"'syntax\.py:broken' does not import"):
        load_reference("syntax.py:broken", tmp_path)


def test_missing_attribute(tmp_path: Path) -> None:
    _write(tmp_path, "plain.py", "VALUE = 1\n")
    with pytest.raises(ReferenceError_, match=r"'plain\.py:build'.*no attribute 'build'"):
        load_reference("plain.py:build", tmp_path)
    with pytest.raises(ReferenceError_, match=r"'json:no_such_attr'"):
        load_reference("json:no_such_attr", tmp_path)


@pytest.mark.parametrize("reference", ["no_colon.py", ":attr", "module:", ""])
def test_malformed_reference(reference: str) -> None:
    with pytest.raises(ReferenceError_, match="module:attribute"):
        load_reference(reference, Path("."))


def test_reference_file_and_digest(tmp_path: Path) -> None:
    path = _write(tmp_path, "m.py", "X = 1\n")
    assert reference_file("m.py:X", tmp_path) == path.resolve()
    digest = file_digest(reference_file("m.py:X", tmp_path))
    assert len(digest) == 64
    path.write_text("X = 2\n")
    assert file_digest(path) != digest
    assert file_digest(None) == "unknown"
    assert file_digest(tmp_path / "absent.py") == "unknown"
    import json

    assert reference_file("json:dumps", tmp_path) == Path(json.__file__)
