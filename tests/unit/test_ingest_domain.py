"""Ingest's pure logic: body parsing and validation (every problem of every item named,
nothing partial), the `data.in.<type>` entry, and the value conversions of extraction."""

import json
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from services.ingest.domain import (
    BadBody,
    coerce_param,
    describe,
    duckdb_type,
    inbound_event,
    infer_format,
    json_friendly,
    split_items,
    to_envelope,
    validate_items,
)
from services.ingest.registry import load_registry
from shared.workflow.validate import looks_like_dsn
from tests.samples import SALE, changed

NDJSON = "application/x-ndjson"
REGISTRY = load_registry()


def sale(**changes: Any) -> dict[str, Any]:
    """A valid sale's data, with `changes` (None removes a field)."""
    return changed(SALE, **changes)


def lines(*items: object) -> bytes:
    return "\n".join(json.dumps(i) for i in items).encode()


def test_one_json_event() -> None:
    body = json.dumps({"type": "sale", "data": SALE}).encode()
    items = split_items("application/json; charset=utf-8", body, 10)
    events, errors = validate_items(items, REGISTRY)
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
        {"type": "sale", "data": SALE},
        {"type": "Sale", "data": SALE},
        {"data": SALE},
        {"type": "sale", "data": [1]},
        {"type": "sale", "data": SALE, "extra": True},
        {"type": "in", "data": SALE},
    ]
    events, errors = validate_items(items, REGISTRY)
    assert len(events) == 1
    found = {(e.index, e.field) for e in errors}
    assert found == {(1, "type"), (2, "type"), (3, "data"), (4, "extra"), (5, "type")}
    assert all(e.message for e in errors)


def test_every_problem_of_the_data_is_named_with_its_path() -> None:
    items = [
        {"type": "sale", "data": sale(quantity=-1, unit_price="9.5", day="15/01/2024")},
        {"type": "sale", "data": sale(region=None, product=None, colour="red")},
        {
            "type": "transaction",
            "data": {
                "transaction_id": "t-1",
                "card_id": "c-1",
                "terminal_id": "p-1",
                "amount": 0,
                "currency": "eur",
                "timestamp": "2024-01-15 10:00:00",
                "country": "Spain",
                "channel": "web",
            },
        },
    ]
    events, errors = validate_items(items, REGISTRY)
    assert events == []
    assert {(e.index, e.field) for e in errors} == {
        (0, "data.quantity"),
        (0, "data.unit_price"),
        (0, "data.day"),
        (1, "data.region"),
        (1, "data.product"),
        (1, "data.colour"),
        (2, "data.amount"),
        (2, "data.currency"),
        (2, "data.timestamp"),
        (2, "data.country"),
        (2, "data.channel"),
    }
    messages = {e.field: e.message for e in errors if e.index == 1}
    assert messages["data.region"] == "is required"
    assert "not a field" in messages["data.colour"]


def test_an_item_with_a_bad_envelope_still_gets_its_data_checked() -> None:
    _, errors = validate_items(
        [{"type": "sale", "data": sale(day=None), "id": "bad id!"}], REGISTRY
    )
    assert {e.field for e in errors} == {"id", "data.day"}


def test_an_unknown_type_names_the_known_ones() -> None:
    _, errors = validate_items([{"type": "order", "data": {}}], REGISTRY)
    assert [(e.index, e.field) for e in errors] == [(0, "type")]
    assert "unknown event type 'order'" in errors[0].message
    assert "business_event, fraud_label, sale, transaction" in errors[0].message


def test_a_schema_version_may_be_named() -> None:
    good, errors = validate_items([{"type": "sale", "data": SALE, "schema_version": 1}], REGISTRY)
    assert errors == []
    assert good[0].schema_version == 1
    _, errors = validate_items([{"type": "sale", "data": SALE, "schema_version": 7}], REGISTRY)
    assert [(e.field, e.message) for e in errors] == [
        ("schema_version", "sale has no schema version 7; versions: 1")
    ]


def test_duplicate_ids_within_a_batch() -> None:
    items = [{"type": "sale", "data": SALE, "id": "x"}, {"type": "sale", "data": SALE, "id": "x"}]
    _, errors = validate_items(items, REGISTRY)
    assert [(e.index, e.field) for e in errors] == [(1, "id")]
    assert "duplicate of item 0" in errors[0].message


def test_envelope_keeps_given_id_and_time_or_assigns_them() -> None:
    now = datetime(2024, 1, 15, tzinfo=UTC)
    events, _ = validate_items(
        [
            {"type": "sale", "data": SALE, "id": "given", "time": "2023-05-01T00:00:00Z"},
            {"type": "sale", "data": SALE},
        ],
        REGISTRY,
    )
    (subject, first), (_, second) = (to_envelope(e, now) for e in events)
    assert subject == "data.sale"
    assert first.id == "given"
    assert first.time.year == 2023
    assert first.data == SALE
    assert second.id != "given"
    assert second.time == now
    assert second.source == "choreo/ingest/http"


# -- data.in.<type> --------------------------------------------------------------------------

STORED = datetime(2024, 1, 15, 10, 0, 0, 123456, tzinfo=UTC)


def inbound(subject: str, body: object) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return inbound_event(subject, raw, REGISTRY, stream_seq=42, stored=STORED)


def test_inbound_takes_the_type_from_the_subject_and_a_stable_id() -> None:
    (subject, event), errors = inbound("data.in.sale", {"data": SALE})
    assert errors == []
    assert subject == "data.sale"
    assert (event.type, event.source, event.time, event.data) == (
        "sale",
        "choreo/ingest/nats",
        STORED,
        SALE,
    )
    # A redelivery of the same stream message gets the same id: JetStream drops the repeat.
    assert event.id == "in:42:1705312800123456"
    assert inbound("data.in.sale", {"data": SALE})[0][1] == event
    (_, own), _ = inbound("data.in.sale", {"data": SALE, "id": "mine", "type": "sale"})
    assert own.id == "mine"


@pytest.mark.parametrize(
    ("subject", "body", "fields", "needle"),
    [
        ("data.in.sale", b"{oops", {"$"}, "invalid JSON"),
        ("data.in.sale", [SALE], {"$"}, "JSON object"),
        ("data.in.sale", {"data": sale(quantity=-1), "type": "transaction"}, None, "differs"),
        ("data.in.nope", {"data": {}}, {"type"}, "unknown event type 'nope'"),
        ("data.in.a.b", {"data": {}}, {"type"}, "should match pattern"),
        ("data.in.sale", {"data": sale(day=None), "extra": 1}, {"data.day", "extra"}, "required"),
    ],
)
def test_inbound_problems(subject: str, body: object, fields: set[str] | None, needle: str) -> None:
    event, errors = inbound(subject, body)
    assert event is None
    if fields is not None:
        assert {e.field for e in errors} == fields
    else:  # the type mismatch and the data's own problem, both
        assert {e.field for e in errors} == {"type", "data.quantity"}
    assert needle in describe(errors)


# -- source extraction -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "dsn"),
    [
        ("sales", False),
        ("warehouse_eu-1", False),
        ("postgresql://u:p@h/db", True),
        ("postgres://h/db", True),
        ("host=h dbname=db user=u", True),
        ("u:p@h", True),
    ],
)
def test_a_dsn_is_recognised(source: str, dsn: bool) -> None:
    assert looks_like_dsn(source) is dsn


@pytest.mark.parametrize(
    ("value", "pg_type", "expected"),
    [
        ("2024-01-15", "date", date(2024, 1, 15)),
        ("2024-01-15T10:00:00Z", "timestamptz", datetime(2024, 1, 15, 10, tzinfo=UTC)),
        ("10:30", "time", time(10, 30)),
        ("42", "int4", 42),
        (42.0, "int8", 42),
        ("1.5", "float8", 1.5),
        ("9.95", "numeric", Decimal("9.95")),
        ("true", "bool", True),
        ("f", "bool", False),
        (7, "text", "7"),
        ({"a": 1}, "varchar", '{"a": 1}'),
        ({"a": 1}, "jsonb", {"a": 1}),
        (None, "int4", None),
        ("north", "text", "north"),
    ],
)
def test_parameters_become_what_the_column_type_needs(
    value: object, pg_type: str, expected: object
) -> None:
    assert coerce_param(value, pg_type) == expected


@pytest.mark.parametrize(
    ("value", "pg_type"),
    [("2024-13-01", "date"), ("x", "int4"), (1.5, "int4"), (True, "int4"), ("maybe", "bool")],
)
def test_a_parameter_that_does_not_fit_says_so(value: object, pg_type: str) -> None:
    with pytest.raises(ValueError, match=f"is not a valid {pg_type}"):
        coerce_param(value, pg_type)


def test_database_values_become_plain_json() -> None:
    row = {
        "d": date(2024, 1, 15),
        "ts": datetime(2024, 1, 15, 10, tzinfo=UTC),
        "n": Decimal("9.50"),
        "nan": float("nan"),
        "iv": timedelta(minutes=1, seconds=30),
        "b": b"\x00\x01",
        "u": UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        "arr": [Decimal("1.5"), None],
        "j": {"k": [1, "x"]},
    }
    friendly = json_friendly(row)
    assert friendly == {
        "d": "2024-01-15",
        "ts": "2024-01-15T10:00:00+00:00",
        "n": 9.5,
        "nan": None,
        "iv": 90.0,
        "b": "AAE=",
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "arr": [1.5, None],
        "j": {"k": [1, "x"]},
    }
    assert json.loads(json.dumps(friendly, allow_nan=False)) == friendly


def test_parquet_types_follow_the_postgres_ones() -> None:
    assert duckdb_type("int4") == "INTEGER"
    assert duckdb_type("numeric") == "DOUBLE"
    assert duckdb_type("timestamptz") == "TIMESTAMPTZ"
    assert duckdb_type("_int4", "array") == "JSON"
    assert duckdb_type("citext") == "VARCHAR"


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.csv", "csv"),
        ("A.JSON", "json"),
        ("x.jsonl", "jsonl"),
        ("x.ndjson", "jsonl"),
        ("x.txt", None),
        ("README", None),
    ],
)
def test_the_file_format_follows_the_extension(name: str, fmt: str | None) -> None:
    assert infer_format(name) == fmt
