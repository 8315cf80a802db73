"""Ingest's pure logic: events (parsing, validation, every error at once) and the value
conversions of source extraction.

No I/O, no clock (the caller passes `now`). A batch is all or nothing: if any item is
invalid, nothing is published and each problem of each bad item is named.
"""

import base64
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator

from services.ingest.registry import SchemaRegistry, UnknownSchema
from shared.envelope import Event
from shared.ids import uuid7
from shared.subjects import DATA_IN_PREFIX, EVENT_TYPE_PATTERN, data_subject
from shared.tracing import traceparent_for

JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")
HTTP_SOURCE = "choreo/ingest/http"
NATS_SOURCE = "choreo/ingest/nats"


# -- events ----------------------------------------------------------------------------------


class TypedData(BaseModel):
    """What the schema check needs: the type, the data and the schema version asked for.

    Its own model (ignoring other keys) so that an item whose other fields are wrong still
    gets its data checked: every problem of an item is reported at once.
    """

    model_config = ConfigDict(extra="ignore")

    type: str = Field(pattern=EVENT_TYPE_PATTERN.pattern, description="e.g. `transaction`")
    data: dict[str, JsonValue] = Field(
        description="the event's payload: a JSON object valid under the type's schema "
        "(`GET /v1/schemas/{type}`)"
    )
    schema_version: int | None = Field(
        default=None,
        ge=1,
        description="the schema version to validate `data` against; the type's newest when absent",
    )

    @field_validator("type")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value == "in":
            raise ValueError("'in' is reserved (data.in.> is the raw NATS entry point)")
        return value


class EventIn(TypedData):
    """An event as a producer posts it: `type` and `data`, optionally its own `id`."""

    model_config = ConfigDict(extra="forbid")

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


@dataclass(frozen=True)
class ItemError:
    """One problem of one item of a posted batch."""

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
    """The JSON values of a body: one object, or one per NDJSON line (parsed from the bytes
    as they are, each line once)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in JSON_TYPES:
        items = [_loads(body, "body")]
    elif media in NDJSON_TYPES:
        lines = [(n, line) for n, line in enumerate(body.splitlines(), 1) if line.strip()]
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


def _loads(raw: bytes, where: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise BadBody(400, f"{where}: not valid UTF-8 (byte {bad.start})") from exc
        if exc.msg == "depth limit exceeded":
            raise BadBody(400, f"{where}: JSON nested too deeply") from exc
        raise BadBody(400, f"{where}: invalid JSON: {exc.msg} at column {exc.colno}") from exc


class BatchCheck:
    """A batch's items checked one by one (`add`): its valid events and every problem
    (envelope fields, then `data` against its type's schema; an id twice in the batch)."""

    def __init__(self, registry: SchemaRegistry) -> None:
        self.registry = registry
        self.events: list[EventIn] = []
        self.errors: list[ItemError] = []
        self._seen_ids: dict[str, int] = {}

    def add(self, index: int, item: Any) -> None:
        event, problems = _check_item(index, item, self.registry)
        if event is not None and event.id is not None:
            if event.id in self._seen_ids:
                first = self._seen_ids[event.id]
                problems.append(ItemError(index, "id", f"duplicate of item {first} in this batch"))
            else:
                self._seen_ids[event.id] = index
        if problems:
            self.errors.extend(problems)
        elif event is not None:
            self.events.append(event)


def validate_items(
    items: list[Any], registry: SchemaRegistry
) -> tuple[list[EventIn], list[ItemError]]:
    """Validate every item at once; return the valid events and an error per problem."""
    check = BatchCheck(registry)
    for index, item in enumerate(items):
        check.add(index, item)
    return check.events, check.errors


def _check_item(
    index: int, item: Any, registry: SchemaRegistry
) -> tuple[EventIn | None, list[ItemError]]:
    event: EventIn | None = None
    errors: list[ItemError] = []
    try:
        event = EventIn.model_validate(item)
    except ValidationError as exc:
        errors.extend(_pydantic_errors(index, exc))
    typed: TypedData | None = event
    if typed is None:
        try:
            typed = TypedData.model_validate(item)
        except ValidationError:
            typed = None  # type or data are wrong themselves: already reported above
    if typed is not None:
        try:
            problems = registry.check(typed.type, typed.data, typed.schema_version)
        except UnknownSchema as exc:
            errors.append(ItemError(index, exc.field, exc.message))
        else:
            errors.extend(ItemError(index, _data_field(path), msg) for path, msg in problems)
    return (event if not errors else None), errors


def _pydantic_errors(index: int, exc: ValidationError) -> list[ItemError]:
    return [
        ItemError(index, ".".join(str(p) for p in err["loc"]) or "$", err["msg"])
        for err in exc.errors()
    ]


def _data_field(path: str) -> str:
    return f"data.{path}" if path else "data"


def to_envelope(
    event: EventIn, now: datetime, *, source: str = HTTP_SOURCE, default_id: str | None = None
) -> tuple[str, Event]:
    """The subject and CloudEvents envelope to publish for a valid event. Without an id of
    its own, the event gets `default_id`, or else a new UUIDv7."""
    event_id = event.id or default_id or uuid7()
    envelope = Event(
        id=event_id,
        # An ingested event starts a trace of its own, named by its id (so a re-send or a
        # redelivery is the same trace): everything it causes joins it.
        traceparent=traceparent_for(event_id),
        type=event.type,
        source=event.source or source,
        subject=event.subject,
        time=event.time or now,
        data=event.data,
    )
    return data_subject(event.type), envelope


def inbound_event(
    subject: str, body: bytes, registry: SchemaRegistry, *, stream_seq: int, stored: datetime
) -> tuple[tuple[str, Event] | None, list[ItemError]]:
    """A message of `data.in.<type>` as the event to publish, or its problems.

    The body is what `POST /v1/events` takes, with `type` optional (the subject gives it).
    An event without an `id` gets one derived from its place in the stream, and `time`
    defaults to when the stream stored it: a redelivered message yields the same envelope,
    so JetStream's de-duplication drops the second publish.
    """
    event_type = subject.removeprefix(DATA_IN_PREFIX)
    try:
        (item,) = split_items(JSON_TYPES[0], body, 1)
    except BadBody as exc:
        return None, [ItemError(0, "$", exc.message)]
    if not isinstance(item, dict):
        return None, [ItemError(0, "$", 'the body is a JSON object: {"data": {...}, "id": ...}')]
    errors = []
    if item.get("type", event_type) != event_type:
        errors.append(
            ItemError(0, "type", f"{item['type']!r} differs from the subject's {event_type!r}")
        )
    events, problems = validate_items([{**item, "type": event_type}], registry)
    errors.extend(problems)
    if errors:
        return None, errors
    stored_us = int(stored.timestamp() * 1_000_000)
    default_id = f"in:{stream_seq}:{stored_us}"
    return to_envelope(events[0], stored, source=NATS_SOURCE, default_id=default_id), []


def describe(errors: list[ItemError]) -> str:
    """The problems of one item on one line (e.g. a dead-letter reason)."""
    return "; ".join(f"{e.field}: {e.message}" for e in errors)


# -- source extraction -----------------------------------------------------------------------

# PostgreSQL type (as asyncpg names it) -> DuckDB column type of the Parquet output.
# NUMERIC becomes DOUBLE as it does in JSONL; a type not listed becomes VARCHAR.
_DUCKDB_TYPES = {
    "int2": "SMALLINT",
    "int4": "INTEGER",
    "int8": "BIGINT",
    "oid": "BIGINT",
    "float4": "REAL",
    "float8": "DOUBLE",
    "numeric": "DOUBLE",
    "bool": "BOOLEAN",
    "date": "DATE",
    "time": "TIME",
    "timestamp": "TIMESTAMP",
    "timestamptz": "TIMESTAMPTZ",
    "interval": "DOUBLE",
    "uuid": "UUID",
    "json": "JSON",
    "jsonb": "JSON",
}
_INTEGER_TYPES = {"int2", "int4", "int8", "oid"}
_FLOAT_TYPES = {"float4", "float8"}
_TEXT_TYPES = {"text", "varchar", "bpchar", "char", "name"}
_PARSERS: dict[str, Callable[[str], Any]] = {
    "date": date.fromisoformat,
    "time": time.fromisoformat,
    "timestamp": datetime.fromisoformat,
    "timestamptz": datetime.fromisoformat,
}
_BOOLEANS = {"true": True, "t": True, "1": True, "false": False, "f": False, "0": False}


def duckdb_type(pg_type: str, kind: str = "scalar") -> str:
    """The Parquet (DuckDB) column type for a PostgreSQL column; arrays become JSON."""
    return "JSON" if kind == "array" else _DUCKDB_TYPES.get(pg_type, "VARCHAR")


def coerce_param(value: Any, pg_type: str) -> Any:
    """A workflow parameter (templates render strings) as the Python value asyncpg needs
    for a `$n` of type `pg_type`; ValueError saying what was expected."""
    if value is None:
        return None
    try:
        if pg_type in _INTEGER_TYPES:
            return _integer(value)
        if pg_type in _FLOAT_TYPES:
            return float(value)
        if pg_type == "numeric":
            return Decimal(str(value))
        if pg_type == "bool":
            return value if isinstance(value, bool) else _BOOLEANS[str(value).lower()]
        if pg_type in _PARSERS and isinstance(value, str):
            return _PARSERS[pg_type](value)
        if pg_type in _TEXT_TYPES and not isinstance(value, str):
            return json.dumps(value) if isinstance(value, dict | list) else str(value)
    except (ValueError, TypeError, KeyError, InvalidOperation) as exc:
        raise ValueError(f"{value!r} is not a valid {pg_type}") from exc
    return value


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("a boolean is not an integer")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("not a whole number")
    return int(value)


def json_friendly(value: Any) -> JsonValue:
    """A database value as plain JSON: dates and times in ISO 8601, decimals as numbers,
    intervals in seconds, bytes in base64, NaN and infinities as null."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float | Decimal):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, list | tuple):
        return [json_friendly(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_friendly(v) for k, v in value.items()}
    return str(value)  # UUID, network addresses, ranges, ...


def infer_format(name: str) -> str | None:
    """`csv`, `json` or `jsonl` from a file name's extension (None when it says nothing)."""
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return {"csv": "csv", "json": "json", "jsonl": "jsonl", "ndjson": "jsonl"}.get(suffix)
