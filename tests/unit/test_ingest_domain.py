"""Ingest's body parsing and validation: every bad item named, nothing partial."""

import json
from datetime import UTC, datetime

import pytest

from services.ingest.domain import BadBody, split_items, to_envelope, validate_items

NDJSON = "application/x-ndjson"


def lines(*items: object) -> bytes:
    return "\n".join(json.dumps(i) for i in items).encode()


def test_one_json_event() -> None:
    items = split_items("application/json; charset=utf-8", b'{"type":"sale","data":{}}', 10)
    events, errors = validate_items(items)
    assert errors == []
    assert [e.type for e in events] == ["sale"]


def test_ndjson_batch_skips_blank_lines() -> None:
    body = lines({"type": "a", "data": {}}, {"type": "b", "data": {}}) + b"\n\n"
    assert len(split_items(NDJSON, body, 10)) == 2


@pytest.mark.parametrize(
    ("content_type", "body", "status", "needle"),
    [
        ("text/plain", b"{}", 415, "unsupported content type"),
        ("application/json", b"{nope", 400, "invalid JSON"),
        (NDJSON, b'{"type":"a","data":{}}\n{bad', 400, "line 2"),
        ("application/json", b"\xff\xfe", 400, "not valid UTF-8"),
        (NDJSON, b"\n\n", 400, "no events"),
        (NDJSON, lines(*[{"type": "a", "data": {}}] * 4), 413, "limit is 3"),
        ("application/json", b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
    ],
)
def test_unreadable_bodies(content_type: str, body: bytes, status: int, needle: str) -> None:
    with pytest.raises(BadBody) as caught:
        split_items(content_type, body, 3)
    assert caught.value.status == status
    assert needle in caught.value.message


def test_every_bad_item_is_named_with_its_field() -> None:
    items = [
        {"type": "sale", "data": {"x": 1}},
        {"type": "Sale", "data": {}},
        {"data": {}},
        {"type": "sale", "data": [1]},
        {"type": "sale", "data": {}, "extra": True},
        {"type": "in", "data": {}},
    ]
    events, errors = validate_items(items)
    assert len(events) == 1
    found = {(e.index, e.field) for e in errors}
    assert found == {(1, "type"), (2, "type"), (3, "data"), (4, "extra"), (5, "type")}
    assert all(e.message for e in errors)


def test_duplicate_ids_within_a_batch() -> None:
    items = [{"type": "a", "data": {}, "id": "x"}, {"type": "a", "data": {}, "id": "x"}]
    _, errors = validate_items(items)
    assert [(e.index, e.field) for e in errors] == [(1, "id")]
    assert "duplicate of item 0" in errors[0].message


def test_envelope_keeps_given_id_and_time_or_assigns_them() -> None:
    now = datetime(2024, 1, 15, tzinfo=UTC)
    events, _ = validate_items(
        [
            {"type": "sale", "data": {"a": 1}, "id": "given", "time": "2023-05-01T00:00:00Z"},
            {"type": "sale", "data": {}},
        ]
    )
    (subject, first), (_, second) = (to_envelope(e, now) for e in events)
    assert subject == "data.sale"
    assert first.id == "given"
    assert first.time.year == 2023
    assert first.data == {"a": 1}
    assert second.id != "given"
    assert second.time == now
    assert second.source == "choreo/ingest/http"
