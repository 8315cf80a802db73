"""The CloudEvents envelope: round trips, child derivation, ids."""

import uuid
from datetime import UTC, datetime

import orjson
import pytest
import structlog
from pydantic import ValidationError
from structlog.testing import capture_logs

from shared.envelope import (
    MSG_ID_HEADER,
    Event,
    NotAnEnvelope,
    child_envelope,
    parse_envelope,
    rfc3339,
)
from shared.ids import uuid7
from shared.logs import bound_event
from shared.tracing import TRACEPARENT, trace_id


def test_round_trip_keeps_every_attribute() -> None:
    event = Event(
        type="transaction",
        source="tests",
        subject="card-1",
        data={"amount": 12.5, "tags": ["a", "b"], "nested": {"n": None}},
        runid="run-1",
        stepid="step-1",
        attempt=2,
        correlationid="corr-1",
        causationid="cause-1",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    assert Event.from_bytes(event.to_bytes()) == event


def test_serialised_form_is_cloudevents_json() -> None:
    event = Event(type="sale", source="tests", time=datetime(2024, 1, 15, 12, tzinfo=UTC))
    raw = event.to_bytes()
    assert b'"specversion":"1.0"' in raw
    assert b'"time":"2024-01-15T12:00:00Z"' in raw
    assert b"runid" not in raw  # absent extensions are omitted, not null


def test_child_carries_the_chain() -> None:
    parent = Event(type="wf.step.requested", source="a", runid="r", stepid="s", attempt=3)
    child = parent.child(type="wf.step.completed", source="b", data={"ok": True})
    assert child.id != parent.id
    assert child.causationid == parent.id
    assert child.correlationid == parent.id  # the root's id when the parent has none
    assert (child.runid, child.stepid, child.attempt) == ("r", "s", 3)
    grandchild = child.child(type="x", source="c")
    assert grandchild.correlationid == parent.id
    assert grandchild.causationid == child.id


def test_child_overrides() -> None:
    parent = Event(type="a", source="a", stepid="s1")
    assert parent.child(type="b", source="b", stepid="s2").stepid == "s2"


def test_headers_carry_the_id_for_deduplication() -> None:
    event = Event(type="a", source="a")
    assert event.headers() == {MSG_ID_HEADER: event.id}


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "", "source": "a"},
        {"type": "a", "source": "a", "attempt": 0},
        {"type": "a", "source": "a", "unknown": 1},
        {"type": "a", "source": "a", "specversion": "0.3"},
    ],
)
def test_invalid_envelopes_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Event.model_validate(fields)


def test_child_envelope_is_what_child_gives() -> None:
    parent = Event(type="a", source="a", runid="r", stepid="s", attempt=3, correlationid="c")
    for source in (parent, Event(type="a", source="a", traceparent=None)):
        raw = orjson.dumps(
            child_envelope(
                parse_envelope(source.to_bytes()),
                id="child-1",
                type="b",
                source="b",
                subject="tx-1",
                data={"ok": True},
            )
        )
        got = Event.from_bytes(raw)
        expected = source.child(
            type="b",
            source="b",
            id="child-1",
            subject="tx-1",
            data={"ok": True},
            time=got.time,
            traceparent=got.traceparent,
        )
        assert raw == expected.to_bytes()
        if source.traceparent is not None:
            assert trace_id(got.traceparent) == trace_id(source.traceparent)


@pytest.mark.parametrize(
    ("when", "text"),
    [
        (datetime(2024, 1, 15, 12, tzinfo=UTC), "2024-01-15T12:00:00Z"),
        (datetime(2024, 1, 15, 12, 0, 0, 250000, tzinfo=UTC), "2024-01-15T12:00:00.250000Z"),
        (datetime.fromisoformat("2024-01-15T12:00:00.000001-05:30"), None),
        (datetime.fromisoformat("2024-01-15T12:00:00+01:00"), None),
    ],
)
def test_rfc3339_writes_times_as_event_does(when: datetime, text: str | None) -> None:
    written = Event(type="a", source="a", time=when).to_bytes()
    assert f'"time":"{rfc3339(when)}"'.encode() in written
    if text is not None:
        assert rfc3339(when) == text


def test_uuid7_is_version_7_and_time_ordered() -> None:
    first, second = uuid7(now_ms=1_700_000_000_000), uuid7(now_ms=1_700_000_000_001)
    parsed = uuid.UUID(first)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert first < second
    assert int(parsed.hex[:12], 16) == 1_700_000_000_000


def test_log_lines_inside_bound_event_carry_its_ids() -> None:
    event = Event(type="wf.step.completed", source="t", runid="r-1", stepid="s-1")
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        with bound_event(event):
            structlog.get_logger().info("inside")
        structlog.get_logger().info("outside")
    inside, outside = logs
    assert (inside["event_id"], inside["runid"], inside["stepid"]) == (event.id, "r-1", "s-1")
    assert "event_id" not in outside


def test_every_event_carries_a_trace_and_its_children_keep_it() -> None:
    first = Event(type="sale", source="tests")
    other = Event(type="sale", source="tests")
    assert TRACEPARENT.match(first.traceparent or "")
    assert trace_id(first.traceparent) != trace_id(other.traceparent)  # a new trace each
    child = first.child(type="wf.step.started", source="tests")
    grandchild = child.child(type="wf.step.completed", source="tests")
    assert trace_id(child.traceparent) == trace_id(grandchild.traceparent)
    assert trace_id(child.traceparent) == trace_id(first.traceparent)
    spans = {t.split("-")[2] for t in (first.traceparent, child.traceparent) if t}
    assert len(spans) == 2  # each event its own span id
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert Event(type="sale", source="tests", traceparent=given).traceparent == given


# -- parse_envelope: the lean consumers' one parse per message ---------------------------------


@pytest.mark.parametrize(
    "event",
    [
        Event(type="sale", source="tests", data={"amount": 12.5, "tags": ["a"]}),
        Event(
            type="wf.step.started",
            source="choreo/ingest",
            time=datetime(2024, 1, 15, 12, 30, 1, 250_000, tzinfo=UTC),
            runid="r1",
            stepid="s1",
            attempt=2,
            correlationid="c",
            causationid="p",
            subject="x",
        ),
    ],
)
def test_an_envelope_parses_to_the_fields_of_its_event(event: Event) -> None:
    assert parse_envelope(event.to_bytes()) == event.model_dump(exclude_none=True)


@pytest.mark.parametrize(
    "body",
    [
        b'{"type": "sale", "source": "s"}',  # no id, no time: Event fills them in
        b'{"id": "e", "type": "sale", "source": "s", "time": 1705320000}',  # unix time
        b'{"id": "e", "type": "sale", "source": "s", "time": "2024-01-15T12:00:00Z",'
        b' "attempt": "2"}',  # lax: "2" is 2
    ],
)
def test_an_envelope_the_quick_checks_do_not_settle_is_judged_by_event(body: bytes) -> None:
    parsed = parse_envelope(body)
    expected = Event.from_bytes(body).model_dump(exclude_none=True)
    assert parsed.keys() == expected.keys()
    assert {k: v for k, v in parsed.items() if k not in ("id", "time", "traceparent")} == {
        k: v for k, v in expected.items() if k not in ("id", "time", "traceparent")
    }


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "a JSON list"),
        (b'{"id": "e", "type": "sale"}', "source"),
        (b'{"id": "e", "type": "sale", "source": "s", "extra": 1}', "extra"),
        (b'{"id": "e", "type": "", "source": "s"}', "type"),
        (b'{"id": "e", "type": "sale", "source": "s", "attempt": 0}', "attempt"),
        (b'{"id": "e", "type": "sale", "source": "s", "time": "yesterday"}', "time"),
        (b'{"id": "e", "type": "sale", "source": "s", "specversion": "0.3"}', "specversion"),
    ],
)
def test_what_is_no_envelope_is_refused_with_the_reason(body: bytes, why: str) -> None:
    with pytest.raises(NotAnEnvelope, match="not a valid event envelope") as refused:
        parse_envelope(body)
    assert why in str(refused.value)
