"""A valid `data` of each shipped event type (services/ingest/schemas/), for tests to use
as they are or to vary with `changed`. Treat them as read-only: derive, never mutate."""

from typing import Any

SALE: dict[str, Any] = {
    "order_id": "o-1",
    "day": "2024-01-15",
    "region": "north",
    "product": "widget",
    "quantity": 2,
    "unit_price": 9.5,
}
TRANSACTION: dict[str, Any] = {
    "transaction_id": "tx-1",
    "card_id": "card-1",
    "terminal_id": "term-1",
    "amount": 12.5,
    "currency": "EUR",
    "timestamp": "2024-01-15T10:01:00Z",
}
FRAUD_LABEL: dict[str, Any] = {
    "transaction_id": "tx-1",
    "is_fraud": True,
    "reported_at": "2024-01-16T09:00:00Z",
}
BUSINESS_EVENT: dict[str, Any] = {
    "company_id": "acme",
    "event_type": "invoice.created",
    "payload": {},
}


def changed(data: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """`data` with `changes` (None removes a field)."""
    return {k: v for k, v in {**data, **changes}.items() if v is not None}
