"""The audit read API the CLI uses (`choreo audit`)."""

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, JsonValue

from services.audit.ports import EventStore


class AuditedEvent(BaseModel):
    id: str
    type: str
    source: str
    subject: str | None
    time: datetime
    runid: str | None
    stepid: str | None
    correlationid: str | None
    causationid: str | None
    nats_subject: str
    stream_seq: int
    received_at: datetime
    data: JsonValue


def audit_router(store: Callable[[], EventStore]) -> APIRouter:
    router = APIRouter(prefix="/v1/audit", tags=["audit"])

    @router.get("/events", response_model=list[AuditedEvent], summary="The newest audited events")
    async def recent_events(
        type: Annotated[str | None, Query(description="only events of this type")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> list[dict[str, Any]]:
        return await store().recent_events(type, limit)

    return router
