"""The audit row of an event."""

import json

from services.audit.domain import EVENT_COLUMNS, event_row, unique_rows
from shared.envelope import Event
from tests.support import pulled as received


def test_row_has_every_column_in_order() -> None:
    event = Event(type="sale", source="s", data={"b": 2, "a": [1]}, runid="r", attempt=1)
    row = event_row(received(event, 7))
    assert row._fields == EVENT_COLUMNS
    assert row.id == event.id
    assert row.stream_seq == 7
    assert row.nats_subject == "data.sale"
    assert (row.type, row.source, row.time) == (event.type, event.source, event.time)
    assert (row.runid, row.attempt, row.traceparent) == ("r", 1, event.traceparent)
    assert row.data is not None
    assert json.loads(row.data) == {"b": 2, "a": [1]}


def test_no_data_is_null_not_the_string_null() -> None:
    assert event_row(received(Event(type="a", source="s"))).data is None


def test_unique_rows_keeps_the_first_of_each_id() -> None:
    event = Event(type="a", source="s")
    other = Event(type="a", source="s")
    rows = [event_row(received(e, n)) for n, e in enumerate([event, other, event])]
    assert [(r.id, r.stream_seq) for r in unique_rows(rows)] == [(event.id, 0), (other.id, 1)]
