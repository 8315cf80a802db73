"""Keeping secrets out of what Choreo prints: settings shown by the CLI, DSNs in messages.

A value is secret when its name says so (`..._PASSWORD`, `..._SECRET_KEY`, `..._ACCESS_KEY`,
`..._API_KEYS`, `..._TOKEN`), and the password part of every URL is secret wherever it
appears (a database URL, or the JSON map of source databases).
"""

import re
from collections.abc import Mapping

MASK = "***"
SECRET_NAME = re.compile(r"(PASSWORD|SECRET_KEY|ACCESS_KEY|API_KEYS?|TOKEN)$", re.IGNORECASE)
# scheme://user:password@host (a password in a URL has its '/' and '@' percent-encoded).
URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s\"']*:)[^/@\s\"']*(?=@)", re.I)


def redact_text(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***."""
    return URL_PASSWORD.sub(lambda m: m["head"] + MASK, text)


def redact_env(values: Mapping[str, str | None]) -> dict[str, str | None]:
    """Settings as `choreo env` and `choreo ps --json` show them: secrets masked."""
    return {name: _redact_value(name, value) for name, value in values.items()}


def _redact_value(name: str, value: str | None) -> str | None:
    if not value:
        return value
    return MASK if SECRET_NAME.search(name) else redact_text(value)
