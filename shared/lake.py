"""The raw lake's layout: where the lander puts each event, for it and for readers.

`events/<type>/date=<YYYY-MM-DD>/<first-seq>-<last-seq>.jsonl.gz`: one object holds events
of one type and UTC date, from DATA stream sequences first..last (zero-padded, so keys
sort by sequence).
"""

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from shared.settings import Settings
from shared.subjects import EVENT_TYPE_PATTERN
from shared.workflow.steps import StepFailed

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


def group_of(event_type: str, time: datetime) -> Group:
    """The group of an event: its type and the UTC date of its `time` (naive means UTC)."""
    moment = time if time.tzinfo else time.replace(tzinfo=UTC)
    return Group(key_segment(event_type), moment.astimezone(UTC).date().isoformat())


def object_key(group: Group, first: int, last: int) -> str:
    return f"{group.prefix}{first:0{SEQ_DIGITS}d}-{last:0{SEQ_DIGITS}d}{SUFFIX}"


_LANDER_KEY = re.compile(rf"{KEY_ROOT}/([^/]+)/date=(\d{{4}}-\d{{2}}-\d{{2}})/[^/]+")


def parse_key(key: str) -> tuple[Group, int, int] | None:
    """The group and (first, last) stream sequences of a lander key (`object_key`'s
    inverse); None for any other key."""
    found = _LANDER_KEY.fullmatch(key)
    seqs = seq_range(key) if found else None
    if found is None or seqs is None:
        return None
    return Group(found[1], found[2]), *seqs


def seq_range(key: str) -> tuple[int, int] | None:
    """(first, last) stream sequences of a lander key; None for any other key."""
    found = _SEQ_RANGE.fullmatch(key.rsplit("/", 1)[-1])
    return (int(found[1]), int(found[2])) if found else None


LAYERS = ("raw", "staging", "curated")
OUTPUT_LAYERS = ("staging", "curated")
"""Where transform steps may write."""


def layer_buckets(settings: Settings) -> dict[str, str]:
    """Medallion layer -> bucket name (each configurable: CHOREO_BUCKET_RAW, ...)."""
    return {
        "raw": settings.bucket_raw,
        "staging": settings.bucket_staging,
        "curated": settings.bucket_curated,
    }


def layer_bucket(settings: Settings, layer: object, allowed: Collection[str]) -> str:
    """The bucket of a step's `with.layer`, one of `allowed`; StepFailed naming the field."""
    if layer not in allowed:
        raise StepFailed(f"with.layer must be one of {sorted(allowed)}, got {layer!r}")
    return layer_buckets(settings)[str(layer)]


def relative_key(value: object) -> str:
    """A step's `with.key`: a relative object key without `..`; StepFailed otherwise."""
    key = str(value)
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise StepFailed(f"with.key {key!r} must be a relative path without '..'")
    return key
