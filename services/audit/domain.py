"""What the audit service records for an event: a row of the `events` table."""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

import orjson

from shared.pull import Pulled


class EventRow(NamedTuple):
    """One `events` row, in the table's column order (see migrations/0001_events.sql)."""

    id: str
    type: str
    source: str
    subject: str | None
    time: datetime
    runid: str | None
    stepid: str | None
    attempt: int | None
    correlationid: str | None
    causationid: str | None
    traceparent: str | None
    data: str | None
    nats_subject: str
    stream: str
    stream_seq: int


EVENT_COLUMNS = EventRow._fields


def event_row(pulled: Pulled) -> EventRow:
    """The row for one delivered event, straight from its parsed envelope; `data` as JSON
    text for the jsonb column."""
    e = pulled.envelope
    data = e.get("data")
    get = e.get
    return EventRow(
        e["id"],
        e["type"],
        e["source"],
        get("subject"),
        e["time"],
        get("runid"),
        get("stepid"),
        get("attempt"),
        get("correlationid"),
        get("causationid"),
        get("traceparent"),
        None if data is None else orjson.dumps(data).decode(),
        pulled.msg.subject,
        pulled.stream,
        pulled.stream_seq,
    )


def unique_rows(rows: list[EventRow]) -> list[EventRow]:
    """Drop repeats of an id within one batch (a redelivery can land beside its original)."""
    seen: set[str] = set()
    out = []
    for row in rows:
        if row.id not in seen:
            seen.add(row.id)
            out.append(row)
    return out


@dataclass(frozen=True)
class RunCursor:
    """Where a page of runs (newest first) ended: the next page starts after this run."""

    time: datetime
    runid: str

    def encode(self) -> str:
        """`<UTC time>Z|<run id>`: no `+`, which a query string would read as a space."""
        moment = self.time.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return f"{moment}|{self.runid}"

    @classmethod
    def decode(cls, value: str) -> "RunCursor":
        """ValueError naming the expected form when `value` is not a cursor."""
        moment, sep, runid = value.partition("|")
        try:
            parsed = datetime.fromisoformat(moment)
        except ValueError:
            parsed = None
        if not sep or not runid or parsed is None or parsed.tzinfo is None:
            raise ValueError(f"after {value!r}: not a cursor (use a page's `next` value)")
        return cls(parsed, runid)
