"""The audit read API the CLI uses (`choreo audit`, `choreo fraud alerts`)."""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, JsonValue

from services.audit.domain import RunCursor
from services.audit.ports import EventStore
from services.audit.projections import TRANSACTION, causation_order
from shared.durations import FORMS, duration_seconds
from shared.fraud import FraudVerdict
from shared.lake import Group, key_segment
from shared.s3 import s3_uri
from shared.subjects import DATA

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


def _since(value: str | None, name: str = "since") -> datetime | None:
    """A `since` (or `until`) query parameter as a time; 422 naming the problem when it is
    not one (in the shape of every other 422 of the API, as documented)."""
    return None if value is None else _time(value, name)


def _time(value: str, name: str) -> datetime:
    try:
        return parse_since(value, datetime.now(UTC))
    except ValueError as exc:
        raise _invalid(name, value, str(exc)) from exc


def _invalid(name: str, value: str, message: str) -> RequestValidationError:
    problem = {"type": "value_error", "loc": ("query", name), "msg": message}
    return RequestValidationError([{**problem, "input": value}])


NEXT_CURSOR = "Choreo-Next-Cursor"
FRAUD_BUCKETS = 10


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

    @router.get(
        "/runs",
        summary="The newest workflow runs",
        description="Newest first, by the time each run was requested. When the page is "
        "full, the `Choreo-Next-Cursor` header holds the `after` value of the next page.",
    )
    async def runs(
        response: Response,
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
        until: Annotated[
            str | None,
            Query(description="only runs requested before: a duration back or an RFC 3339 time"),
        ] = None,
        runid: Annotated[
            str | None, Query(description="only runs whose id starts so", pattern=TEXT)
        ] = None,
        after: Annotated[
            str | None, Query(description="the page after this cursor (Choreo-Next-Cursor)")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    ) -> list[dict[str, Any]]:
        try:
            cursor = None if after is None else RunCursor.decode(after)
        except ValueError as exc:
            raise _invalid("after", str(after), str(exc)) from exc
        found = await store().runs(
            status,
            limit,
            workflow=workflow,
            since=_since(since),
            until=_since(until, "until"),
            runid_prefix=runid or None,
            after=cursor,
        )
        if len(found) == limit:
            last = found[-1]
            moment = last["requested_at"] or last["started_at"]
            if moment is not None:
                response.headers[NEXT_CURSOR] = RunCursor(moment, last["runid"]).encode()
        return found

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

    @router.get(
        "/events/{event_id}",
        # jsonable_encoder's encoding, as this lookup always gave it (times with +00:00).
        response_model=None,
        summary="An event and where it went",
        description="The event as audited; the raw-lake object that holds it (null until "
        "the lander wrote it and announced it on `lake.object.written`, and for events "
        "outside stream DATA); `fraud`: for a `transaction`, its fraud score "
        "(`score`, `decision`, `reasons`, `model`, `scored_at`) once the fraud service scored "
        "it, null until then; always null for other types.",
        responses={404: {"description": "not (yet) in the audit trail"}},
    )
    async def event(event_id: Text) -> dict[str, Any]:
        found = await store().event(event_id)
        if found is None:
            raise HTTPException(404, f"no event {event_id!r} in the audit trail (yet)")
        return await _where_it_went(store(), found)

    @router.get(
        "/events/{event_id}/chain",
        summary="An event's causation chain",
        description="The event, the events that caused it (back to the first) and those it "
        "caused, across services; `depth` is 0 for the event, negative for its causes, "
        "positive for its effects.",
        responses={404: {"description": "not (yet) in the audit trail"}},
    )
    async def causation_chain(
        event_id: Text, limit: Annotated[int, Query(ge=1, le=1000)] = 200
    ) -> list[dict[str, Any]]:
        chain = await store().causation_chain(event_id, limit)
        if not chain:
            raise HTTPException(404, f"no event {event_id!r} in the audit trail (yet)")
        return chain

    @router.get(
        "/fraud/summary",
        summary="Fraud scores since a time: score distribution, decisions and rule counts",
    )
    async def fraud_summary(
        since: Annotated[
            str, Query(description="a duration back from now (`1h`) or an RFC 3339 time")
        ] = "1h",
    ) -> dict[str, Any]:
        return await store().fraud_summary(_time(since, "since"), FRAUD_BUCKETS)

    return router


EVENT_FIELDS = ("id", "type", "source", "subject", "time", "correlationid", "causationid", "data")
AUDIT_FIELDS = ("received_at", "nats_subject", "stream", "stream_seq")
FRAUD_FIELDS = ("score", "decision", "reasons", "model", "scored_at")


async def _where_it_went(store: EventStore, record: dict[str, Any]) -> dict[str, Any]:
    """An audited event, the lake object holding it and, for a transaction, its score."""
    lake = None
    if record["stream"] == DATA.name:
        time: datetime = record["time"]
        group = Group(key_segment(record["type"]), time.astimezone(UTC).date().isoformat())
        landed = await store.lake_object(group, record["stream_seq"])
        if landed is not None:
            lake = {
                "uri": s3_uri(landed.bucket, landed.key),
                "first_seq": landed.first_seq,
                "last_seq": landed.last_seq,
            }
    score = None
    data = record["data"]
    if record["type"] == TRANSACTION and isinstance(data, dict):
        score = await store.fraud_score(str(data.get("transaction_id")))
    return {
        "event": {k: record[k] for k in EVENT_FIELDS},
        "audit": {k: record[k] for k in AUDIT_FIELDS},
        "lake": lake,
        "fraud": {k: score[k] for k in FRAUD_FIELDS} if score is not None else None,
    }
