"""The schema registry: the shipped schemas (docs/reference/http-api.md), the extension
folder, versions."""

import json
from pathlib import Path
from typing import Any

import pytest

from services.ingest.registry import SchemaRegistry, UnknownSchema, load_registry
from tests import samples
from tests.samples import BUSINESS_EVENT, FRAUD_LABEL, changed

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = load_registry()

# Every optional field given; the sale at the bounds (nothing sold, for nothing).
TRANSACTION = changed(samples.TRANSACTION, country="ES", channel="pos", merchant_category="5411")
SALE = changed(samples.SALE, quantity=0, unit_price=0)


def fields(event_type: str, data: dict[str, Any]) -> set[str]:
    return {field for field, _ in REGISTRY.check(event_type, data)}


def test_the_shipped_types_and_their_versions() -> None:
    assert REGISTRY.describe() == [
        {"type": "business_event", "versions": [1], "current": 1},
        {"type": "fraud_label", "versions": [1], "current": 1},
        {"type": "sale", "versions": [1], "current": 1},
        {"type": "transaction", "versions": [1], "current": 1},
    ]
    assert REGISTRY.schema("sale")["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize(
    ("event_type", "sample"),
    [("sale", "docs/samples/sales.ndjson"), ("transaction", "docs/samples/transactions.ndjson")],
)
def test_the_sample_data_is_valid(event_type: str, sample: str) -> None:
    rows = [json.loads(line) for line in (ROOT / sample).read_text().splitlines() if line]
    assert rows
    assert [REGISTRY.check(event_type, row) for row in rows] == [[] for _ in rows]


@pytest.mark.parametrize(
    ("event_type", "data"),
    [
        ("transaction", TRANSACTION),
        ("transaction", changed(TRANSACTION, country=None, channel=None, merchant_category=None)),
        ("transaction", changed(TRANSACTION, timestamp="2024-01-15t10:01:00.5+05:30")),
        ("transaction", changed(TRANSACTION, amount=0.01, channel="atm")),
        ("sale", SALE),
        ("sale", changed(SALE, quantity=3, unit_price=9.99)),
        ("fraud_label", FRAUD_LABEL),
        ("fraud_label", changed(FRAUD_LABEL, is_fraud=False, reason="reset")),
        ("business_event", BUSINESS_EVENT),
        (
            "business_event",
            changed(
                BUSINESS_EVENT,
                payload={"any": [1, {"x": None}]},
                occurred_at="2024-01-15T10:01:00Z",
            ),
        ),
    ],
)
def test_valid_data(event_type: str, data: dict[str, Any]) -> None:
    assert REGISTRY.check(event_type, data) == []


@pytest.mark.parametrize(
    ("event_type", "data", "field"),
    [
        ("transaction", changed(TRANSACTION, transaction_id=None), "transaction_id"),
        ("transaction", changed(TRANSACTION, card_id=""), "card_id"),
        ("transaction", changed(TRANSACTION, amount=0), "amount"),
        ("transaction", changed(TRANSACTION, amount=-3), "amount"),
        ("transaction", changed(TRANSACTION, amount="84.34"), "amount"),
        ("transaction", changed(TRANSACTION, currency="eur"), "currency"),
        ("transaction", changed(TRANSACTION, currency="EURO"), "currency"),
        ("transaction", changed(TRANSACTION, timestamp="2024-01-15"), "timestamp"),
        ("transaction", changed(TRANSACTION, timestamp="2024-01-15T10:01:00"), "timestamp"),
        ("transaction", changed(TRANSACTION, timestamp="2024-02-30T10:01:00Z"), "timestamp"),
        ("transaction", changed(TRANSACTION, country="ESP"), "country"),
        ("transaction", changed(TRANSACTION, channel="web"), "channel"),
        ("transaction", changed(TRANSACTION, contry="ES"), "contry"),
        ("fraud_label", changed(FRAUD_LABEL, is_fraud=0), "is_fraud"),
        ("fraud_label", changed(FRAUD_LABEL, reported_at=None), "reported_at"),
        ("fraud_label", changed(FRAUD_LABEL, reported_at="2024-01-16"), "reported_at"),
        ("fraud_label", changed(FRAUD_LABEL, transaction_id=""), "transaction_id"),
        ("fraud_label", changed(FRAUD_LABEL, scenario="x"), "scenario"),
        ("sale", changed(SALE, day="2024-1-5"), "day"),
        ("sale", changed(SALE, day="2024-02-30"), "day"),
        ("sale", changed(SALE, quantity=1.5), "quantity"),
        ("sale", changed(SALE, quantity=-1), "quantity"),
        ("sale", changed(SALE, unit_price=-0.01), "unit_price"),
        ("sale", changed(SALE, region=None), "region"),
        ("business_event", changed(BUSINESS_EVENT, payload=[1]), "payload"),
        ("business_event", changed(BUSINESS_EVENT, occurred_at="yesterday"), "occurred_at"),
        ("business_event", changed(BUSINESS_EVENT, total=3), "total"),
    ],
)
def test_invalid_data_names_the_field(event_type: str, data: dict[str, Any], field: str) -> None:
    assert fields(event_type, data) == {field}


def test_a_nested_problem_has_a_dotted_path() -> None:
    registry = SchemaRegistry(
        {
            ("order", 1): {
                "type": "object",
                "properties": {
                    "lines": {"type": "array", "items": {"required": ["sku"], "type": "object"}}
                },
            }
        }
    )
    assert registry.check("order", {"lines": [{"sku": "a"}, {}]}) == [
        ("lines.1.sku", "is required")
    ]
    assert registry.check("order", []) == [("", "[] is not of type 'object'")]


def write(folder: Path, name: str, schema: object) -> None:
    (folder / name).write_text(schema if isinstance(schema, str) else json.dumps(schema))


def test_the_folder_adds_types_and_newer_versions(tmp_path: Path) -> None:
    write(tmp_path, "order.v1.json", {"type": "object", "required": ["id"]})
    write(tmp_path, "sale.v2.json", {"type": "object", "required": ["order_id"]})
    (tmp_path / "README.md").write_text("not a schema: ignored")
    registry = load_registry(tmp_path)
    assert registry.types == ["business_event", "fraud_label", "order", "sale", "transaction"]
    assert registry.versions("sale") == [1, 2]
    # The newest version is current; an event may still name the older one.
    assert registry.check("sale", {"order_id": "o-1"}) == []
    assert {f for f, _ in registry.check("sale", {"order_id": "o-1"}, 1)} >= {"day", "region"}
    assert registry.schema("sale") == {"type": "object", "required": ["order_id"]}
    assert registry.check("order", {}) == [("id", "is required")]


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("sale.v1.json", {"type": "object"}, "would replace a shipped schema"),
        ("order.json", {"type": "object"}, "named <type>.v<N>.json"),
        ("order.v0.json", {"type": "object"}, "named <type>.v<N>.json"),
        ("Order.v1.json", {"type": "object"}, "invalid event type"),
        ("in.v1.json", {"type": "object"}, "invalid event type"),
        ("order.v1.json", "{nope", "not valid JSON"),
        ("order.v1.json", [], "a schema is a JSON object"),
        ("order.v1.json", {"type": "objet"}, "not a valid JSON Schema 2020-12"),
    ],
)
def test_a_bad_schema_file_is_refused_at_start(
    tmp_path: Path, name: str, content: object, needle: str
) -> None:
    write(tmp_path, name, content)
    with pytest.raises(ValueError, match=needle):
        load_registry(tmp_path)


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a directory"):
        load_registry(tmp_path / "nope")


def test_unknown_types_and_versions() -> None:
    with pytest.raises(UnknownSchema) as caught:
        REGISTRY.check("order", {})
    assert caught.value.field == "type"
    with pytest.raises(UnknownSchema) as caught:
        REGISTRY.schema("sale", 2)
    assert caught.value.field == "schema_version"
