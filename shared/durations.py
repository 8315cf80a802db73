"""Durations as people write them: `90s`, `15m`, `1h`, `2d`, `1w`, or combined (`1h30m`)."""

import re

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
FORMS = "90s, 15m, 1h, 2d, 1w, 1h30m"


def duration_seconds(value: str) -> int | None:
    """The seconds `value` stands for, or None when it is not a duration."""
    if not value or _DURATION.sub("", value) != "":
        return None
    return sum(int(n) * _UNIT_S[unit] for n, unit in _DURATION.findall(value))
