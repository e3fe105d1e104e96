from __future__ import annotations

import pytest

from search.durations import parse_duration
from search.errors import ConfigError


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800),
                                                ("8h", 28800), ("1h30m", 5400), ("1d", 86400),
                                                ("2.5m", 150)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "8 hours", "h", "-5", "0", "1x"])
def test_bad_durations_name_the_option(text: str) -> None:
    with pytest.raises(ConfigError, match="--timeout"):
        parse_duration(text)
