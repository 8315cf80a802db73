"""The raw lake's layout: where the lander puts each event, for it and for readers.

`events/<type>/date=<YYYY-MM-DD>/<first-seq>-<last-seq>.jsonl.gz`: one object holds events
of one type and UTC date, from DATA stream sequences first..last (zero-padded, so keys
sort by sequence).
"""

import re
from dataclasses import dataclass
from datetime import UTC
from urllib.parse import quote

from shared.envelope import Event
from shared.subjects import EVENT_TYPE_PATTERN

KEY_ROOT = "events"
SEQ_DIGITS = 12
SUFFIX = ".jsonl.gz"
_SEQ_RANGE = re.compile(rf"(\d{{{SEQ_DIGITS},}})-(\d{{{SEQ_DIGITS},}}){re.escape(SUFFIX)}")


def key_segment(event_type: str) -> str:
    """The event type as one key segment: itself when it is a valid type token, otherwise
    percent-encoded (so `/`, `..` or spaces in a raw publish cannot change the key's path)."""
    if EVENT_TYPE_PATTERN.fullmatch(event_type):
        return event_type
    return quote(event_type, safe="").replace(".", "%2E")


@dataclass(frozen=True, order=True)
class Group:
    """Events that share a key prefix: one type on one UTC date."""

    type: str
    date: str

    @property
    def prefix(self) -> str:
        return f"{KEY_ROOT}/{self.type}/date={self.date}/"


def group_of(event: Event) -> Group:
    """The group of an event: its type and the UTC date of its `time` (naive means UTC)."""
    moment = event.time if event.time.tzinfo else event.time.replace(tzinfo=UTC)
    return Group(key_segment(event.type), moment.astimezone(UTC).date().isoformat())


def object_key(group: Group, first: int, last: int) -> str:
    return f"{group.prefix}{first:0{SEQ_DIGITS}d}-{last:0{SEQ_DIGITS}d}{SUFFIX}"


def seq_range(key: str) -> tuple[int, int] | None:
    """(first, last) stream sequences of a lander key; None for any other key."""
    found = _SEQ_RANGE.fullmatch(key.rsplit("/", 1)[-1])
    return (int(found[1]), int(found[2])) if found else None
