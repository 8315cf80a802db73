"""The streaming pipelines' input: an event's data as a row, or why it is skipped (pure)."""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from services.transform.casting import CleanSpec, cast_row
from shared.envelope import Event

BUSINESS_EVENT = "business_event"
SALE = "sale"

# What each pipeline needs from an event's data; the casting rules are the static
# pipelines' own.
BUSINESS_EVENT_SPEC = CleanSpec(
    {"company_id": "string", "event_type": "string", "occurred_at": "datetime"},
    required=("company_id", "event_type"),
)
SALE_EVENT_SPEC = CleanSpec(
    {"region": "string", "quantity": "int", "unit_price": "float"},
    required=("region", "quantity", "unit_price"),
)


def business_event_row(event: Event) -> tuple[dict[str, Any] | None, str | None]:
    """(row of the business-event table, None) or (None, why the event is skipped)."""
    values, reason = cast_row(event.data, BUSINESS_EVENT_SPEC)
    if values is None:
        return None, reason
    event_time = as_utc(event.time)
    occurred = values["occurred_at"]
    return {
        "company_id": values["company_id"],
        "event_type": values["event_type"],
        "occurred_at": datetime.fromisoformat(occurred) if occurred else event_time,
        "event_time": event_time,
    }, None


def sale_row(event: Event) -> tuple[dict[str, Any] | None, str | None]:
    """(row of the sales table, None) or (None, why the event is skipped)."""
    values, reason = cast_row(event.data, SALE_EVENT_SPEC)
    if values is None:
        return None, reason
    return {**values, "event_time": as_utc(event.time)}, None


ROW_PARSERS: dict[str, Callable[[Event], tuple[dict[str, Any] | None, str | None]]] = {
    BUSINESS_EVENT: business_event_row,
    SALE: sale_row,
}


def as_utc(moment: datetime) -> datetime:
    """`moment` in UTC; a time without offset is taken as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
