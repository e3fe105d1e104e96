"""Parse ``--timeout`` values such as ``90``, ``90s``, ``30m``, ``8h`` or ``1h30m``."""

from __future__ import annotations

import re

from search.errors import ConfigError

_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, field: str = "--timeout") -> float:
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        parts = _PART.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise ConfigError(f"{field}: cannot read {text!r} as a duration "
                              f"(examples: 90s, 30m, 8h, 1h30m)") from None
        seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"{field}: must be positive, got {text!r}")
    return seconds
