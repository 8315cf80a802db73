"""What the audit service needs from the outside world."""

from typing import Any, Protocol

from services.audit.domain import EventRow


class EventStore(Protocol):
    """Durable, idempotent storage of event rows."""

    async def insert_events(self, rows: list[EventRow]) -> int:
        """Store rows whose id is new; return how many were new."""
        ...

    async def recent_events(self, event_type: str | None, limit: int) -> list[dict[str, Any]]:
        """The newest stored events (optionally of one type), newest first."""
        ...

    async def ping(self) -> None:
        """Raise when the store is unreachable."""
        ...
