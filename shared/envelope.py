"""The CloudEvents 1.0 envelope every Choreo message travels in (docs/reference/envelope.md).

`Event.child()` derives the next event of a chain: same correlation id, causation id =
the parent's id, run/step/attempt and trace context carried over. Following `causationid`
links from any event walks back through every service that touched it.
"""

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, Self

import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from shared.ids import uuid7
from shared.tracing import new_traceparent, next_traceparent

MSG_ID_HEADER = "Nats-Msg-Id"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """One CloudEvents 1.0 event (structured JSON mode) with Choreo's extensions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=uuid7, min_length=1, max_length=128)
    type: str = Field(min_length=1, max_length=200)
    source: str = Field(min_length=1, max_length=500)
    time: datetime = Field(default_factory=utcnow)
    subject: str | None = None
    datacontenttype: Literal["application/json"] = "application/json"
    data: JsonValue = None

    # Choreo extensions (CloudEvents extension attributes: lower-case, no separators).
    runid: str | None = None
    stepid: str | None = None
    attempt: int | None = Field(default=None, ge=1)
    correlationid: str | None = None
    causationid: str | None = None
    traceparent: str | None = Field(default_factory=new_traceparent)
    """W3C trace context: a new trace unless given; `child()` keeps the trace."""

    def child(self, *, type: str, source: str, data: JsonValue = None, **changes: Any) -> "Event":
        """The event caused by this one: a new id, the same correlation, run and step."""
        fields: dict[str, Any] = {"type": type, "source": source, "data": data}
        fields.update(lineage(vars(self)))  # a model's fields are its instance attributes
        fields.update(changes)
        return Event(**fields)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> Self:
        return cls.model_validate_json(raw)

    def headers(self) -> dict[str, str]:
        """NATS headers: the event id doubles as JetStream's de-duplication id."""
        return {MSG_ID_HEADER: self.id}


def lineage(parent: Mapping[str, Any]) -> dict[str, Any]:
    """What an event caused by `parent` (an envelope's fields) carries over from it: run,
    step and attempt, the correlation, the parent as its cause, the trace."""
    return {
        "runid": parent.get("runid"),
        "stepid": parent.get("stepid"),
        "attempt": parent.get("attempt"),
        "correlationid": parent.get("correlationid") or parent["id"],
        "causationid": parent["id"],
        "traceparent": next_traceparent(parent.get("traceparent")),
    }


def rfc3339(when: datetime) -> str:
    """`when` as an envelope writes times (as `Event` serializes them): microseconds only
    when there are some, `Z` for UTC, else the offset."""
    text = f"{when:%Y-%m-%dT%H:%M:%S}"
    if when.microsecond:
        text += f".{when.microsecond:06d}"
    offset = when.utcoffset()
    if not offset:
        return text + "Z"
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


Envelope = dict[str, Any]
"""An envelope as a plain dict: the fields of `Event` (those it has), `time` a datetime."""

_FIELDS = frozenset(Event.model_fields)
_REQUIRED = {"id": 128, "type": 200, "source": 500}  # name -> longest value allowed
_OPTIONAL_TEXT = ("subject", "runid", "stepid", "correlationid", "causationid", "traceparent")


class NotAnEnvelope(ValueError):
    """A message body that is not an event envelope (the message says why)."""


def parse_envelope(raw: bytes) -> Envelope:
    """The envelope of a message body, parsed once (orjson), without building an `Event`.

    The same envelopes are valid as for `Event.from_bytes()`: a body the quick checks here
    accept as complete is taken as it is (its `time` parsed), any other goes through `Event`
    (which fills in a missing id or time, or refuses it). NotAnEnvelope says why not."""
    try:
        fields = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise NotAnEnvelope(f"not a valid event envelope: not JSON ({exc})") from None
    if not isinstance(fields, dict):
        raise NotAnEnvelope(f"not a valid event envelope: a JSON {type(fields).__name__}")
    moment = _as_given(fields)
    if moment is not None:
        fields["time"] = moment
        return fields
    try:
        event = Event.model_validate(fields)
    except ValidationError as exc:
        raise NotAnEnvelope(f"not a valid event envelope: {exc}") from None
    return event.model_dump(exclude_none=True)


def _as_given(fields: dict[str, Any]) -> datetime | None:
    """The `time` of fields `Event` would take as they are (nothing to fill in or coerce),
    or None when `Event` must judge them."""
    if not _FIELDS.issuperset(fields):
        return None
    for name, longest in _REQUIRED.items():
        value = fields.get(name)
        if not isinstance(value, str) or not 0 < len(value) <= longest:
            return None
    for name in _OPTIONAL_TEXT:
        value = fields.get(name)
        if value is not None and not isinstance(value, str):
            return None
    attempt = fields.get("attempt")
    if not (
        fields.get("specversion", "1.0") == "1.0"
        and fields.get("datacontenttype", "application/json") == "application/json"
        and (attempt is None or (type(attempt) is int and attempt >= 1))
    ):
        return None
    moment = fields.get("time")
    # RFC 3339 as `Event` reads it; other forms (or none: Event fills it in) go to Event.
    if not isinstance(moment, str) or len(moment) < 19 or moment[10] != "T":
        return None
    try:
        return datetime.fromisoformat(moment)
    except ValueError:
        return None


def child_envelope(
    parent: Envelope, *, id: str, type: str, source: str, subject: str | None, data: Any
) -> Envelope:
    """`Event.child()` without the model: the child of `parent` (see `parse_envelope`) as
    the dict that orjson serializes to the JSON `Event.to_bytes()` gives for that child."""
    fields = {
        "specversion": "1.0",
        "id": id,
        "type": type,
        "source": source,
        "time": rfc3339(utcnow()),
        "subject": subject,
        "datacontenttype": "application/json",
        "data": data,
        **lineage(parent),
    }
    return {name: value for name, value in fields.items() if value is not None}
