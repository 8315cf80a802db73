"""Fraud verdict rows and the `since` of the alerts API."""

from datetime import UTC, datetime, timedelta

import pytest

from services.audit.api import parse_since
from services.audit.projections import fraud_row
from shared.envelope import Event, parse_envelope

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
DATA = {
    "transaction_id": "tx-1",
    "transaction_event_id": "evt-1",
    "card_id": "card-1",
    "terminal_id": "term-1",
    "amount": 10,
    "currency": "EUR",
    "timestamp": "2024-01-15T10:01:00+01:00",
    "score": 0.6,
    "decision": "review",
    "reasons": ["velocity_1m: 3 transactions on the card within 1 min"],
    "rules": {"velocity_1m": 0.5},
    "model": "m-1",
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("90s", NOW - timedelta(seconds=90)),
        ("15m", NOW - timedelta(minutes=15)),
        ("1h", NOW - timedelta(hours=1)),
        ("2d", NOW - timedelta(days=2)),
        ("1w", NOW - timedelta(weeks=1)),
        ("1h30m", NOW - timedelta(minutes=90)),
        ("2026-11-23T00:00:00Z", datetime(2026, 11, 23, tzinfo=UTC)),
        ("2026-11-23T01:00:00+01:00", datetime(2026, 11, 23, tzinfo=UTC)),
    ],
)
def test_since_is_a_duration_back_from_now_or_a_time(value: str, expected: datetime) -> None:
    assert parse_since(value, NOW) == expected


@pytest.mark.parametrize("value", ["", "1", "h", "1y", "-1h", "1h 30m", "2026-11-23T00:00:00"])
def test_since_refuses_anything_else_and_says_what_it_takes(value: str) -> None:
    with pytest.raises(ValueError, match=r"give a duration .* or an RFC 3339 time"):
        parse_since(value, NOW)


@pytest.mark.parametrize("event_type", ["fraud.scored", "fraud.alert"])
def test_a_verdict_becomes_a_row_with_its_event(event_type: str) -> None:
    event = Event(type=event_type, source="choreo/fraud", data=DATA, time=NOW)
    row = fraud_row(parse_envelope(event.to_bytes()))
    assert row is not None
    assert (row.type, row.event_id, row.event_time) == (event_type, event.id, NOW)
    assert row.verdict.timestamp == datetime(2024, 1, 15, 9, 1, tzinfo=UTC)
    assert row.verdict.timestamp.utcoffset() == timedelta(hours=1)
    assert (row.verdict.amount, row.verdict.rules) == (10.0, {"velocity_1m": 0.5})


@pytest.mark.parametrize(
    "data",
    [
        {k: v for k, v in DATA.items() if k != "model"},
        {**DATA, "score": 1.5},
        {**DATA, "timestamp": "2024-01-15T10:01:00"},
        {**DATA, "reasons": "one reason"},
        None,
    ],
    ids=["missing-field", "score-out-of-range", "naive-timestamp", "reasons-not-a-list", "no-data"],
)
def test_a_verdict_that_breaks_the_contract_gives_no_row(data: object) -> None:
    event = Event(type="fraud.scored", source="x", data=data)
    assert fraud_row(parse_envelope(event.to_bytes())) is None


def test_other_events_give_no_row() -> None:
    event = Event(type="transaction", source="x", data=DATA)
    assert fraud_row(parse_envelope(event.to_bytes())) is None


def test_since_too_far_back_is_refused() -> None:
    with pytest.raises(ValueError, match="too far back"):
        parse_since("9999999w", NOW)
