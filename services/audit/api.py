"""The audit read API the CLI uses (`choreo audit`, `choreo fraud alerts`)."""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, JsonValue

from services.audit.ports import EventStore
from services.audit.projections import causation_order
from shared.durations import FORMS, duration_seconds
from shared.fraud import FraudVerdict

# PostgreSQL text cannot hold a NUL character: a value with one could never match, and
# would fail the query; it is refused as invalid (422) instead.
TEXT = r"^[^\x00]*$"
Text = Annotated[str, Path(pattern=TEXT)]


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


class FraudAlert(FraudVerdict):
    """A `fraud.alert` event's verdict, its id and time."""

    id: str
    created_at: datetime


class FraudScore(FraudVerdict):
    """A `fraud.scored` event's verdict, its id and time."""

    scored_event_id: str
    scored_at: datetime


def parse_since(value: str, now: datetime) -> datetime:
    """`since` as a time: RFC 3339 with an offset (`2026-11-23T00:00:00Z`), or a duration
    before `now` (`90s`, `15m`, `1h`, `2d`, `1w`, or combined: `1h30m`); ValueError saying
    which forms are accepted."""
    seconds = duration_seconds(value)
    if seconds is not None:
        try:
            return now - timedelta(seconds=seconds)
        except OverflowError as exc:
            raise ValueError(f"since {value!r}: too far back") from exc
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ValueError(
            f"since {value!r}: give a duration ({FORMS}) or an RFC 3339 "
            "time with an offset (2026-11-23T00:00:00Z)"
        )
    return moment


def _since(value: str | None) -> datetime | None:
    """A `since` query parameter as a time; 422 naming the problem when it is not one (in
    the shape of every other 422 of the API, as documented)."""
    try:
        return None if value is None else parse_since(value, datetime.now(UTC))
    except ValueError as exc:
        problem = {"type": "value_error", "loc": ("query", "since"), "msg": str(exc)}
        raise RequestValidationError([{**problem, "input": value}]) from exc


def audit_router(store: Callable[[], EventStore]) -> APIRouter:
    router = APIRouter(prefix="/v1/audit", tags=["audit"])

    @router.get("/events", response_model=list[AuditedEvent], summary="The newest audited events")
    async def recent_events(
        type: Annotated[
            str | None, Query(description="only events of this type", pattern=TEXT)
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> list[dict[str, Any]]:
        return await store().recent_events(type, limit)

    @router.get("/runs", summary="The newest workflow runs")
    async def runs(
        status: Annotated[
            str | None, Query(description="only runs in this state", pattern=TEXT)
        ] = None,
        workflow: Annotated[
            str | None, Query(description="only runs of this workflow", pattern=TEXT)
        ] = None,
        since: Annotated[
            str | None,
            Query(
                description="only runs requested since: a duration back from now (`1h`) or "
                "an RFC 3339 time"
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    ) -> list[dict[str, Any]]:
        return await store().runs(status, limit, workflow=workflow, since=_since(since))

    @router.get(
        "/runs/{runid}",
        summary="One run and its steps",
        responses={404: {"description": "no such run in the audit trail"}},
    )
    async def run(runid: Text) -> dict[str, Any]:
        found = await store().run(runid)
        if found is None:
            raise HTTPException(404, f"no run {runid!r} in the audit trail")
        return found

    @router.get(
        "/runs/{runid}/events",
        summary="A run's events in causation order",
        responses={404: {"description": "no events of such a run in the audit trail"}},
    )
    async def run_events(runid: Text) -> list[dict[str, Any]]:
        events = await store().run_events(runid)
        if not events:
            raise HTTPException(404, f"no events of run {runid!r} in the audit trail")
        return causation_order(events)

    @router.get(
        "/fraud/alerts",
        response_model=list[FraudAlert],
        summary="Fraud alerts (review or block), newest first",
    )
    async def fraud_alerts(
        since: Annotated[
            str | None,
            Query(
                description="only alerts created since: a duration back from now (`1h`, "
                "`30m`, `2d`) or an RFC 3339 time (`2026-11-23T00:00:00Z`)"
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> list[dict[str, Any]]:
        return await store().fraud_alerts(_since(since), limit)

    @router.get(
        "/fraud/scores/{transaction_id}",
        response_model=FraudScore,
        summary="The fraud score of one transaction",
        responses={404: {"description": "not scored (yet)"}},
    )
    async def fraud_score(transaction_id: Text) -> dict[str, Any]:
        found = await store().fraud_score(transaction_id)
        if found is None:
            raise HTTPException(404, f"no fraud score for transaction {transaction_id!r} (yet)")
        return found

    return router
