"""What the audit service records for an event: a row of the `events` table."""

import json
from datetime import datetime
from typing import NamedTuple

from shared.consumer import Received


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


def event_row(received: Received) -> EventRow:
    """The row for one delivered event; `data` as JSON text for the jsonb column."""
    e = received.event
    return EventRow(
        id=e.id,
        type=e.type,
        source=e.source,
        subject=e.subject,
        time=e.time,
        runid=e.runid,
        stepid=e.stepid,
        attempt=e.attempt,
        correlationid=e.correlationid,
        causationid=e.causationid,
        traceparent=e.traceparent,
        data=None if e.data is None else json.dumps(e.data, separators=(",", ":")),
        nats_subject=received.subject,
        stream=received.stream,
        stream_seq=received.stream_seq,
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
