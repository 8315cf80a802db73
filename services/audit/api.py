"""The audit read API the CLI uses (`choreo audit`)."""

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, JsonValue

from services.audit.ports import EventStore
from services.audit.projections import causation_order


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

    @router.get("/runs", summary="The newest workflow runs")
    async def runs(
        status: Annotated[str | None, Query(description="only runs in this state")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    ) -> list[dict[str, Any]]:
        return await store().runs(status, limit)

    @router.get("/runs/{runid}", summary="One run and its steps")
    async def run(runid: str) -> dict[str, Any]:
        found = await store().run(runid)
        if found is None:
            raise HTTPException(404, f"no run {runid!r} in the audit trail")
        return found

    @router.get("/runs/{runid}/events", summary="A run's events in causation order")
    async def run_events(runid: str) -> list[dict[str, Any]]:
        events = await store().run_events(runid)
        if not events:
            raise HTTPException(404, f"no events of run {runid!r} in the audit trail")
        return causation_order(events)

    return router
