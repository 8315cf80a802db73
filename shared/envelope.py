"""The CloudEvents 1.0 envelope every Choreo message travels in (docs/reference/envelope.md).

`Event.child()` derives the next event of a chain: same correlation id, causation id =
the parent's id, run/step/attempt and trace context carried over. Following `causationid`
links from any event walks back through every service that touched it.
"""

from datetime import UTC, datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, JsonValue

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
        fields: dict[str, Any] = {
            "type": type,
            "source": source,
            "data": data,
            "runid": self.runid,
            "stepid": self.stepid,
            "attempt": self.attempt,
            "correlationid": self.correlationid or self.id,
            "causationid": self.id,
            "traceparent": next_traceparent(self.traceparent),
        }
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
