"""Turning an HTTP body into events: parsing, validation, and every error at once.

Pure functions: no I/O, no clock (the caller passes `now`). A batch is all or nothing:
if any item is invalid, nothing is published and each bad item is named.
"""

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator

from shared.envelope import Event
from shared.ids import uuid7
from shared.subjects import EVENT_TYPE_PATTERN, data_subject

JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")
HTTP_SOURCE = "choreo/ingest/http"


class EventIn(BaseModel):
    """An event as a producer posts it: `type` and `data`, optionally its own `id`."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(pattern=EVENT_TYPE_PATTERN.pattern, description="e.g. `transaction`")
    data: dict[str, JsonValue] = Field(description="the event's payload (a JSON object)")
    id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:\-]+$",
        description="your id for idempotent re-sends; a UUIDv7 is assigned when absent",
    )
    source: str | None = Field(default=None, min_length=1, max_length=500)
    subject: str | None = Field(default=None, max_length=500)
    time: datetime | None = Field(default=None, description="RFC 3339; defaults to receipt")

    @field_validator("type")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value == "in":
            raise ValueError("'in' is reserved (data.in.> is the raw NATS entry point)")
        return value


@dataclass(frozen=True)
class ItemError:
    """What is wrong with one item of a posted batch."""

    index: int
    field: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "message": self.message}


class BadBody(Exception):
    """The body as a whole cannot be read (wrong content type, not JSON, too many items)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def split_items(content_type: str, body: bytes, max_items: int) -> list[Any]:
    """The JSON values of a body: one object, or one per NDJSON line."""
    media = content_type.split(";", 1)[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadBody(400, f"body is not valid UTF-8 (byte {exc.start})") from exc
    if media in JSON_TYPES:
        items = [_loads(text, "body")]
    elif media in NDJSON_TYPES:
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        if len(lines) > max_items:
            raise BadBody(413, f"batch has {len(lines)} events; the limit is {max_items}")
        items = [_loads(line, f"line {n}") for n, line in lines]
    else:
        raise BadBody(
            415, f"unsupported content type {media!r}: use application/json or application/x-ndjson"
        )
    if not items:
        raise BadBody(400, "body holds no events")
    return items


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadBody(400, f"{where}: invalid JSON: {exc.msg} at column {exc.colno}") from exc
    except RecursionError as exc:
        raise BadBody(400, f"{where}: JSON nested too deeply") from exc


def validate_items(items: list[Any]) -> tuple[list[EventIn], list[ItemError]]:
    """Validate every item; return the valid events and an error per problem."""
    events: list[EventIn] = []
    errors: list[ItemError] = []
    seen_ids: dict[str, int] = {}
    for index, item in enumerate(items):
        try:
            event = EventIn.model_validate(item)
        except ValidationError as exc:
            errors.extend(
                ItemError(index, ".".join(str(p) for p in err["loc"]) or "$", err["msg"])
                for err in exc.errors()
            )
            continue
        if event.id is not None:
            if event.id in seen_ids:
                errors.append(
                    ItemError(index, "id", f"duplicate of item {seen_ids[event.id]} in this batch")
                )
                continue
            seen_ids[event.id] = index
        events.append(event)
    return events, errors


def to_envelope(event: EventIn, now: datetime) -> tuple[str, Event]:
    """The subject and CloudEvents envelope to publish for a valid posted event."""
    envelope = Event(
        id=event.id or uuid7(),
        type=event.type,
        source=event.source or HTTP_SOURCE,
        subject=event.subject,
        time=event.time or now,
        data=event.data,
    )
    return data_subject(event.type), envelope
