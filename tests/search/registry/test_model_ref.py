"""Naming a version (``NAME@ALIAS``, ``NAME@VERSION``) and the alias history rollback uses."""

from __future__ import annotations

import pytest

from search.errors import RegistryError
from search.registry.alias_history import AliasHistory
from search.registry.model_ref import ModelRef


def test_a_ref_names_an_alias_or_a_version() -> None:
    assert ModelRef.parse("digits@production") == ModelRef("digits", alias="production")
    assert ModelRef.parse("digits@03") == ModelRef("digits", version="3")
    assert str(ModelRef.parse("digits@3")) == "digits@3"
    for bad in ("digits", "@production", "digits@", ""):
        with pytest.raises(RegistryError, match="NAME@ALIAS"):
            ModelRef.parse(bad)


def test_rollback_walks_the_history_back_one_holder_at_a_time() -> None:
    history = AliasHistory(()).moved(from_version=None).moved(from_version="1")
    history = history.moved(from_version="2")
    assert history.versions == ("1", "2")
    assert AliasHistory.from_tag(history.to_tag()) == history
    target, history = history.back_to(None)
    assert (target, history.versions) == ("2", ("1",))
    target, history = history.back_to(None)
    assert (target, history.versions) == ("1", ())
    with pytest.raises(RegistryError, match="no previous holder"):
        history.back_to(None)


def test_rollback_to_a_named_version_forgets_the_holders_after_it() -> None:
    history = AliasHistory(("1", "2", "3"))
    assert history.back_to("2") == ("2", AliasHistory(("1",)))
    assert history.back_to("7") == ("7", history)  # never held the alias: history unchanged
